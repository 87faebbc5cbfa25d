"""The manifest's state at one version, in plain containers: how a delta applies to it, its
checkpoint form, and what a reader accepts of either (the manifest itself:
:mod:`streamlib.meta.manifest`; the format: docs/shared-stores.md).

What a reader accepts is decided here and, for single values, in
:mod:`streamlib.meta._manifest_values`: a checkpoint or delta is taken only if its writers could
have written it. Its size is bounded before it is parsed (:data:`MAX_DELTA_BYTES`,
:data:`MAX_CHECKPOINT_BYTES`, also while decompressing), its JSON nesting before it is parsed
(:data:`DELTA_DEPTH`, :data:`CHECKPOINT_DEPTH`), and every field's shape, type and range after:
ids, epochs, offsets, sizes, positions and times are ints in ``[0, 2^63)``, retention limits in
``[1, 2^63)`` or null; names, keys, namespaces and put ids as
:func:`~streamlib.meta.check_text` takes them; node ids as :func:`~streamlib.meta.check_node_id`
takes them (strs only); tiers one of :data:`~streamlib.meta.TIERS`; key-value values strict
base64 of at most :data:`~streamlib.meta.MAX_KV_VALUE` bytes; lists of the lengths the format
writes; no field missing or unknown (the optional ones are those older writers left out, and
those of format 2 that its writers leave out when empty; a format-1 object holds nothing format 2
added). What a delta names must be in the state (its streams, the objects it removes or
replaces, the doomed objects it forgets) or not (the objects it adds, a new stream's id and
name), and a replacement must keep the streams' ranges whole (:mod:`streamlib.meta._swap`).
Anything else raises :class:`Malformed`, which the manifest reports as
:class:`~streamlib.errors.CorruptDataError` with the object's key; a delta that raises has
changed nothing.

A **group** delta (format 3, :data:`GROUP_FORMAT`) holds several changes that apply in order,
each checked against the state the ones before it left, and whole or not at all: while a group
applies, the state keeps an **undo journal** (:meth:`ManifestState.begin`), which puts back
what the group's first changes did when a later one is refused. The manifest's writer uses the
same journal to plan a group on the state itself and take it back if its create fails.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import gc
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from streamlib.errors import StreamNotFound, describe
from streamlib.meta import NodeMeta, Retention, StreamMeta, StreamState
from streamlib.meta._manifest_values import (
    Malformed,
    Range,
    check_ranges,
    column,
    column_kinds,
    first_twice,
    int_column,
    int_field,
    int_or_none,
    json_list,
    json_object,
    kv_field,
    limit_column,
    limit_or_none,
    node_column,
    node_field,
    node_or_none,
    parse_json,
    show,
    text_column,
    text_field,
    tier_column,
    tier_field,
)
from streamlib.meta._swap import Span, key_problem, swap_problem
from streamlib.records import INT64_MAX

FORMAT = 2
"""The delta and checkpoint format this code writes. Format 2 added the lifecycle: the
operations ``replace``, ``forget`` and ``retention``, a new stream's retention, objects' tiers,
the checkpoint's doomed objects; a format-1 reader refuses it by its number."""

GROUP_FORMAT = 3
"""The format of a delta holding a group of changes (operation :data:`GROUP`); it added
nothing else, and deltas of one change and checkpoints are still written in :data:`FORMAT`, so
that older readers refuse a group by its number and read everything else."""

FORMATS = (1, 2, GROUP_FORMAT)
"""The formats of deltas this code reads (checkpoints: :data:`CHECKPOINT_FORMATS`)."""

CHECKPOINT_FORMATS = (1, 2)
"""The formats of checkpoints this code reads."""

GROUP = "group"
"""The operation of a delta holding several changes: ``{"changes": [{"op": …, "args": …},
…]}``, at least two, none a group."""

MAX_DELTA_BYTES = 64 << 20
"""The largest delta (bytes of JSON) a reader parses and a writer writes: a commit of 100,000
ranges is about 4 MiB, a key-value write of the largest value about 1.4 MiB."""

