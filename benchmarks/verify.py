"""How fast ``streamlib verify`` reads and checks a store on ``file://`` (docs/performance.md,
"Tools: `streamlib verify`").

    .venv/bin/python benchmarks/verify.py [--gib 1] [--dir DIR] [--rounds 3] [--compression none]

Builds a store of ``--gib`` GiB of committed data (4 streams, values of 64 KiB of random bytes
in batches of 16, the store's default object and block sizes) under ``--dir`` (default:
``build/``), then runs ``python -m streamlib verify --json`` on it as a subprocess ``--rounds``
times, and ``--deep`` once, printing the wall time and MB/s of each run (1 MB = 10^6 bytes).
The first run may read from the disk, later ones from the page cache; both are shown. The
target (issue 17) is at least 200 MB/s for 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ["STREAMLIB_ALLOW_UNSAFE_NO_FSYNC"] = "1"  # building the store is not what is timed

import streamlib

warnings.simplefilter("ignore", streamlib.ConfigWarning)

ROOT = Path(__file__).resolve().parents[1]
VALUE = 64 * 1024
BATCH = 16


def build(path: Path, gib: float, compression: str) -> int:
    """A store at ``path`` holding about ``gib`` GiB; returns the bytes appended."""
    total = int(gib * (1 << 30))
    appended = 0
    noise = os.urandom(VALUE * BATCH * 4)
    with streamlib.open(str(path), durability="unsafe-no-fsync", compression=compression,
                        wal_bytes="1GiB") as store:
        streams = [store.create_stream(f"s{i}") for i in range(4)]
        i = 0
        while appended < total:
            at = (i * 7919) % (len(noise) - VALUE * BATCH)
            values = [noise[at + j * VALUE:at + (j + 1) * VALUE] for j in range(BATCH)]
            streams[i % len(streams)].append(values)
            appended += VALUE * BATCH
            i += 1
        store.flush()
    return appended


def verify(path: Path, *extra: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "streamlib", "verify", str(path), "--json",
                           *extra], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"verify failed ({done.returncode}): {done.stdout}{done.stderr}")
    answer: dict[str, object] = json.loads(done.stdout)
    return seconds, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--dir", default=str(ROOT / "build"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compression", default="none", choices=("none", "lz4", "zstd"))
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="verify-bench-", dir=args.dir))
    try:
        path = base / "store"
        started = time.perf_counter()
        appended = build(path, args.gib, args.compression)
        print(f"built {appended / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s "
              f"({streamlib.codec.backend} codec, compression {args.compression})")
        for label, extra in [*((f"verify #{n + 1}", ()) for n in range(args.rounds)),
                             ("verify --deep", ("--deep",))]:
            seconds, answer = verify(path, *extra)
            checked = answer["checked"]
            assert isinstance(checked, dict)
            size = int(checked["bytes"])
            print(f"{label:<15} {checked['objects']:>5} objects {size / 1e6:>8.0f} MB "
                  f"{seconds:>6.2f} s wall {size / 1e6 / seconds:>7.0f} MB/s "
                  f"(in verify: {checked['seconds']:.2f} s)")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
