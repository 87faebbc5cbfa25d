"""``streamlib inspect``: what a store holds — its streams, its objects, its WAL, its manifest
(docs/guide.md, "Operating"). Plain data out (:func:`inspect_store`), text by
:func:`describe_store`; nothing is written."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

from streamlib.lifecycle.compaction import object_kind
from streamlib.meta import ObjectMeta
from streamlib.tools.opening import MANIFEST_PREFIX, OBJECT_WAL_PREFIX, OpenedStore
from streamlib.tools.walscan import WalReport, list_object_wal, scan_file_wal

KiB = 1024
MiB = KiB * KiB
HISTOGRAM = (64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB)
"""Upper bounds (exclusive) of the object size histogram's buckets; one more holds the rest."""
PAGE = 1000


def live_objects(store: OpenedStore) -> Iterator[ObjectMeta]:
    """Every live object with its ranges, in key order, a page at a time."""
    after: str | None = None
    while True:
        page = store.meta.live_objects(after, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].key


def read_wal(store: OpenedStore, *, keep_stream: int | None = None,
             progress: Callable[[int], None] | None = None) -> WalReport | None:
    """The store's WAL as :mod:`~streamlib.tools.walscan` reads it; None when there is none
    to read here (a block ring is not read: only its place is shown)."""
    places = store.places
    if places.wal == "file":
        return scan_file_wal(places.wal_where, keep_stream=keep_stream, progress=progress)
    if places.wal == "object" and store.wal_store is not None:
        return list_object_wal(store.wal_store, OBJECT_WAL_PREFIX)
    return None


