"""Throughput of the segment codec: the C backend against its pure-Python twin, and memcpy.

Run ``.venv/bin/python benchmarks/codec.py`` (or ``make bench``); ``--quick`` for a run of about
ten seconds, ``--json PATH`` to also write every figure as JSON. Absolute figures drift by ±40%
between runs on the reference machine (2 cores), so compare the ratios printed within one run.

What is measured, all in one process:

1. Records, for three workloads (one batch, encoded and decoded again and again), at two levels:
   the codec's own work, which is what the C and Python backends do differently, and the same
   from and to Python Record objects, which adds work both backends share:
   - encode (codec): the backend's ``records_encode`` from the gathered columns to the payload;
   - encode from Record objects: ``RecordBatch.from_records`` (gathering the records into
     columns with C-level loops, then the codec);
   - index (codec): ``streamlib.codec.index_records``, which validates every record and locates
     every field;
   - decode to Record objects: ``streamlib.codec.decode_records``, the index plus building the
     Record tuples.
   Each for both backends. The target (C at least 10 times the pure-Python
   twin on 100-byte records) is checked on the codec rows; the Record-object rows show what a
   caller who builds or wants Python objects gets, since per-object work is the same in both.
2. Batch framing (``encode_batch``, one batch a call) and scanning (``scan_batches`` over a
   buffer of 64 framed batches, the WAL recovery path), both backends.
3. Data blocks (C backend): ``encode_block`` and ``decode_block`` of about 1 MiB of the 1 KiB
   workload with no compression, lz4 and zstd level 3, and the compression ratio.
4. XXH64 of a 1 MiB buffer, both backends (the twin calls the ``xxhash`` package).
5. memcpy: copying 1 MiB into an existing bytearray (in cache, as the codec's batches and blocks
   are: the reference that figures are also given as a fraction of), the same for 64 MiB (out of
   cache: the memory bandwidth), and ``bytes(memoryview(buffer))`` of 64 MiB, which also
   allocates.

Records hold deterministic JSON-like text (a seeded random over a made-up vocabulary, so it
compresses like logs or events), a 6-byte key on every other record, no headers, and no
timestamp of their own (they take the batch's). The backend is switched by setting
``streamlib.codec._impl``; before anything is timed, both backends must give identical payloads,
indexes, decoded records, framed buffers and scan results.

Timing: ``time.perf_counter_ns`` around back-to-back calls, after one warm-up call. The number
of calls in a repeat is grown until a repeat lasts at least 0.1 s (0.05 s with ``--quick``), so
the slow pure-Python backend gets fewer calls in the same time. The repeats of the C and the
Python backend take turns, so that drift in the machine's speed touches both alike, and the
figure is the best of 7 repeats (3 with ``--quick``). The garbage collector is disabled inside
timed loops (after a collection), which steadies the numbers but leaves out the collections
that building millions of Record objects would cause in a real program. MB is 10^6 bytes; record
workloads count bytes of encoded payload, batches count framed bytes, blocks count bytes before
compression.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import string
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from streamlib import Record, RecordBatch, codec
from streamlib.codec import _python

try:
    from streamlib.codec import _native
except ImportError as e:
    raise SystemExit(f"benchmarks/codec.py needs the C codec, which is not built: {e}") from None

SEED = 20261122
TIMESTAMP = 1_795_305_600_000  # milliseconds: the batch timestamp every record takes
STREAM_ID = 7
MIB = 1 << 20
XXH64_BYTES = MIB
SCAN_BATCHES = 64  # framed batches in the buffer that scan_batches walks
BLOCK_BATCHES = 10  # batches of 100 × 1 KiB in a data block: about 1 MiB before compression
TARGET_RATIO = 10.0  # the target: C ≥ 10 × Python on encode and decode of 100-byte records
BACKENDS: tuple[ModuleType, ...] = (_native, _python)
EVENTS = ("view", "click", "search", "add_to_cart", "purchase", "login", "logout")


@dataclass(frozen=True)
class Budget:
    """How long to time each figure: ``repeats`` repeats of at least ``min_repeat_s`` each."""

    repeats: int
    min_repeat_s: float


FULL = Budget(repeats=7, min_repeat_s=0.1)
QUICK = Budget(repeats=3, min_repeat_s=0.05)


@dataclass(frozen=True)
class Workload:
    name: str
    value_size: int
    batch_records: int


WORKLOADS = (
    Workload("1 KiB x 100", 1024, 100),
    Workload("100 B x 100", 100, 100),
    Workload("100 B x 1000", 100, 1000),
)


@dataclass(frozen=True)
class Result:
    """One timed operation: the best time of one call, and what one call processes."""

    section: str
    workload: str
    op: str
    backend: str  # "c", "python", or "-" when the backend plays no part
    seconds: float
    nbytes: int
    records: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds


# ---- timing ----


def _run(fn: Callable[[], object], calls: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return time.perf_counter_ns() - start


@contextmanager
def backend(impl: ModuleType) -> Iterator[None]:
    """Run the facade ``streamlib.codec`` on ``impl`` (``_native`` or ``_python``)."""
    saved = codec._impl
    codec._impl = impl
    try:
        yield
    finally:
        codec._impl = saved


def measure_arms(arms: Sequence[tuple[ModuleType, Callable[[], object]]], budget: Budget
                 ) -> list[float]:
    """Seconds per call of each arm's function, run with the facade on the arm's backend.

    Each arm gets a warm-up call, then as many calls a repeat as make a repeat last
    ``budget.min_repeat_s`` (the last calibration run counts as its first repeat); then the
    arms take turns, one repeat each, so that drift in the machine's speed touches them alike.
    The figure is the best repeat."""
    target_ns = budget.min_repeat_s * 1e9
    calls, best = [], []
    gc.collect()
    gc.disable()
    try:
        for impl, fn in arms:
            with backend(impl):
                fn()
                n, elapsed = 1, _run(fn, 1)
                while elapsed < target_ns:
                    n = min(n * 10, int(n * 1.1 * target_ns / max(elapsed, 1)) + 1)
                    elapsed = _run(fn, n)
            calls.append(n)
            best.append(elapsed)
        for _ in range(budget.repeats - 1):
            for i, (impl, fn) in enumerate(arms):
                with backend(impl):
                    best[i] = min(best[i], _run(fn, calls[i]))
    finally:
        gc.enable()
    return [elapsed / n / 1e9 for elapsed, n in zip(best, calls, strict=True)]


def measure(fn: Callable[[], object], budget: Budget) -> float:
    """Seconds per call of ``fn`` on the backend in place."""
    return measure_arms([(codec._impl, fn)], budget)[0]


def measure_backends(fn: Callable[[], object], budget: Budget) -> dict[str, float]:
    """Seconds per call of ``fn`` with the facade on each backend, their repeats interleaved."""
    times = measure_arms([(impl, fn) for impl in BACKENDS], budget)
    return {impl.NAME: t for impl, t in zip(BACKENDS, times, strict=True)}


def require(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"benchmarks/codec.py: the backends disagree: {what}")


# ---- data ----


def vocabulary(rng: random.Random) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
            for _ in range(2048)]


def json_value(rng: random.Random, words: Sequence[str], seq: int, size: int
               ) -> tuple[str, bytes]:
    """(user id, a compact JSON event of exactly ``size`` bytes whose note pads it out)."""
    user = f"u{rng.randrange(100_000):05d}"
    doc = {"seq": seq, "user": user, "event": rng.choice(EVENTS),
           "amount": round(rng.uniform(1, 500), 2), "note": ""}
    room = size - len(json.dumps(doc, separators=(",", ":")))
    if room < 0:
        raise ValueError(f"values of {size} bytes are too small for the JSON shape")
    note = ""
    while len(note) < room:
        note += " ".join(rng.choices(words, k=room // 6 + 1)) + " "
    doc["note"] = note[:room]
    return user, json.dumps(doc, separators=(",", ":")).encode()


def make_records(rng: random.Random, words: Sequence[str], value_size: int, count: int,
                 first_seq: int = 0) -> list[Record]:
    records = []
    for seq in range(first_seq, first_seq + count):
        user, value = json_value(rng, words, seq, value_size)
        records.append(Record(value, key=user.encode() if seq % 2 else None))
    return records


def make_batches(rng: random.Random, words: Sequence[str], workload: Workload, count: int
                 ) -> list[RecordBatch]:
    """``count`` distinct batches of ``workload``, contiguous in offset from 0."""
    n = workload.batch_records
    return [RecordBatch.from_records(make_records(rng, words, workload.value_size, n, i * n),
                                     timestamp=TIMESTAMP).with_offset(i * n)
            for i in range(count)]


# ---- the measurements ----


def bench_memcpy(budget: Budget) -> list[Result]:
    """Copies into an existing bytearray of 1 MiB (in cache, like the codec's working sets: the
    reference) and of 64 MiB (out of cache: memory bandwidth), and a new bytes of 64 MiB."""
    results = []
    for size in (MIB, 64 * MIB):
        src = memoryview(bytes(range(256)) * (size // 256))  # not zeros: no shared zero pages
        dst = bytearray(size)

        def copy_into(dst: bytearray = dst, src: memoryview = src) -> None:
            dst[:] = src

        results.append(Result("memcpy", f"{size // MIB} MiB", "copy into a bytearray", "-",
                              measure(copy_into, budget), size, 0))
    results.append(Result("memcpy", "64 MiB", "bytes(memoryview(buf))", "-",
                          measure(lambda: bytes(src), budget), len(src), 0))
    return results


def bench_records(workload: Workload, records: list[Record], budget: Budget) -> list[Result]:
    n = workload.batch_records
    outputs = {}
    for impl in BACKENDS:
        with backend(impl):
            payload = RecordBatch.from_records(records, timestamp=TIMESTAMP).payload
            index = codec.index_records(payload, n, TIMESTAMP)
            decoded = codec.decode_records(payload, n, TIMESTAMP)
        outputs[impl.NAME] = payload, index, decoded
    (payload, index, decoded), other = outputs["c"], outputs["python"]
    require(payload == other[0], f"{workload.name}: encoded payloads")
    require(index == other[1], f"{workload.name}: indexes")
    expected = [Record(r.value, r.key, timestamp=TIMESTAMP) for r in records]
    require(decoded == other[2] == expected, f"{workload.name}: decoded records")

    ts, base, _top, *columns = codec._columns(records, TIMESTAMP)
    results = []
    for op, fn in (
        ("encode (codec)", lambda: codec._impl.records_encode(n, ts, base, *columns)),
        ("encode from Record objects",
         lambda: RecordBatch.from_records(records, timestamp=TIMESTAMP)),
        ("index (codec)", lambda: codec.index_records(payload, n, TIMESTAMP)),
        ("decode to Record objects", lambda: codec.decode_records(payload, n, TIMESTAMP)),
    ):
        for name, seconds in measure_backends(fn, budget).items():
            results.append(Result("records", workload.name, op, name, seconds, len(payload), n))
    return results


def bench_batches(batches_name: str, batches: list[RecordBatch], budget: Budget
                  ) -> list[Result]:
    outputs = {}
    for impl in BACKENDS:
        with backend(impl):
            buffer = b"".join(codec.encode_batch(STREAM_ID, i * b.count, b)
                              for i, b in enumerate(batches))
            outputs[impl.NAME] = buffer, codec.scan_batches(buffer)
    (buffer, scan), other = outputs["c"], outputs["python"]
    require(buffer == other[0], f"{batches_name}: framed batches")
    require(scan == other[1] and scan.error is None
            and [e.base_offset for e in scan.entries] == [b.base_offset for b in batches],
            f"{batches_name}: scans")

    first = batches[0]
    framed = codec.BATCH_HEADER_SIZE + first.size
    records = sum(b.count for b in batches)
    results = []
    for op, fn, nbytes, count in (
        ("frame one batch (encode_batch)", lambda: codec.encode_batch(STREAM_ID, 0, first),
         framed, first.count),
        (f"scan {len(batches)} batches (scan_batches)", lambda: codec.scan_batches(buffer),
         len(buffer), records),
    ):
        for name, seconds in measure_backends(fn, budget).items():
            results.append(Result("batches", batches_name, op, name, seconds, nbytes, count))
    return results


def bench_blocks(batches: list[RecordBatch], budget: Budget
                 ) -> tuple[list[Result], dict[str, float]]:
    """encode_block and decode_block on the C backend; also {compression: stored/raw sizes}."""
    raw = sum(codec.BATCH_HEADER_SIZE + b.size for b in batches)
    records = sum(b.count for b in batches)
    results, ratios = [], {}
    with backend(_native):
        for compression in ("none", "lz4", "zstd"):
            block = codec.encode_block(STREAM_ID, batches, compression=compression)
            info, decoded = codec.decode_block(block)
            require(decoded == batches and info.compression == compression,
                    f"{compression} block round trip")
            name = "zstd-3" if compression == "zstd" else compression
            ratios[name] = raw / (len(block) - codec.BLOCK_HEADER_SIZE)
            results.append(Result(
                "blocks", name, "encode_block", "c",
                measure(lambda c=compression: codec.encode_block(STREAM_ID, batches,
                                                                 compression=c), budget),
                raw, records))
            results.append(Result("blocks", name, "decode_block", "c",
                                  measure(lambda b=block: codec.decode_block(b), budget),
                                  raw, records))
    return results, ratios


def bench_xxh64(rng: random.Random, budget: Budget) -> list[Result]:
    data = rng.randbytes(XXH64_BYTES)
    require(_native.xxh64(data) == _python.xxh64(data), "xxh64")
    times = measure_arms([(impl, lambda f=impl.xxh64: f(data)) for impl in BACKENDS], budget)
    return [Result("xxh64", "1 MiB", "xxh64", impl.NAME, t, XXH64_BYTES, 0)
            for impl, t in zip(BACKENDS, times, strict=True)]


# ---- the report ----


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """Columns padded to width; the first ``left`` columns align left, the others right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def by_backend(results: Sequence[Result]) -> dict[tuple[str, str], dict[str, Result]]:
    pairs: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        pairs.setdefault((r.workload, r.op), {})[r.backend] = r
    return pairs


