"""Reading a node's WAL from outside, without touching it (docs/wal.md): the file WAL's segments
scanned from its trim position as recovery would scan them, but read-only — no lock, no torn
tail cut off, no new segment — and the object WAL's objects listed. For ``inspect`` (how full
it is, what each stream has not yet uploaded), ``verify`` (damage, records that do not follow
the committed ends) and ``dump`` (records not yet uploaded)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from streamlib.io import ObjectStore
from streamlib.records import RecordBatch
from streamlib.wal import Recovery, WalEntry
from streamlib.wal._format import HEADER_SIZE, ends_at, record_size, scan_run

_SEGMENT = re.compile(r"(\d{20})\.wal")
_SPARE = re.compile(r"\d{20}\.spare")
_OBJECT_KEY = re.compile(r"(\d{20})-(\d{20})-(\d{20})\.wal")


class WalBatch(NamedTuple):
    """One record of the WAL as the tools see it: where it is and what batch it holds (the
    batch itself only for the stream asked for, else None)."""

    position: int
    size: int
    stream_id: int
    epoch: int
    base_offset: int
    record_count: int
    batch: RecordBatch | None


@dataclass(slots=True)
class WalReport:
    """What a WAL holds beyond its trim position."""

    backend: str
    where: str
    trim: int = 0
    end: int = 0
    files: int = 0
    """Segment files (file WAL), or objects (object WAL)."""
    spares: int = 0
    file_bytes: int = 0
    """Bytes of the files or objects on disk (spares included)."""
    records: list[WalBatch] = field(default_factory=list)
    damage: list[tuple[int, int, str]] = field(default_factory=list)
    """``(start, end, reason)``: damaged bytes (recovery would drop them)."""
    torn: tuple[int, int] | None = None
    """A torn tail after the last record (a write in progress, or one a crash cut short:
    nothing in it was acknowledged)."""
    nodes: list[dict[str, int | str]] = field(default_factory=list)
    """The object WAL's nodes: ``node``, ``objects``, ``bytes``, ``trim``."""

    @property
    def held(self) -> int:
        """Bytes between the trim position and the end."""
        return max(0, self.end - self.trim)


def scan_file_wal(path: str, *, keep_stream: int | None = None,
                  progress: Callable[[int], None] | None = None) -> WalReport:
    """The file WAL in directory ``path``, from its trim position to its end. ``keep_stream``:
    keep the batches of that stream. ``progress`` is called with the bytes of each segment
    read. Segments retired while this runs (a node trims) are passed over: what they held was
    trimmed."""
    report = WalReport("file", path)
    report.trim = _read_trim(path)
    names = os.listdir(path)
    segments = sorted((int(m.group(1)), os.path.join(path, name))
                      for name in names if (m := _SEGMENT.fullmatch(name)))
    report.spares = sum(1 for name in names if _SPARE.fullmatch(name))
    report.files = len(segments)
    report.file_bytes = sum(_size(os.path.join(path, name)) for name in names
                            if _SEGMENT.fullmatch(name) or _SPARE.fullmatch(name))
    report.end = report.trim
    recovery = Recovery(_nothing, report.trim)
    for index, (start, segment) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else None
        if following is not None and following <= report.trim:
            continue
        data = _read_segment(segment, max(report.trim - start, 0), start, following)
        if data is None:
            continue
        skip, buf = data
        if progress is not None:
            progress(len(buf))
        entries, valid = scan_run(buf, start + skip, recovery, last=following is None,
                                  groups_from=start, ends=True)
        ended = ends_at(buf, valid, start + skip + valid) or skip + valid >= skip + len(buf)
        for entry in _entries(entries, report.trim, following):
            report.records.append(_batch(entry, keep_stream))
            report.end = max(report.end, entry.position + record_size(entry.record))
        if following is not None and start + skip + valid < following:
            reason = ("missing WAL data between segments" if ended
                      else "damaged end of a segment")
            recovery.drop(max(start + skip + valid, report.trim), following, reason)
        elif following is None and not ended:
            report.torn = (start + skip + valid, start + skip + len(buf))
        report.end = max(report.end, min(start + skip + valid, following or (1 << 63)))
    report.damage = [(d.start, d.end, d.reason) for d in recovery.dropped]
    return report


def _entries(entries: list[WalEntry], trim: int, following: int | None) -> Iterator[WalEntry]:
    for entry in entries:
        if entry.position < trim:
            continue
        if following is not None and entry.position + record_size(entry.record) > following:
            continue  # past the next segment's start: not this segment's
        yield entry


def _batch(entry: WalEntry, keep_stream: int | None) -> WalBatch:
    record = entry.record
    batch = record.batch
    return WalBatch(entry.position, record_size(record), record.stream_id, record.epoch,
                    batch.base_offset or 0, batch.count,
                    batch if record.stream_id == keep_stream else None)


def _read_segment(path: str, skip: int, start: int, following: int | None
                  ) -> tuple[int, bytes] | None:
    """The bytes of a segment from ``skip``: up to the next segment's start (and its end
    marker there), or the whole file for the last; None if it was retired meanwhile."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            skip = min(skip, size)
            stop = size if following is None else min(size, following - start + HEADER_SIZE)
            f.seek(skip)
            return skip, f.read(stop - skip)
    except FileNotFoundError:
        return None


def _read_trim(path: str) -> int:
    try:
        with open(os.path.join(path, "TRIM")) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _nothing(_recovery: Recovery) -> Iterator[WalEntry]:
    return iter(())


def list_object_wal(store: ObjectStore, prefix: str) -> WalReport:
    """The object WAL under ``prefix`` of ``store``: per node, its objects above its trim
    position and their bytes (from the listing and each node's ``TRIM`` object)."""
    report = WalReport("object", f"{store.url}/{prefix}")
    listed = store.list(prefix + "/")
    trims: dict[str, int] = {}
    nodes: dict[str, dict[str, int | str]] = {}
    for info in listed:
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2] == "TRIM":
            try:
                trims[parts[1]] = int(store.get(info.key).decode().strip() or 0)
            except (FileNotFoundError, ValueError):
                trims[parts[1]] = 0
    for info in listed:
        parts = info.key.split("/")
        match = _OBJECT_KEY.fullmatch(parts[-1]) if len(parts) == 4 else None
        if match is None:
            continue
        node = nodes.setdefault(parts[1], {"node": parts[1], "objects": 0, "bytes": 0,
                                           "trim": trims.get(parts[1], 0)})
        report.file_bytes += info.size
        if int(match.group(2)) > trims.get(parts[1], 0):
            node["objects"] = int(node["objects"]) + 1
            node["bytes"] = int(node["bytes"]) + info.size
    report.nodes = [nodes[name] for name in sorted(nodes)]
    report.files = sum(int(n["objects"]) for n in report.nodes)
    report.end = sum(int(n["bytes"]) for n in report.nodes)
    return report


__all__ = ["WalBatch", "WalReport", "list_object_wal", "scan_file_wal"]
