"""The fuzz loop: mutated seeds into each target, and three bounds on every call.

- **Exceptions**: only those the target's decoder documents (``Target.allowed``); anything
  else — an IndexError, a struct.error, a bare ValueError for bytes, an assertion of the target
  — is a violation.
- **Time**: at most :data:`SLOW_SECONDS` of CPU time (``time.process_time``, so that a busy
  machine does not fail the run) for an input of at most 1 MiB. A call that runs far longer
  (:data:`HANG_SECONDS` of CPU) is stopped by a watchdog, which saves the input and ends the
  process.
- **Memory**: at most ``Target.memory_limit`` (64 MiB) allocated during the call: the peak
  traced by ``tracemalloc`` with the pure-Python codec; with the C codec, also the peak resident
  set (Linux's VmHWM, reset before each call), which sees what C allocates and touches. Each
  backend runs in a process of its own (``--backend both`` starts them), so the measure is
  that process's.

A violation's input is saved under ``--failures`` and replayed with ``--replay FILE --targets
NAME``. Run as ``python -m fuzz`` with ``tests`` on the path (``make fuzz`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported at run time only once the backend is chosen (it imports streamlib)
    from fuzz.targets import Target

SLOW_SECONDS = 1.0
HANG_SECONDS = 30.0
MAX_INPUT = 1 << 20
MiB = 1 << 20
_CLEAR_REFS = "/proc/self/clear_refs"


class Meter:
    """The peak memory of one call: traced by tracemalloc (what Python allocates, touched or
    not), or the peak resident set (what anything allocates and touches, C included), or the
    larger of the two."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.traced = kind in ("traced", "both")
        self.rss = kind in ("rss", "both")
        self._traced_base = self._rss_base = 0
        if self.rss and not os.path.exists(_CLEAR_REFS):
            raise SystemExit(f"--memory {kind} needs Linux's {_CLEAR_REFS} (use traced)")
        if self.traced:
            tracemalloc.start()

    @staticmethod
    def _status(field: bytes) -> int:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field!r} in /proc/self/status")

    def start(self) -> None:
        if self.traced:
            tracemalloc.reset_peak()
            self._traced_base = tracemalloc.get_traced_memory()[0]
        if self.rss:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")  # the peak resident set (VmHWM) is now the current one
            self._rss_base = self._status(b"VmRSS:")

    def peak(self) -> int:
        peak = 0
        if self.traced:
            peak = tracemalloc.get_traced_memory()[1] - self._traced_base
        if self.rss:
            peak = max(peak, self._status(b"VmHWM:") - self._rss_base)
        return peak


@dataclass
class Violation:
    target: str
    kind: str  # "raised", "slow", "memory", "hang"
    detail: str
    input: str  # the saved input's path


@dataclass
class Tally:
    """What one target saw."""

    seeds: int = 0
    inputs: int = 0
    """Seeds included."""
    decoded: int = 0
    refused: int = 0
    slowest: float = 0.0
    most_memory: int = 0
    largest: int = 0
    violations: list[Violation] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)
    """Inputs that hit each known issue (``fuzz.targets.KNOWN``)."""


class Watchdog:
    """Ends the process if one call runs :data:`HANG_SECONDS` of CPU time, saving its input
    first (a hang returns no answer for the loop to judge)."""

    def __init__(self, failures: str) -> None:
        self.failures = failures
        self.current: tuple[Target, bytes, float] | None = None
        thread = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)
        thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            current = self.current
            if current is not None and time.process_time() - current[2] > HANG_SECONDS:
                target, data, _ = current
                path = save(self.failures, target.name, data)
                print(f"HANG: {target.name} ran {HANG_SECONDS:.0f} s of CPU on {len(data)} "
                      f"bytes; input saved: {path}", flush=True)
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)


def save(failures: str, name: str, data: bytes) -> str:
    os.makedirs(failures, exist_ok=True)
    path = os.path.join(failures, f"{name}-{hashlib.sha1(data).hexdigest()[:16]}.bin")
    with open(path, "wb") as f:
        f.write(data)
    return path


def untraced_cpu(target: Target, data: bytes) -> float:
    """The CPU time of the call again, with tracemalloc paused: the time bound is on the
    decoder, not on tracing every allocation it makes."""
    tracemalloc.stop()
    try:
        began = time.process_time()
        with contextlib.suppress(Exception):
            target.decode(data)
        return time.process_time() - began
    finally:
        tracemalloc.start()


