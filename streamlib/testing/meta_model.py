"""The metadata contract in plain Python (:class:`MetadataModel`), a Hypothesis state machine
that runs a backend beside it (:class:`MetadataMachine`), and the helpers the contract suites
share (:mod:`streamlib.testing.meta`)."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from streamlib.errors import (
    CommitConflict,
    CompactionConflict,
    FencedError,
    OffsetOutOfRange,
    StreamExists,
    StreamLibError,
    StreamNotFound,
)
from streamlib.meta import (
    Commit,
    MetadataStore,
    NodeMeta,
    ObjectMeta,
    Replacement,
    Retention,
    StreamMeta,
    StreamObject,
    StreamRange,
    StreamState,
)


def make_object(key: str, *ranges: tuple[int, int, int], bytes_per_record: int = 10,
                overhead: int = 64, tier: str = "") -> ObjectMeta:
    """An object holding ``(stream_id, start, end)`` ranges, sized from their record counts."""
    parts = tuple(StreamRange(s, start, end, (end - start) * bytes_per_record)
                  for s, start, end in ranges)
    return ObjectMeta(key, sum(r.size for r in parts) + overhead, parts, tier)


def kept(retention: Retention | None) -> Retention | None:
    """A retention as the metadata gives it back: in whole milliseconds, None for none."""
    if retention is None or retention.keeps_everything:
        return None
    return Retention.from_ms(retention.max_age_ms, retention.max_bytes)


class MetadataModel:
    """The contract as a plain Python model: no files, no threads, the same errors.

    Stream ids come from the store under test (the model only checks that they increase)."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamMeta] = {}
        self.objects: dict[str, ObjectMeta] = {}  # the live ones
        self.doomed: dict[str, ObjectMeta] = {}  # (their marks: the store's clock, not here)
        self.nodes: dict[str, NodeMeta] = {}

    def live(self, stream_id: int) -> StreamMeta:
        meta = self.streams.get(stream_id)
        if meta is None or not meta.live:
            raise StreamNotFound(f"no such stream: stream=`{stream_id}`")
        return meta

    def live_streams(self) -> list[StreamMeta]:
        return [m for _, m in sorted(self.streams.items()) if m.live]

    def create(self, name: str | None, stream_id: int, retention: Retention | None = None,
               created_ms: int | None = None) -> StreamMeta:
        """(The id and the creation time are the store's: the model keeps what it was told.)"""
        if name is not None and any(m.name == name for m in self.live_streams()):
            raise StreamExists(f"name taken: name=`{name}`")
        assert stream_id > max(self.streams, default=-1), "stream ids must increase"
        self.streams[stream_id] = StreamMeta(stream_id, name, 0, 0, 0,
                                             retention=kept(retention), created_ms=created_ms)
        return self.streams[stream_id]

    def set_retention(self, stream_id: int, retention: Retention | None) -> StreamMeta:
        return self._set(self.live(stream_id), retention=kept(retention))

    def by_name(self, name: str) -> StreamMeta:
        for meta in self.live_streams():
            if meta.name == name:
                return meta
        raise StreamNotFound(f"no live stream has this name: name=`{name}`")

    def open(self, stream_id: int, expected_epoch: int | None) -> StreamMeta:
        meta = self.live(stream_id)
        if expected_epoch is not None and expected_epoch != meta.epoch:
            raise FencedError(f"epoch moved: stream=`{stream_id}`")
        return self._set(meta, epoch=meta.epoch + 1)

    def trim(self, stream_id: int, offset: int) -> StreamMeta:
        meta = self.live(stream_id)
        if offset > meta.end_offset:
            raise OffsetOutOfRange(stream_id, offset, meta.start_offset, meta.end_offset + 1)
        return self._set(meta, start_offset=max(offset, meta.start_offset))

    def destroy(self, stream_id: int) -> StreamMeta:
        return self._set(self.live(stream_id), state=StreamState.DESTROYED)

    def node(self, node_id: str) -> NodeMeta:
        return self.nodes.get(node_id, NodeMeta(node_id, 0, 0))

    def register(self, node_id: str) -> NodeMeta:
        node = self.node(node_id)
        self.nodes[node_id] = dataclasses.replace(node, node_epoch=node.node_epoch + 1)
        return self.nodes[node_id]

    def readable(self, obj: ObjectMeta) -> bool:
        """Whether ``obj`` holds records a reader may still ask for."""
        return any(self.streams[r.stream_id].live
                   and r.end_offset > self.streams[r.stream_id].start_offset for r in obj.ranges)

    def commit(self, commit: Commit) -> None:
        streams = {s: self.live(s) for s in commit.epochs}
        if any(streams[s].epoch != epoch for s, epoch in commit.epochs.items()):
            raise FencedError("commit by a fenced writer")
        node = self.node(commit.node_id)
        if commit.node_epoch is not None and commit.node_epoch != node.node_epoch:
            raise FencedError("commit by a fenced node")
        extents = commit.extents()
        if any(start != streams[s].end_offset for s, (start, _) in extents.items()):
            raise CommitConflict("range does not start at the end")
        if any(o.key in self.objects or o.key in self.doomed for o in commit.objects):
            raise CommitConflict("object already committed")
        if any(k not in self.objects or self.readable(self.objects[k]) for k in commit.remove):
            raise CommitConflict("object cannot be removed")
        if commit.wal_position < node.wal_position:
            raise CommitConflict("WAL position would go back")
        for obj in commit.objects:
            self.objects[obj.key] = obj
        for stream_id, (_, end) in extents.items():
            self._set(streams[stream_id], end_offset=end)
        for key in commit.remove:
            self.doomed[key] = self.objects.pop(key)
        self.nodes[node.node_id] = dataclasses.replace(node, wal_position=commit.wal_position)

    def replace(self, replacement: Replacement) -> None:
        """The contract's "Replace", step by step."""
        if any(key not in self.objects for key in replacement.inputs):
            raise CompactionConflict("an input is not live")
        if any(o.key in self.objects or o.key in self.doomed for o in replacement.outputs):
            raise CompactionConflict("an output's key is taken")
        inputs = [self.objects[key] for key in replacement.inputs]
        for stream_id in sorted({r.stream_id for o in [*inputs, *replacement.outputs]
                                 for r in o.ranges}):
            given, taken = ([(r.start_offset, r.end_offset) for o in objects
                             if (r := o.range_of(stream_id)) is not None]
                            for objects in (inputs, replacement.outputs))
            meta = self.streams.get(stream_id)
            live, start = (meta.live, meta.start_offset) if meta else (False, 0)
            if not given:
                raise CompactionConflict("an output of a stream the inputs do not hold")
            given.sort()
            b = given[-1][1]
            if not taken:
                if live and b > start:
                    raise CompactionConflict("readable records left out")
                continue
            taken.sort()
            # The readable ranges (ending above the start; all of them if none does) must be
            # contiguous; an output may start from the first input of the gapless run that
            # ends at b, and no later than the first readable record.
            readable = [(s, e) for s, e in given if e > start] or given
            if not live or any(readable[i][1] != readable[i + 1][0]
                               for i in range(len(readable) - 1)):
                raise CompactionConflict("destroyed, or inputs not contiguous")
            run = len(given) - 1
            while run > 0 and given[run - 1][1] == given[run][0]:
                run -= 1
            low, high = given[run][0], max(readable[0][0], start)
            if any(taken[i][1] != taken[i + 1][0] for i in range(len(taken) - 1)) \
                    or taken[-1][1] != b or not low <= taken[0][0] <= high:
                raise CompactionConflict("the outputs do not cover the inputs")
        for key in replacement.inputs:
            self.doomed[key] = self.objects.pop(key)
        for obj in replacement.outputs:
            self.objects[obj.key] = obj

    def forget(self, keys: list[str]) -> int:
        found = {key for key in keys if key in self.doomed}
        for key in found:
            del self.doomed[key]
        return len(found)

    def live_objects(self) -> list[ObjectMeta]:
        return [obj for _, obj in sorted(self.objects.items())]

    def objects_of(self, stream_id: int, from_offset: int = 0) -> list[ObjectMeta]:
        self.live(stream_id)
        found = [(r.start_offset, obj) for obj in self.objects.values()
                 if (r := obj.range_of(stream_id)) is not None and r.end_offset > from_offset]
        return [obj for _, obj in sorted(found, key=lambda pair: pair[0])]

    def _set(self, meta: StreamMeta, **changes: object) -> StreamMeta:
        self.streams[meta.id] = dataclasses.replace(
            meta, **changes)  # type: ignore[arg-type]  # each change has its field's type
        return self.streams[meta.id]


