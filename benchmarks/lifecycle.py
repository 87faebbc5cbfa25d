"""The object lifecycle: what compaction does to the bucket and to a catch-up reader, and what
it costs a concurrent writer, in one run.

    .venv/bin/python benchmarks/lifecycle.py [--quick] [--no-s3] [--mib N] [--json PATH]
                                             [--dir DIR]

The data: batches of 100 records of 1 KiB (the compact JSON events of ``benchmarks/stream.py``),
appended round-robin to 100 streams with 64 appends in flight at 6 MB/s, through a store with
the default settings (file WAL, 1 s upload interval, 8 MiB upload trigger, lz4): ``--mib`` MiB
of record values (default 1024; ``--quick`` 256), each stream holding a hundredth. At that pace
every upload round is one multi-stream object of about 6 MB (3 MB stored): the objects a
steady writer leaves behind.

1. **Objects per GiB** (of record values written) in the bucket before and after
   ``store.compact()``, and a **catch-up read of one stream** (``fetch`` with its default
   ``max_bytes``, 1 MiB) from a freshly reopened store (cold caches) before and after: MB/s of
   record values and GETs per MiB (every GET of the read path, indexes included:
   ``store.stats()["cost"]["read"]``).
2. **A concurrent writer's append latency**: batches of 10 × 1 KiB appended one at a time to a
   stream of their own, each waited for; p50 and p99 with nothing else running, then while
   ``store.compact(bytes_per_s=…)`` runs in another thread at the background pass's default
   rate (``compaction_bytes_per_s``, 64 MB/s), the samples taken while it ran. The objects
   per GiB after (1.) count the objects holding the 100 streams' data (not this writer's).
   Then the control: the same writer while another process, nothing of streamlib's, spends
   the CPU time the compacting thread spent, over as long, in 10 ms cycles (lz4 on memory:
   no I/O, no thread or lock shared with the store): how much any neighbour with that much
   CPU costs a writer on this machine.
3. **Compaction throughput**: bytes of input objects a second, from the report of an
   unthrottled ``store.compact()`` (the one of 4.; on moto, that of 5.).
4. **Peak RSS of a compaction**: a child process opens a store holding the data (the default
   ``cache_bytes``, 256 MiB) and compacts it; its peak RSS during ``compact()`` (``VmHWM``,
   reset just before through ``/proc/self/clear_refs``) against ``cache_bytes`` + 64 MiB, and
   what the compaction added to the RSS the open store had.
5. The same as 1 and 2 with the objects on a local moto server (a process of its own), on a
   quarter of the data (moto keeps every object in its memory).
6. With ``--soak SECONDS`` (and nothing else): 50 streams written at 2 MB/s with 5 tailing
   readers and 2 catch-up readers (reading their stream from its start, again and again)
   under ``cache_bytes`` = 64 MiB, the lifecycle at its defaults; the process's RSS every 5 s:
   it must stay within ``cache_bytes`` plus a constant, flat after the first minutes.

Targets (the issue): after compaction at most 16 objects per GiB; the catch-up read at least
2× the MB/s of before and at most 0.05 GETs per MiB; the writer's p99 with compaction at most
1.5× without; peak RSS within ``cache_bytes`` + 64 MiB. MB/s = 10^6 bytes a second of record
values unless a line says otherwise. Absolute figures drift by ±40% between runs on the
reference machine: compare within a run. The directory defaults to a temporary one under
``build/``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from stream import BIG, IN_FLIGHT, MB, MIB, RECORD_BYTES, SMALL, Data, percentile

import streamlib
from streamlib.lifecycle.compaction import CompactionReport

STREAMS = 100
LATENCY_SAMPLES = 1500
CACHE_BYTES = 256 * MIB  # the default: what the RSS target is stated against
BACKGROUND_RATE = streamlib.Config().compaction_bytes_per_s  # the background pass's limit
PACE_MB_PER_S = 6
"""How fast 1. and 5. write: with the default 1 s upload interval, rounds of about 6 MB each
(below the 8 MiB upload trigger): the small objects a steady writer leaves, which compaction
is for. The RSS run (4.) writes as fast as it can."""
SOAK_CACHE = 64 * MIB
SOAK_MB_PER_S = 2


def write(store: streamlib.StreamStore, mib: int, data: Data, mb_per_s: float = 0) -> float:
    """``mib`` MiB of record values round-robin into streams s0 … s99, at ``mb_per_s`` (0: as
    fast as the store takes them); returns seconds."""
    streams = [store.create_stream(f"s{i}") for i in range(STREAMS)]
    batches = mib * MIB // (BIG * RECORD_BYTES)
    pending: deque[Future[Any]] = deque()
    start = time.perf_counter()
    interval = BIG * RECORD_BYTES / (mb_per_s * MB) if mb_per_s else 0.0
    for n in range(batches):
        if len(pending) >= IN_FLIGHT:
            pending.popleft().result()
        if interval:
            time.sleep(max(0.0, start + n * interval - time.perf_counter()))
        pending.append(streams[n % STREAMS].append_future(data.big[n % len(data.big)]))
    for future in pending:
        future.result()
    store.flush()
    return time.perf_counter() - start


def bucket(store: streamlib.StreamStore) -> tuple[int, int]:
    """Live objects holding the data streams' records, and their bytes, as the metadata holds
    them (the latency writer's stream left out)."""
    data = {s.id for s in store.streams() if s.name != "latency"}
    objects = [o for o in store.metadata.live_objects(limit=1_000_000)
               if any(r.stream_id in data for r in o.ranges)]
    return len(objects), sum(o.size for o in objects)


def catch_up(directory: Path, options: dict[str, Any], storage: dict[str, Any] | None
             ) -> dict[str, float]:
    """Stream s0 read whole from a store opened now (cold): MB/s and GETs per MiB."""
    with streamlib.open(directory, storage_options=storage, **options) as store:
        store.objects.exists("warm-up")  # a new S3 client's first request: not in the figure
        cost: Any = store.stats()["cost"]
        gets = cost["read"]["gets"]  # the read path's GETs, the indexes' included
        stream = store.open_stream("s0", read_only=True)
        values = 0
        offset = 0
        start = time.perf_counter()
        while offset < stream.next_offset:
            result = stream.fetch(offset)
            values += sum(b.count for b in result) * RECORD_BYTES
            offset = result.next_fetch_offset
        seconds = time.perf_counter() - start
        cost = store.stats()["cost"]
        gets = cost["read"]["gets"] - gets
    return {"mb_per_s": values / seconds / MB, "gets": gets,
            "gets_per_mib": gets * MIB / values, "mib": values / MIB}


def latencies(store: streamlib.StreamStore, data: Data, stop: threading.Event | None,
              samples: int) -> list[float]:
    """Seconds of small appends, one at a time: ``samples`` of them, or (with ``stop``) as
    many as run until it is set."""
    stream = store.open_stream("latency") if "latency" in {s.name for s in store.streams()} \
        else store.create_stream("latency")
    found = []
    i = 0
    while (len(found) < samples) if stop is None else not stop.is_set():
        values = data.small(i)
        i += 1
        start = time.perf_counter()
        stream.append(values)
        found.append(time.perf_counter() - start)
    return found


def compact_with_writer(store: streamlib.StreamStore, data: Data
                        ) -> tuple[CompactionReport, list[float], float]:
    """The report of a compaction at the background rate, the writer's latencies while it
    ran, and the CPU seconds of the compacting thread."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def compact() -> None:
        cpu = time.thread_time()
        try:
            result["report"] = store.compact(bytes_per_s=BACKGROUND_RATE)
        finally:
            result["cpu"] = time.thread_time() - cpu
            done.set()

    thread = threading.Thread(target=compact)
    thread.start()
    samples = latencies(store, data, done, 0)
    thread.join()
    return result["report"], samples, result["cpu"]


NEIGHBOUR = """
import sys, time, lz4.block
duty, seconds = float(sys.argv[1]), float(sys.argv[2])
data = bytes(range(256)) * 4096
end = time.monotonic() + seconds
while time.monotonic() < end:
    cycle = time.monotonic()
    while time.monotonic() - cycle < 0.01 * duty:
        lz4.block.compress(data)
    time.sleep(max(0.0, 0.01 - (time.monotonic() - cycle)))
"""


def neighbour_with_writer(store: streamlib.StreamStore, data: Data, duty: float,
                          seconds: float) -> list[float]:
    """The writer's latencies while another process (nothing of streamlib's) spends ``duty``
    of one core for ``seconds`` compressing memory in 10 ms cycles: the CPU a compaction
    spent, without its I/O, its threads or its GIL. The machine's own floor for the ratio."""
    child = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(duty), str(seconds)])
    done = threading.Event()

    def wait() -> None:
        child.wait()
        done.set()

    thread = threading.Thread(target=wait)
    thread.start()
    samples = latencies(store, data, done, 0)
    thread.join()
    return samples


