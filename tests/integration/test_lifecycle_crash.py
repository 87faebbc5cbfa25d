"""SIGKILL at every step of compaction, deletion and the sweep (docs/lifecycle.md, "Failure
cases"): a child process is killed after a compaction wrote its outputs, after its swap, in the
middle of deleting doomed objects, before the metadata forgets them, and at random moments of a
loop of appends, compactions and sweeps. Each time, the store reopened reads every record as
written, no live object is missing from the bucket, and later passes and a sweep leave exactly
what the metadata references."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib import Record, StreamStore

# Processes killed and stores reopened: the codec plays no part of its own (the C pass runs it).
pytestmark = pytest.mark.once

CHILD = Path(__file__).with_name("lifecycle_crash_child.py")
KiB = 1024


def settings(tmp_path: Path) -> dict[str, Any]:
    return {"path": str(tmp_path / "data"), "upload_interval_ms": 3_600_000,
            "compaction_interval_ms": 0, "delete_grace_ms": 0, "retry_timeout_ms": 0,
            "block_bytes": 4 * KiB, "stream_object_bytes": 16 * KiB,
            "compaction_object_bytes": "1MiB", "compaction_max_objects": 3}


def prepare(tmp_path: Path, seed: int) -> dict[str, list[tuple[int, bytes]]]:
    """Streams s0…s3 over several rounds; s1 trimmed into its data, s3 destroyed; three
    orphans planted. Returns what each live stream must read from its start."""
    rng = random.Random(seed)
    expected: dict[str, list[tuple[int, bytes]]] = {}
    with streamlib.open(**settings(tmp_path)) as store:
        handles = [store.create_stream(f"s{i}") for i in range(4)]
        for _ in range(8):
            for h in handles:
                values = [rng.randbytes(rng.randint(10, 900)) for _ in range(rng.randint(1, 12))]
                base = h.append([Record(v) for v in values]).base_offset
                expected.setdefault(h.name or "", []).extend(
                    (base + i, v) for i, v in enumerate(values))
            store.flush()
        trim = handles[1].next_offset // 2
        handles[1].trim(trim)
        expected["s1"] = [(o, v) for o, v in expected["s1"] if o >= trim]
        store.destroy_stream("s3")
        del expected["s3"]
        for n in range(3):
            store.objects.put(f"data/9/1/{n:012d}-orphan.mobj", b"left by a crashed round")
    return expected


def read(store: StreamStore, name: str) -> list[tuple[int, bytes]]:
    stream = store.open_stream(name, read_only=True)
    found = []
    offset = stream.start_offset
    while offset < stream.next_offset:
        result = stream.fetch(offset)
        for batch in result:
            assert batch.base_offset is not None
            found.extend((o, r.value) for o, r in enumerate(batch.records(), batch.base_offset))
        offset = result.next_fetch_offset
    return [(o, v) for o, v in found if o >= stream.start_offset]


def check(tmp_path: Path, expected: dict[str, list[tuple[int, bytes]]]) -> None:
    """Every record written and every acknowledged append reads back; after them, only appends
    the child made durable and was killed before logging (their outcome unknown to it)."""
    with streamlib.open(**settings(tmp_path)) as store:
        meta = store.metadata
        bucket = {info.key for info in store.objects.list("data/")}
        live = {o.key for o in meta.live_objects(limit=100_000)}
        assert live <= bucket, f"dangling references: {sorted(live - bucket)}"
        for name, records in expected.items():
            found = read(store, name)
            assert found[:len(records)] == records, name
            assert all(v.startswith(b"child-") for _, v in found[len(records):]), name
            expected[name] = found
        store.compact()
        store.compact()
        store.collect_garbage()
        assert meta.doomed() == []
        bucket = {info.key for info in store.objects.list("data/")}
        assert bucket == {o.key for o in meta.live_objects(limit=100_000)}, "leftovers"
        for name, records in expected.items():
            assert read(store, name) == records, name


def run_child(tmp_path: Path, point: str, nth: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), json.dumps(settings(tmp_path)),
                             str(tmp_path / "acks"), point, str(nth)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=CHILD.parent)


POINTS = [("replace_before", 1), ("replace_before", 2), ("replace_before", 3),
          ("replace_after", 1), ("replace_after", 2), ("replace_after", 3),
          ("delete_mid", 1), ("delete_mid", 2), ("delete_mid", 3),
          ("forget_before", 1), ("forget_before", 2)]


@pytest.mark.parametrize(("point", "nth"), POINTS)
def test_a_kill_at_each_step_loses_nothing_and_leaves_nothing(tmp_path: Path, point: str,
                                                              nth: int) -> None:
    expected = prepare(tmp_path, seed=nth)
    child = run_child(tmp_path, point, nth)
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, f"{point} #{nth} not reached: {out}{err}"
    check(tmp_path, expected)


@pytest.mark.parametrize("seed", range(10))
def test_a_kill_at_a_random_moment_loses_nothing_and_leaves_nothing(tmp_path: Path,
                                                                    seed: int) -> None:
    expected = prepare(tmp_path, seed)
    rng = random.Random(seed)
    child = run_child(tmp_path, "none", 0)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", child.stderr.read()  # type: ignore[union-attr]
    try:
        child.wait(timeout=rng.uniform(0.05, 1.0))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    acks = tmp_path / "acks"
    for line in acks.read_text().splitlines() if acks.exists() else []:
        _, stream, offset, value = line.split(" ")
        expected[stream].append((int(offset), value.encode()))
    check(tmp_path, expected)
