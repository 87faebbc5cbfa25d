"""A machine crash, simulated: only what was synced survives.

A SIGKILL leaves the page cache intact, so the crash tests cannot notice a missing ``fsync``.
Here the file WAL runs for real, while a recorder (in the spirit of LevelDB's fault-injection
Env) notes what each ``fdatasync``/``fsync`` made durable: a file's bytes at its last sync (by
inode: a recycled segment is renamed, and keeps what it held under its old name), and a
directory's names at its last sync. At a random moment a snapshot keeps exactly that — plus,
for every 512-byte sector of a file that changed since its last sync, the old bytes or the new
ones at random (zeros or nothing past the synced length), as a torn write leaves them — and
recovery on the snapshot must return every record acknowledged before the moment (at or after
the trim position of that moment).

With ``trim`` on, a thread trims the WAL behind the producers as an uploader would, so wholly
trimmed segments become spares and new segments are written over their old records: the test
waits until that happened at least once before the crash.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from waits import wait_for

from streamlib.testing.wal import make_record, recover_all
from streamlib.wal.file import FileWal

SECTOR = 512


class SyncRecorder:
    """Wraps ``os.fdatasync``/``os.fsync`` to record what each sync makes durable."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.lock = threading.Lock()
        self.files: dict[int, bytes] = {}  # inode -> content at its last sync
        self.names: dict[str, int] = {}  # name -> inode, as of the directory's last sync
        self.segment_names: dict[int, set[str]] = {}  # inode -> the segment names it had
        self._fdatasync, self._fsync = os.fdatasync, os.fsync

    @property
    def recycled(self) -> bool:
        """Whether a segment file was ever durably named as two segments."""
        with self.lock:
            return any(len(names) > 1 for names in self.segment_names.values())

    def _record(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not path.startswith(self.root):
            return
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self.names = inodes(path)
            for name, inode in self.names.items():
                if name.endswith(".wal"):
                    self.segment_names.setdefault(inode, set()).add(name)
        else:  # read through the descriptor's own file: a segment is opened write-only
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                self.files[os.fstat(fd).st_ino] = f.read()

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
        now: dict[int, bytes] = {}
        for name in inodes(self.root):
            try:
                with open(os.path.join(self.root, name), "rb") as f:
                    now[os.fstat(f.fileno()).st_ino] = f.read()
            except FileNotFoundError:
                continue  # deleted (or renamed) by a trim meanwhile
        for name, inode in self.names.items():  # a name never made durable is lost
            synced = self.files.get(inode, b"")
            (into / name).write_bytes(torn(synced, now.get(inode, synced), rng))


def inodes(directory: str) -> dict[str, int]:
    """The files of ``directory`` and their inodes, as far as a listing while a trim renames
    and deletes can tell."""
    found = {}
    for name in os.listdir(directory):
        try:
            info = os.stat(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found[name] = info.st_ino
    return found


def torn(synced: bytes, current: bytes, rng: random.Random) -> bytes:
    """A file's bytes after a power loss: each sector written since the last sync holds its old
    or its new bytes; past the synced length, new bytes or zeros, and the file may end anywhere
    between its synced and its current length."""
    length = rng.randrange(min(len(synced), len(current)), max(len(synced), len(current)) + 1)
    out = bytearray(length)
    for at in range(0, length, SECTOR):
        old, new = synced[at:at + SECTOR], current[at:at + SECTOR]
        if old == new or rng.random() < 0.5:
            piece = old if at < len(synced) else bytes(len(new))
        else:
            piece = new
        piece = piece[:length - at].ljust(min(SECTOR, length - at), b"\0")
        out[at:at + len(piece)] = piece
    return bytes(out)


@pytest.mark.parametrize("trim", [False, True], ids=["growing", "recycled"])
@pytest.mark.parametrize("seed", range(6))
def test_file_wal_keeps_what_it_acknowledged_through_a_power_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, trim: bool) -> None:
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

    def trimmer() -> None:
        """Trims behind the producers, keeping the last 40 acknowledged records, as an
        uploader would (pacing, not waiting for anything)."""
        while not stop.wait(0.002):
            with lock:
                positions = sorted(acked)
            if len(positions) > 40:
                wal.trim(positions[-40])

    threads = [threading.Thread(target=producer, args=(s,)) for s in range(3)]
    if trim:
        threads.append(threading.Thread(target=trimmer))
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.05, 0.4))  # the crash comes at a random moment: not a wait
    # ...and only once enough was acknowledged (and, with trims, a segment recycled) for the
    # test to mean anything, however slow the machine
    wait_for(lambda: len(acked) > 20 and (not trim or recorder.recycled), timeout=60,
             what="more than 20 acknowledged appends" + (" and a recycled segment" * trim))
    crash = tmp_path / "after-crash"
    with recorder.lock, lock:  # the moment of the crash: no sync in flight
        trimmed = wal.trim_position
        promised = {p: so for p, so in acked.items() if p >= trimmed}
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
    last: dict[int, int] = {}
    for entry in entries:  # intact, nothing that was never appended, and no stale record:
        assert entry.record == sent[entry.record.stream_id, entry.record.base_offset]
        stream, offset = entry.record.stream_id, entry.record.base_offset
        assert offset > last.get(stream, -1), f"stream {stream}: offset {offset} came back"
        last[stream] = offset  # a stream's records lie in the log in its offsets' order
