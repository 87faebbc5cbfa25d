"""Crash safety of every WAL backend, for real: a child process appends as fast as it can and
logs each acknowledgement; it is killed with SIGKILL at a random moment; recovery must then
return every acknowledged record, intact and in order, and nothing that was never appended.
Twelve rounds a backend (five on S3), on the same WAL, so recovery after recovery is tested too."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wal_crash_child import expected, open_wal

from streamlib.testing.s3 import S3Bucket

pytestmark = [pytest.mark.slow, pytest.mark.once]

CHILD = Path(__file__).with_name("wal_crash_child.py")
ROUNDS = 12


def read_acklog(path: Path) -> tuple[dict[int, tuple[int, int]], int]:
    """{position: (stream, offset)} of the acknowledged appends, and the last trim logged."""
    acked: dict[int, tuple[int, int]] = {}
    trim = 0
    if not path.exists():
        return acked, trim
    for line in path.read_text().splitlines():
        kind, *fields = line.split()
        if kind == "A" and len(fields) == 3:  # a line cut by the kill is ignored
            stream, offset, position = map(int, fields)
            acked[position] = (stream, offset)
        elif kind == "T" and len(fields) == 1:
            trim = max(trim, int(fields[0]))
    return acked, trim


def kill_child_at_random(spec: str, acklog: Path, seed: int, rng: random.Random,
                         env: dict[str, str] | None) -> None:
    child = subprocess.Popen([sys.executable, str(CHILD), spec, str(acklog), str(seed)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=CHILD.parent, env=env)
    try:
        if seed % 5 == 4:  # now and then, during start-up and recovery
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment to kill it: not a wait
        else:
            line = child.stdout.readline()  # type: ignore[union-attr]  # S3 start-up: ~1 s
            assert line.strip() == "ready", child.stderr.read()  # type: ignore[union-attr]
            time.sleep(rng.uniform(0.02, 0.5))  # a random moment to kill it: not a wait
        assert child.poll() is None, f"child died by itself: {child.stderr.read()}"  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]


def check_recovery(spec: str, acked: dict[int, tuple[int, int]], trim: int) -> int:
    wal = open_wal(spec)  # in this process: the child's S3 variables are set here too
    try:
        recovery = wal.recover()
        entries = recovery.entries()
    finally:
        wal.close()
    assert all("torn" in d.reason or "superseded" in d.reason for d in recovery.dropped), \
        recovery.dropped
    positions = [e.position for e in entries]
    assert positions == sorted(set(positions)), "recovered out of order or twice"
    last: dict[int, int] = {}
    for entry in entries:
        record = entry.record
        assert record == expected(record.stream_id, record.base_offset), "damaged or foreign"
        if record.stream_id in last:  # dense: the child continues each stream after recovery
            assert record.base_offset == last[record.stream_id] + 1
        last[record.stream_id] = record.base_offset
    found = {e.position: (e.record.stream_id, e.record.base_offset) for e in entries}
    lost = {p: so for p, so in acked.items() if p >= trim and found.get(p) != so}
    assert not lost, f"acknowledged records lost: {sorted(lost.items())[:5]}"
    return len(entries)


def crash_rounds(spec: str, tmp_path: Path, env: dict[str, str] | None = None,
                 rounds: int = ROUNDS) -> None:
    rng = random.Random(20261122)
    acked: dict[int, tuple[int, int]] = {}
    trim = 0
    total = 0
    for seed in range(rounds):
        acklog = tmp_path / f"acks-{seed}"
        kill_child_at_random(spec, acklog, seed, rng, env)
        round_acks, round_trim = read_acklog(acklog)
        acked.update(round_acks)
        trim = max(trim, round_trim)
        acked = {p: so for p, so in acked.items() if p >= trim}
        check_recovery(spec, acked, trim)
        total += len(round_acks)
    assert total > 50 * rounds, f"only {total} appends were acknowledged in {rounds} rounds"


def test_file_wal_survives_sigkill(tmp_path: Path) -> None:
    crash_rounds(f"file:{tmp_path / 'wal'}", tmp_path)


def test_block_wal_survives_sigkill(tmp_path: Path) -> None:
    # An 8 MiB ring with 2000 live records of up to 3 KiB: it wraps several times in 12 rounds.
    crash_rounds(f"block:{tmp_path / 'ring'}:{8 << 20}", tmp_path)


def test_buffered_block_wal_survives_sigkill(tmp_path: Path) -> None:
    # Buffered writes + fdatasync, as where O_DIRECT is refused: a kill can tear a group.
    crash_rounds(f"block:{tmp_path / 'ring'}:buffered:{8 << 20}", tmp_path)


def test_object_wal_on_files_survives_sigkill(tmp_path: Path) -> None:
    crash_rounds(f"object:file://{tmp_path / 'bucket'}", tmp_path)


def test_object_wal_on_s3_survives_sigkill(tmp_path: Path, moto_bucket: S3Bucket,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    options = json.dumps(moto_bucket.endpoint.storage_options())
    monkeypatch.setenv("S3_STORAGE_OPTIONS", options)  # for this process's recoveries
    # Five rounds: every recovery GETs hundreds of small objects from the in-process server;
    # the object backend's twelve rounds run on file:// above.
    crash_rounds(f"object:{moto_bucket.url}/wal", tmp_path,
                 {**os.environ, "S3_STORAGE_OPTIONS": options}, rounds=5)
