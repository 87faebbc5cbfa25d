"""The manifest's checkpoint (``checkpoint/<version>``): the whole state at one version as
columns of plain values (which JSON parses fast), zstd-compressed; how it is written and what a
reader accepts of it (the state itself: :mod:`streamlib.meta._manifest_state`; the manifest:
:mod:`streamlib.meta.manifest`; the format: docs/shared-stores.md). A checkpoint is bounded in
size before it is parsed, also while decompressing (:data:`MAX_CHECKPOINT_BYTES`), and in
nesting (:data:`CHECKPOINT_DEPTH`); every field is checked as the module docstring of
:mod:`streamlib.meta._manifest_state` says, and anything else raises
:class:`~streamlib.meta._manifest_values.Malformed`.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import operator
from typing import TYPE_CHECKING, Any

import zstandard

from streamlib.errors import StorageUnavailable, describe
from streamlib.meta._manifest_state import (
    CREATED_FORMAT,
    FORMAT,
    ManifestState,
    StreamRecord,
    check_format,
    in_format,
)
from streamlib.meta._manifest_values import (
    Malformed,
    check_ranges,
    column,
    column_kinds,
    first_twice,
    int_column,
    int_field,
    json_list,
    json_object,
    kv_field,
    limit_column,
    node_column,
    node_field,
    parse_json,
    show,
    text_column,
    text_field,
    tier_column,
    tier_field,
)

if TYPE_CHECKING:
    from streamlib.io import ObjectStore

log = logging.getLogger(__name__)

CHECKPOINT_FORMATS = (1, 2, CREATED_FORMAT)
"""The formats of checkpoints this code reads (format 4: one with a ``created_ms`` column,
what it writes when a stream has a creation time; else format 2)."""

MAX_CHECKPOINT_BYTES = 256 << 20
"""The largest checkpoint a reader takes and a writer writes, compressed and decompressed
(bytes): about two million streams and objects (100,000 of each: 12 MiB of JSON). A writer
whose state outgrows it writes no checkpoint (and says so in the log); readers open from an
older one and the deltas after it."""

CHECKPOINT_DEPTH = 3
"""How deep a checkpoint's JSON nests: the checkpoint, a table (streams, objects, nodes, kv,
doomed), a column or an entry."""

_CHECKPOINT = (("format", "version", "next_id", "streams", "objects", "nodes"), ("kv", "doomed"))
_STREAM_COLUMNS = ("id", "name", "epoch", "start", "end", "live")
_STREAM_LATER_COLUMNS = ("owner", "from", "from_epoch", "since", "from_since", "max_age_ms",
                         "max_bytes", "created_ms")
_OBJECT_COLUMNS = ("key", "size", "ranges", "stream", "start", "end", "used")


def read_checkpoint(raw: bytes, version: int) -> ManifestState:
    """The state a checkpoint stored at ``version`` holds."""
    data = json_object(parse_json(_decompress(raw), CHECKPOINT_DEPTH), "checkpoint", *_CHECKPOINT)
    check_format(data, "checkpoint", version, CHECKPOINT_FORMATS)
    return load_state(data)


def encode_checkpoint(state: ManifestState) -> bytes:
    """A checkpoint's stored bytes; ValueError for a state larger than readers take."""
    text = json.dumps(dump_state(state), separators=(",", ":")).encode()
    body = zstandard.ZstdCompressor(level=3).compress(text)  # declares its size: readers use it
    if max(len(text), len(body)) > MAX_CHECKPOINT_BYTES:
        raise ValueError(describe("the state is larger than a checkpoint may be",
                                  bytes=len(text), limit=MAX_CHECKPOINT_BYTES))
    return body


def write_checkpoint(objects: ObjectStore, key: str, state: ManifestState) -> bool:
    """Create the checkpoint of ``state`` at ``key``; whether the version counts as done (True
    also when another writer created it first — the same state — and when the state is too
    large for readers, who read more deltas instead: it is tried again ``checkpoint_every``
    versions on). False: the store did not answer; the next change tries again."""
    try:
        body = encode_checkpoint(state)
    except ValueError as error:
        log.error("manifest checkpoint at version %d not written: %s", state.version, error)
        return True
    try:
        objects.create(key, body)
    except FileExistsError:
        pass
    except (StorageUnavailable, OSError) as error:
        log.warning("could not write the manifest checkpoint at version %d (the next change "
                    "tries again): %r", state.version, error)
        return False
    return True