def commit_of(stream_id: int, start: int, end: int, *, epoch: int, node: str,
              node_epoch: int | None = None) -> Commit:
    """A commit by ``node`` of one object holding ``[start, end)`` of one stream at ``epoch``
    (the WAL position stays 0: it may repeat)."""
    return Commit(node_id=node, wal_position=0, epochs={stream_id: epoch}, node_epoch=node_epoch,
                  objects=[make_object(f"obj-{uuid.uuid4().hex}", (stream_id, start, end))])


def register(store: MetadataStore, *nodes: str) -> dict[str, int]:
    """Each node registered once more: ``{node: its node epoch now}``."""
    return {node: store.register_node(node).node_epoch for node in nodes}


def holds(meta: StreamMeta, nodes: tuple[str, ...] = ("a", "b", "c")
          ) -> dict[str, tuple[tuple[int, int] | None, int]]:
    """``{node: (the epochs of its WAL records it may commit, the epoch it commits with)}``."""
    return {node: (meta.held_epochs(node), meta.epoch_of(node)) for node in nodes}


def snapshot(store: MetadataStore, stream_ids: list[int], nodes: tuple[str, ...] = ("n1",)
             ) -> tuple[object, ...]:
    """Everything a store shows about ``stream_ids`` and ``nodes``, and every live and doomed
    object, to compare before/after."""
    metas = [store.get_stream(s, include_destroyed=True) for s in stream_ids]
    objects = [store.objects(m.id) if m.live else None for m in metas]
    return (store.streams(), metas, objects, [store.node(n) for n in nodes],
            store.live_objects(limit=1 << 30), store.doomed())