def check(target: Target, data: bytes, meter: Meter, tally: Tally, watchdog: Watchdog | None,
          failures: str) -> Violation | None:
    """One call of ``target`` on ``data``, judged."""
    problem: tuple[str, str] | None = None
    meter.start()
    began = time.process_time()
    if watchdog is not None:
        watchdog.current = (target, data, began)
    try:
        target.decode(data)
        tally.decoded += 1
    except target.allowed:
        tally.refused += 1
    except Exception as e:  # anything else is what the fuzzing looks for
        known = target.known_issue(e)
        if known is not None:
            tally.known[known.what] = tally.known.get(known.what, 0) + 1
        else:
            problem = ("raised", "".join(traceback.format_exception(e)[-6:]).rstrip())
    cpu = time.process_time() - began
    peak = meter.peak()
    if cpu > SLOW_SECONDS and meter.traced and problem is None:
        cpu = untraced_cpu(target, data)  # tracing can make small allocations 10 times slower
    if watchdog is not None:
        watchdog.current = None
    tally.inputs += 1
    tally.slowest = max(tally.slowest, cpu)
    tally.most_memory = max(tally.most_memory, peak)
    tally.largest = max(tally.largest, len(data))
    if problem is None and cpu > SLOW_SECONDS and len(data) <= MAX_INPUT:
        problem = ("slow", f"{cpu:.2f} s of CPU on {len(data)} bytes")
    if problem is None and peak > target.memory_limit:
        problem = ("memory", f"{peak / MiB:.1f} MiB ({meter.kind}) on {len(data)} bytes, "
                             f"limit {target.memory_limit / MiB:.0f} MiB")
    if problem is None:
        return None
    violation = Violation(target.name, problem[0], problem[1], save(failures, target.name, data))
    tally.violations.append(violation)
    return violation


def fuzz_target(target: Target, rng: random.Random, seconds: float | None, inputs: int | None,
                meter: Meter, watchdog: Watchdog | None, failures: str) -> Tally:
    """Seeds first (each must decode: they are what streamlib writes), then mutations of them
    until ``seconds`` pass or ``inputs`` are tried."""
    tally = Tally()
    seeds = target.seeds(random.Random(rng.random()))
    tally.seeds = len(seeds)
    for seed in seeds:
        violation = check(target, seed, meter, tally, watchdog, failures)
        if violation is None and tally.decoded != tally.inputs:
            violation = Violation(target.name, "seed", "a valid input was refused",
                                  save(failures, target.name, seed))
            tally.violations.append(violation)
        if violation is not None:
            return tally
    deadline = None if seconds is None else time.monotonic() + seconds
    pool = list(seeds)
    while (deadline is None or time.monotonic() < deadline) and (
            inputs is None or tally.inputs < inputs):
        data = target.mutate(rng, rng.choice(pool), pool)
        if check(target, data, meter, tally, watchdog, failures) is not None:
            if len(tally.violations) >= 5:
                break
        elif rng.random() < 0.05 and len(pool) < 256:
            pool.append(data)  # mutants mutated again reach further from the seeds
    return tally


def select(names: Sequence[str]) -> list[Target]:
    from fuzz.targets import TARGETS

    if not names:
        return list(TARGETS)
    chosen = [t for t in TARGETS if t.name in names or t.group in names]
    unknown = set(names) - {t.name for t in chosen} - {t.group for t in chosen}
    if unknown:
        raise SystemExit(f"unknown targets: {sorted(unknown)}; known: "
                         f"{[t.name for t in TARGETS]} and their groups")
    return chosen