def quantiles(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": percentile(samples, 0.50) * 1000,
            "p99_ms": percentile(samples, 0.99) * 1000}


def lifecycle_run(directory: Path, mib: int, data: Data, *, storage: dict[str, Any] | None = None,
                  objects_url: str = "", writer: bool = True) -> dict[str, Any]:
    options: dict[str, Any] = {"objects_url": objects_url} if objects_url else {}
    result: dict[str, Any] = {"mib": mib}
    with streamlib.open(directory, storage_options=storage, **options) as store:
        result["write_s"] = write(store, mib, data, PACE_MB_PER_S)
        result["objects_before"], result["bytes_before"] = bucket(store)
    result["read_before"] = catch_up(directory, options, storage)
    with streamlib.open(directory, storage_options=storage, **options) as store:
        if writer:
            result["latency_idle"] = quantiles(latencies(store, data, None, LATENCY_SAMPLES))
            report, samples, cpu = compact_with_writer(store, data)
            result["latency_compacting"] = quantiles(samples)
            result["compaction_cpu_s"] = cpu
            duty = min(1.0, cpu / report.seconds)
            result["neighbour_duty"] = duty
            result["latency_neighbour"] = quantiles(
                neighbour_with_writer(store, data, duty, report.seconds))
        else:
            report = store.compact()
        result["compaction"] = report.as_dict()
        result["objects_after"], result["bytes_after"] = bucket(store)
    result["read_after"] = catch_up(directory, options, storage)
    gib = mib / 1024
    result["objects_per_gib_before"] = result["objects_before"] / gib
    result["objects_per_gib_after"] = result["objects_after"] / gib
    result["compaction_mb_per_s"] = report.bytes_read / report.seconds / MB
    return result


