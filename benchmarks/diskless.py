"""Diskless: a store with nothing on local disk against the object store's own figures, in one
run per server.

    .venv/bin/python benchmarks/diskless.py [--quick] [--servers moto,seaweedfs] [--json PATH]

For each server (moto in a process of its own, SeaweedFS's ``weed mini``), on a fresh bucket,
through s3fs as a store uses it:

1. **The server**: one 4 KiB PUT at a time (p50, p99), and 1 MiB PUTs 16 at a time (MB/s) —
   and 8 at a time, the object WAL's PUTs at once at the defaults.
2. **Small appends, one at a time** (10 × 1 KiB, each waited for): diskless (``wal="object"``,
   ``metadata="manifest"``) against the 4 KiB PUT, at the defaults (the owner's lease on) and
   without the lease (``lease_ms=0``: a manifest look per acknowledgement); and a file WAL with
   the shared manifest against a file WAL with SQLite (objects on the server for both).
3. **Tiny appends of many streams**: 1,000 streams × 20 rounds of one 100-byte append, 64 in
   flight, diskless: the object WAL's PUTs per append (``store.stats()["cost"]``) and the time,
   against the same workload on a local file WAL with SQLite and local objects.
4. **Append throughput**: batches of 100 × 1 KiB, 64 in flight, diskless, against the 1 MiB
   PUT bandwidth; and the same with uploads held until close (the uploader's copy of every
   byte goes to the same server).
5. **Metadata changes**: 200 ``create_stream`` calls from 8 threads, diskless, against the
   4 KiB PUT's p50.

Targets (docs/performance.md, "Diskless"): 2. p50 and p99 within 1.5× of the PUT's, and
within 1.5× of SQLite's with a file WAL; 3. at most 0.1 PUT an append and at most 3× the local
time; 4. at least 0.8× the PUT bandwidth; 5. at most 25 PUT p50s in all. MB/s = 10^6 bytes a
second of record values (of payload for the raw PUTs). Absolute figures drift by ±40% between
runs on the reference machine: compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stream import BIG, IN_FLIGHT, MB, RECORD_BYTES, Data, percentile

import streamlib
from streamlib.config import Config
from streamlib.testing.s3 import MotoServer, S3Endpoint, SeaweedServer

ROOT = Path(__file__).resolve().parents[1]
TINY = b"t" * 100
PUT_BYTES = 4096
BIG_PUT = 1 << 20
PUT_IN_FLIGHT = 16
WAL_IN_FLIGHT = Config().object_wal_in_flight
"""The object WAL's PUTs at once at the defaults: the raw 1 MiB PUTs are also measured so."""
HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "4GiB"}
"""The throughput row with uploads held until close: the WAL's PUTs alone on the server (at the
defaults the uploader PUTs every byte a second time, to the same server, as the run goes)."""
NO_LEASE = {"lease_ms": 0}
"""The rows without the owner's lease (docs/shared-stores.md): every acknowledgement waits for a
look at the manifest."""


def quantiles(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": percentile(samples, 0.5) * 1e3,
            "p99_ms": percentile(samples, 0.99) * 1e3}