def run(args: argparse.Namespace) -> int:
    """Fuzz in this process, with the backend the environment chose."""
    from streamlib import codec

    if os.environ.get("SANITIZED_CODEC") == "1":  # make asan: the sanitized build must be the one
        from streamlib.codec import _segment_codec

        if "build/asan" not in _segment_codec.__file__:
            raise SystemExit(f"the sanitized codec is not the one loaded: "
                             f"{_segment_codec.__file__}")
    targets = select(args.targets)
    memory = args.memory or ("both" if codec.backend == "c" else "traced")
    meter = Meter(memory)
    watchdog = Watchdog(args.failures)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    share = None if args.seconds is None else args.seconds / len(targets)
    report: dict[str, Any] = {}
    print(f"fuzz: backend {codec.backend}, memory measured by {memory}, seed {seed}, "
          f"{args.seconds if args.seconds is not None else '-'} s, "
          f"{args.inputs if args.inputs is not None else '-'} inputs a target", flush=True)
    for target in targets:
        rng = random.Random(f"{seed}:{target.name}")
        tally = fuzz_target(target, rng, share, args.inputs, meter, watchdog, args.failures)
        report[target.name] = {
            "seeds": tally.seeds, "inputs": tally.inputs, "decoded": tally.decoded,
            "refused": tally.refused,
            "slowest": tally.slowest, "most_memory": tally.most_memory,
            "largest": tally.largest, "known": tally.known,
            "violations": [vars(v) for v in tally.violations]}
        print(f"  {target.name:20} {tally.inputs:8,} inputs  {tally.decoded:7,} decoded  "
              f"slowest {tally.slowest * 1000:6.1f} ms  most memory "
              f"{tally.most_memory / MiB:7.2f} MiB  largest {tally.largest / 1024:6.0f} KiB  "
              f"{len(tally.violations)} violations", flush=True)
        for what, count in tally.known.items():
            print(f"    known issue, {count} inputs: {what}", flush=True)
        for v in tally.violations:
            print(f"    {v.kind.upper()}: {v.detail}\n    input: {v.input}\n    replay: "
                  f"python -m fuzz --backend {codec.backend} --replay {v.input} "
                  f"--targets {v.target}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": codec.backend, "seed": seed, "targets": report}, f, indent=1)
    failed = sum(len(r["violations"]) for r in report.values())
    print(f"fuzz: backend {codec.backend}: {sum(r['inputs'] for r in report.values()):,} inputs, "
          f"{failed} violations", flush=True)
    return 1 if failed else 0


def replay(args: argparse.Namespace) -> int:
    targets = select(args.targets)
    if len(targets) != 1:
        raise SystemExit("--replay needs one target (--targets NAME)")
    with open(args.replay, "rb") as f:
        data = f.read()
    target = targets[0]
    meter = Meter(args.memory or "traced")
    tally = Tally()
    violation = check(target, data, meter, tally, None, args.failures)
    outcome = ("refused" if tally.refused else "decoded" if tally.decoded else
               f"known issue: {next(iter(tally.known), 'none')}")
    print(f"{target.name}: {outcome}, {tally.slowest * 1000:.1f} ms of CPU, "
          f"{tally.most_memory / MiB:.2f} MiB")
    if violation is not None:
        print(f"{violation.kind.upper()}: {violation.detail}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("both", "c", "python"), default="both",
                        help="the codec backend; both: one process each, one after the other")
    parser.add_argument("--seconds", type=float, default=None,
                        help="the whole run's time, shared by the backends and the targets")
    parser.add_argument("--inputs", type=int, default=None,
                        help="inputs a target (seeds included); with --seconds, what ends first")
    parser.add_argument("--targets", nargs="*", default=[],
                        help="target names or groups (codec, objects, wal, manifest)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--memory", choices=("traced", "rss", "both"), default=None,
                        help="how memory is measured (default: both with C, traced with Python)")
    parser.add_argument("--failures", default=os.path.join("build", "fuzz-failures"),
                        help="where inputs of violations are saved")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--replay", default=None, help="run one saved input")
    args = parser.parse_args(argv)
    if args.seconds is None and args.inputs is None and args.replay is None:
        args.seconds = 60.0
    if args.backend == "both" and args.replay is None:
        return _both(args)
    pure = {"c": "0", "python": "1"}.get(args.backend)
    if pure is not None:
        os.environ["STREAMLIB_PURE"] = pure  # before anything imports streamlib
    return replay(args) if args.replay is not None else run(args)


def _both(args: argparse.Namespace) -> int:
    """One child process a backend, one after the other, each with half the time."""
    status = 0
    for backend in ("c", "python"):
        command = [sys.executable, "-m", "fuzz", "--backend", backend,
                   "--failures", args.failures, "--targets", *args.targets]
        if args.seconds is not None:
            command += ["--seconds", str(args.seconds / 2)]
        for option in ("inputs", "seed", "memory"):
            if getattr(args, option) is not None:
                command += [f"--{option}", str(getattr(args, option))]
        if args.json:
            command += ["--json", f"{args.json}.{backend}"]
        status |= subprocess.run(command, check=False).returncode
    print("fuzz: " + ("violations found (see above)" if status else "no violations, both backends"))
    return status
