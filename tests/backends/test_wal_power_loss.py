"""A machine crash, simulated: only what was synced survives.

A SIGKILL leaves the page cache intact, so the crash tests cannot notice a missing ``fsync``.
Here the file WAL runs for real, while a recorder (in the spirit of LevelDB's fault-injection
Env) notes what each ``fdatasync``/``fsync`` made durable: a file's bytes at its last sync, and
a directory's names at its last sync. At a random moment a snapshot keeps exactly that — plus,
for the unsynced tail of each file, a random part of it with holes, as a torn write leaves it —
and recovery on the snapshot must return every record acknowledged before the moment.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
from waits import wait_for

from streamlib.testing.wal import make_record, recover_all
from streamlib.wal.file import FileWal


class SyncRecorder:
    """Wraps ``os.fdatasync``/``os.fsync`` to record what each sync makes durable."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}  # path -> content at its last sync
        self.names: dict[str, set[str]] = {}  # directory -> names at its last sync
        self._fdatasync, self._fsync = os.fdatasync, os.fsync

    def _path(self, fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def _record(self, fd: int) -> None:
        path = self._path(fd)
        if not path.startswith(self.root):
            return
        if os.path.isdir(path):
            self.names[path] = set(os.listdir(path))
        else:
            with open(path, "rb") as f:
                self.files[path] = f.read()

    def fdatasync(self, fd: int) -> None:
        with self.lock:  # a snapshot never sees a sync half-recorded
            self._fdatasync(fd)
            self._record(fd)

    def fsync(self, fd: int) -> None:
        with self.lock:
            self._fsync(fd)
            self._record(fd)

    def snapshot(self, into: Path, rng: random.Random) -> None:
        """What a machine crash now would leave, written to ``into`` (called under the lock)."""
        into.mkdir()
        durable_names = self.names.get(self.root, set())
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name not in durable_names or os.path.isdir(path):
                continue  # a name never made durable by a directory sync is lost
            with open(path, "rb") as f:
                current = f.read()
            synced = self.files.get(path, b"")
            tail = bytearray(current[len(synced):])
            if tail:  # torn: a random prefix of the unsynced bytes, with a hole or two
                tail = tail[:rng.randrange(len(tail) + 1)]
                for _ in range(rng.randrange(3)):
                    if tail:
                        at = rng.randrange(len(tail))
                        tail[at:at + rng.randrange(1, 4096)] = bytes(
                            len(tail[at:at + rng.randrange(1, 4096)]))
            (into / name).write_bytes(synced + bytes(tail))


@pytest.mark.parametrize("seed", range(6))
def test_file_wal_keeps_what_it_acknowledged_through_a_power_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "wal"
    root.mkdir()
    recorder = SyncRecorder(root)
    monkeypatch.setattr(os, "fdatasync", recorder.fdatasync)
    monkeypatch.setattr(os, "fsync", recorder.fsync)
    wal = FileWal(root, segment_bytes=64 * 1024, linger=0.001)
    recover_all(wal)
    acked: dict[int, tuple[int, int]] = {}
    sent: dict[tuple[int, int], object] = {}  # every record appended, by (stream, offset)
    lock = threading.Lock()
    stop = threading.Event()

    def producer(stream: int) -> None:
        offset = 0
        while not stop.is_set():
            futures = []
            for i in range(8):
                record = make_record(stream, offset + i, size=rng.choice((50, 700, 3000)))
                with lock:
                    sent[stream, offset + i] = record
                futures.append((offset + i, wal.append(record)))
            offset += 8
            for o, future in futures:
                try:
                    position = future.result(timeout=30)
                except Exception:
                    return
                with lock:
                    acked[position] = (stream, o)

    threads = [threading.Thread(target=producer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.05, 0.4))  # the crash comes at a random moment: not a wait
    # ...and only once enough was acknowledged for the test to mean anything (however slow)
    wait_for(lambda: len(acked) > 20, what="more than 20 acknowledged appends")
    crash = tmp_path / "after-crash"
    with recorder.lock, lock:  # the moment of the crash: no sync in flight
        promised = dict(acked)
        recorder.snapshot(crash, rng)
    stop.set()
    for t in threads:
        t.join()
    wal.close()
    assert len(promised) > 20, "too little was acknowledged for the test to mean anything"

    monkeypatch.undo()
    shutil.rmtree(root)
    again = FileWal(crash, segment_bytes=64 * 1024)
    recovery = again.recover()
    entries = recovery.entries()
    again.close()
    found = {e.position: (e.record.stream_id, e.record.base_offset) for e in entries}
    lost = {p: so for p, so in promised.items() if found.get(p) != so}
    assert not lost, f"acknowledged records lost in a power loss: {sorted(lost.items())[:5]}"
    for entry in entries:  # intact, and nothing that was never appended
        assert entry.record == sent[entry.record.stream_id, entry.record.base_offset]