def raw_puts(endpoint: S3Endpoint, bucket: str, count: int) -> dict[str, Any]:
    """The server alone: small PUTs one at a time, large ones pipelined."""
    fs = endpoint.filesystem()
    body = b"p" * PUT_BYTES
    fs.pipe_file(f"{bucket}/raw/warm-up", body)  # a new client's first request: not counted
    samples = []
    for n in range(count):
        started = time.perf_counter()
        fs.pipe_file(f"{bucket}/raw/small-{n}", body)
        samples.append(time.perf_counter() - started)
    big = b"B" * BIG_PUT
    puts = max(64, count // 4)
    bandwidth = {}
    for at_once in (PUT_IN_FLIGHT, WAL_IN_FLIGHT):
        with ThreadPoolExecutor(at_once) as pool:
            started = time.perf_counter()
            list(pool.map(lambda n, a=at_once: fs.pipe_file(f"{bucket}/raw/big-{a}-{n}", big),
                          range(puts)))
            bandwidth[at_once] = puts * BIG_PUT / (time.perf_counter() - started) / MB
    return {"put_4k": quantiles(samples), "put_1m_mb_per_s": bandwidth[PUT_IN_FLIGHT],
            "put_1m_wal_mb_per_s": bandwidth[WAL_IN_FLIGHT]}


@contextlib.contextmanager
def store_on(directory: Path, endpoint: S3Endpoint | None, bucket: str,
             **options: Any) -> Iterator[streamlib.StreamStore]:
    """A store in ``directory`` whose objects (and object WAL, and manifest) are on the server
    (``endpoint``), or local with None."""
    if endpoint is not None:
        options = {"objects_url": f"s3://{bucket}/{uuid.uuid4().hex[:8]}",
                   "storage_options": endpoint.storage_options(), **options}
    storage = options.pop("storage_options", None)
    store = streamlib.open(directory / uuid.uuid4().hex[:8], storage_options=storage, **options)
    try:
        yield store
    finally:
        store.close()


def small_appends(store: streamlib.StreamStore, data: Data, count: int) -> dict[str, float]:
    stream = store.create_stream()
    stream.append(data.small(0))  # the stream's first append: not counted
    samples = []
    for n in range(count):
        started = time.perf_counter()
        stream.append(data.small(n))
        samples.append(time.perf_counter() - started)
    return quantiles(samples)


def pipelined(appends: Iterator[Callable[[], Future[Any]]]) -> float:
    """Seconds to run the appends with IN_FLIGHT of them waiting at once."""
    started = time.perf_counter()
    waiting: list[Future[Any]] = []
    for append in appends:
        waiting.append(append())
        if len(waiting) >= IN_FLIGHT:
            waiting.pop(0).result()
    for future in waiting:
        future.result()
    return time.perf_counter() - started


def tiny_appends(store: streamlib.StreamStore, streams: int, rounds: int) -> dict[str, float]:
    """``rounds`` rounds of one 100-byte append to each of ``streams`` streams."""
    handles = [store.create_stream() for _ in range(streams)]
    before: Any = store.stats()["cost"]
    seconds = pipelined(functools.partial(stream.append_future, [TINY])
                        for _ in range(rounds) for stream in handles)
    after: Any = store.stats()["cost"]
    appends = streams * rounds
    return {"seconds": seconds, "appends": appends,
            "wal_puts_per_append": (after["wal"]["puts"] - before["wal"]["puts"]) / appends}


def throughput(store: streamlib.StreamStore, data: Data, batches: int) -> float:
    stream = store.create_stream()
    seconds = pipelined(functools.partial(stream.append_future, data.big[n % len(data.big)])
                        for n in range(batches))
    return batches * BIG * RECORD_BYTES / seconds / MB


def creates(store: streamlib.StreamStore, count: int, threads: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: store.create_stream(), range(count)))
    return time.perf_counter() - started