def paired_table(results: Sequence[Result], memcpy: float) -> str:
    """One row an operation: C and Python side by side, C as a fraction of memcpy, C/Python."""
    rows = []
    last = ""
    for (workload, op), pair in by_backend(results).items():
        c, py = pair["c"], pair["python"]
        rows.append([workload if workload != last else "", op,
                     rate(c.mb_per_s), f"{c.records_per_s / 1e6:.2f}", f"{c.mb_per_s / memcpy:.1%}",
                     rate(py.mb_per_s), f"{py.records_per_s / 1e6:.2f}",
                     f"{py.seconds / c.seconds:.1f}x"])
        last = workload
    return table(["workload", "operation", "C MB/s", "C Mrec/s", "C/memcpy", "Py MB/s",
                  "Py Mrec/s", "C/Py"], rows, left=2)


def ratio_of(results: Sequence[Result], workload: str, op: str) -> float:
    pair = by_backend(results)[workload, op]
    return pair["python"].seconds / pair["c"].seconds


def report_memcpy(results: Sequence[Result]) -> None:
    print("memcpy (the 1 MiB copy stays in cache, as the codec's batches and blocks do: it is the"
          "\nreference for the C/memcpy columns below; 64 MiB goes to memory)")
    print(table(["size", "operation", "MB/s"],
                [[r.workload, r.op, rate(r.mb_per_s)] for r in results], left=2) + "\n")