def inspect_store(store: OpenedStore, *,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """What ``store`` holds, as the JSON shape of docs/guide.md ("Operating")."""
    wal = read_wal(store, progress=progress)
    meta = store.meta
    streams: dict[int, dict[str, Any]] = {
        s.id: {"id": s.id, "name": s.name, "start_offset": s.start_offset,
               "end_offset": s.end_offset, "epoch": s.epoch, "owner": s.owner,
               "created_ms": s.created_ms, "bytes": 0, "objects": 0, "wal_records": 0,
               "wal_end_offset": None}
        for s in meta.streams()}
    objects = _objects_summary(store, streams)
    if wal is not None:
        for record in wal.records:
            shown = streams.get(record.stream_id)
            if shown is None or record.base_offset + record.record_count <= shown["end_offset"]:
                continue  # a destroyed stream's, or committed already
            shown["wal_records"] += 1
            shown["wal_end_offset"] = max(shown["wal_end_offset"] or 0,
                                          record.base_offset + record.record_count)
    return {"store": store.places.store,
            "metadata": _metadata_summary(store),
            "streams": [streams[i] for i in sorted(streams)],
            "objects": objects,
            "wal": _wal_summary(store, wal)}


def _objects_summary(store: OpenedStore, streams: dict[int, dict[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, dict[str, int]] = {}
    tiers: dict[str, dict[str, int]] = {}
    buckets = [0] * (len(HISTOGRAM) + 1)
    count = total = 0
    for obj in live_objects(store):
        count += 1
        total += obj.size
        for table, name in ((kinds, object_kind(obj.key)), (tiers, obj.tier or "objects")):
            entry = table.setdefault(name, {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += obj.size
        buckets[next((i for i, top in enumerate(HISTOGRAM) if obj.size < top),
                     len(HISTOGRAM))] += 1
        for r in obj.ranges:
            shown = streams.get(r.stream_id)
            if shown is not None:
                shown["bytes"] += r.size
                shown["objects"] += 1
    doomed = store.meta.doomed()
    return {"count": count, "bytes": total, "kinds": dict(sorted(kinds.items())),
            "tiers": dict(sorted(tiers.items())),
            "histogram": [{"up_to": top, "count": n}
                          for top, n in zip((*HISTOGRAM, None), buckets, strict=True)],
            "doomed": {"count": len(doomed), "bytes": sum(d.size for d in doomed)}}


def _metadata_summary(store: OpenedStore) -> dict[str, Any]:
    places = store.places
    summary: dict[str, Any] = {"backend": places.metadata, "where": places.metadata_where,
                               "version": None, "manifest": None}
    if store.manifest is not None:
        listed = store.manifest.list(MANIFEST_PREFIX + "/")
        checkpoints = [int(info.key.rpartition("/")[2]) for info in listed
                       if info.key.startswith(f"{MANIFEST_PREFIX}/checkpoint/")
                       and info.key.rpartition("/")[2].isdigit()]
        summary["version"] = store.meta.version
        summary["manifest"] = {"checkpoint": max(checkpoints, default=0),
                               "objects": len(listed),
                               "bytes": sum(info.size for info in listed)}
    return summary


def _wal_summary(store: OpenedStore, wal: WalReport | None) -> dict[str, Any]:
    places = store.places
    summary: dict[str, Any] = {"backend": places.wal or None, "where": places.wal_where,
                               "bytes": None}
    if wal is None:
        return summary
    summary["bytes"] = wal.held
    summary["file_bytes"] = wal.file_bytes
    if wal.backend == "file":
        summary.update(trim=wal.trim, end=wal.end, segments=wal.files, spares=wal.spares,
                       records=len(wal.records), damaged=len(wal.damage),
                       torn_tail=None if wal.torn is None else list(wal.torn))
    else:
        summary.update(objects=wal.files, nodes=wal.nodes)
    return summary


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", MiB * KiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _time(ms: int | None) -> str:
    """Milliseconds since the epoch as UTC to the second (``-``: none; the number itself past
    the year 9999, which a creating node's clock may have been set to)."""
    if ms is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def describe_store(found: dict[str, Any]) -> str:
    """:func:`inspect_store`'s answer as text for people."""
    meta = found["metadata"]
    lines = [f"store {found['store']}", f"metadata: {meta['backend']} at {meta['where']}"]
    if meta["manifest"] is not None:
        m = meta["manifest"]
        lines.append(f"  manifest version {meta['version']}, newest checkpoint "
                     f"{m['checkpoint']}, {m['objects']} objects, {_size(m['bytes'])}")
    streams = found["streams"]
    lines.append(f"streams: {len(streams)}")
    if streams:
        lines.append(f"  {'id':>6} {'name':<20} {'start':>10} {'end':>10} {'bytes':>10} "
                     f"{'objects':>7} {'epoch':>5} {'owner':<8} {'created (UTC)':<19} wal")
    for s in streams:
        wal = (f"{s['wal_records']} records to {s['wal_end_offset']}" if s["wal_records"]
               else "-")
        lines.append(f"  {s['id']:>6} {s['name'] or '-':<20} {s['start_offset']:>10} "
                     f"{s['end_offset']:>10} {_size(s['bytes']):>10} {s['objects']:>7} "
                     f"{s['epoch']:>5} {s['owner'] or '-':<8} {_time(s['created_ms']):<19} "
                     f"{wal}")
    objects = found["objects"]
    lines.append(f"objects: {objects['count']}, {_size(objects['bytes'])}")
    for title, table in (("kind", objects["kinds"]), ("tier", objects["tiers"])):
        for name, entry in table.items():
            lines.append(f"  {title} {name:<10} {entry['count']:>8} {_size(entry['bytes']):>10}")
    low = 0
    for bucket in objects["histogram"]:
        if bucket["count"]:
            top = "" if bucket["up_to"] is None else _size(bucket["up_to"])
            lines.append(f"  size {_size(low) if low else '0'} to {top or 'more'}: "
                         f"{bucket['count']}")
        low = bucket["up_to"] or low
    doomed = objects["doomed"]
    lines.append(f"  doomed (awaiting deletion): {doomed['count']}, {_size(doomed['bytes'])}")
    lines.extend(_describe_wal(found["wal"]))
    return "\n".join(lines)


def _describe_wal(wal: dict[str, Any]) -> list[str]:
    if wal["backend"] is None:
        return ["wal: none found"]
    head = f"wal: {wal['backend']} at {wal['where']}"
    if wal["bytes"] is None:
        return [head + " (not read)"]
    if wal["backend"] == "file":
        lines = [head, f"  {_size(wal['bytes'])} held: positions [{wal['trim']}, "
                       f"{wal['end']}), {wal['records']} records; {wal['segments']} segments, "
                       f"{wal['spares']} spares, {_size(wal['file_bytes'])} on disk"]
        if wal["damaged"]:
            lines.append(f"  {wal['damaged']} damaged ranges (streamlib verify names them)")
        if wal["torn_tail"]:
            lines.append(f"  a torn tail at {wal['torn_tail'][0]} (never acknowledged)")
        return lines
    lines = [head, f"  {_size(wal['bytes'])} held in {wal['objects']} objects"]
    lines.extend(f"  node {n['node']}: {n['objects']} objects, {_size(int(n['bytes']))} above "
                 f"trim {n['trim']}" for n in wal["nodes"])
    return lines


__all__ = ["describe_store", "inspect_store", "live_objects", "object_kind", "read_wal"]
