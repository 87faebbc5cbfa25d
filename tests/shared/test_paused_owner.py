"""An owner paused with SIGSTOP (a long collection, a frozen VM) while another node takes its
stream — by a hand-over or by taking the whole node over — and resumed with SIGCONT afterwards
acknowledges nothing after the hand-over (docs/shared-stores.md, "Acknowledging without a
look"). Real processes on moto's S3 server, the owner diskless (object WAL, shared manifest)
with the default lease.

The pause lengths are the scenario, not a synchronisation: shorter than the lease (the owner
wakes inside it and may still acknowledge appends it made durable, which must then come before
the new owner's first record) and longer (it wakes with its lease over and must look first).
The owner makes no idle looks for seconds: only the lease, not a look that happens to come
first, keeps it from acknowledging what the other node did not read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from nodes import lines_in, reap, values, wait_for

import streamlib
from streamlib.config import Config
from streamlib.testing.s3 import S3Endpoint

pytestmark = pytest.mark.once  # processes and a server, not the codec: the C pass runs it

CHILD = Path(__file__).with_name("shared_child.py")
LEASE = Config().lease_ms / 1000


def config(bucket: str, tmp_path: Path, node: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(tmp_path / f"node-{node}"), "node_id": node, "metadata": "manifest",
            "objects_url": f"s3://{bucket}/shared", "upload_interval_ms": 3_600_000,
            "upload_bytes": "1GiB", **extra}


def outcomes(acklog: Path) -> tuple[dict[int, int], set[int]]:
    """{base offset: batch} of the acknowledged appends, and the batches refused or unknown."""
    acked, refused = {}, set()
    for line in acklog.read_text().split("\n")[:-1]:
        if line == "end":
            continue
        first, batch = line.split()
        if first in ("F", "U"):
            refused.add(int(batch))
        else:
            acked[int(first)] = int(batch)
    return acked, refused


def batch(n: int) -> list[bytes]:
    return [f"s:{n}:{i}".encode() for i in range(10)]


@pytest.mark.parametrize("how, pause", [("hand-over", 0.2), ("hand-over", 2.0),
                                        ("take-over", 0.0)])
def test_an_owner_paused_across_a_hand_over_acknowledges_nothing_after_it(
        how: str, pause: float, moto_s3: S3Endpoint, tmp_path: Path) -> None:
    bucket = moto_s3.create_bucket()
    options = moto_s3.storage_options()
    env = {**os.environ, "S3_STORAGE_OPTIONS": json.dumps(options)}
    acklog = tmp_path / "acks"
    owner_config = config(bucket, tmp_path, "a", wal="object", fence_poll_ms=5000)
    owner = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(owner_config), "s", "0", str(acklog)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready", \
            owner.stderr.read() if owner.stderr else ""
        wait_for(lambda: lines_in(acklog) >= 30 or owner.poll() is not None, timeout=60,
                 what="the owner to acknowledge appends")
        owner.send_signal(signal.SIGSTOP)  # appends in flight, PUTs and looks half done
        stopped = time.monotonic()
        with streamlib.open(config(bucket, tmp_path, "b"), storage_options=options) as b:
            if how == "hand-over":
                stream = b.open_stream("s")  # the hand-over
                with ThreadPoolExecutor(1) as pool:  # b's append waits for a's release
                    first = pool.submit(stream.append, [b"b's first"])
                    time.sleep(max(0.0, stopped + pause - time.monotonic()))  # the pause
                    owner.send_signal(signal.SIGCONT)
                    at = first.result(timeout=60).base_offset
                assert owner.wait(timeout=60) == 0, owner.stderr.read() if owner.stderr else ""
                acked, refused = outcomes(acklog)
                got = values(stream)
                assert got[at:] == [b"b's first"]
                # Everything a acknowledged, before and after the pause, comes before b's
                # first record, where it was acknowledged; nothing refused is there.
                assert all(got[base:base + 10] == batch(n) for base, n in acked.items())
                assert len(got[:at]) == 10 * len(acked) and not refused & set(acked.values())
            else:
                taken = b.take_over("a", wal="object")  # waits out a's lease, reads its WAL
                assert time.monotonic() - stopped >= LEASE
                kept = values(b.open_stream("s", read_only=True))
                assert len(kept) == taken.records
                owner.send_signal(signal.SIGCONT)
                assert owner.wait(timeout=60) == 0, owner.stderr.read() if owner.stderr else ""
                acked, _ = outcomes(acklog)
                # Whatever a acknowledged — before the pause or on waking — the taker read.
                assert all(kept[base:base + 10] == batch(n) for base, n in acked.items())
                b.flush()
                assert values(b.open_stream("s", read_only=True)) == kept  # a added nothing
    finally:
        reap(owner)
    moto_s3.delete_bucket(bucket)
