"""WAL throughput and latency beside the machine's own raw figures, in one run.

    .venv/bin/python benchmarks/wal.py [--quick] [--json PATH] [--dir DIR] [--s3]

For each local backend (file, block) it measures, in the same directory and the same run:

- **throughput**: batches of 100 records of 1 KiB appended with 64 appends in flight, in MB/s of
  WAL bytes, against a raw loop that writes each batch with one ``write`` and one
  ``fdatasync`` (what a program without group commit would do). Target: ≥ 0.8 × raw.
- **latency**: one small append (one 100-byte record) at a time, waiting for each, p50 and p99,
  against one raw ``write`` + ``fdatasync`` of the same bytes appended to a file (for the block
  ring: one aligned 4 KiB ``pwrite`` + ``fdatasync`` into a preallocated file, its own I/O),
  the two taken in alternating chunks of 50. Target: p99 ≤ 2 × the raw p99. For the file WAL
  both kinds of segment are measured: a new one (it grows, so each sync also commits its new
  size) beside a raw append to a growing file, and a recycled one (its blocks written before:
  each sync is of data only) beside a raw overwrite of written blocks. The main row is the WAL
  after those, writing into a recycled segment.

With ``--s3`` it also starts local moto and SeaweedFS S3 servers and measures the object WAL on
each: appends/s and p99 latency of small appends with pipelined PUTs (many flushes in flight)
against the same with one PUT at a time (``max_inflight=1``).

Absolute figures drift by ±40% between runs on the reference machine: compare within a run.
The directory defaults to a temporary one under ``build/`` (the project's disk, not tmpfs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamlib import Record, RecordBatch
from streamlib.wal import Wal, WalRecord
from streamlib.wal._format import record_parts, record_size

IN_FLIGHT = 64


@dataclass
class Figures:
    name: str
    mb_per_s: float = 0.0
    appends_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0


def batch_record(offset: int, records: int, value_size: int) -> WalRecord:
    value = (b'{"event": "view", "user": 12345, "page": "/products/42"} ' * 40)[:value_size]
    batch = RecordBatch.from_records([Record(value)] * records, timestamp=1_700_000_000_000)
    return WalRecord(1, 1, batch.with_offset(offset))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- raw baselines ----


def raw_writes(directory: Path, data: bytes, count: int) -> list[float]:
    """Seconds of each of ``count`` ``write(data)`` + ``fdatasync`` to a fresh file: what a
    program with no WAL and no group commit would pay."""
    fd = os.open(directory / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    samples = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(directory / "raw.bin")
    return samples


def raw_throughput(directory: Path, record: WalRecord, count: int) -> float:
    """MB/s of one write + one fdatasync a batch, the same bytes as the WAL writes."""
    data = b"".join(record_parts(0, record, 0))
    return len(data) * count / sum(raw_writes(directory, data, count)) / 1e6


def disk_bandwidth(directory: Path, total: int, chunk: int = 4 << 20) -> float:
    """MB/s of 4 MiB sequential writes, one fdatasync each: the disk's ceiling for any WAL."""
    count = max(1, total // chunk)
    return chunk * count / sum(raw_writes(directory, os.urandom(chunk), count)) / 1e6


class RawAppender:
    """One ``write`` + ``fdatasync`` of ``size`` bytes at a time, appended to a file: the raw
    latency of a file WAL's small append."""

    def __init__(self, directory: Path, size: int) -> None:
        self.path = directory / "raw.bin"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        self.data = bytes(size)

    def __call__(self) -> None:
        os.write(self.fd, self.data)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


class RawOverwriter(RawAppender):
    """One ``pwrite`` + ``fdatasync`` of ``size`` bytes at a time at advancing offsets of a file
    whose blocks were all written and synced before: the raw latency of a recycled segment."""

    def __init__(self, directory: Path, size: int, count: int) -> None:
        self.path = directory / "overwrite.bin"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(self.fd, bytes(size * count + 4096))
        os.fsync(self.fd)
        self.data = bytes(size)
        self.offset = 0

    def __call__(self) -> None:
        os.pwrite(self.fd, self.data, self.offset)
        os.fdatasync(self.fd)
        self.offset += len(self.data)


class RawRingWriter(RawAppender):
    """The block ring's own I/O: 4 KiB aligned pwrites at advancing offsets of a preallocated
    file, one ``fdatasync`` each."""

    def __init__(self, directory: Path, count: int) -> None:
        self.path = directory / "ring.bin"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.posix_fallocate(self.fd, 0, count * 4096)
        os.fsync(self.fd)
        self.data = bytes(4096)
        self.offset = 0

    def __call__(self) -> None:
        os.pwrite(self.fd, self.data, self.offset)
        os.fdatasync(self.fd)
        self.offset += 4096


def interleaved(a: Callable[[], object], b: Callable[[], object], count: int, chunk: int = 50
                ) -> tuple[list[float], list[float]]:
    """Latencies of ``count`` calls of each, taken in alternating chunks so that the machine's
    drift (this VM's fsync latency wanders) touches both alike."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(0, count, chunk):
        for fn, into in ((a, samples[0]), (b, samples[1])):
            for _ in range(chunk):
                start = time.perf_counter()
                fn()
                into.append(time.perf_counter() - start)
    return samples


# ---- the WAL ----


def wal_throughput(wal: Wal, record: WalRecord, count: int) -> float:
    """MB/s with IN_FLIGHT appends outstanding; trims as it goes so capacity never binds."""
    pending: deque = deque()
    size = record_size(record)
    start = time.perf_counter()
    for i in range(count):
        if len(pending) >= IN_FLIGHT:
            position = pending.popleft().result()
            if i % 256 == 0:
                wal.trim(position)
        pending.append(wal.append(record))
    for future in pending:
        future.result()
    elapsed = time.perf_counter() - start
    wal.trim(wal.end_position)
    return size * count / elapsed / 1e6


def measure_backend(name: str, open_wal: Callable[[Path], Wal], directory: Path,
                    batches: int, small: int) -> dict[str, object]:
    big = batch_record(0, 100, 1024)
    tiny = batch_record(0, 1, 100)
    where = directory / name
    where.mkdir()
    raw_mb = raw_throughput(where, big, batches)
    disk_mb = disk_bandwidth(where, record_size(big) * batches)
    wal = open_wal(where / "wal")
    wal.recover().entries()
    wal_mb = wal_throughput(wal, big, batches)
    extra: dict[str, object] = {"direct_io": getattr(wal, "direct_io", None)}
    if name == "file":
        # Both kinds of segment: a new one (it grows: each sync also commits its size) and a
        # recycled one (blocks written before: each sync is of data only).
        extra.update(file_segment_kinds(where, open_wal, wal, big, tiny, small))
    # compare like with like: the ring writes whole aligned blocks into a preallocated file
    raw = RawRingWriter(where, small) if name == "block" else RawAppender(where, record_size(tiny))
    try:
        wal_lat, raw_lat = interleaved(lambda: wal.append(tiny).result(), raw, small)
    finally:
        raw.close()
    wal.trim(wal.end_position)
    wal.close()
    return {
        "backend": name,
        "record_bytes": record_size(big),
        "raw_mb_per_s": raw_mb,
        "disk_mb_per_s": disk_mb,
        "wal_mb_per_s": wal_mb,
        "throughput_ratio": wal_mb / raw_mb,
        "raw_p50_ms": statistics.median(raw_lat) * 1e3,
        "raw_p99_ms": percentile(raw_lat, 0.99) * 1e3,
        "wal_p50_ms": statistics.median(wal_lat) * 1e3,
        "wal_p99_ms": percentile(wal_lat, 0.99) * 1e3,
        "p99_ratio": percentile(wal_lat, 0.99) / percentile(raw_lat, 0.99),
        **extra,
    }


def file_segment_kinds(where: Path, open_wal: Callable[[Path], Wal], wal: Wal,
                       big: WalRecord, tiny: WalRecord, small: int) -> dict[str, object]:
    """Small-append latency of the file WAL in a new segment beside a raw append to a growing
    file, and in a recycled segment beside a raw overwrite; ``wal`` is left writing into a
    recycled segment (the state a store reaches once its uploads trim the WAL)."""
    fresh = open_wal(where / "fresh")
    fresh.recover().entries()
    grow = RawAppender(where, record_size(tiny))
    try:
        fresh_lat, grow_lat = interleaved(lambda: fresh.append(tiny).result(), grow, small)
    finally:
        grow.close()
        fresh.close()
    # Append and trim (trimmed segments become spares) until the WAL rolls into a spare.
    segments = where / "wal"
    spares: set[int] = set()
    while max(segments.glob("*.wal")).stat().st_ino not in spares:
        wal.trim(wal.append(big).result())
        spares |= {p.stat().st_ino for p in segments.glob("*.spare")}
    over = RawOverwriter(where, record_size(tiny), small)
    try:
        used_lat, over_lat = interleaved(lambda: wal.append(tiny).result(), over, small)
    finally:
        over.close()
    return {
        "fresh_p50_ms": statistics.median(fresh_lat) * 1e3,
        "fresh_p99_ms": percentile(fresh_lat, 0.99) * 1e3,
        "grow_p50_ms": statistics.median(grow_lat) * 1e3,
        "grow_p99_ms": percentile(grow_lat, 0.99) * 1e3,
        "recycled_p50_ms": statistics.median(used_lat) * 1e3,
        "recycled_p99_ms": percentile(used_lat, 0.99) * 1e3,
        "overwrite_p50_ms": statistics.median(over_lat) * 1e3,
        "overwrite_p99_ms": percentile(over_lat, 0.99) * 1e3,
    }


def local_backends() -> dict[str, Callable[[Path], Wal]]:
    from streamlib.wal.file import FileWal

    backends: dict[str, Callable[[Path], Wal]] = {"file": lambda p: FileWal(p)}
    try:
        from streamlib.wal.block import BlockWal
    except ImportError:
        return backends
    backends["block"] = lambda p: BlockWal(p, size=512 << 20)
    return backends


def small_appends_from_threads(wal: Wal, record: WalRecord, count: int, threads: int = 8
                               ) -> dict[str, float]:
    """appends/s and latency of ``count`` small appends from ``threads`` writers, each waiting
    for its own appends (as independent streams would)."""
    samples: list[float] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(count // threads):
            t = time.perf_counter()
            wal.append(record).result()
            with lock:
                samples.append(time.perf_counter() - t)

    workers = [threading.Thread(target=writer) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return {"appends_per_s": len(samples) / elapsed, "p50_ms": statistics.median(samples) * 1e3,
            "p99_ms": percentile(samples, 0.99) * 1e3}


def measure_object(kind: str, small: int, batches: int) -> dict[str, object]:
    """The object WAL on a local S3 server (``moto`` or ``seaweedfs``): pipelined flushes
    against one PUT at a time, beside the server's own PUT latency for a small append's bytes
    and its bandwidth for 1 MiB PUTs one at a time."""
    from streamlib.testing.s3 import MotoServer, SeaweedServer, fresh_bucket
    from streamlib.wal.object import ObjectWal

    tiny = batch_record(0, 1, 100)
    results: dict[str, object] = {"backend": f"object ({kind})"}
    # moto in a process of its own: its work must not compete for this process's GIL
    server = MotoServer(own_process=True) if kind == "moto" else SeaweedServer()
    endpoint = server.start()
    try:
        with fresh_bucket(endpoint) as bucket:
            store = bucket.store("bench")
            data = b"".join(record_parts(0, tiny, 0))
            puts = []
            for i in range(min(small, 500)):
                start = time.perf_counter()
                store.put(f"raw/{i:06d}", data)
                puts.append(time.perf_counter() - start)
            big = os.urandom(1 << 20)
            started = time.perf_counter()
            for i in range(30):
                store.put(f"big/{i:06d}", big)
            big_mb = 30 * len(big) / (time.perf_counter() - started) / 1e6
            results["raw PUT"] = {"appends_per_s": len(puts) / sum(puts), "mb_per_s": big_mb,
                                  "p50_ms": statistics.median(puts) * 1e3,
                                  "p99_ms": percentile(puts, 0.99) * 1e3}
            for node, (label, inflight) in enumerate((("pipelined", 8),
                                                      ("one PUT at a time", 1))):
                wal = ObjectWal(store, node_id=node, max_inflight=inflight)
                wal.recover().entries()
                figures = small_appends_from_threads(wal, tiny, small)
                figures["mb_per_s"] = wal_throughput(wal, batch_record(0, 100, 1024), batches)
                results[label] = figures
                wal.close()
    finally:
        server.stop()
    return results


def report(results: list[dict[str, object]]) -> None:
    print(f"{'backend':<8} {'WAL MB/s':>9} {'raw MB/s':>9} {'ratio':>6} {'disk MB/s':>9}   "
          f"{'WAL p50':>8} {'WAL p99':>8} {'raw p50':>8} {'raw p99':>8} {'p99 ratio':>9}")
    for r in results:
        if "raw_mb_per_s" not in r:
            continue
        print(f"{r['backend']:<8} {r['wal_mb_per_s']:>9.0f} {r['raw_mb_per_s']:>9.0f} "
              f"{r['throughput_ratio']:>5.2f}x {r['disk_mb_per_s']:>9.0f}   "
              f"{r['wal_p50_ms']:>6.3f}ms {r['wal_p99_ms']:>6.3f}ms "
              f"{r['raw_p50_ms']:>6.3f}ms {r['raw_p99_ms']:>6.3f}ms {r['p99_ratio']:>8.2f}x")
    print("raw = one write + fdatasync a batch (or a 100-byte record) appended to a file; for "
          "block, raw latency is\n  its own I/O: an aligned 4 KiB pwrite + fdatasync into a "
          "preallocated file; disk = 4 MiB writes + fdatasync")
    for r in results:
        if "fresh_p50_ms" in r:
            print("\nfile WAL small appends by kind of segment (p50 / p99), beside the raw sync "
                  "of the same kind:")
            print(f"  new segment (grows)          {r['fresh_p50_ms']:.3f} / "
                  f"{r['fresh_p99_ms']:.3f} ms   raw append to a growing file "
                  f"{r['grow_p50_ms']:.3f} / {r['grow_p99_ms']:.3f} ms")
            print(f"  recycled segment             {r['recycled_p50_ms']:.3f} / "
                  f"{r['recycled_p99_ms']:.3f} ms   "
                  f"raw overwrite of written blocks {r['overwrite_p50_ms']:.3f} / "
                  f"{r['overwrite_p99_ms']:.3f} ms")
    print("targets: throughput >= 0.80x raw; p99 <= 2.00x raw p99")
    for r in results:
        if "raw_mb_per_s" in r:
            ok_t = "met" if r["throughput_ratio"] >= 0.8 else "NOT met"  # type: ignore[operator]
            ok_l = "met" if r["p99_ratio"] <= 2.0 else "NOT met"  # type: ignore[operator]
            direct = f" (O_DIRECT: {r['direct_io']})" if r.get("direct_io") is not None else ""
            print(f"  {r['backend']}: throughput {ok_t}, p99 {ok_l}{direct}")

        else:
            print(f"\n{r['backend']}: small appends from 8 threads (appends/s, latency); "
                  f"batches of 100 x 1 KiB with {IN_FLIGHT} in flight (MB/s);\n  raw PUT = one PUT "
                  "at a time: of a small append's bytes (latency), of 1 MiB (MB/s)")
            for label in ("raw PUT", "pipelined", "one PUT at a time"):
                f = r[label]
                print(f"  {label:<18} {f['appends_per_s']:>7.0f} appends/s  "  # type: ignore[index]
                      f"p50 {f['p50_ms']:>6.1f} ms  p99 {f['p99_ms']:>6.1f} ms  "  # type: ignore[index]
                      f"{f['mb_per_s']:>6.1f} MB/s")  # type: ignore[index]
            ratio = r["pipelined"]["p99_ms"] / r["raw PUT"]["p99_ms"]  # type: ignore[index]
            print(f"  pipelined p99 / raw PUT p99 = {ratio:.2f}x (target <= 1.5x): "
                  f"{'met' if ratio <= 1.5 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--dir", metavar="DIR", help="where the WALs and raw files go")
    parser.add_argument("--s3", action="store_true",
                        help="also the object WAL on local moto and SeaweedFS servers")
    args = parser.parse_args()
    batches, small = (300, 500) if args.quick else (2000, 3000)
    base = Path(args.dir) if args.dir else Path("build")
    base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="walbench-", dir=base))
    print(f"streamlib WAL benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"dir {directory}")
    print(f"throughput: {batches} batches of 100 x 1 KiB, {IN_FLIGHT} in flight; "
          f"latency: {small} appends of one 100-byte record, one at a time\n")
    results: list[dict[str, object]] = []
    try:
        for name, open_wal in local_backends().items():
            results.append(measure_backend(name, open_wal, directory, batches, small))
        if args.s3:
            for kind in ("moto", "seaweedfs"):
                results.append(measure_object(kind, small // 2 if args.quick else small,
                                              batches // 2))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
