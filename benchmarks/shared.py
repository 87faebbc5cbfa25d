"""Shared stores: what the object-store manifest costs beside the local SQLite metadata.

    .venv/bin/python benchmarks/shared.py [--quick] [--json PATH] [--dir DIR]

The same store (file WAL on the local disk, data as in ``benchmarks/stream.py``: 1 KiB JSON
events) with four metadata and object placements, measured in one run, the configurations
taking turns:

- ``sqlite, local objects`` — the single-node default;
- ``manifest, local objects`` — the manifest in a local directory (several processes of one
  machine, or a shared file system);
- ``sqlite, moto objects`` and ``manifest, moto objects`` — objects (and the manifest) on a
  local moto S3 server in a process of its own.

For each: **small appends** (10 × 1 KiB, one at a time, each waited for: p50 / p99 — on a
manifest acknowledged under the owner's lease, on by default, docs/shared-stores.md),
**append throughput** (batches of 100 × 1 KiB, 64 in
flight, until acknowledged), and an **upload round** (``flush()`` of 1 MiB: PUT + commit).
Then, on the manifest: the **hand-over** of a stream from a live node to another (from
``open_stream`` on the new node to its first append acknowledged: the old node's look, commit
and release included), and a **take-over** of a node with 10 MiB in its object WAL.

Absolute figures drift by ±40% between runs on the reference machine: compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream import Data, percentile  # the data of benchmarks/stream.py

import streamlib

ROOT = Path(__file__).resolve().parents[1]
HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB"}


def configs(directory: Path, endpoint: Any, bucket: str) -> dict[str, dict[str, Any]]:
    s3 = {"objects_url": f"s3://{bucket}/bench", "storage_options": endpoint.storage_options()}
    local = {"objects_url": f"file://{directory / 'objects'}"}
    (directory / "objects").mkdir(parents=True, exist_ok=True)
    return {"sqlite, local objects": {**local},
            "manifest, local objects": {**local, "metadata": "manifest"},
            "sqlite, moto objects": {**s3},
            "manifest, moto objects": {**s3, "metadata": "manifest"}}


@contextlib.contextmanager
def opened(directory: Path, name: str, node: str, options: dict[str, Any],
           **extra: Any) -> Iterator[streamlib.StreamStore]:
    settings = {**options, **extra}
    storage = settings.pop("storage_options", None)
    path = directory / name.replace(", ", "-").replace(" ", "_") / node
    store = streamlib.open(path, node_id=node, storage_options=storage, **settings)
    try:
        yield store
    finally:
        store.close()


def small_appends(stream: streamlib.Stream, data: Data, count: int) -> list[float]:
    samples = []
    for n in range(count):
        batch = data.small(n)
        started = time.perf_counter()
        stream.append(batch)
        samples.append(time.perf_counter() - started)
    return samples


def throughput(stream: streamlib.Stream, data: Data, batches: int) -> float:
    started = time.perf_counter()
    futures = []
    for n in range(batches):
        futures.append(stream.append_future(data.big[n % len(data.big)]))
        if len(futures) >= 64:
            futures.pop(0).result()
    for future in futures:
        future.result()
    return batches * 100 * 1024 / (time.perf_counter() - started) / 1e6


def upload_round(store: streamlib.StreamStore, stream: streamlib.Stream, data: Data) -> float:
    for n in range(10):
        stream.append(data.big[n])
    started = time.perf_counter()
    store.flush()
    return time.perf_counter() - started


def handover(directory: Path, name: str, options: dict[str, Any], data: Data,
             rounds: int) -> list[float]:
    """A live node A appends; node B opens the stream and appends: time to B's first ack."""
    times = []
    with opened(directory, name, "ha", options, **HELD) as a, \
            opened(directory, name, "hb", options, **HELD) as b:
        stream = a.create_stream()
        for r in range(rounds):
            writer, other = (a, b) if r % 2 == 0 else (b, a)
            mine = writer.open_stream(stream.id)
            for n in range(20):
                mine.append(data.small(n))
            started = time.perf_counter()
            taken = other.open_stream(stream.id)
            taken.append(data.small(0))
            times.append(time.perf_counter() - started)
    return times