MAX_CHECKPOINT_BYTES = 256 << 20
"""The largest checkpoint a reader takes and a writer writes, compressed and decompressed
(bytes): about two million streams and objects (100,000 of each: 12 MiB of JSON). A writer
whose state outgrows it writes no checkpoint (and says so in the log); readers open from an
older one and the deltas after it."""

DELTA_DEPTH = 9
"""How deep a delta's JSON nests: the delta, its arguments, a commit's objects, an object, its
ranges, a range (6); in a group, the group's arguments, its list of changes and a change come
first (9)."""

CHECKPOINT_DEPTH = 3
"""How deep a checkpoint's JSON nests: the checkpoint, a table (streams, objects, nodes, kv,
doomed), a column or an entry."""

Object = tuple[str, int, tuple[Range, ...], str]  # key, size, ranges, tier: as a delta gives it
Doomed = tuple[int, int, str]  # size, marked_at_ms, tier

_ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # operation: (its arguments, those optional: older writers, or empty ones, left out)
    "create": (("id", "name"), ("max_age_ms", "max_bytes")),
    "open": (("id", "epoch"), ("owner", "since", "from")),
    "release": (("node", "streams"), ()),
    "trim": (("id", "offset"), ()),
    "destroy": (("id",), ()),
    "register": (("node", "epoch"), ()),
    "commit": (("node", "wal_position", "objects", "remove"), ()),
    "kv": (("namespace", "key", "value"), ()),
    "replace": (("inputs", "outputs"), ()),
    "forget": (("keys",), ()),
    "retention": (("id", "max_age_ms", "max_bytes"), ()),
}
OPERATIONS = frozenset(_ARGUMENTS)
"""The operations a delta can hold."""
_SINCE_FORMAT_2 = frozenset({"replace", "forget", "retention", "max_age_ms", "max_bytes",
                             "tier", "doomed"})  # operations, arguments, columns and tables

_ENVELOPE = ("format", "version", "put", "node", "time", "op", "args")
_CHECKPOINT = (("format", "version", "next_id", "streams", "objects", "nodes"), ("kv", "doomed"))
_STREAM_COLUMNS = ("id", "name", "epoch", "start", "end", "live")
_STREAM_LATER_COLUMNS = ("owner", "from", "from_epoch", "since", "from_since", "max_age_ms",
                         "max_bytes")
_OBJECT_COLUMNS = ("key", "size", "ranges", "stream", "start", "end", "used")


# ---- reading stored objects ----

def read_delta(raw: bytes, version: int) -> dict[str, Any]:
    """The delta stored at ``version``, its envelope checked (its arguments are checked when it
    applies: some checks need the state). A group is of format 3, and format 3 holds groups
    only."""
    if len(raw) > MAX_DELTA_BYTES:
        raise Malformed(describe("larger than a delta may be", bytes=len(raw),
                                 limit=MAX_DELTA_BYTES))
    delta = json_object(parse_json(raw, DELTA_DEPTH), "delta", _ENVELOPE)
    _check_format(delta, "delta", version, FORMATS)
    text_field(delta["put"], "put")
    if delta["node"] is not None:
        node_field(delta["node"], "node")
    int_field(delta["time"], "time")
    op = delta["op"]
    if op != GROUP:
        _operation(op)  # its arguments: checked as it applies
    if (op == GROUP) != (delta["format"] == GROUP_FORMAT):
        raise Malformed(describe(f"a group is of format {GROUP_FORMAT}, and only a group",
                                 op=show(op), format=delta["format"]))
    return delta


def read_checkpoint(raw: bytes, version: int) -> ManifestState:
    """The state a checkpoint stored at ``version`` holds."""
    data = json_object(parse_json(_decompress(raw), CHECKPOINT_DEPTH), "checkpoint", *_CHECKPOINT)
    _check_format(data, "checkpoint", version, CHECKPOINT_FORMATS)
    return ManifestState.load(data)


