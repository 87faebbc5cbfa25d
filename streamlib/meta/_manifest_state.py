"""The manifest's state at one version, in plain containers: how a delta applies to it, and what
a reader accepts of a delta and (with :mod:`streamlib.meta._manifest_checkpoint`, the checkpoint
form) of a checkpoint (the manifest itself: :mod:`streamlib.meta.manifest`; the format:
docs/shared-stores.md).

What a reader accepts is decided here and, for single values, in
:mod:`streamlib.meta._manifest_values`: a checkpoint or delta is taken only if its writers could
have written it. Its size is bounded before it is parsed (:data:`MAX_DELTA_BYTES`; a
checkpoint's also while decompressing), its JSON nesting before it is parsed
(:data:`DELTA_DEPTH`; a checkpoint's in its module), and every field's shape, type and range after:
ids, epochs, offsets, sizes, positions and times are ints in ``[0, 2^63)``, retention limits in
``[1, 2^63)`` or null; names, keys, namespaces and put ids as
:func:`~streamlib.meta.check_text` takes them; node ids as :func:`~streamlib.meta.check_node_id`
takes them (strs only); tiers one of :data:`~streamlib.meta.TIERS`; key-value values strict
base64 of at most :data:`~streamlib.meta.MAX_KV_VALUE` bytes; lists of the lengths the format
writes; no field missing or unknown (the optional ones are those older writers left out, and
those of later formats that their writers leave out when empty or unknown; an object holds
nothing a format later than its own added). What a delta names must be in the state (its
streams, the objects it removes or replaces, the doomed objects it forgets) or not (the objects
it adds, a new stream's id and name), and a replacement must keep the streams' ranges whole
(:mod:`streamlib.meta._swap`).
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

import bisect
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamlib.errors import CommitConflict, StreamNotFound, describe
from streamlib.meta import NodeMeta, ObjectMeta, Retention, StreamMeta, StreamRange, StreamState
from streamlib.meta._manifest_values import (
    Malformed,
    Range,
    check_ranges,
    int_field,
    int_or_none,
    json_list,
    json_object,
    kv_field,
    limit_or_none,
    node_field,
    node_or_none,
    parse_json,
    show,
    text_field,
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

CREATED_FORMAT = 4
"""The format of a delta or checkpoint that holds a stream's creation time (a create's
``created_ms``, a checkpoint's ``created_ms`` column); it holds everything of formats 2 and 3
besides (a single change, or a group). Writers stamp it only on what holds a creation time, so
that older readers refuse that by its number and read everything else."""

FORMATS = (1, 2, GROUP_FORMAT, CREATED_FORMAT)
"""The formats of deltas this code reads (checkpoints:
:data:`~streamlib.meta._manifest_checkpoint.CHECKPOINT_FORMATS`)."""

GROUP = "group"
"""The operation of a delta holding several changes: ``{"changes": [{"op": …, "args": …},
…]}``, at least two, none a group."""

MAX_DELTA_BYTES = 64 << 20
"""The largest delta (bytes of JSON) a reader parses and a writer writes: a commit of 100,000
ranges is about 4 MiB, a key-value write of the largest value about 1.4 MiB."""

DELTA_DEPTH = 9
"""How deep a delta's JSON nests: the delta, its arguments, a commit's objects, an object, its
ranges, a range (6); in a group, the group's arguments, its list of changes and a change come
first (9)."""

Object = tuple[str, int, tuple[Range, ...], str]  # key, size, ranges, tier: as a delta gives it
Doomed = tuple[int, int, str]  # size, marked_at_ms, tier

_ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # operation: (its arguments, those optional: older writers, or empty ones, left out)
    "create": (("id", "name"), ("max_age_ms", "max_bytes", "created_ms")),
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
# Operations, arguments, columns and tables by the format that added them (the rest: 1).
_ADDED_IN = {**dict.fromkeys(("replace", "forget", "retention", "max_age_ms", "max_bytes",
                              "tier", "doomed"), 2),
             "created_ms": CREATED_FORMAT}

_ENVELOPE = ("format", "version", "put", "node", "time", "op", "args")


# ---- reading stored objects ----

def read_delta(raw: bytes, version: int) -> dict[str, Any]:
    """The delta stored at ``version``, its envelope checked (its arguments are checked when it
    applies: some checks need the state). A group is of format 3 or 4, and format 3 holds
    groups only."""
    if len(raw) > MAX_DELTA_BYTES:
        raise Malformed(describe("larger than a delta may be", bytes=len(raw),
                                 limit=MAX_DELTA_BYTES))
    delta = json_object(parse_json(raw, DELTA_DEPTH), "delta", _ENVELOPE)
    check_format(delta, "delta", version, FORMATS)
    text_field(delta["put"], "put")
    if delta["node"] is not None:
        node_field(delta["node"], "node")
    int_field(delta["time"], "time")
    op = delta["op"]
    if op != GROUP:
        _operation(op)  # its arguments: checked as it applies
    found = delta["format"]
    if (op == GROUP and found < GROUP_FORMAT) or (op != GROUP and found == GROUP_FORMAT):
        raise Malformed(describe(f"a group is of format {GROUP_FORMAT} or later, and format "
                                 f"{GROUP_FORMAT} holds only groups", op=show(op), format=found))
    return delta


def encode_delta(delta: dict[str, Any]) -> bytes:
    """A delta's stored bytes; ValueError for one larger than readers take (the change is
    refused before anything is written)."""
    body = json.dumps(delta, separators=(",", ":")).encode()
    if len(body) > MAX_DELTA_BYTES:
        raise ValueError(describe("a manifest change is larger than a delta may be",
                                  op=delta["op"], bytes=len(body), limit=MAX_DELTA_BYTES))
    return body


def encode_object(obj: ObjectMeta) -> list[Any]:
    """An object as a delta holds it: ``[key, size, ranges]``, and its tier if not ""."""
    ranges = [[r.stream_id, r.start_offset, r.end_offset, r.size] for r in obj.ranges]
    return [obj.key, obj.size, ranges, *([obj.tier] if obj.tier else [])]


def retention_args(retention: Retention | None) -> dict[str, int | None]:
    """A retention as a delta holds it (both limits; None: unlimited)."""
    if retention is None:
        return {"max_age_ms": None, "max_bytes": None}
    return {"max_age_ms": retention.max_age_ms, "max_bytes": retention.max_bytes}


def group_delta(changes: Sequence[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The operation and arguments of a delta holding ``changes`` (each ``(op, args)``) — a
    group of two or more, or the change itself when it is alone — and the format to stamp it
    with."""
    if len(changes) == 1:
        return changes[0]
    return GROUP, {"changes": [{"op": op, "args": args} for op, args in changes]}


