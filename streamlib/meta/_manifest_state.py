"""The manifest's state at one version, in plain containers: how a delta applies to it, its
checkpoint form, and what a reader accepts of either (the manifest itself:
:mod:`streamlib.meta.manifest`; the format: docs/shared-stores.md).

What a reader accepts is decided here, in one place: a checkpoint or delta is taken only if its
writers could have written it. Its size is bounded before it is parsed (:data:`MAX_DELTA_BYTES`,
:data:`MAX_CHECKPOINT_BYTES`, also while decompressing), its JSON nesting before it is parsed
(:data:`DELTA_DEPTH`, :data:`CHECKPOINT_DEPTH`), and every field's shape, type and range after:
ids, epochs, offsets, sizes and positions are ints in ``[0, 2^63)``; names, keys, namespaces
and put ids as :func:`~streamlib.meta.check_text` takes them; node ids as
:func:`~streamlib.meta.check_node_id` takes them (strs only); key-value values strict base64 of
at most :data:`~streamlib.meta.MAX_KV_VALUE` bytes; lists of the lengths the format writes; no
field missing or unknown (the optional ones are those older writers left out). What a delta
names must be in the state (its streams, the objects it removes) or not (the objects it adds, a
new stream's id and name). Anything else raises :class:`Malformed`, which the manifest reports
as :class:`~streamlib.errors.CorruptDataError` with the object's key; a delta that raises has
changed nothing.
"""

from __future__ import annotations

import base64
import bisect
import gc
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import zstandard

from streamlib.errors import StreamNotFound, describe
from streamlib.meta import (
    MAX_KV_VALUE,
    MAX_NAME_CHARS,
    NodeMeta,
    StreamMeta,
    StreamState,
    check_node_id,
    check_text,
)
from streamlib.records import INT64_MAX

FORMAT = 1
"""The delta and checkpoint format this code reads and writes."""

MAX_DELTA_BYTES = 64 << 20
"""The largest delta (bytes of JSON) a reader parses and a writer writes: a commit of 100,000
ranges is about 4 MiB, a key-value write of the largest value about 1.4 MiB."""

MAX_CHECKPOINT_BYTES = 256 << 20
"""The largest checkpoint a reader takes and a writer writes, compressed and decompressed
(bytes): about two million streams and objects (100,000 of each: 12 MiB of JSON). A writer
whose state outgrows it writes no checkpoint (and says so in the log); readers open from an
older one and the deltas after it."""

DELTA_DEPTH = 6
"""How deep a delta's JSON nests: the delta, its arguments, a commit's objects, an object, its
ranges, a range."""

CHECKPOINT_DEPTH = 3
"""How deep a checkpoint's JSON nests: the checkpoint, a table (streams, objects, nodes, kv),
a column or an entry."""

Range = tuple[int, int, int, int]  # stream id, start offset, end offset, size

_NONE = type(None)
_BASE64_CHARS = 4 * ((MAX_KV_VALUE + 2) // 3)
_ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # operation: (its arguments, those older writers left out)
    "create": (("id", "name"), ()),
    "open": (("id", "epoch"), ("owner", "since", "from")),
    "release": (("node", "streams"), ()),
    "trim": (("id", "offset"), ()),
    "destroy": (("id",), ()),
    "register": (("node", "epoch"), ()),
    "commit": (("node", "wal_position", "objects", "remove"), ()),
    "kv": (("namespace", "key", "value"), ()),
}
OPERATIONS = frozenset(_ARGUMENTS)
"""The operations a delta can hold."""

_ENVELOPE = ("format", "version", "put", "node", "time", "op", "args")
_CHECKPOINT = (("format", "version", "next_id", "streams", "objects", "nodes"), ("kv",))
_STREAM_COLUMNS = ("id", "name", "epoch", "start", "end", "live")
_STREAM_LATER_COLUMNS = ("owner", "from", "from_epoch", "since", "from_since")
_OBJECT_COLUMNS = ("key", "size", "ranges", "stream", "start", "end", "used")


