"""The manifest's state at one version, in plain containers, with how a delta applies to it and
its checkpoint form (the manifest itself: :mod:`streamlib.meta.manifest`)."""

from __future__ import annotations

import base64
import bisect
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamlib.errors import CorruptDataError, StreamNotFound, describe
from streamlib.meta import NodeMeta, StreamMeta, StreamState

FORMAT = 1
"""The delta and checkpoint format this code reads and writes."""

Range = tuple[int, int, int, int]  # stream id, start offset, end offset, size


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

    # ---- applying a delta (checked by its writer) ----

    def apply(self, op: str, args: dict[str, Any]) -> None:
        """Apply a delta whole, or raise (KeyError, TypeError, ValueError) having changed
        nothing: every lookup that can fail comes before the first change."""
        if op == "create":
            stream = StreamRecord(args["id"], args["name"], 0, 0, 0)
            self.streams[stream.id] = stream
            if stream.name is not None:
                self.names[stream.name] = stream.id
            self.next_id = stream.id + 1
        elif op == "open":
            stream = self.streams[args["id"]]
            stream.epoch = args["epoch"]
            handover: Sequence[Any] = args.get("from") or (None, None, None)
            stream.owner, stream.since = args.get("owner"), args.get("since")
            stream.handover_from, stream.handover_epoch, stream.handover_since = (
                *handover[:2], handover[2] if len(handover) > 2 else None)
        elif op == "release":
            node = args["node"]
            for stream in [self.streams[stream_id] for stream_id in args["streams"]]:
                if stream.handover_from == node:
                    stream.handover_from = stream.handover_epoch = stream.handover_since = None
                if stream.owner == node:
                    stream.owner = stream.since = None
        elif op == "trim":
            self.streams[args["id"]].start = args["offset"]
        elif op == "destroy":
            stream = self.streams[args["id"]]
            stream.live = False
            if stream.name is not None and self.names.get(stream.name) == stream.id:
                del self.names[stream.name]
        elif op == "register":
            self.nodes[args["node"]] = [args["epoch"], self.node(args["node"]).wal_position]
        elif op == "commit":
            self._commit(args)
        elif op == "kv":
            value = None if args["value"] is None else base64.b64decode(args["value"])
            entries = self.kv.setdefault(args["namespace"], {})
            if value is None:
                entries.pop(args["key"], None)
            else:
                entries[args["key"]] = value
        else:
            raise CorruptDataError(describe("unknown manifest operation", op=op))

    def _commit(self, args: dict[str, Any]) -> None:
        objects = [(key, size, tuple(tuple(r) for r in ranges))
                   for key, size, ranges in args["objects"]]
        node, position = args["node"], int(args["wal_position"])
        for key, _, ranges in objects:  # everything checked before anything changes
            if key in self.objects:
                raise ValueError(f"object {key} committed twice")
            unknown = [r[0] for r in ranges if r[0] not in self.streams]
            if unknown:
                raise KeyError(f"object {key} holds unknown stream {unknown[0]}")
        missing = [key for key in args["remove"] if key not in self.objects]
        if missing:
            raise KeyError(f"object {missing[0]} to remove was never committed")
        for key, size, ranges in objects:
            self.objects[key] = (size, ranges)
            for stream_id, start, end, _ in ranges:  # usually at the end: insort is cheap
                bisect.insort(self.by_stream.setdefault(stream_id, []), (start, end, key))
                self.streams[stream_id].end = max(self.streams[stream_id].end, end)
        for key in args["remove"]:
            _, ranges = self.objects.pop(key)
            for stream_id, start, end, _ in ranges:
                self.by_stream[stream_id].remove((start, end, key))
        self.nodes[node] = [self.node(node).node_epoch, position]

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
        """The state a checkpoint holds (100,000 streams and objects: about 0.1 s; the cyclic
        garbage collector is paused meanwhile, since nothing built here is garbage)."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return cls._load(data)
        finally:
            if paused:
                gc.enable()

    @classmethod
    def _load(cls, data: dict[str, Any]) -> ManifestState:
        state = cls()
        state.version = data["version"]
        state.next_id = data["next_id"]
        s = data["streams"]
        n = len(s["id"])
        state.streams = dict(zip(s["id"], map(
            StreamRecord, s["id"], s["name"], s["epoch"], s["start"], s["end"], s["live"],
            s.get("owner", [None] * n), s.get("from", [None] * n),
            s.get("from_epoch", [None] * n), s.get("since", [None] * n),
            s.get("from_since", [None] * n)), strict=True))
        state.names = {stream.name: stream.id for stream in state.streams.values()
                       if stream.live and stream.name is not None}
        o = data["objects"]
        ranges = list(zip(o["stream"], o["start"], o["end"], o["used"], strict=True))
        objects, by_stream = state.objects, state.by_stream
        i = 0
        for key, size, count in zip(o["key"], o["size"], o["ranges"], strict=True):
            held = (ranges[i],) if count == 1 else tuple(ranges[i:i + count])
            i += count
            objects[key] = (size, held)
            for stream_id, start, end, _ in held:
                found = by_stream.get(stream_id)
                if found is None:
                    by_stream[stream_id] = [(start, end, key)]
                else:
                    found.append((start, end, key))
        if i != len(ranges):
            raise ValueError(f"{len(ranges)} ranges, objects claim {i}")
        for found in by_stream.values():
            if len(found) > 1:
                found.sort()
        state.nodes = {node: [epoch, position] for node, epoch, position in data["nodes"]}
        for namespace, key, value in data.get("kv", ()):
            state.kv.setdefault(namespace, {})[key] = base64.b64decode(value)
        return state


__all__ = ["FORMAT", "ManifestState", "Range", "StreamRecord"]