def delta_format(op: str, args: dict[str, Any]) -> int:
    """The format a delta of ``op`` with ``args`` is written in: the lowest that holds it."""
    changes = args["changes"] if op == GROUP else [{"op": op, "args": args}]
    if any(change["op"] == "create" and "created_ms" in change["args"] for change in changes):
        return CREATED_FORMAT
    return GROUP_FORMAT if op == GROUP else FORMAT


def check_format(data: dict[str, Any], what: str, version: int,
                  formats: tuple[int, ...]) -> None:
    found, at = data["format"], data["version"]
    if type(found) is not int or found not in formats or type(at) is not int or at != version:
        raise Malformed(f"not a {what} of format {' or '.join(map(str, formats))} at version "
                        f"{version}: format {show(found)} version {show(at)}")


def _operation(op: object) -> str:
    if type(op) is not str or op not in OPERATIONS:
        raise Malformed(describe("unknown manifest operation", op=show(op)))
    return op


def in_format(found: int, names: Sequence[str], what: str) -> None:
    """Refuse what a later format added in an object of format ``found``."""
    added = [name for name in names if _ADDED_IN.get(name, 1) > found]
    if added:
        raise Malformed(describe(f"{what} holds what format {found} has not", field=added[0]))


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
    created_ms: int | None = None

    def meta(self) -> StreamMeta:
        return StreamMeta(self.id, self.name, self.epoch, self.start, self.end,
                          StreamState.OPEN if self.live else StreamState.DESTROYED,
                          self.owner, self.handover_from, self.handover_epoch, self.since,
                          self.handover_since, Retention.from_ms(self.max_age_ms,
                                                                 self.max_bytes),
                          self.created_ms)


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

    def ranges_from(self, stream_id: int, from_offset: int,
                    limit: int | None = None) -> list[tuple[int, int, str]]:
        """The live stream's ranges holding offsets at or above ``from_offset`` (they are
        disjoint and sorted: the first is found by bisection), the first ``limit`` if given."""
        self.live(stream_id)
        entries = self.by_stream.get(stream_id, [])
        first = max(bisect.bisect_right(entries, from_offset, key=lambda e: e[0]) - 1, 0)
        if first < len(entries) and entries[first][1] <= from_offset:
            first += 1  # the range before the offset: it ends at or below it
        return entries[first:] if limit is None else entries[first:first + limit]

    def object_meta(self, key: str) -> ObjectMeta:
        """The live object ``key``, every range."""
        size, ranges = self.objects[key]
        return ObjectMeta(key, size, tuple(StreamRange(*r) for r in ranges),
                          self.tiers.get(key, ""))

    def check_removable(self, key: str) -> None:
        """A commit may remove ``key``: live, and holding nothing readable any more
        (:class:`~streamlib.errors.CommitConflict` otherwise)."""
        found = self.objects.get(key)
        if found is None:
            raise CommitConflict(describe("object to remove is not committed"
                                          if self.known(key) is None
                                          else "object to remove is doomed already", key=key))
        for stream_id, _, end, _ in found[1]:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.live and end > stream.start:
                raise CommitConflict(describe("object to remove still holds readable records",
                                              key=key, stream=stream_id))

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
        in_format(fmt, [op, *args], f"a {op} delta")
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
        created_ms = (int_field(args["created_ms"], "created_ms") if "created_ms" in args
                      else None)  # older writers recorded none
        if self._undo is not None:
            self._undo.append(functools.partial(setattr, self, "next_id", self.next_id))
            self._keep(self.streams, stream_id)
            if name is not None:
                self._keep(self.names, name)
        self.streams[stream_id] = StreamRecord(stream_id, name, 0, 0, 0, max_age_ms=max_age_ms,
                                               max_bytes=max_bytes, created_ms=created_ms)
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

def _restore(stream: StreamRecord, saved: StreamRecord) -> None:
    for name in _RECORD_FIELDS:
        setattr(stream, name, getattr(saved, name))


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(StreamRecord))

__all__ = ["CREATED_FORMAT", "DELTA_DEPTH", "FORMAT", "FORMATS", "GROUP", "GROUP_FORMAT",
           "MAX_DELTA_BYTES", "OPERATIONS", "Malformed", "ManifestState", "Range",
           "StreamRecord", "check_format", "delta_format", "encode_delta", "encode_object",
           "group_delta", "in_format", "read_delta", "retention_args"]