RSS_CHILD = """
import json, sys, streamlib

def status(name):  # kB in /proc/self/status (ru_maxrss would keep the parent's peak: exec)
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024

store = streamlib.open(sys.argv[1])
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the RSS now
report = store.compact()
peak = status("VmHWM")
store.close()
print(json.dumps({"rss_open": before, "rss_peak": peak, "read": report.bytes_read,
                  "written": report.bytes_written, "seconds": report.seconds}))
"""


def rss_run(directory: Path, mib: int, data: Data) -> dict[str, Any]:
    with streamlib.open(directory) as store:
        write(store, mib, data)
    answer = subprocess.run([sys.executable, "-c", RSS_CHILD, str(directory)], check=True,
                            capture_output=True, text=True)
    return json.loads(answer.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def s3_run(directory: Path, mib: int, data: Data) -> dict[str, Any]:
    from streamlib.testing.s3 import MotoServer, fresh_bucket

    server = MotoServer(own_process=True)
    endpoint = server.start()
    try:
        with fresh_bucket(endpoint) as made:
            return lifecycle_run(directory, mib, data, storage=endpoint.storage_options(),
                                 objects_url=f"s3://{made.name}/lifecycle", writer=False)
    finally:
        server.stop()


def rss_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def soak(directory: Path, seconds: float, data: Data, **settings: Any) -> dict[str, Any]:
    """50 streams written at SOAK_MB_PER_S with 5 tailing and 2 catch-up readers, under
    ``cache_bytes`` = 64 MiB, the background lifecycle at its defaults (unless ``settings``
    say otherwise); RSS every 5 s."""
    store = streamlib.open(directory, cache_bytes=SOAK_CACHE, **settings)
    streams = [store.create_stream(f"s{i}") for i in range(50)]
    stop = threading.Event()
    counts = {"appended": 0, "tailed": 0, "caught_up": 0}
    errors: list[str] = []

    def writer() -> None:
        pending: deque[Future[Any]] = deque()
        interval = BIG * RECORD_BYTES / (SOAK_MB_PER_S * MB)
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            if len(pending) >= IN_FLIGHT:
                pending.popleft().result()
            pending.append(streams[n % 50].append_future(data.big[n % len(data.big)]))
            n += 1
            counts["appended"] += 1
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
        for future in pending:
            future.result()

    def tail(i: int) -> None:
        stream = store.open_stream(f"s{i}", read_only=True)
        offset = stream.next_offset
        while not stop.is_set():  # each read ends after 0.5 s without an append
            for batch in stream.read(offset, idle_timeout=0.5):
                counts["tailed"] += batch.count
                offset = batch.next_offset
                if stop.is_set():
                    return

    def catch_up(i: int) -> None:
        stream = store.open_stream(f"s{i}", read_only=True)
        while not stop.is_set():
            offset = stream.start_offset
            while offset < stream.next_offset and not stop.is_set():
                result = stream.fetch(offset)
                counts["caught_up"] += sum(b.count for b in result)
                offset = result.next_fetch_offset

    def guarded(target: Any, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except Exception as error:  # reported: a soak must not hide a failure
                errors.append(repr(error))
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = [guarded(writer)] + [guarded(tail, i) for i in range(5)] + \
        [guarded(catch_up, i) for i in (10, 20)]
    samples = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        samples.append((time.monotonic() - start, rss_now()))
        time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join()
    stats = store.stats()
    store.close()
    half = [rss for t, rss in samples if t >= seconds / 2]
    return {"seconds": seconds, "samples": samples, "counts": counts, "errors": errors,
            "rss_max": max(rss for _, rss in samples), "rss_second_half_min": min(half),
            "rss_second_half_max": max(half), "lifecycle": stats["lifecycle"],
            "cache": stats["cache"]}


def report_soak(result: dict[str, Any]) -> None:
    samples = result["samples"]
    marks = [rss for t, rss in samples if int(t) % 60 < 5]
    print(f"\nsoak: {result['seconds'] / 60:.0f} min, 50 streams at {SOAK_MB_PER_S} MB/s, "
          f"5 tailing and 2 catch-up readers, cache_bytes {SOAK_CACHE // MIB} MiB; "
          f"{result['counts']['appended']} batches appended")
    print("  RSS each minute (MiB): " + " ".join(f"{rss / MIB:.0f}" for rss in marks))
    growth = result["rss_second_half_max"] - result["rss_second_half_min"]
    print(f"  max {result['rss_max'] / MIB:.0f} MiB (cache_bytes + "
          f"{(result['rss_max'] - SOAK_CACHE) / MIB:.0f} MiB); second half between "
          f"{result['rss_second_half_min'] / MIB:.0f} and {result['rss_second_half_max'] / MIB:.0f}"
          f" MiB ({growth / MIB:+.0f} MiB); lifecycle passes "
          f"{result['lifecycle']['passes']}, objects written by compaction "
          f"{result['lifecycle']['compaction']['objects_written']}; errors: "
          f"{result['errors'] or 'none'}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report_run(title: str, run: dict[str, Any]) -> None:
    before, after, compaction = run["read_before"], run["read_after"], run["compaction"]
    print(f"\n{title}: {run['mib']} MiB of record values in {STREAMS} streams "
          f"(written at {PACE_MB_PER_S} MB/s in {run['write_s']:.1f} s)")
    print(f"  objects per GiB: {run['objects_per_gib_before']:.0f} before, "
          f"{run['objects_per_gib_after']:.1f} after compact() "
          f"[target <= 16: {verdict(run['objects_per_gib_after'] <= 16)}]; stored "
          f"{run['bytes_before'] / MIB:.0f} MiB before, {run['bytes_after'] / MIB:.0f} MiB after")
    ratio = after["mb_per_s"] / before["mb_per_s"]
    print(f"  catch-up read of one stream ({before['mib']:.1f} MiB): "
          f"{before['mb_per_s']:.0f} MB/s and {before['gets_per_mib']:.2f} GETs/MiB before; "
          f"{after['mb_per_s']:.0f} MB/s and {after['gets_per_mib']:.2f} GETs/MiB after: "
          f"{ratio:.1f}x [target >= 2x: {verdict(ratio >= 2)}; <= 0.05 GETs/MiB: "
          f"{verdict(after['gets_per_mib'] <= 0.05)}]")
    limited = "at the background rate" if "latency_idle" in run else "unthrottled"
    print(f"  compact() {limited}: {compaction['objects_read']} objects read, "
          f"{compaction['objects_written']} written, {compaction['gets']} GETs, "
          f"{compaction['bytes_read'] / MIB:.0f} MiB in, "
          f"{compaction['bytes_written'] / MIB:.0f} MiB out in {compaction['seconds']:.1f} s: "
          f"{run['compaction_mb_per_s']:.0f} MB/s of input objects")
    if "latency_idle" in run:
        idle, busy = run["latency_idle"], run["latency_compacting"]
        ratio = busy["p99_ms"] / idle["p99_ms"]
        print(f"  a writer's small appends ({SMALL} x 1 KiB): p50 {idle['p50_ms']:.2f} ms, "
              f"p99 {idle['p99_ms']:.2f} ms alone ({idle['n']}); p50 {busy['p50_ms']:.2f} ms, "
              f"p99 {busy['p99_ms']:.2f} ms during the compaction ({busy['n']}): p99 {ratio:.2f}x "
              f"[target <= 1.5x: {verdict(ratio <= 1.5)}]")
        other = run["latency_neighbour"]
        print(f"  the same writer beside another process using the compaction's CPU "
              f"({run['compaction_cpu_s']:.1f} s, {run['neighbour_duty']:.0%} of a core, no I/O): "
              f"p50 {other['p50_ms']:.2f} ms, p99 {other['p99_ms']:.2f} ms "
              f"({other['p99_ms'] / idle['p99_ms']:.2f}x: the machine's floor for that load)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    parser.add_argument("--mib", type=int, default=None, help="MiB of record values")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto run")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--dir", type=Path, help="directory for the stores")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="only the soak (6.), for this long")
    parser.add_argument("--soak-interval-ms", type=int, metavar="MS",
                        help="the soak's compaction_interval_ms (default: the default)")
    args = parser.parse_args()
    mib = args.mib or (256 if args.quick else 1024)
    data = Data(2048)
    root = Path(__file__).resolve().parents[1] / "build"
    root.mkdir(exist_ok=True)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-lifecycle-", dir=root))
    results: dict[str, Any] = {}
    if args.soak:
        try:
            extra = ({"compaction_interval_ms": args.soak_interval_ms}
                     if args.soak_interval_ms else {})
            results["soak"] = soak(directory / "soak", args.soak, data, **extra)
            report_soak(results["soak"])
        finally:
            if not args.dir:
                shutil.rmtree(directory, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
    try:
        results["file"] = lifecycle_run(directory / "file", mib, data)
        report_run("file:// (local objects)", results["file"])
        rss = results["rss"] = rss_run(directory / "rss", mib, data)
        limit = CACHE_BYTES + 64 * MIB
        print(f"\nunthrottled compact() of file:// objects: {rss['read'] / MIB:.0f} MiB in "
              f"{rss['seconds']:.1f} s: {rss['read'] / rss['seconds'] / MB:.0f} MB/s of input")
        print(f"peak RSS compacting {rss['read'] / MIB:.0f} MiB of objects (child process): "
              f"{rss['rss_peak'] / MIB:.0f} MiB, {rss['rss_open'] / MIB:.0f} MiB before "
              f"compact() (+{(rss['rss_peak'] - rss['rss_open']) / MIB:.0f} MiB) "
              f"[target <= cache_bytes + 64 MiB = {limit / MIB:.0f} MiB: "
              f"{verdict(rss['rss_peak'] <= limit)}]")
        if not args.no_s3:
            results["moto"] = s3_run(directory / "moto", max(mib // 4, 64), data)
            report_run("moto (S3, own process)", results["moto"])
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"\nthis process's peak RSS: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