def take_over(directory: Path, name: str, options: dict[str, Any], data: Data) -> float:
    """Node A writes 10 MiB to its object WAL and is abandoned (its store never closed
    cleanly: the WAL is kept); node B takes it over."""
    settings = {**options, **HELD, "wal": "object"}
    storage = settings.pop("storage_options", None)
    a = streamlib.open(directory / "takeover-a", node_id="ta", storage_options=storage,
                       **settings)
    stream = a.create_stream()
    for n in range(100):
        stream.append(data.big[n])
    a._uploader.stop()  # as if killed: nothing uploaded, the WAL as it is
    a._release()
    with opened(directory, name, "tb", options, wal="object") as b:
        started = time.perf_counter()
        result = b.take_over("ta")
        elapsed = time.perf_counter() - started
        assert result.records == 100 * 100, result
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    small, batches, rounds = (200, 200, 4) if args.quick else (1000, 1000, 10)
    (ROOT / "build").mkdir(exist_ok=True)  # on the project's disk, not a tmpfs
    base = args.dir or Path(tempfile.mkdtemp(prefix="sharedbench-", dir=ROOT / "build"))
    data = Data(200)
    from streamlib.testing.s3 import MotoServer, fresh_bucket

    server = MotoServer(own_process=True)
    endpoint = server.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        with fresh_bucket(endpoint) as bucket:
            placements = configs(base, endpoint, bucket.name)
            stores = {}
            with contextlib.ExitStack() as stack:
                for name, options in placements.items():
                    store = stack.enter_context(opened(base, name, "n1", options, **HELD))
                    stores[name] = (store, store.create_stream())
                    results[name] = {"small": [], "mbps": [], "round_s": []}
                for _ in range(5):  # taking turns: drift touches all alike
                    for name, (store, stream) in stores.items():
                        results[name]["small"] += small_appends(stream, data, small // 5)
                        results[name]["mbps"].append(throughput(stream, data, batches // 5))
                        results[name]["round_s"].append(upload_round(store, stream, data))
            for name in ("manifest, local objects", "manifest, moto objects"):
                results[name]["handover_s"] = handover(base, name, placements[name], data,
                                                       rounds)
                results[name]["takeover_s"] = take_over(base, name, placements[name], data)
    finally:
        server.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"streamlib shared-store benchmark, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"Python {sys.version.split()[0]}")
    print(f"{'configuration':<26}{'small p50':>11}{'p99':>9}{'MB/s':>8}{'round':>9}"
          f"{'hand-over p50':>15}{'take-over':>11}")
    summary = {}
    for name, r in results.items():
        row = {"small_p50_ms": percentile(r["small"], 0.5) * 1e3,
               "small_p99_ms": percentile(r["small"], 0.99) * 1e3,
               "append_mbps": statistics.median(r["mbps"]),
               "upload_round_ms": statistics.median(r["round_s"]) * 1e3}
        hand = (f"{statistics.median(r['handover_s']) * 1e3:>12.1f} ms"
                if "handover_s" in r else f"{'-':>15}")
        take = f"{r['takeover_s']:>9.2f} s" if "takeover_s" in r else f"{'-':>11}"
        if "handover_s" in r:
            row["handover_p50_ms"] = statistics.median(r["handover_s"]) * 1e3
            row["takeover_10mib_s"] = r["takeover_s"]
        summary[name] = row
        print(f"{name:<26}{row['small_p50_ms']:>8.2f} ms{row['small_p99_ms']:>6.2f} ms"
              f"{row['append_mbps']:>8.0f}{row['upload_round_ms']:>6.0f} ms{hand}{take}")
    for placement in ("local", "moto"):
        lite, man = summary[f"sqlite, {placement} objects"], summary[
            f"manifest, {placement} objects"]
        print(f"manifest vs sqlite, {placement} objects: small p99 "
              f"{man['small_p99_ms'] / lite['small_p99_ms']:.2f}x, append throughput "
              f"{man['append_mbps'] / lite['append_mbps']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