def report_targets(results: Sequence[Result]) -> list[dict[str, object]]:
    targets = []
    for workload in (w.name for w in WORKLOADS if w.value_size == 100):
        for op in ("encode (codec)", "index (codec)"):
            ratio = ratio_of(results, workload, op)
            targets.append({"workload": workload, "op": op, "ratio": ratio,
                            "met": ratio >= TARGET_RATIO})
    print(f"Target: C >= {TARGET_RATIO:.0f}x Python on 100-byte records, "
          "on the codec's work")
    print(table(["workload", "operation", "C/Py", "target"],
                [[str(t["workload"]), str(t["op"]), f"{t['ratio']:.1f}x",
                  "met" if t["met"] else "NOT met"] for t in targets], left=2) + "\n")
    return targets


def report_blocks(results: Sequence[Result], ratios: dict[str, float], memcpy: float) -> None:
    print(f"3. Data blocks, C backend: {BLOCK_BATCHES} batches of {WORKLOADS[0].name},"
          f" {results[0].nbytes:,} bytes raw; MB/s of raw bytes")
    rows = []
    for name, ratio in ratios.items():
        enc, dec = (r for r in results if r.workload == name)
        rows.append([name, f"{ratio:.2f}", rate(enc.mb_per_s), f"{enc.mb_per_s / memcpy:.1%}",
                     rate(dec.mb_per_s), f"{dec.mb_per_s / memcpy:.1%}"])
    print(table(["compression", "ratio", "encode MB/s", "C/memcpy", "decode MB/s", "C/memcpy"],
                rows, left=1) + "\n")