class MetadataMachine(RuleBasedStateMachine):
    """A store and :class:`MetadataModel` fed the same random operations (including closing and
    reopening the store) must agree on every result, every error kind and every state."""

    factory: Callable[[Path], MetadataStore]  # set by MetadataContract.test_matches_the_model
    base: Path
    NODES = ("n1", "n2")
    NAMES = ("a", "b", "c", None)
    RETENTIONS = (None, Retention(), Retention(max_age=1.5), Retention(max_bytes=1000),
                  Retention(max_age=0.0004, max_bytes=7))
    UNKNOWN = 1 << 40  # an id no stream has

    runs = itertools.count()  # each example gets a fresh location under `base`

    def __init__(self) -> None:
        super().__init__()
        cls = type(self)
        self.location = cls.base / f"run{next(cls.runs)}"
        self.store = cls.factory(self.location)
        self.model = MetadataModel()
        self.keys = itertools.count()

    def agree(self, on_store: Callable[[], object], on_model: Callable[[], object]) -> object:
        outcomes = []
        for call in (on_store, on_model):
            try:
                outcomes.append(("returned", call()))
            except StreamLibError as e:
                outcomes.append(("raised", type(e)))
        assert outcomes[0] == outcomes[1], f"the store {outcomes[0]}, the model {outcomes[1]}"
        return outcomes[0][1]

    def pick_stream(self, data: st.DataObject) -> int:
        """Mostly a stream the model knows (live or destroyed), now and then an unknown id."""
        known = sorted(self.model.streams)
        if known and data.draw(st.integers(0, 9)) != 0:
            return data.draw(st.sampled_from(known))
        return self.UNKNOWN

    @initialize(count=st.integers(1, 3))
    def some_open_streams(self, count: int) -> None:
        for _ in range(count):
            meta = self.store.create_stream()
            self.model.create(None, meta.id, created_ms=meta.created_ms)
            assert self.store.open_stream(meta.id) == self.model.open(meta.id, None)

    @rule(name=st.sampled_from(NAMES), retention=st.sampled_from(RETENTIONS))
    def create(self, name: str | None, retention: Retention | None) -> None:
        try:
            meta = self.store.create_stream(name, retention=retention)
        except StreamExists:
            with pytest.raises(StreamExists):
                self.model.create(name, self.UNKNOWN)
            return
        assert meta.created_ms is not None, "a store records when a stream was created"
        assert meta == self.model.create(name, meta.id, retention, meta.created_ms)

    @rule(data=st.data(), retention=st.sampled_from(RETENTIONS))
    def set_retention(self, data: st.DataObject, retention: Retention | None) -> None:
        stream_id = self.pick_stream(data)
        self.agree(lambda: self.store.set_retention(stream_id, retention),
                   lambda: self.model.set_retention(stream_id, retention))

    @rule(data=st.data())
    def open(self, data: st.DataObject) -> None:
        stream_id = self.pick_stream(data)
        epoch = self.model.streams[stream_id].epoch if stream_id in self.model.streams else 0
        expected = data.draw(st.sampled_from([None, epoch, epoch + 1]))
        self.agree(lambda: self.store.open_stream(stream_id, expected_epoch=expected),
                   lambda: self.model.open(stream_id, expected))

    @rule(data=st.data())
    def trim(self, data: st.DataObject) -> None:
        stream_id = self.pick_stream(data)
        meta = self.model.streams.get(stream_id, StreamMeta(stream_id, None, 0, 0, 0))
        offset = data.draw(st.sampled_from([meta.end_offset, meta.end_offset + 1,
                                            meta.start_offset // 2])
                           | st.integers(0, meta.end_offset))
        self.agree(lambda: self.store.trim_stream(stream_id, offset),
                   lambda: self.model.trim(stream_id, offset))

    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        stream_id = self.pick_stream(data)
        self.agree(lambda: self.store.destroy_stream(stream_id),
                   lambda: self.model.destroy(stream_id))

    @rule(node=st.sampled_from(NODES))
    def register(self, node: str) -> None:
        self.agree(lambda: self.store.register_node(node), lambda: self.model.register(node))

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        commit = self.draw_commit(data)
        self.agree(lambda: self.store.commit(commit), lambda: self.model.commit(commit))

    FAULTS = (None,) * 6 + ("epoch", "gap", "overlap", "destroyed", "key", "remove",
                            "position", "node_epoch")

    def draw_commit(self, data: st.DataObject) -> Commit:
        """A valid commit of up to three live streams over one or two objects, or one with a
        single precondition broken (a stale epoch, a gap or an overlap, a destroyed stream, a key
        taken, an object still readable, the WAL position going back, a stale node epoch)."""
        draw = data.draw
        model = self.model
        fault = draw(st.sampled_from(self.FAULTS))
        node = model.node(draw(st.sampled_from(self.NODES)))
        live = model.live_streams()
        chosen = draw(st.lists(st.sampled_from(live), unique=True, min_size=1, max_size=3)
                      ) if live else []
        destroyed = [m for m in model.streams.values() if not m.live]
        if fault == "destroyed" and destroyed:
            chosen.append(draw(st.sampled_from(destroyed)))
        broken = draw(st.sampled_from(chosen)).id if chosen else None
        epochs, pieces = {}, []
        for meta in chosen:
            epoch, start = meta.epoch, meta.end_offset
            if meta.id == broken and fault == "epoch":
                epoch = draw(st.sampled_from([epoch + 1, *([epoch - 1] if epoch else [])]))
            elif meta.id == broken and fault in ("gap", "overlap"):
                start = start + 1 if fault == "gap" or not start else start - 1
            epochs[meta.id] = epoch
            pieces.append((meta.id, start, start + draw(st.integers(1, 20))))
        parts: list[list[tuple[int, int, int]]] = [[], []]
        for stream_id, start, end in pieces:
            if end - start > 1 and draw(st.booleans()):  # split over both objects
                middle = (start + end) // 2
                parts[0].append((stream_id, start, middle))
                parts[1].append((stream_id, middle, end))
            else:
                parts[draw(st.integers(0, 1))].append((stream_id, start, end))
        committed = sorted(model.objects)
        keys = [f"k{next(self.keys)}" for _ in parts]
        if fault == "key" and (committed or model.doomed):  # live or doomed: taken
            keys[draw(st.integers(0, 1))] = draw(st.sampled_from(committed
                                                                 + sorted(model.doomed)))
        objects = [make_object(key, *ranges) for key, ranges in zip(keys, parts, strict=True)
                   if ranges]
        dead = [k for k in committed if not model.readable(model.objects[k])]
        remove = draw(st.lists(st.sampled_from(dead), unique=True, min_size=1, max_size=2)
                      ) if dead else []
        if fault == "remove":  # readable, doomed already, or never committed
            unfit = [k for k in committed if k not in dead] + sorted(model.doomed)
            remove.append(draw(st.sampled_from(unfit)) if unfit else "unknown-key")
        remove = [k for k in remove if k not in keys]
        position = node.wal_position + draw(st.sampled_from([0, 100, 1000]))
        if fault == "position" and node.wal_position:
            position = node.wal_position - 1
        node_epoch = draw(st.sampled_from([None, node.node_epoch]))
        if fault == "node_epoch":
            node_epoch = node.node_epoch + 1
        return Commit(node_id=node.node_id, wal_position=position, objects=objects,
                      epochs=epochs, node_epoch=node_epoch, remove=remove)

    @precondition(lambda self: self.model.objects)
    @rule(data=st.data())
    def replace(self, data: st.DataObject) -> None:
        replacement = self.draw_replacement(data)
        if replacement is not None:
            outcome = self.agree(lambda: self.store.replace(replacement),
                                 lambda: self.model.replace(replacement))
            event("replace: refused" if outcome else "replace: applied")

    REPLACE_FAULTS = (None,) * 7 + ("doomed input", "unknown input", "key taken", "start",
                                    "end", "no outputs", "stranger")

    def draw_replacement(self, data: st.DataObject) -> Replacement | None:
        """A run of one stream's live objects (adjacent in offsets) swapped for one or two new
        objects holding each stream's records from the first readable one (or none, when
        nothing is readable) — which may still be refused (another stream's ranges in the run
        are not contiguous) — or one with a fault: an input doomed or unknown, an output's key
        taken, outputs starting one later or ending one off, no outputs, or an output of a
        stream the inputs do not hold. None when the drawn outputs are not a Replacement
        (nothing to run)."""
        draw, model = data.draw, self.model
        fault = draw(st.sampled_from(self.REPLACE_FAULTS))
        stream_id = draw(st.sampled_from(sorted({r.stream_id for o in model.objects.values()
                                                 for r in o.ranges})))
        starts = [(r.start_offset, o.key) for o in model.objects.values()
                  if (r := o.range_of(stream_id)) is not None]
        run = [model.objects[key] for _, key in sorted(starts)]
        first = draw(st.integers(0, len(run) - 1))
        inputs = run[first:draw(st.integers(first + 1, len(run)))]
        pieces: list[tuple[int, int, int]] = []
        for stream_id in sorted({r.stream_id for o in inputs for r in o.ranges}):
            spans = sorted((r.start_offset, r.end_offset) for o in inputs
                           if (r := o.range_of(stream_id)) is not None)
            meta = model.streams[stream_id]
            a, b = spans[0][0], spans[-1][1]
            start = draw(st.sampled_from(sorted({a, min(max(a, meta.start_offset), b - 1)})))
            if meta.live and b > meta.start_offset and fault != "no outputs":
                pieces.append((stream_id, start, b))
        if fault == "start" and pieces:
            stream_id, start, end = pieces[0]
            pieces[0] = (stream_id, min(start + 1, end - 1), end)
        elif fault == "end" and pieces:
            stream_id, start, end = pieces[0]
            pieces[0] = (stream_id, start, end + draw(st.sampled_from([-1, 1])))
        elif fault == "stranger":
            pieces.append((draw(st.sampled_from([*model.streams, self.UNKNOWN])), 0, 1))
        keys = [o.key for o in inputs]
        if fault in ("doomed input", "unknown input"):
            keys.append(draw(st.sampled_from(sorted(model.doomed)))
                        if model.doomed and fault == "doomed input" else "unknown-key")
        names = [f"r{next(self.keys)}", f"r{next(self.keys)}"]
        taken = [k for k in [*model.objects, *model.doomed] if k not in keys]
        if fault == "key taken" and taken:
            names[0] = draw(st.sampled_from(sorted(taken)))
        parts: list[list[tuple[int, int, int]]] = [[], []]
        for stream_id, start, end in pieces:
            if end - start > 1 and draw(st.booleans()):  # over both outputs
                middle = draw(st.integers(start + 1, end - 1))
                parts[0].append((stream_id, start, middle))
                parts[1].append((stream_id, middle, end))
            else:
                parts[draw(st.integers(0, 1))].append((stream_id, start, end))
        tier = draw(st.sampled_from(["", "archive"]))
        try:
            return Replacement(inputs=keys or ["unknown-key"], outputs=[
                make_object(name, *ranges, tier=tier)
                for name, ranges in zip(names, parts, strict=True) if ranges])
        except ValueError:  # e.g. a range that holds no record
            return None

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        model = self.model
        keys = data.draw(st.lists(st.sampled_from(sorted(model.doomed) + sorted(model.objects)
                                                  + ["unknown-key"]), max_size=4))
        self.agree(lambda: self.store.forget(keys), lambda: self.model.forget(keys))

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = type(self).factory(self.location)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.store.streams() == self.model.live_streams()
        for stream_id, meta in self.model.streams.items():
            assert self.store.get_stream(stream_id, include_destroyed=True) == meta
            if meta.live:
                assert self.store.objects(stream_id) == self.model.objects_of(stream_id)
                middle = (meta.start_offset + meta.end_offset) // 2
                assert (self.store.objects(stream_id, middle)
                        == self.model.objects_of(stream_id, middle))
                assert (self.store.stream_objects(stream_id, middle)
                        == [StreamObject(o.key, o.size, r, o.tier)
                            for o in self.model.objects_of(stream_id, middle)
                            if (r := o.range_of(stream_id)) is not None])  # all of them
        for name in self.NAMES[:-1]:
            self.agree(partial(self.store.get_stream_by_name, name),
                       partial(self.model.by_name, name))
        for node in self.NODES:
            assert self.store.node(node) == self.model.node(node)
        pages: list[ObjectMeta] = []
        while page := self.store.live_objects(pages[-1].key if pages else None, limit=3):
            pages += page
        assert pages == self.model.live_objects()
        doomed = self.store.doomed()
        assert doomed == sorted(doomed, key=lambda d: (d.marked_at_ms, d.key))
        assert sorted((d.key, d.size, d.tier) for d in doomed) == sorted(
            (key, o.size, o.tier) for key, o in self.model.doomed.items())

    def teardown(self) -> None:
        self.store.close()