class Malformed(ValueError):
    """A checkpoint or delta its writers could not have written (the message says which field
    and why); the manifest reports it as CorruptDataError naming the object."""


# ---- reading stored objects ----

def read_delta(raw: bytes, version: int) -> dict[str, Any]:
    """The delta stored at ``version``, its envelope checked (its arguments are checked when it
    applies: some checks need the state)."""
    if len(raw) > MAX_DELTA_BYTES:
        raise Malformed(describe("larger than a delta may be", bytes=len(raw),
                                 limit=MAX_DELTA_BYTES))
    delta = _object(_parse(raw, DELTA_DEPTH), "delta", _ENVELOPE)
    _check_format(delta, "delta", version)
    _text(delta["put"], "put")
    if delta["node"] is not None:
        _node(delta["node"], "node")
    _int(delta["time"], "time")
    _operation(delta["op"])  # its arguments: checked as it applies
    return delta


def read_checkpoint(raw: bytes, version: int) -> ManifestState:
    """The state a checkpoint stored at ``version`` holds."""
    data = _object(_parse(_decompress(raw), CHECKPOINT_DEPTH), "checkpoint", *_CHECKPOINT)
    _check_format(data, "checkpoint", version)
    return ManifestState.load(data)


def encode_delta(delta: dict[str, Any]) -> bytes:
    """A delta's stored bytes; ValueError for one larger than readers take (the change is
    refused before anything is written)."""
    body = json.dumps(delta, separators=(",", ":")).encode()
    if len(body) > MAX_DELTA_BYTES:
        raise ValueError(describe("a manifest change is larger than a delta may be",
                                  op=delta["op"], bytes=len(body), limit=MAX_DELTA_BYTES))
    return body


def encode_checkpoint(state: ManifestState) -> bytes:
    """A checkpoint's stored bytes; ValueError for a state larger than readers take."""
    text = json.dumps(state.dump(), separators=(",", ":")).encode()
    body = zstandard.ZstdCompressor(level=3).compress(text)  # declares its size: readers use it
    if max(len(text), len(body)) > MAX_CHECKPOINT_BYTES:
        raise ValueError(describe("the state is larger than a checkpoint may be",
                                  bytes=len(text), limit=MAX_CHECKPOINT_BYTES))
    return body


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


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_BRACKETS = bytes.maketrans(b"{}", b"[]")


def _parse(raw: bytes | bytearray, depth: int) -> Any:
    """JSON of at most ``depth`` levels of nesting (checked before it is parsed)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Malformed(f"not UTF-8 ({error})") from error
    # The brackets outside strings — escapes removed first (``\\`` then ``\"``), then all but
    # quotes and brackets, then what is between quotes. Removing the innermost pairs once per
    # level empties them, in C, if they nest at most ``depth`` deep.
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = raw.translate(None, _NOT_STRUCTURE)
    brackets = b"".join(structure.split(b'"')[::2]).translate(_BRACKETS)
    for _ in range(depth):
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise Malformed(f"JSON nested deeper than this format's {depth} levels, or unbalanced")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise Malformed(f"not JSON ({error})") from error


def _check_format(data: dict[str, Any], what: str, version: int) -> None:
    found, at = data["format"], data["version"]
    if type(found) is not int or found != FORMAT or type(at) is not int or at != version:
        raise Malformed(f"not a {what} of format {FORMAT} at version {version}: "
                        f"format {_show(found)} version {_show(at)}")


def _operation(op: object) -> str:
    if type(op) is not str or op not in OPERATIONS:
        raise Malformed(describe("unknown manifest operation", op=_show(op)))
    return op


# ---- the checks of single values ----

def _show(value: object) -> str:
    """A value as a message shows it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}… ({type(value).__name__})"