def report_xxh64(results: Sequence[Result], memcpy: float) -> None:
    c, py = results
    print(f"4. XXH64 of 1 MiB: C {c.mb_per_s / 1000:.2f} GB/s ({c.mb_per_s / memcpy:.0%} of"
          f" memcpy), Python (xxhash package)\n   {py.mb_per_s / 1000:.2f} GB/s,"
          f" C/Py {py.seconds / c.seconds:.2f}x\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a run of about ten seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    started = time.perf_counter()
    rng = random.Random(SEED)
    words = vocabulary(rng)

    print(f"streamlib codec benchmark, {time.strftime('%Y-%m-%d %H:%M')}, Python "
          f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"
          f"{', --quick' if args.quick else ''}")
    print(f"Best of {budget.repeats} repeats of >= {budget.min_repeat_s} s each after a warm-up,"
          " C and Python repeats\ntaking turns, gc disabled in timed loops."
          " MB = 10^6 bytes; Mrec/s = 10^6 records/s;\nC/Py = how many times faster C is.\n")

    memcpy_results = bench_memcpy(budget)
    memcpy = memcpy_results[0].mb_per_s
    report_memcpy(memcpy_results)

    record_results = []
    for workload in WORKLOADS:
        records = make_records(rng, words, workload.value_size, workload.batch_records)
        record_results += bench_records(workload, records, budget)
    print("1. Records: one batch encoded and decoded again and again; MB/s of encoded payload."
          "\n   Values are compact JSON events (seeded); a 6-byte key on every other record;"
          "\n   no headers; no timestamps of their own (they take the batch's)."
          "\n   index = validate every record and locate every field (the codec's work);"
          "\n   decode to Record objects = index + building the Records (shared by both).")
    print(paired_table(record_results, memcpy) + "\n")
    targets = report_targets(record_results)

    batch_sets = {w.name: make_batches(rng, words, w, SCAN_BATCHES)
                  for w in WORKLOADS if w.batch_records == 100}
    batch_results = []
    for name, batches in batch_sets.items():
        batch_results += bench_batches(name, batches, budget)
    print("2. Batch framing and scanning (WAL recovery); MB/s of framed bytes, checksums included")
    print(paired_table(batch_results, memcpy) + "\n")

    block_results, compression_ratios = bench_blocks(
        batch_sets[WORKLOADS[0].name][:BLOCK_BATCHES], budget)
    report_blocks(block_results, compression_ratios, memcpy)

    xxh_results = bench_xxh64(rng, budget)
    report_xxh64(xxh_results, memcpy)

    elapsed = time.perf_counter() - started
    print(f"Done in {elapsed:.0f} s.")
    if args.json:
        results = [*memcpy_results, *record_results, *batch_results, *block_results,
                   *xxh_results]
        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "budget": asdict(budget),
            "memcpy_mb_per_s": memcpy,
            "results": [{**asdict(r), "mb_per_s": r.mb_per_s, "records_per_s": r.records_per_s,
                         "fraction_of_memcpy": r.mb_per_s / memcpy} for r in results],
            "targets": targets,
            "compression_ratios": compression_ratios,
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