def encode_delta(delta: dict[str, Any]) -> bytes:
    """A delta's stored bytes; ValueError for one larger than readers take (the change is
    refused before anything is written)."""
    body = json.dumps(delta, separators=(",", ":")).encode()
    if len(body) > MAX_DELTA_BYTES:
        raise ValueError(describe("a manifest change is larger than a delta may be",
                                  op=delta["op"], bytes=len(body), limit=MAX_DELTA_BYTES))
    return body


def group_delta(changes: Sequence[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The operation and arguments of a delta holding ``changes`` (each ``(op, args)``) — a
    group of two or more, or the change itself when it is alone — and the format to stamp it
    with."""
    if len(changes) == 1:
        return changes[0]
    return GROUP, {"changes": [{"op": op, "args": args} for op, args in changes]}


def delta_format(op: str) -> int:
    """The format a delta of ``op`` is written in."""
    return GROUP_FORMAT if op == GROUP else FORMAT


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


def _check_format(data: dict[str, Any], what: str, version: int,
                  formats: tuple[int, ...]) -> None:
    found, at = data["format"], data["version"]
    if type(found) is not int or found not in formats or type(at) is not int or at != version:
        raise Malformed(f"not a {what} of format {' or '.join(map(str, formats))} at version "
                        f"{version}: format {show(found)} version {show(at)}")


def _operation(op: object) -> str:
    if type(op) is not str or op not in OPERATIONS:
        raise Malformed(describe("unknown manifest operation", op=show(op)))
    return op


def _in_format(found: object, names: Sequence[str], what: str) -> None:
    """Refuse what format 2 added in an object of format 1."""
    if found == 1:
        added = [name for name in names if name in _SINCE_FORMAT_2]
        if added:
            raise Malformed(describe(f"{what} holds what format 1 has not", field=added[0]))


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
    max_age_ms: int | None = None  # the retention, as Retention.from_ms takes it
    max_bytes: int | None = None

    def meta(self) -> StreamMeta:
        return StreamMeta(self.id, self.name, self.epoch, self.start, self.end,
                          StreamState.OPEN if self.live else StreamState.DESTROYED,
                          self.owner, self.handover_from, self.handover_epoch, self.since,
                          self.handover_since, Retention.from_ms(self.max_age_ms,
                                                                 self.max_bytes))


class ManifestState:
    """The metadata at one version, in plain containers (building 100,000 value objects at
    open would cost more than reading the checkpoint). Not thread-safe: its manifest's lock
    guards it (:mod:`streamlib.meta.manifest`)."""

    def __init__(self) -> None:
        self.version = 0
        self.next_id = 1
        self.streams: dict[int, StreamRecord] = {}
        self.names: dict[str, int] = {}  # live streams only
        self.objects: dict[str, tuple[int, tuple[Range, ...]]] = {}  # live: key -> size, ranges
        self.tiers: dict[str, str] = {}  # the live objects' tiers other than ""
        self.by_stream: dict[int, list[tuple[int, int, str]]] = {}  # (start, end, key), sorted
        self.doomed: dict[str, Doomed] = {}
        self.nodes: dict[str, list[int]] = {}  # node id -> [node epoch, WAL position]
        self.kv: dict[str, dict[str, bytes]] = {}  # namespace -> key -> value
        self._keys: list[str] | None = None  # the live objects' keys, sorted, once asked for
        # While a journal is kept (begin): how to undo each change since, in order.
        self._undo: list[Callable[[], object]] | None = None

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

    def known(self, key: str) -> str | None:
        """Whether an object key is taken: "live", "doomed", or None."""
        return "live" if key in self.objects else "doomed" if key in self.doomed else None

    def keys_after(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` live objects' keys greater than ``after``, in order (the sorted keys
        are built at the first call and kept by every change since)."""
        if self._keys is None:
            self._keys = sorted(self.objects)
        first = 0 if after is None else bisect.bisect_right(self._keys, after)
        return self._keys[first:first + limit]

    def replace_problem(self, inputs: Sequence[str], outputs: Sequence[Object]) -> str | None:
        """The first precondition of replacing ``inputs`` by ``outputs`` that this state breaks
        (:class:`~streamlib.meta.MetadataStore`, "Replace"), described; None if none."""
        problem = key_problem(inputs, [key for key, *_ in outputs], self.known)
        if problem is not None:
            return problem
        given: dict[int, list[Span]] = {}
        taken: dict[int, list[Span]] = {}
        for key in inputs:
            for stream_id, start, end, _ in self.objects[key][1]:
                given.setdefault(stream_id, []).append((start, end))
        for _, _, ranges, _ in outputs:
            for stream_id, start, end, _ in ranges:
                taken.setdefault(stream_id, []).append((start, end))
        return swap_problem(given, taken, self._stream_state)

    def _stream_state(self, stream_id: int) -> tuple[bool, int] | None:
        stream = self.streams.get(stream_id)
        return None if stream is None else (stream.live, stream.start)

    # ---- the undo journal: a group applies whole or not at all ----

    def begin(self) -> None:
        """Keep an undo journal from now on: :meth:`rollback` puts back every change applied
        since, :meth:`keep` keeps them; either ends the journal."""
        if self._undo is not None:
            raise RuntimeError("the manifest state keeps a journal already")
        self._undo = []

    def rollback(self) -> None:
        """Put back every change applied since :meth:`begin` (the dictionaries' order aside)."""
        self._rollback_to(0)
        self._undo = None

    def keep(self) -> None:
        """Keep the changes applied since :meth:`begin`; the journal ends."""
        self._undo = None

    def _rollback_to(self, mark: int) -> None:
        undo, self._undo = self._undo, None  # an undo step is not itself journaled
        try:
            while undo is not None and len(undo) > mark:
                undo.pop()()
        finally:
            self._undo = undo

    def _keep(self, table: dict[Any, Any], key: object) -> None:
        """Journal ``table[key]`` (or its absence) before it changes."""
        if self._undo is not None:
            self._undo.append(functools.partial(table.__setitem__, key, table[key])
                              if key in table else functools.partial(table.pop, key, None))

    def _touch(self, stream: StreamRecord) -> StreamRecord:
        """Journal a stream's fields before they change; returns the stream."""
        if self._undo is not None:
            self._undo.append(functools.partial(_restore, stream, dataclasses.replace(stream)))
        return stream

    # ---- applying a delta ----

    def apply(self, op: str, args: dict[str, Any], time: int = 0, fmt: int = FORMAT) -> None:
        """Apply a delta's operation whole, or raise :class:`Malformed` having changed nothing:
        its arguments — their shape, types and ranges, and what they name in the state — are
        all checked before the first change. ``time`` (the delta's) marks what it dooms;
        ``fmt`` is the delta's format. A :data:`GROUP` applies its changes in order, each
        checked as it comes, and puts back those before one that is refused."""
        if op == GROUP:
            self._apply_group(args, time, fmt)
            return
        required, optional = _ARGUMENTS[_operation(op)]
        args = json_object(args, f"{op} arguments", required, optional)
        _in_format(fmt, [op, *args], f"a {op} delta")
        if op == "create":
            self._create(args)
        elif op == "open":
            self._open(args)
        elif op == "release":
            node = node_field(args["node"], "node")
            for stream in [self._stream(s) for s in json_list(args["streams"], "streams")]:
                self._touch(stream)
                if stream.handover_from == node:
                    stream.handover_from = stream.handover_epoch = stream.handover_since = None
                if stream.owner == node:
                    stream.owner = stream.since = None
        elif op == "trim":
            stream, offset = self._stream(args["id"]), int_field(args["offset"], "offset")
            self._touch(stream).start = offset
        elif op == "destroy":
            stream = self._touch(self._stream(args["id"]))
            stream.live = False
            if stream.name is not None and self.names.get(stream.name) == stream.id:
                self._keep(self.names, stream.name)
                del self.names[stream.name]
        elif op == "register":
            node, epoch = node_field(args["node"], "node"), int_field(args["epoch"], "epoch")
            self._keep(self.nodes, node)
            self.nodes[node] = [epoch, self.node(node).wal_position]
        elif op == "commit":
            self._commit(args, time, fmt)
        elif op == "replace":
            self._replace(args, time)
        elif op == "forget":
            keys = [text_field(key, "forget key") for key in json_list(args["keys"], "keys")]
            if not keys or len(set(keys)) != len(keys) or not all(map(self.doomed.__contains__,
                                                                      keys)):
                raise Malformed(describe("a forget must name doomed objects, each once",
                                         keys=show(keys)))
            for key in keys:
                self._keep(self.doomed, key)
                del self.doomed[key]
        elif op == "retention":
            stream, retention = self._touch(self._stream(args["id"])), self._retention(args)
            stream.max_age_ms, stream.max_bytes = retention
        else:  # kv
            namespace = text_field(args["namespace"], "namespace")
            key = text_field(args["key"], "key")
            value = None if args["value"] is None else kv_field(args["value"], "value")
            if namespace not in self.kv:
                self._keep(self.kv, namespace)
            entries = self.kv.setdefault(namespace, {})
            self._keep(entries, key)
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value

    def _apply_group(self, args: dict[str, Any], time: int, fmt: int) -> None:
        changes = json_list(json_object(args, "group arguments", ("changes",))["changes"],
                            "a group's changes")
        if len(changes) < 2:
            raise Malformed(describe("a group holds two changes or more", changes=len(changes)))
        for change in changes:
            json_object(change, "a group's change", ("op", "args"))
            if change["op"] == GROUP:
                raise Malformed("a group holds a group")
        outer = self._undo is None  # else the caller's journal keeps this group too
        mark = 0 if outer else len(self._undo or ())
        if outer:
            self.begin()
        try:
            for change in changes:
                self.apply(change["op"], change["args"], time, fmt)
        except BaseException:
            self._rollback_to(mark)
            if outer:
                self._undo = None
            raise
        if outer:
            self.keep()

    def _stream(self, stream_id: object) -> StreamRecord:
        """The stream a delta names (destroyed or not: the writer checked that)."""
        stream = self.streams.get(int_field(stream_id, "stream id"))
        if stream is None:
            raise Malformed(describe("a delta names an unknown stream", stream=stream_id))
        return stream

    @staticmethod
    def _retention(args: dict[str, Any]) -> tuple[int | None, int | None]:
        return (limit_or_none(args.get("max_age_ms"), "max_age_ms"),
                limit_or_none(args.get("max_bytes"), "max_bytes"))

    def _create(self, args: dict[str, Any]) -> None:
        stream_id = int_field(args["id"], "id")
        if not self.next_id <= stream_id < INT64_MAX:
            raise Malformed(describe("a new stream's id must be past every stream's",
                                     id=stream_id, next_id=self.next_id))
        name = None if args["name"] is None else text_field(args["name"], "name")
        if name is not None and name in self.names:
            raise Malformed(describe("a live stream already has this name", name=show(name),
                                     stream=self.names[name]))
        max_age_ms, max_bytes = self._retention(args)
        if self._undo is not None:
            self._undo.append(functools.partial(setattr, self, "next_id", self.next_id))
            self._keep(self.streams, stream_id)
            if name is not None:
                self._keep(self.names, name)
        self.streams[stream_id] = StreamRecord(stream_id, name, 0, 0, 0, max_age_ms=max_age_ms,
                                               max_bytes=max_bytes)
        if name is not None:
            self.names[name] = stream_id
        self.next_id = stream_id + 1

    def _open(self, args: dict[str, Any]) -> None:
        stream, epoch = self._stream(args["id"]), int_field(args["epoch"], "epoch")
        owner = node_or_none(args.get("owner"), "owner")
        since = int_or_none(args.get("since"), "since")
        handover: tuple[str | None, int | None, int | None] = (None, None, None)
        if args.get("from") is not None:  # [node, epoch, since]; older writers: no since
            was = json_list(args["from"], "from", (2, 3))
            handover = (node_field(was[0], "from node"), int_or_none(was[1], "from epoch"),
                        int_or_none(was[2], "from since") if len(was) == 3 else None)
        self._touch(stream)
        stream.epoch, stream.owner, stream.since = epoch, owner, since
        stream.handover_from, stream.handover_epoch, stream.handover_since = handover

    def _commit(self, args: dict[str, Any], time: int, fmt: int) -> None:
        node = node_field(args["node"], "node")
        position = int_field(args["wal_position"], "wal_position")
        objects = [self._new_object(entry, fmt)
                   for entry in json_list(args["objects"], "objects")]
        remove = [text_field(key, "remove key") for key in json_list(args["remove"], "remove")]
        added = set()
        for key, *_ in objects:  # everything checked before anything changes
            if key in self.objects or key in self.doomed or key in added:
                raise Malformed(describe("an object is committed twice", key=key))
            added.add(key)
        if len(set(remove)) != len(remove) or added & set(remove):
            raise Malformed(describe("an object is removed twice, or added and removed",
                                     remove=show(remove)))
        missing = [key for key in remove if key not in self.objects]
        if missing:
            raise Malformed(f"object {missing[0]} to remove was never committed, or is doomed")
        self._add(objects)
        self._doom(remove, time)
        self._keep(self.nodes, node)
        self.nodes[node] = [self.node(node).node_epoch, position]

    def _replace(self, args: dict[str, Any], time: int) -> None:
        inputs = [text_field(key, "input key") for key in json_list(args["inputs"], "inputs")]
        outputs = [self._new_object(entry, FORMAT)
                   for entry in json_list(args["outputs"], "outputs")]
        keys = [*inputs, *(key for key, *_ in outputs)]
        if not inputs or len(set(keys)) != len(keys):
            raise Malformed(describe("a replace needs inputs, and every key once",
                                     keys=show(keys)))
        problem = self.replace_problem(inputs, outputs)
        if problem is not None:
            raise Malformed(f"a replace that does not apply: {problem}")
        self._doom(inputs, time)  # first: an output may start where an input did
        self._add(outputs)

    def _add(self, objects: list[Object]) -> None:
        for key, size, ranges, tier in objects:
            self._put(key, size, ranges, tier)
            if self._undo is not None:
                self._undo.append(functools.partial(self._drop, key))
            for stream_id, _, end, _ in ranges:
                stream = self.streams[stream_id]
                if end > stream.end:
                    self._touch(stream).end = end

    def _doom(self, keys: list[str], time: int) -> None:
        for key in keys:
            size, ranges, tier = self._drop(key)
            self.doomed[key] = (size, time, tier)
            if self._undo is not None:
                self._undo.append(functools.partial(self._undoom, key, size, ranges, tier))

    def _undoom(self, key: str, size: int, ranges: tuple[Range, ...], tier: str) -> None:
        del self.doomed[key]
        self._put(key, size, ranges, tier)

    def _put(self, key: str, size: int, ranges: tuple[Range, ...], tier: str) -> None:
        """A live object, in every index (its streams' ends aside)."""
        self.objects[key] = (size, ranges)
        if tier:
            self.tiers[key] = tier
        if self._keys is not None:
            bisect.insort(self._keys, key)
        for stream_id, start, end, _ in ranges:  # usually at the end: insort is cheap
            bisect.insort(self.by_stream.setdefault(stream_id, []), (start, end, key))

    def _drop(self, key: str) -> tuple[int, tuple[Range, ...], str]:
        """A live object out of every index; returns its size, ranges and tier."""
        size, ranges = self.objects.pop(key)
        tier = self.tiers.pop(key, "")
        if self._keys is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]
        for stream_id, start, end, _ in ranges:
            entries = self.by_stream[stream_id]
            del entries[bisect.bisect_left(entries, (start, end, key))]
            if not entries:  # as a checkpoint loads it
                del self.by_stream[stream_id]
        return size, ranges, tier

    def _new_object(self, entry: object, fmt: int) -> Object:
        """A committed object as a delta gives it, ``[key, size, [[stream, start, end, size],
        …]]`` and, in format 2, its tier if not "": ranges of known streams, one per stream,
        none empty, within the object's size."""
        key, size, given, *tier = json_list(entry, "an object", (3,) if fmt == 1 else (3, 4))
        key, size = text_field(key, "object key"), int_field(size, "object size")
        ranges = []
        for item in json_list(given, "an object's ranges"):
            stream_id, start, end, used = (int_field(v, "a range's stream, offsets or size")
                                           for v in json_list(item, "a range", (4,)))
            self._stream(stream_id)
            ranges.append((stream_id, start, end, used))
        check_ranges(key, size, ranges)
        return key, size, tuple(ranges), tier_field(tier[0], "tier") if tier else ""

    # ---- the checkpoint form: columns of plain values, which JSON parses fast ----

    def dump(self) -> dict[str, Any]:
        """The checkpoint's JSON; the columns of retentions and tiers only if any is set."""
        streams = list(self.streams.values())
        objects = list(self.objects.items())
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
        object_columns: dict[str, list[Any]] = {
            "key": [key for key, _ in objects], "size": [size for _, (size, _) in objects],
            "ranges": [len(rs) for _, (_, rs) in objects],
            "stream": [r[0] for r in ranges], "start": [r[1] for r in ranges],
            "end": [r[2] for r in ranges], "used": [r[3] for r in ranges]}
        if self.tiers:
            object_columns["tier"] = [self.tiers.get(key, "") for key, _ in objects]
        return {"format": FORMAT, "version": self.version, "next_id": self.next_id,
                "streams": stream_columns, "objects": object_columns,
                "nodes": [[node, epoch, position]
                          for node, (epoch, position) in self.nodes.items()],
                "kv": [[namespace, key, base64.b64encode(value).decode()]
                       for namespace, entries in self.kv.items()
                       for key, value in entries.items()],
                "doomed": [[key, *entry] for key, entry in self.doomed.items()]}

    @classmethod
    def load(cls, data: dict[str, Any]) -> ManifestState:
        """The state a checkpoint's JSON holds, every field checked (:class:`Malformed`)
        (100,000 streams and objects: about 0.1 s; the cyclic garbage collector is paused
        meanwhile, since nothing built here is garbage)."""
        paused = gc.isenabled()
        gc.disable()
        try:
            state = cls()
            data = json_object(data, "checkpoint", *_CHECKPOINT)
            found = data["format"]
            if type(found) is not int or found not in CHECKPOINT_FORMATS:
                raise Malformed(describe("a checkpoint of an unknown format", format=show(found)))
            streams = json_object(data["streams"], "streams", _STREAM_COLUMNS,
                                  _STREAM_LATER_COLUMNS)
            objects = json_object(data["objects"], "objects", _OBJECT_COLUMNS, ("tier",))
            for names, what in ((data, "a checkpoint"), (streams, "its streams"),
                                (objects, "its objects")):
                _in_format(found, list(names), what)
            next_id = int_field(data["next_id"], "next_id")
            state._load_streams(streams)
            if next_id <= max(state.streams, default=0):
                raise Malformed(describe("next_id must be past every stream's id",
                                         next_id=next_id, stream=max(state.streams)))
            state.version, state.next_id = int_field(data["version"], "version"), next_id
            state._load_objects(objects)
            state._load_entries(json_list(data["nodes"], "nodes"),
                                json_list(data.get("kv", []), "kv"))
            state._load_doomed(json_list(data.get("doomed", []), "doomed"))
            return state
        finally:
            if paused:
                gc.enable()

    def _load_streams(self, s: dict[str, Any]) -> None:
        n = len(column(s, "id", "streams", None))
        (ids, names, epochs, starts, ends, live, owners, was, was_epochs, since, was_since,
         max_age_ms, max_bytes) = (column(s, name, "streams", n)
                                   for name in (*_STREAM_COLUMNS, *_STREAM_LATER_COLUMNS))
        for values, name in ((ids, "id"), (epochs, "epoch"), (starts, "start"), (ends, "end")):
            int_column(values, f"streams.{name}")
        for values, name in ((was_epochs, "from_epoch"), (since, "since"),
                             (was_since, "from_since")):
            int_column(values, f"streams.{name}", nullable=True)
        limit_column(max_age_ms, "streams.max_age_ms")
        limit_column(max_bytes, "streams.max_bytes")
        text_column(names, "streams.name", nullable=True)
        column_kinds(live, "streams.live", (bool,))
        node_column(owners, "streams.owner")
        node_column(was, "streams.from")
        self.streams = dict(zip(ids, map(StreamRecord, ids, names, epochs, starts, ends, live,
                                         owners, was, was_epochs, since, was_since, max_age_ms,
                                         max_bytes),
                                strict=True))
        if len(self.streams) != n:
            raise Malformed(describe("a stream id appears twice", stream=first_twice(ids)))
        named = [(stream.name, stream.id) for stream in self.streams.values()
                 if stream.live and stream.name is not None]
        self.names = dict(named)
        if len(self.names) != len(named):
            raise Malformed(describe("two live streams have one name",
                                     name=show(first_twice([name for name, _ in named]))))

    def _load_objects(self, o: dict[str, Any]) -> None:
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
        unknown = set(streams) - self.streams.keys()
        if unknown:
            raise Malformed(describe("a range of an unknown stream", stream=min(unknown)))
        ranges = list(zip(streams, starts, ends, used, strict=True))
        if 0 in counts or any(map(operator.ge, starts, ends)):
            i = 0
            for key, size, count in zip(keys, sizes, counts, strict=True):
                check_ranges(key, size, ranges[i:i + count])  # to name the first bad one
                i += count
        objects, by_stream = self.objects, self.by_stream
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
            self.tiers = {key: tier for key, tier in zip(keys, tiers, strict=True) if tier}

    def _load_entries(self, nodes: list[Any], kv: list[Any]) -> None:
        for entry in nodes:
            node, epoch, position = json_list(entry, "a node", (3,))
            node = node_field(node, "node")
            if node in self.nodes:
                raise Malformed(describe("a node appears twice", node=node))
            self.nodes[node] = [int_field(epoch, "node epoch"),
                                int_field(position, "wal_position")]
        for entry in kv:
            namespace, key, value = json_list(entry, "a key-value entry", (3,))
            entries = self.kv.setdefault(text_field(namespace, "namespace"), {})
            if text_field(key, "key") in entries:
                raise Malformed(describe("a key-value entry appears twice",
                                         namespace=namespace, key=key))
            entries[key] = kv_field(value, "value")

    def _load_doomed(self, doomed: list[Any]) -> None:
        for entry in doomed:
            key, size, marked, tier = json_list(entry, "a doomed object", (4,))
            if self.known(text_field(key, "doomed key")) is not None:
                raise Malformed(describe("a doomed object is known twice", key=key))
            self.doomed[key] = (int_field(size, "doomed size"),
                                int_field(marked, "doomed marked_at_ms"),
                                tier_field(tier, "doomed tier"))


def _restore(stream: StreamRecord, saved: StreamRecord) -> None:
    for name in _RECORD_FIELDS:
        setattr(stream, name, getattr(saved, name))


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(StreamRecord))

__all__ = ["CHECKPOINT_DEPTH", "CHECKPOINT_FORMATS", "DELTA_DEPTH", "FORMAT", "FORMATS", "GROUP",
           "GROUP_FORMAT", "MAX_CHECKPOINT_BYTES", "MAX_DELTA_BYTES", "OPERATIONS", "Malformed",
           "ManifestState", "Range", "StreamRecord", "delta_format", "encode_checkpoint",
           "encode_delta", "group_delta", "read_checkpoint", "read_delta"]