def _decompress(raw: bytes) -> bytearray:
    """A checkpoint's JSON, never more than :data:`MAX_CHECKPOINT_BYTES` of it: a frame that
    declares a larger size is refused before anything is decompressed. The frame is read in
    pieces, so that what is allocated follows what it really holds, not what it declares (a
    30-byte frame declaring 256 MiB costs nothing), and the declared size must be what came
    out. The window stays within libzstd's default limit, 128 MiB."""
    limit = MAX_CHECKPOINT_BYTES
    if len(raw) > limit:
        raise Malformed(describe("larger than a checkpoint may be", bytes=len(raw), limit=limit))
    try:
        declared = zstandard.frame_content_size(raw)
        if declared > limit:
            raise Malformed(describe("a zstd frame larger than a checkpoint may be",
                                     declared=declared, limit=limit))
        text = bytearray()
        with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            while piece := reader.read(1 << 20):
                text += piece
                if len(text) > limit:
                    raise Malformed(describe("a zstd frame larger than a checkpoint may be",
                                             inflated=f">{limit}", limit=limit))
    except zstandard.ZstdError as error:
        raise Malformed(f"not a zstd frame ({error})") from error
    if declared >= 0 and len(text) != declared:
        raise Malformed(describe("a zstd frame that holds other than it declares",
                                 declared=declared, inflated=len(text)))
    return text


def dump_state(state: ManifestState) -> dict[str, Any]:
    """The checkpoint's JSON; the columns of retentions, creation times and tiers only if any
    is set (creation times: in format 4, else format 2)."""
    streams = list(state.streams.values())
    objects = list(state.objects.items())
    ranges = [r for _, (_, rs) in objects for r in rs]
    stream_columns = {"id": [s.id for s in streams], "name": [s.name for s in streams],
                      "epoch": [s.epoch for s in streams],
                      "start": [s.start for s in streams], "end": [s.end for s in streams],
                      "live": [s.live for s in streams],
                      "owner": [s.owner for s in streams],
                      "from": [s.handover_from for s in streams],
                      "from_epoch": [s.handover_epoch for s in streams],
                      "since": [s.since for s in streams],
                      "from_since": [s.handover_since for s in streams]}
    if any(s.max_age_ms is not None or s.max_bytes is not None for s in streams):
        stream_columns.update(max_age_ms=[s.max_age_ms for s in streams],
                              max_bytes=[s.max_bytes for s in streams])
    created = any(s.created_ms is not None for s in streams)
    if created:
        stream_columns["created_ms"] = [s.created_ms for s in streams]
    object_columns: dict[str, list[Any]] = {
        "key": [key for key, _ in objects], "size": [size for _, (size, _) in objects],
        "ranges": [len(rs) for _, (_, rs) in objects],
        "stream": [r[0] for r in ranges], "start": [r[1] for r in ranges],
        "end": [r[2] for r in ranges], "used": [r[3] for r in ranges]}
    if state.tiers:
        object_columns["tier"] = [state.tiers.get(key, "") for key, _ in objects]
    return {"format": CREATED_FORMAT if created else FORMAT, "version": state.version,
            "next_id": state.next_id,
            "streams": stream_columns, "objects": object_columns,
            "nodes": [[node, epoch, position]
                      for node, (epoch, position) in state.nodes.items()],
            "kv": [[namespace, key, base64.b64encode(value).decode()]
                   for namespace, entries in state.kv.items()
                   for key, value in entries.items()],
            "doomed": [[key, *entry] for key, entry in state.doomed.items()]}