def _fail(what: str, value: object) -> NoReturn:
    raise Malformed(describe(what, found=_show(value)))


def _object(value: object, what: str, required: tuple[str, ...] = (),
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object with every field of ``required``, any of ``optional``, and no other."""
    if type(value) is not dict:
        _fail(f"{what} must be a JSON object", value)
    missing = [name for name in required if name not in value]
    if missing:
        raise Malformed(describe(f"{what} lacks a field", field=missing[0]))
    if len(value) > len(required):
        unknown = [name for name in value if name not in required and name not in optional]
        if unknown:
            raise Malformed(describe(f"{what} has an unknown field", field=_show(unknown[0])))
    return value


def _list(value: object, what: str, lengths: tuple[int, ...] | None = None) -> list[Any]:
    if type(value) is not list:
        _fail(f"{what} must be a JSON list", value)
    if lengths is not None and len(value) not in lengths:
        _fail(f"{what} must have {' or '.join(map(str, lengths))} items", value)
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        _fail(f"{what} must be an int in [0, 2^63)", value)
    return value


def _int_or_none(value: object, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _text(value: object, what: str) -> str:
    if type(value) is not str:
        _fail(f"{what} must be a str", value)
    try:
        return check_text(value, what)
    except ValueError as error:
        raise Malformed(str(error)) from None


def _node(value: object, what: str) -> str:
    if type(value) is not str:
        _fail(f"{what} must be a node id (a str)", value)
    try:
        return check_node_id(value)
    except ValueError as error:
        raise Malformed(f"{what}: {error}") from None


def _node_or_none(value: object, what: str) -> str | None:
    return None if value is None else _node(value, what)


def _kv_value(value: object, what: str) -> bytes:
    if type(value) is not str or len(value) > _BASE64_CHARS:
        _fail(f"{what} must be base64 of at most {MAX_KV_VALUE} bytes", value)
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError as error:  # binascii.Error, or a str not of ASCII
        raise Malformed(describe(f"{what} is not base64 ({error})", found=_show(value))) from None
    if len(data) > MAX_KV_VALUE:
        raise Malformed(describe(f"{what} is larger than a key-value value may be",
                                 size=len(data), limit=MAX_KV_VALUE))
    return data


# ---- the checks of a checkpoint's columns (at C speed where the values are many) ----

def _column(table: dict[str, Any], name: str, what: str, length: int | None) -> list[Any]:
    values = _list(table[name] if name in table else [None] * (length or 0), f"{what}.{name}")
    if length is not None and len(values) != length:
        raise Malformed(describe(f"{what} columns of different lengths", column=name,
                                 length=len(values), expected=length))
    return values


def _kinds(values: list[Any], what: str, kinds: tuple[type, ...]) -> bool:
    """Whether ``values`` hold None; Malformed unless every one is of ``kinds`` exactly."""
    found = set(map(type, values))
    if not found <= set(kinds):
        _fail(f"{what} must hold {' or '.join(k.__name__ for k in kinds)}",
              next(v for v in values if type(v) not in kinds))
    return _NONE in found


def _ints(values: list[Any], what: str, nullable: bool = False) -> None:
    if _kinds(values, what, (int, _NONE) if nullable else (int,)):
        values = [v for v in values if v is not None]
    if values and (min(values) < 0 or max(values) > INT64_MAX):
        for value in values:
            _int(value, what)


def _texts(values: list[Any], what: str, nullable: bool = False) -> None:
    if _kinds(values, what, (str, _NONE) if nullable else (str,)):
        values = [v for v in values if v is not None]
    if not values:
        return
    joined = "".join(values)
    try:
        joined.encode("utf-8")
        fine = (min(map(len, values)) > 0 and max(map(len, values)) <= MAX_NAME_CHARS
                and "\x00" not in joined)
    except UnicodeEncodeError:
        fine = False
    if not fine:
        for value in values:
            _text(value, what)


def _nodes(values: list[Any], what: str) -> None:
    """Node ids or None (checked once per distinct value: a few nodes own many streams)."""
    _kinds(values, what, (str, _NONE))
    for value in set(values) - {None}:
        _node(value, what)


@dataclass(slots=True)
class StreamRecord:
    """One stream as the manifest keeps it (:class:`~streamlib.meta.StreamMeta` on demand)."""

    id: int
    name: str | None
    epoch: int
    start: int
    end: int
    live: bool = True
    owner: str | None = None
    handover_from: str | None = None
    handover_epoch: int | None = None
    since: int | None = None  # the epoch at which the owner became the owner
    handover_since: int | None = None

    def meta(self) -> StreamMeta:
        return StreamMeta(self.id, self.name, self.epoch, self.start, self.end,
                          StreamState.OPEN if self.live else StreamState.DESTROYED,
                          self.owner, self.handover_from, self.handover_epoch, self.since,
                          self.handover_since)


class ManifestState:
    """The metadata at one version, in plain containers (building 100,000 value objects at
    open would cost more than reading the checkpoint). Not thread-safe: its manifest's lock
    guards it (:mod:`streamlib.meta.manifest`)."""

    def __init__(self) -> None:
        self.version = 0
        self.next_id = 1
        self.streams: dict[int, StreamRecord] = {}
        self.names: dict[str, int] = {}  # live streams only
        self.objects: dict[str, tuple[int, tuple[Range, ...]]] = {}
        self.by_stream: dict[int, list[tuple[int, int, str]]] = {}  # (start, end, key), sorted
        self.nodes: dict[str, list[int]] = {}  # node id -> [node epoch, WAL position]
        self.kv: dict[str, dict[str, bytes]] = {}  # namespace -> key -> value

    # ---- reading ----

    def live(self, stream_id: int) -> StreamRecord:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamNotFound(describe("no such stream", stream=stream_id))
        if not stream.live:
            raise StreamNotFound(describe("stream was destroyed", stream=stream_id))
        return stream

    def node(self, node_id: str) -> NodeMeta:
        epoch, position = self.nodes.get(node_id, (0, 0))
        return NodeMeta(node_id, epoch, position)

    # ---- applying a delta ----

    def apply(self, op: str, args: dict[str, Any]) -> None:
        """Apply a delta's operation whole, or raise :class:`Malformed` having changed nothing:
        its arguments — their shape, types and ranges, and what they name in the state — are
        all checked before the first change."""
        required, optional = _ARGUMENTS[_operation(op)]
        args = _object(args, f"{op} arguments", required, optional)
        if op == "create":
            self._create(args)
        elif op == "open":
            self._open(args)
        elif op == "release":
            node = _node(args["node"], "node")
            for stream in [self._stream(s) for s in _list(args["streams"], "streams")]:
                if stream.handover_from == node:
                    stream.handover_from = stream.handover_epoch = stream.handover_since = None
                if stream.owner == node:
                    stream.owner = stream.since = None
        elif op == "trim":
            stream, offset = self._stream(args["id"]), _int(args["offset"], "offset")
            stream.start = offset
        elif op == "destroy":
            stream = self._stream(args["id"])
            stream.live = False
            if stream.name is not None and self.names.get(stream.name) == stream.id:
                del self.names[stream.name]
        elif op == "register":
            node, epoch = _node(args["node"], "node"), _int(args["epoch"], "epoch")
            self.nodes[node] = [epoch, self.node(node).wal_position]
        elif op == "commit":
            self._commit(args)
        else:  # kv
            namespace, key = _text(args["namespace"], "namespace"), _text(args["key"], "key")
            value = None if args["value"] is None else _kv_value(args["value"], "value")
            entries = self.kv.setdefault(namespace, {})
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value

    def _stream(self, stream_id: object) -> StreamRecord:
        """The stream a delta names (destroyed or not: the writer checked that)."""
        stream = self.streams.get(_int(stream_id, "stream id"))
        if stream is None:
            raise Malformed(describe("a delta names an unknown stream", stream=stream_id))
        return stream

    def _create(self, args: dict[str, Any]) -> None:
        stream_id = _int(args["id"], "id")
        if not self.next_id <= stream_id < INT64_MAX:
            raise Malformed(describe("a new stream's id must be past every stream's",
                                     id=stream_id, next_id=self.next_id))
        name = None if args["name"] is None else _text(args["name"], "name")
        if name is not None and name in self.names:
            raise Malformed(describe("a live stream already has this name", name=_show(name),
                                     stream=self.names[name]))
        self.streams[stream_id] = StreamRecord(stream_id, name, 0, 0, 0)
        if name is not None:
            self.names[name] = stream_id
        self.next_id = stream_id + 1

    def _open(self, args: dict[str, Any]) -> None:
        stream, epoch = self._stream(args["id"]), _int(args["epoch"], "epoch")
        owner = _node_or_none(args.get("owner"), "owner")
        since = _int_or_none(args.get("since"), "since")
        handover: tuple[str | None, int | None, int | None] = (None, None, None)
        if args.get("from") is not None:  # [node, epoch, since]; older writers: no since
            was = _list(args["from"], "from", (2, 3))
            handover = (_node(was[0], "from node"), _int_or_none(was[1], "from epoch"),
                        _int_or_none(was[2], "from since") if len(was) == 3 else None)
        stream.epoch, stream.owner, stream.since = epoch, owner, since
        stream.handover_from, stream.handover_epoch, stream.handover_since = handover

    def _commit(self, args: dict[str, Any]) -> None:
        node, position = _node(args["node"], "node"), _int(args["wal_position"], "wal_position")
        objects = [self._new_object(entry) for entry in _list(args["objects"], "objects")]
        remove = [_text(key, "remove key") for key in _list(args["remove"], "remove")]
        added = set()
        for key, _, _ in objects:  # everything checked before anything changes
            if key in self.objects or key in added:
                raise Malformed(describe("an object is committed twice", key=key))
            added.add(key)
        if len(set(remove)) != len(remove) or added & set(remove):
            raise Malformed(describe("an object is removed twice, or added and removed",
                                     remove=_show(remove)))
        missing = [key for key in remove if key not in self.objects]
        if missing:
            raise Malformed(f"object {missing[0]} to remove was never committed")
        for key, size, ranges in objects:
            self.objects[key] = (size, ranges)
            for stream_id, start, end, _ in ranges:  # usually at the end: insort is cheap
                bisect.insort(self.by_stream.setdefault(stream_id, []), (start, end, key))
                self.streams[stream_id].end = max(self.streams[stream_id].end, end)
        for key in remove:
            _, ranges = self.objects.pop(key)
            for stream_id, start, end, _ in ranges:
                self.by_stream[stream_id].remove((start, end, key))
        self.nodes[node] = [self.node(node).node_epoch, position]

    def _new_object(self, entry: object) -> tuple[str, int, tuple[Range, ...]]:
        """A committed object as a delta gives it, ``[key, size, [[stream, start, end, size],
        …]]``: ranges of known streams, one per stream, none empty, within the object's size."""
        key, size, given = _list(entry, "an object", (3,))
        key, size = _text(key, "object key"), _int(size, "object size")
        ranges = []
        for item in _list(given, "an object's ranges"):
            stream_id, start, end, used = (_int(v, "a range's stream, offsets or size")
                                           for v in _list(item, "a range", (4,)))
            self._stream(stream_id)
            ranges.append((stream_id, start, end, used))
        _check_ranges(key, size, ranges)
        return key, size, tuple(ranges)

    # ---- the checkpoint form: columns of plain values, which JSON parses fast ----

    def dump(self) -> dict[str, Any]:
        streams = list(self.streams.values())
        objects = list(self.objects.items())
        ranges = [r for _, (_, rs) in objects for r in rs]
        return {"format": FORMAT, "version": self.version, "next_id": self.next_id,
                "streams": {"id": [s.id for s in streams], "name": [s.name for s in streams],
                            "epoch": [s.epoch for s in streams],
                            "start": [s.start for s in streams], "end": [s.end for s in streams],
                            "live": [s.live for s in streams],
                            "owner": [s.owner for s in streams],
                            "from": [s.handover_from for s in streams],
                            "from_epoch": [s.handover_epoch for s in streams],
                            "since": [s.since for s in streams],
                            "from_since": [s.handover_since for s in streams]},
                "objects": {"key": [key for key, _ in objects],
                            "size": [size for _, (size, _) in objects],
                            "ranges": [len(rs) for _, (_, rs) in objects],
                            "stream": [r[0] for r in ranges], "start": [r[1] for r in ranges],
                            "end": [r[2] for r in ranges], "used": [r[3] for r in ranges]},
                "nodes": [[node, epoch, position]
                          for node, (epoch, position) in self.nodes.items()],
                "kv": [[namespace, key, base64.b64encode(value).decode()]
                       for namespace, entries in self.kv.items()
                       for key, value in entries.items()]}

    @classmethod
    def load(cls, data: dict[str, Any]) -> ManifestState:
        """The state a checkpoint's JSON holds, every field checked (:class:`Malformed`)
        (100,000 streams and objects: about 0.1 s; the cyclic garbage collector is paused
        meanwhile, since nothing built here is garbage)."""
        paused = gc.isenabled()
        gc.disable()
        try:
            state = cls()
            data = _object(data, "checkpoint", *_CHECKPOINT)
            next_id = _int(data["next_id"], "next_id")
            state._load_streams(_object(data["streams"], "streams", _STREAM_COLUMNS,
                                        _STREAM_LATER_COLUMNS))
            if next_id <= max(state.streams, default=0):
                raise Malformed(describe("next_id must be past every stream's id",
                                         next_id=next_id, stream=max(state.streams)))
            state.version, state.next_id = _int(data["version"], "version"), next_id
            state._load_objects(_object(data["objects"], "objects", _OBJECT_COLUMNS))
            state._load_entries(_list(data["nodes"], "nodes"), _list(data.get("kv", []), "kv"))
            return state
        finally:
            if paused:
                gc.enable()

    def _load_streams(self, s: dict[str, Any]) -> None:
        n = len(_column(s, "id", "streams", None))
        ids, names, epochs, starts, ends, live, owners, was, was_epochs, since, was_since = (
            _column(s, name, "streams", n) for name in (*_STREAM_COLUMNS,
                                                        *_STREAM_LATER_COLUMNS))
        for values, name in ((ids, "id"), (epochs, "epoch"), (starts, "start"), (ends, "end")):
            _ints(values, f"streams.{name}")
        for values, name in ((was_epochs, "from_epoch"), (since, "since"),
                             (was_since, "from_since")):
            _ints(values, f"streams.{name}", nullable=True)
        _texts(names, "streams.name", nullable=True)
        _kinds(live, "streams.live", (bool,))
        _nodes(owners, "streams.owner")
        _nodes(was, "streams.from")
        self.streams = dict(zip(ids, map(StreamRecord, ids, names, epochs, starts, ends, live,
                                         owners, was, was_epochs, since, was_since),
                                strict=True))
        if len(self.streams) != n:
            raise Malformed(describe("a stream id appears twice", stream=_twice(ids)))
        named = [(stream.name, stream.id) for stream in self.streams.values()
                 if stream.live and stream.name is not None]
        self.names = dict(named)
        if len(self.names) != len(named):
            raise Malformed(describe("two live streams have one name",
                                     name=_show(_twice([name for name, _ in named]))))

    def _load_objects(self, o: dict[str, Any]) -> None:
        m = len(_column(o, "key", "objects", None))
        keys, sizes, counts = (_column(o, name, "objects", m) for name in ("key", "size",
                                                                           "ranges"))
        r = len(_column(o, "stream", "objects", None))
        streams, starts, ends, used = (_column(o, name, "objects", r)
                                       for name in ("stream", "start", "end", "used"))
        _texts(keys, "objects.key")
        for values, name in ((sizes, "size"), (counts, "ranges"), (streams, "stream"),
                             (starts, "start"), (ends, "end"), (used, "used")):
            _ints(values, f"objects.{name}")
        if sum(counts) != r:
            raise Malformed(f"{r} ranges, objects claim {sum(counts)}")
        unknown = set(streams) - self.streams.keys()
        if unknown:
            raise Malformed(describe("a range of an unknown stream", stream=min(unknown)))
        ranges = list(zip(streams, starts, ends, used, strict=True))
        if 0 in counts or any(map(operator.ge, starts, ends)):
            i = 0
            for key, size, count in zip(keys, sizes, counts, strict=True):
                _check_ranges(key, size, ranges[i:i + count])  # to name the first bad one
                i += count
        objects, by_stream = self.objects, self.by_stream
        i = 0
        for key, size, count in zip(keys, sizes, counts, strict=True):
            held = (ranges[i],) if count == 1 else tuple(ranges[i:i + count])
            i += count
            if held[0][3] > size or count > 1:
                _check_ranges(key, size, held)
            objects[key] = (size, held)
            for stream_id, start, end, _ in held:
                found = by_stream.get(stream_id)
                if found is None:
                    by_stream[stream_id] = [(start, end, key)]
                else:
                    found.append((start, end, key))
        if len(objects) != m:
            raise Malformed(describe("an object key appears twice", key=_show(_twice(keys))))
        for found in by_stream.values():
            if len(found) > 1:
                found.sort()

    def _load_entries(self, nodes: list[Any], kv: list[Any]) -> None:
        for entry in nodes:
            node, epoch, position = _list(entry, "a node", (3,))
            node = _node(node, "node")
            if node in self.nodes:
                raise Malformed(describe("a node appears twice", node=node))
            self.nodes[node] = [_int(epoch, "node epoch"), _int(position, "wal_position")]
        for entry in kv:
            namespace, key, value = _list(entry, "a key-value entry", (3,))
            entries = self.kv.setdefault(_text(namespace, "namespace"), {})
            if _text(key, "key") in entries:
                raise Malformed(describe("a key-value entry appears twice",
                                         namespace=namespace, key=key))
            entries[key] = _kv_value(value, "value")


def _check_ranges(key: str, size: int, ranges: Sequence[Range]) -> None:
    """An object's ranges as readers take them (:class:`~streamlib.meta.ObjectMeta`): at least
    one, one per stream, each of at least one record, their sizes within the object's."""
    if not ranges:
        raise Malformed(describe("an object holds no range", key=key))
    if len({r[0] for r in ranges}) != len(ranges):
        raise Malformed(describe("an object holds two ranges of one stream", key=key))
    for stream_id, start, end, _ in ranges:
        if end <= start:
            raise Malformed(describe("a range holds no record", key=key, stream=stream_id,
                                     range=f"[{start}, {end})"))
    used = sum(r[3] for r in ranges)
    if used > size:
        raise Malformed(describe("an object's ranges are larger than the object", key=key,
                                 size=size, ranges=used))


def _twice(values: list[Any]) -> object:
    """The first value that appears twice in ``values``."""
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


__all__ = ["CHECKPOINT_DEPTH", "DELTA_DEPTH", "FORMAT", "MAX_CHECKPOINT_BYTES", "MAX_DELTA_BYTES",
           "OPERATIONS", "Malformed", "ManifestState", "Range", "StreamRecord", "encode_checkpoint",
           "encode_delta", "read_checkpoint", "read_delta"]