def run_server(name: str, endpoint: S3Endpoint, directory: Path, data: Data,
               quick: bool) -> dict[str, Any]:
    small, streams, rounds, batches = (100, 200, 5, 200) if quick else (400, 1000, 20, 1000)
    bucket = endpoint.create_bucket()
    try:
        result: dict[str, Any] = {"server": name, **raw_puts(endpoint, bucket, small)}
        diskless = {"wal": "object", "metadata": "manifest"}
        with store_on(directory, endpoint, bucket, **diskless) as store:
            result["small_diskless"] = small_appends(store, data, small)
        with store_on(directory, endpoint, bucket, **NO_LEASE, **diskless) as store:
            result["small_diskless_look"] = small_appends(store, data, small)
        with store_on(directory, endpoint, bucket, metadata="manifest") as store:
            result["small_file_manifest"] = small_appends(store, data, small)
        with store_on(directory, endpoint, bucket, metadata="manifest", **NO_LEASE) as store:
            result["small_file_manifest_look"] = small_appends(store, data, small)
        with store_on(directory, endpoint, bucket) as store:
            result["small_file_sqlite"] = small_appends(store, data, small)
        with store_on(directory, endpoint, bucket, **diskless) as store:
            result["tiny_diskless"] = tiny_appends(store, streams, rounds)
        with store_on(directory, None, bucket) as store:
            result["tiny_local"] = tiny_appends(store, streams, rounds)
        with store_on(directory, endpoint, bucket, **diskless) as store:
            result["diskless_mb_per_s"] = throughput(store, data, batches)
        with store_on(directory, endpoint, bucket, **HELD, **diskless) as store:
            result["diskless_held_mb_per_s"] = throughput(store, data, batches)
        with store_on(directory, endpoint, bucket, **diskless) as store:
            result["creates_s"] = creates(store, 200, 8)
    finally:
        with contextlib.suppress(Exception):
            endpoint.delete_bucket(bucket)
    return result


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict[str, Any]) -> None:
    put, disk = r["put_4k"], r["small_diskless"]
    man, lite = r["small_file_manifest"], r["small_file_sqlite"]
    print(f"\n{r['server']}: one 4 KiB PUT p50 {put['p50_ms']:.2f} ms, p99 {put['p99_ms']:.2f} ms; "
          f"1 MiB PUTs, {PUT_IN_FLIGHT} at once: {r['put_1m_mb_per_s']:.0f} MB/s")
    ratio50, ratio99 = disk["p50_ms"] / put["p50_ms"], disk["p99_ms"] / put["p99_ms"]
    print(f"  small appends, diskless: p50 {disk['p50_ms']:.2f} ms, p99 {disk['p99_ms']:.2f} ms: "
          f"{ratio50:.1f}x / {ratio99:.1f}x the PUT's [target <= 1.5x: "
          f"{verdict(ratio50 <= 1.5 and ratio99 <= 1.5)}]")
    leased = r["small_diskless_look"]
    print(f"  the same without the lease (lease_ms=0): p50 {leased['p50_ms']:.2f} ms, p99 "
          f"{leased['p99_ms']:.2f} ms: {leased['p50_ms'] / put['p50_ms']:.1f}x / "
          f"{leased['p99_ms'] / put['p99_ms']:.1f}x the PUT's")
    ratio50, ratio99 = man["p50_ms"] / lite["p50_ms"], man["p99_ms"] / lite["p99_ms"]
    print(f"  small appends, file WAL: manifest p50 {man['p50_ms']:.2f} ms, p99 "
          f"{man['p99_ms']:.2f} ms; SQLite p50 {lite['p50_ms']:.2f} ms, p99 {lite['p99_ms']:.2f} "
          f"ms: {ratio50:.1f}x / {ratio99:.1f}x [target <= 1.5x: "
          f"{verdict(ratio50 <= 1.5 and ratio99 <= 1.5)}]")
    leased = r["small_file_manifest_look"]
    print(f"  the same without the lease: manifest p50 {leased['p50_ms']:.2f} ms, p99 "
          f"{leased['p99_ms']:.2f} ms: {leased['p50_ms'] / lite['p50_ms']:.1f}x / "
          f"{leased['p99_ms'] / lite['p99_ms']:.1f}x SQLite's")
    tiny, local = r["tiny_diskless"], r["tiny_local"]
    slower = tiny["seconds"] / local["seconds"]
    print(f"  {tiny['appends']} tiny appends ({IN_FLIGHT} in flight), diskless: "
          f"{tiny['wal_puts_per_append']:.2f} WAL PUTs an append [target <= 0.1: "
          f"{verdict(tiny['wal_puts_per_append'] <= 0.1)}], {tiny['seconds']:.2f} s against "
          f"{local['seconds']:.2f} s on a local file WAL: {slower:.1f}x [target <= 3x: "
          f"{verdict(slower <= 3)}]")
    share = r["diskless_mb_per_s"] / r["put_1m_mb_per_s"]
    print(f"  100 x 1 KiB batches, {IN_FLIGHT} in flight, diskless: "
          f"{r['diskless_mb_per_s']:.0f} MB/s, {share:.2f}x the PUT bandwidth [target >= 0.8x: "
          f"{verdict(share >= 0.8)}]; {r['diskless_mb_per_s'] / r['put_1m_wal_mb_per_s']:.2f}x "
          f"that of 1 MiB PUTs {WAL_IN_FLIGHT} at once ({r['put_1m_wal_mb_per_s']:.0f} MB/s), "
          f"the object WAL's shape")
    held = r["diskless_held_mb_per_s"]
    print(f"  the same with uploads held until close (the WAL's PUTs alone on the server): "
          f"{held:.0f} MB/s, {held / r['put_1m_mb_per_s']:.2f}x the PUT bandwidth")
    puts = r["creates_s"] * 1e3 / put["p50_ms"]
    print(f"  200 create_stream from 8 threads, diskless: {r['creates_s']:.2f} s = {puts:.0f} "
          f"PUT p50s [target <= 25: {verdict(puts <= 25)}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and streams")
    parser.add_argument("--servers", default="moto,seaweedfs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    (ROOT / "build").mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="bench-diskless-", dir=ROOT / "build"))
    data = Data(200)
    results = []
    servers: dict[str, Callable[[], Any]] = {"moto": lambda: MotoServer(own_process=True),
                                             "seaweedfs": SeaweedServer}
    print(f"streamlib diskless benchmark, Python {sys.version.split()[0]}, "
          f"{threading.active_count()} thread(s) at start")
    try:
        for name in args.servers.split(","):
            server = servers[name]()
            endpoint = server.start()
            try:
                results.append(run_server(name, endpoint, directory, data, args.quick))
            finally:
                server.stop()
            report(results[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