def load_state(data: dict[str, Any]) -> ManifestState:
    """The state a checkpoint's JSON holds, every field checked (:class:`Malformed`)
    (100,000 streams and objects: about 0.1 s; the cyclic garbage collector is paused
    meanwhile, since nothing built here is garbage)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        state = ManifestState()
        data = json_object(data, "checkpoint", *_CHECKPOINT)
        found = data["format"]
        if type(found) is not int or found not in CHECKPOINT_FORMATS:
            raise Malformed(describe("a checkpoint of an unknown format", format=show(found)))
        streams = json_object(data["streams"], "streams", _STREAM_COLUMNS,
                              _STREAM_LATER_COLUMNS)
        objects = json_object(data["objects"], "objects", _OBJECT_COLUMNS, ("tier",))
        for names, what in ((data, "a checkpoint"), (streams, "its streams"),
                            (objects, "its objects")):
            in_format(found, list(names), what)
        next_id = int_field(data["next_id"], "next_id")
        _load_streams(state, streams)
        if next_id <= max(state.streams, default=0):
            raise Malformed(describe("next_id must be past every stream's id",
                                     next_id=next_id, stream=max(state.streams)))
        state.version, state.next_id = int_field(data["version"], "version"), next_id
        _load_objects(state, objects)
        _load_entries(state, json_list(data["nodes"], "nodes"),
                            json_list(data.get("kv", []), "kv"))
        _load_doomed(state, json_list(data.get("doomed", []), "doomed"))
        return state
    finally:
        if paused:
            gc.enable()

def _load_streams(state: ManifestState, s: dict[str, Any]) -> None:
    n = len(column(s, "id", "streams", None))
    (ids, names, epochs, starts, ends, live, owners, was, was_epochs, since, was_since,
     max_age_ms, max_bytes, created_ms) = (column(s, name, "streams", n)
                                           for name in (*_STREAM_COLUMNS,
                                                        *_STREAM_LATER_COLUMNS))
    for values, name in ((ids, "id"), (epochs, "epoch"), (starts, "start"), (ends, "end")):
        int_column(values, f"streams.{name}")
    for values, name in ((was_epochs, "from_epoch"), (since, "since"),
                         (was_since, "from_since"), (created_ms, "created_ms")):
        int_column(values, f"streams.{name}", nullable=True)
    limit_column(max_age_ms, "streams.max_age_ms")
    limit_column(max_bytes, "streams.max_bytes")
    text_column(names, "streams.name", nullable=True)
    column_kinds(live, "streams.live", (bool,))
    node_column(owners, "streams.owner")
    node_column(was, "streams.from")
    state.streams = dict(zip(ids, map(StreamRecord, ids, names, epochs, starts, ends, live,
                                     owners, was, was_epochs, since, was_since, max_age_ms,
                                     max_bytes, created_ms),
                            strict=True))
    if len(state.streams) != n:
        raise Malformed(describe("a stream id appears twice", stream=first_twice(ids)))
    named = [(stream.name, stream.id) for stream in state.streams.values()
             if stream.live and stream.name is not None]
    state.names = dict(named)
    if len(state.names) != len(named):
        raise Malformed(describe("two live streams have one name",
                                 name=show(first_twice([name for name, _ in named]))))

def _load_objects(state: ManifestState, o: dict[str, Any]) -> None:
    m = len(column(o, "key", "objects", None))
    keys, sizes, counts = (column(o, name, "objects", m) for name in ("key", "size",
                                                                       "ranges"))
    r = len(column(o, "stream", "objects", None))
    streams, starts, ends, used = (column(o, name, "objects", r)
                                   for name in ("stream", "start", "end", "used"))
    text_column(keys, "objects.key")
    for values, name in ((sizes, "size"), (counts, "ranges"), (streams, "stream"),
                         (starts, "start"), (ends, "end"), (used, "used")):
        int_column(values, f"objects.{name}")
    if sum(counts) != r:
        raise Malformed(f"{r} ranges, objects claim {sum(counts)}")
    unknown = set(streams) - state.streams.keys()
    if unknown:
        raise Malformed(describe("a range of an unknown stream", stream=min(unknown)))
    ranges = list(zip(streams, starts, ends, used, strict=True))
    if 0 in counts or any(map(operator.ge, starts, ends)):
        i = 0
        for key, size, count in zip(keys, sizes, counts, strict=True):
            check_ranges(key, size, ranges[i:i + count])  # to name the first bad one
            i += count
    objects, by_stream = state.objects, state.by_stream
    i = 0
    for key, size, count in zip(keys, sizes, counts, strict=True):
        held = (ranges[i],) if count == 1 else tuple(ranges[i:i + count])
        i += count
        if held[0][3] > size or count > 1:
            check_ranges(key, size, held)
        objects[key] = (size, held)
        for stream_id, start, end, _ in held:
            found = by_stream.get(stream_id)
            if found is None:
                by_stream[stream_id] = [(start, end, key)]
            else:
                found.append((start, end, key))
    if len(objects) != m:
        raise Malformed(describe("an object key appears twice", key=show(first_twice(keys))))
    for found in by_stream.values():
        if len(found) > 1:
            found.sort()
    if "tier" in o:
        tiers = column(o, "tier", "objects", m)
        tier_column(tiers, "objects.tier")
        state.tiers = {key: tier for key, tier in zip(keys, tiers, strict=True) if tier}

def _load_entries(state: ManifestState, nodes: list[Any], kv: list[Any]) -> None:
    for entry in nodes:
        node, epoch, position = json_list(entry, "a node", (3,))
        node = node_field(node, "node")
        if node in state.nodes:
            raise Malformed(describe("a node appears twice", node=node))
        state.nodes[node] = [int_field(epoch, "node epoch"),
                            int_field(position, "wal_position")]
    for entry in kv:
        namespace, key, value = json_list(entry, "a key-value entry", (3,))
        entries = state.kv.setdefault(text_field(namespace, "namespace"), {})
        if text_field(key, "key") in entries:
            raise Malformed(describe("a key-value entry appears twice",
                                     namespace=namespace, key=key))
        entries[key] = kv_field(value, "value")

def _load_doomed(state: ManifestState, doomed: list[Any]) -> None:
    for entry in doomed:
        key, size, marked, tier = json_list(entry, "a doomed object", (4,))
        if state.known(text_field(key, "doomed key")) is not None:
            raise Malformed(describe("a doomed object is known twice", key=key))
        state.doomed[key] = (int_field(size, "doomed size"),
                            int_field(marked, "doomed marked_at_ms"),
                            tier_field(tier, "doomed tier"))


__all__ = ["CHECKPOINT_DEPTH", "CHECKPOINT_FORMATS", "MAX_CHECKPOINT_BYTES", "dump_state",
           "encode_checkpoint", "load_state", "read_checkpoint", "write_checkpoint"]
