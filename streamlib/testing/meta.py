"""The metadata contract suite: every backend's tests subclass :class:`MetadataContract`.

A subclass provides :meth:`MetadataContract.open_store`; pytest then runs every test below
against it::

    class TestMyMetadata(MetadataContract):
        def open_store(self, location):
            return MyMetadataStore(location)

``location`` is a fresh path per test (a ``tmp_path`` subfolder, not created yet); opening it
again must find what the last store there committed. :class:`MetadataModel` states the contract
in plain Python, and a Hypothesis state machine runs a backend and the model side by side.
The rules of owners and hand-overs (docs/shared-stores.md) are checked only on a store whose
``capabilities.shared`` is true; elsewhere those tests skip.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from streamlib.errors import (
    CommitConflict,
    FencedError,
    OffsetOutOfRange,
    StreamClosed,
    StreamExists,
    StreamLibError,
    StreamNotFound,
)
from streamlib.meta import (
    MAX_KV_VALUE,
    Commit,
    MetadataStore,
    NodeMeta,
    ObjectMeta,
    StreamMeta,
    StreamObject,
    StreamRange,
    StreamState,
)


def make_object(key: str, *ranges: tuple[int, int, int], bytes_per_record: int = 10,
                overhead: int = 64) -> ObjectMeta:
    """An object holding ``(stream_id, start, end)`` ranges, sized from their record counts."""
    parts = tuple(StreamRange(s, start, end, (end - start) * bytes_per_record)
                  for s, start, end in ranges)
    return ObjectMeta(key, sum(r.size for r in parts) + overhead, parts)


class MetadataModel:
    """The contract as a plain Python model: no files, no threads, the same errors.

    Stream ids come from the store under test (the model only checks that they increase)."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamMeta] = {}
        self.objects: dict[str, ObjectMeta] = {}
        self.nodes: dict[str, NodeMeta] = {}

    def live(self, stream_id: int) -> StreamMeta:
        meta = self.streams.get(stream_id)
        if meta is None or not meta.live:
            raise StreamNotFound(f"no such stream: stream=`{stream_id}`")
        return meta

    def live_streams(self) -> list[StreamMeta]:
        return [m for _, m in sorted(self.streams.items()) if m.live]

    def create(self, name: str | None, stream_id: int) -> StreamMeta:
        if name is not None and any(m.name == name for m in self.live_streams()):
            raise StreamExists(f"name taken: name=`{name}`")
        assert stream_id > max(self.streams, default=-1), "stream ids must increase"
        self.streams[stream_id] = StreamMeta(stream_id, name, 0, 0, 0)
        return self.streams[stream_id]

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
        if any(o.key in self.objects for o in commit.objects):
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
            del self.objects[key]
        self.nodes[node.node_id] = dataclasses.replace(node, wal_position=commit.wal_position)

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
    """Everything a store shows about ``stream_ids`` and ``nodes``, to compare before/after."""
    metas = [store.get_stream(s, include_destroyed=True) for s in stream_ids]
    objects = [store.objects(m.id) if m.live else None for m in metas]
    return store.streams(), metas, objects, [store.node(n) for n in nodes]


class MetadataMachine(RuleBasedStateMachine):
    """A store and :class:`MetadataModel` fed the same random operations (including closing and
    reopening the store) must agree on every result, every error kind and every state."""

    factory: Callable[[Path], MetadataStore]  # set by MetadataContract.test_matches_the_model
    base: Path
    NODES = ("n1", "n2")
    NAMES = ("a", "b", "c", None)
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
        assert outcomes[0] == outcomes[1]
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
            self.model.create(None, meta.id)
            assert self.store.open_stream(meta.id) == self.model.open(meta.id, None)

    @rule(name=st.sampled_from(NAMES))
    def create(self, name: str | None) -> None:
        try:
            meta = self.store.create_stream(name)
        except StreamExists:
            with pytest.raises(StreamExists):
                self.model.create(name, self.UNKNOWN)
            return
        assert meta == self.model.create(name, meta.id)

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
        if fault == "key" and committed:
            keys[draw(st.integers(0, 1))] = draw(st.sampled_from(committed))
        objects = [make_object(key, *ranges) for key, ranges in zip(keys, parts, strict=True)
                   if ranges]
        dead = [k for k in committed if not model.readable(model.objects[k])]
        remove = draw(st.lists(st.sampled_from(dead), unique=True, min_size=1, max_size=2)
                      ) if dead else []
        if fault == "remove":
            readable = [k for k in committed if k not in dead]
            remove.append(draw(st.sampled_from(readable)) if readable else "unknown-key")
        remove = [k for k in remove if k not in keys]
        position = node.wal_position + draw(st.sampled_from([0, 100, 1000]))
        if fault == "position" and node.wal_position:
            position = node.wal_position - 1
        node_epoch = draw(st.sampled_from([None, node.node_epoch]))
        if fault == "node_epoch":
            node_epoch = node.node_epoch + 1
        return Commit(node_id=node.node_id, wal_position=position, objects=objects,
                      epochs=epochs, node_epoch=node_epoch, remove=remove)

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
                        == [StreamObject(o.key, o.size, r)
                            for o in self.model.objects_of(stream_id, middle)
                            if (r := o.range_of(stream_id)) is not None])  # all of them
        for name in self.NAMES[:-1]:
            self.agree(partial(self.store.get_stream_by_name, name),
                       partial(self.model.by_name, name))
        for node in self.NODES:
            assert self.store.node(node) == self.model.node(node)

    def teardown(self) -> None:
        self.store.close()


class MetadataContract:
    """The behaviour docs/store.md promises of a metadata store, for any backend."""

    model_examples = 50
    """Hypothesis examples of the model test (each up to ``model_steps`` operations)."""
    model_steps = 40

    def open_store(self, location: Path) -> MetadataStore:
        raise NotImplementedError

    @pytest.fixture
    def location(self, tmp_path: Path) -> Path:
        return tmp_path / "meta"

    @pytest.fixture
    def store(self, location: Path) -> Iterator[MetadataStore]:
        store = self.open_store(location)
        yield store
        store.close()

    def reopen(self, store: MetadataStore, location: Path) -> MetadataStore:
        store.close()
        return self.open_store(location)

    # ---- streams ----

    def test_create_get_and_list(self, store: MetadataStore) -> None:
        assert store.streams() == []
        a = store.create_stream("orders")
        b = store.create_stream()
        assert a == StreamMeta(a.id, "orders", 0, 0, 0, StreamState.OPEN) and a.live
        assert b.name is None and b.id > a.id
        assert store.get_stream(a.id) == a and store.get_stream(b.id) == b
        assert store.get_stream_by_name("orders") == a
        assert store.streams() == [a, b]
        with pytest.raises(StreamNotFound, match="stream=`12345`"):
            store.get_stream(12345)
        with pytest.raises(StreamNotFound, match="name=`'nope'`"):
            store.get_stream_by_name("nope")

    def test_names_are_unique_among_live_streams(self, store: MetadataStore) -> None:
        first = store.create_stream("events")
        with pytest.raises(StreamExists, match="name=`'events'`"):
            store.create_stream("events")
        assert store.streams() == [first]
        store.destroy_stream(first.id)
        again = store.create_stream("events")  # a destroyed stream frees its name
        assert again.id != first.id and store.get_stream_by_name("events") == again

    def test_ids_are_never_reused(self, store: MetadataStore, location: Path) -> None:
        ids = [store.create_stream().id for _ in range(3)]
        store.destroy_stream(ids[-1])
        store = self.reopen(store, location)
        try:
            new = store.create_stream()
            assert new.id > max(ids)
            assert store.get_stream(ids[-1], include_destroyed=True).state is \
                StreamState.DESTROYED
        finally:
            store.close()

    def test_open_stream_bumps_the_epoch_compare_and_set(self, store: MetadataStore) -> None:
        stream = store.create_stream()
        assert store.open_stream(stream.id).epoch == 1
        assert store.open_stream(stream.id, expected_epoch=1) == dataclasses.replace(
            stream, epoch=2)
        with pytest.raises(FencedError, match="expected_epoch=`1`"):
            store.open_stream(stream.id, expected_epoch=1)
        assert store.get_stream(stream.id).epoch == 2

    def test_trim_moves_forward_within_the_committed_range(self, store: MetadataStore) -> None:
        stream = store.open_stream(store.create_stream().id)
        with pytest.raises(OffsetOutOfRange):
            store.trim_stream(stream.id, 1)
        store.commit(Commit(node_id="n1", wal_position=10, epochs={stream.id: 1},
                            objects=[make_object("o1", (stream.id, 0, 10))]))
        assert store.trim_stream(stream.id, 4).start_offset == 4
        assert store.trim_stream(stream.id, 2).start_offset == 4  # never back
        with pytest.raises(OffsetOutOfRange, match="offset=`11`"):
            store.trim_stream(stream.id, 11)
        assert store.trim_stream(stream.id, 10) == dataclasses.replace(
            stream, start_offset=10, end_offset=10)
        assert store.get_stream(stream.id).start_offset == 10

    def test_destroyed_streams_are_gone(self, store: MetadataStore) -> None:
        stream = store.create_stream("x")
        kept = store.create_stream()
        gone = store.destroy_stream(stream.id)
        assert gone == dataclasses.replace(stream, state=StreamState.DESTROYED)
        assert store.get_stream(stream.id, include_destroyed=True) == gone
        assert store.streams() == [kept]
        for call in (lambda: store.get_stream(stream.id), lambda: store.open_stream(stream.id),
                     lambda: store.trim_stream(stream.id, 0), lambda: store.objects(stream.id),
                     lambda: store.destroy_stream(stream.id),
                     lambda: store.get_stream_by_name("x"),
                     lambda: store.commit(Commit(node_id="n1", wal_position=1,
                                                 epochs={stream.id: 0}))):
            with pytest.raises(StreamNotFound):
                call()

    # ---- commits ----

    def two_open_streams(self, store: MetadataStore) -> tuple[int, int]:
        a, b = store.create_stream().id, store.create_stream().id
        store.open_stream(a)
        store.open_stream(b)
        return a, b

    def test_commit_adds_objects_and_moves_ends_and_the_wal_position(
            self, store: MetadataStore) -> None:
        a, b = self.two_open_streams(store)
        shared = make_object("shared-1", (b, 0, 5), (a, 0, 3))
        single = make_object("single-1", (a, 3, 40))
        store.commit(Commit(node_id="n1", wal_position=500, objects=[single, shared],
                            epochs={a: 1, b: 1}))
        assert store.get_stream(a).end_offset == 40 and store.get_stream(b).end_offset == 5
        assert shared.ranges[0].stream_id == a  # normalised: sorted by stream
        assert store.objects(a) == [shared, single]
        assert store.objects(b) == [shared]
        assert store.objects(a, 2) == [shared, single]
        assert store.objects(a, 3) == [single] and store.objects(a, 39) == [single]
        assert store.objects(a, 40) == [] and store.objects(a, 10**9) == []
        assert store.stream_objects(b) == [StreamObject("shared-1", shared.size,
                                                        shared.ranges[1])]
        assert [o.key for o in store.stream_objects(a, 3)] == ["single-1"]
        assert store.node("n1") == NodeMeta("n1", 0, 500)
        store.commit(Commit(node_id="n1", wal_position=900, epochs={a: 1},
                            objects=[make_object("shared-2", (a, 40, 41))]))
        assert [o.key for o in store.objects(a)] == ["shared-1", "single-1", "shared-2"]
        assert store.node("n1").wal_position == 900
        store.commit(Commit(node_id="n1", wal_position=900))  # nothing new: fine
        assert store.get_stream(a).end_offset == 41

    @pytest.mark.parametrize("broken", ["gap", "overlap", "stale epoch", "newer epoch",
                                        "destroyed", "unknown stream", "wal position back",
                                        "key taken", "remove unknown", "remove readable",
                                        "stale node epoch"])
    def test_a_failed_commit_changes_nothing(self, store: MetadataStore, broken: str) -> None:
        a, b = self.two_open_streams(store)
        store.register_node("n1")
        store.commit(Commit(node_id="n1", wal_position=100, epochs={a: 1, b: 1},
                            objects=[make_object("o1", (a, 0, 10), (b, 0, 10))]))
        gone = store.create_stream().id
        store.destroy_stream(gone)
        ranges, epochs = [(a, 10, 20), (b, 10, 20)], {a: 1, b: 1}
        key, position, remove, node_epoch = "o2", 200, [], 1
        expected: type[Exception] = CommitConflict
        if broken == "gap":
            ranges[1] = (b, 11, 20)
        elif broken == "overlap":
            ranges[1] = (b, 9, 20)
        elif broken == "stale epoch":
            store.open_stream(b)  # b is at epoch 2 now; this writer holds 1
            expected = FencedError
        elif broken == "newer epoch":
            epochs[b] = 2
            expected = FencedError
        elif broken == "destroyed":
            epochs[gone] = 0
            expected = StreamNotFound
        elif broken == "unknown stream":
            ranges.append((gone + 1000, 0, 1))
            epochs[gone + 1000] = 0
            expected = StreamNotFound
        elif broken == "wal position back":
            position = 99
        elif broken == "key taken":
            key = "o1"
        elif broken == "remove unknown":
            remove = ["nope"]
        elif broken == "remove readable":
            remove = ["o1"]
        elif broken == "stale node epoch":
            store.register_node("n1")
            expected = FencedError
        before = snapshot(store, [a, b, gone])
        commit = Commit(node_id="n1", wal_position=position, epochs=epochs, remove=remove,
                        objects=[make_object(key, *ranges)], node_epoch=node_epoch)
        with pytest.raises(expected):
            store.commit(commit)
        assert snapshot(store, [a, b, gone]) == before

    def test_a_retried_commit_fails_and_changes_nothing(self, store: MetadataStore,
                                                        location: Path) -> None:
        a, b = self.two_open_streams(store)
        commit = Commit(node_id="n1", wal_position=64, epochs={a: 1, b: 1},
                        objects=[make_object("o1", (a, 0, 7), (b, 0, 2))])
        store.commit(commit)
        after = snapshot(store, [a, b])
        with pytest.raises(CommitConflict, match="committed end"):
            store.commit(commit)
        store = self.reopen(store, location)
        try:
            with pytest.raises(CommitConflict):
                store.commit(commit)
            assert snapshot(store, [a, b]) == after
        finally:
            store.close()

    def test_objects_without_readable_records_can_be_removed(self, store: MetadataStore
                                                              ) -> None:
        a, b = self.two_open_streams(store)
        store.commit(Commit(node_id="n1", wal_position=1, epochs={a: 1, b: 1}, objects=[
            make_object("o1", (a, 0, 5), (b, 0, 5)), make_object("o2", (a, 5, 9))]))
        store.trim_stream(a, 5)
        with pytest.raises(CommitConflict, match="readable"):
            store.commit(Commit(node_id="n1", wal_position=1, remove=["o1"]))
        store.destroy_stream(b)  # now o1 holds only a's trimmed records and b's
        store.commit(Commit(node_id="n1", wal_position=2, remove=["o1"], epochs={a: 1},
                            objects=[make_object("o3", (a, 9, 12))]))
        assert [o.key for o in store.objects(a)] == ["o2", "o3"]
        assert store.get_stream(a).end_offset == 12

    # ---- nodes ----

    def test_nodes_register_and_keep_their_wal_position(self, store: MetadataStore) -> None:
        assert store.node("n1") == NodeMeta("n1", 0, 0)
        assert store.register_node("n1") == NodeMeta("n1", 1, 0)
        store.commit(Commit(node_id="n1", wal_position=77, node_epoch=1))
        assert store.register_node("n1") == NodeMeta("n1", 2, 77)
        assert store.register_node(7) == NodeMeta("7", 1, 0)  # an int id is its str
        assert store.node("7") == store.node(7)
        with pytest.raises(FencedError, match="node_epoch=`1`"):
            store.commit(Commit(node_id="n1", wal_position=80, node_epoch=1))

    def test_an_open_by_a_fenced_node_is_refused(self, store: MetadataStore,
                                                 location: Path) -> None:
        """``open_stream`` with a node epoch: once the node is registered again (another
        process has its id), the old process opens nothing."""
        stream = store.create_stream().id
        old = store.register_node("n1").node_epoch
        assert store.open_stream(stream, node_id="n1", node_epoch=old).epoch == 1
        new = store.register_node("n1").node_epoch
        with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
            store.open_stream(stream, node_id="n1", node_epoch=old)
        assert store.get_stream(stream).epoch == 1
        store = self.reopen(store, location)
        try:
            with pytest.raises(FencedError):
                store.open_stream(stream, node_id="n1", node_epoch=old)
            assert store.open_stream(stream, node_id="n1", node_epoch=new).epoch == 2
        finally:
            store.close()

    # ---- owners and hand-overs (a store declaring capabilities.shared) ----

    @pytest.fixture
    def shared_store(self, store: MetadataStore) -> MetadataStore:
        """``store``, if it keeps owners; the tests of owners and hand-overs skip otherwise."""
        if not store.capabilities.shared:
            pytest.skip(f"{type(store).__name__} does not declare capabilities.shared: it "
                        f"keeps no owners and hands nothing over (docs/shared-stores.md)")
        return store

    def reopen_keeping(self, store: MetadataStore, location: Path,
                       *stream_ids: int) -> MetadataStore:
        """``store`` closed and opened again, checked to read the streams back unchanged
        (owners, hand-overs, epochs, offsets)."""
        before = [store.get_stream(s) for s in stream_ids]
        reopened = self.reopen(store, location)
        try:
            assert [reopened.get_stream(s) for s in stream_ids] == before
        except BaseException:
            reopened.close()
            raise
        return reopened

    def test_an_open_by_a_node_makes_it_the_owner(self, shared_store: MetadataStore,
                                                  location: Path) -> None:
        store = shared_store
        created = store.create_stream("s")
        epoch_a = store.register_node("a").node_epoch
        mine = store.open_stream(created.id, node_id="a", node_epoch=epoch_a)
        assert mine == dataclasses.replace(created, epoch=1, owner="a", owner_since=1)
        assert store.get_stream(created.id) == mine
        assert holds(mine) == {"a": ((1, 1), 1), "b": (None, 1), "c": (None, 1)}
        again = store.open_stream(created.id, node_id="a", node_epoch=epoch_a)
        assert again == dataclasses.replace(mine, epoch=2)  # its reopen: no hand-over, same time
        assert holds(again) == {"a": ((1, 2), 2), "b": (None, 2), "c": (None, 2)}
        numbered = store.create_stream().id
        assert store.open_stream(numbered, node_id=7).owner == "7"  # an int id is its str
        store = self.reopen_keeping(store, location, created.id, numbered)
        try:
            assert store.open_stream(created.id, node_id="a", node_epoch=epoch_a) == \
                dataclasses.replace(again, epoch=3)
        finally:
            store.close()

    def test_an_open_by_another_node_hands_the_stream_over(self, shared_store: MetadataStore,
                                                           location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        mine = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        taken = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        assert taken == dataclasses.replace(mine, epoch=3, owner="b", owner_since=3,
                                            handover_from="a", handover_epoch=2,
                                            handover_since=1)
        assert store.get_stream(stream) == taken
        # A commits its records of epochs 1 to 2 with epoch 2; B holds none until the release.
        assert holds(taken) == {"a": ((1, 2), 2), "b": (None, 3), "c": (None, 3)}
        store = self.reopen_keeping(store, location, stream)
        store.close()

    def test_while_handing_over_only_the_node_handing_over_commits(
            self, shared_store: MetadataStore, location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b", "c")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        store = self.reopen_keeping(store, location, stream)  # the hand-over is pending
        try:
            store.commit(commit_of(stream, 0, 5, epoch=1, node="a", node_epoch=nodes["a"]))
            store.commit(commit_of(stream, 5, 8, epoch=1, node="a", node_epoch=nodes["a"]))
            assert store.get_stream(stream).end_offset == 8
            before = snapshot(store, [stream], ("a", "b", "c"))
            # The new owner's commits wait for the release. The docstrings name no error kind
            # for this refusal: FencedError or CommitConflict.
            with pytest.raises((FencedError, CommitConflict), match=f"stream=`{stream}`"):
                store.commit(commit_of(stream, 8, 9, epoch=2, node="b", node_epoch=nodes["b"]))
            for node in ("b", "c"):  # the old epoch is only the node handing over's
                with pytest.raises(FencedError, match=f"stream=`{stream}`"):
                    store.commit(commit_of(stream, 8, 9, epoch=1, node=node))
            assert snapshot(store, [stream], ("a", "b", "c")) == before
            store = self.reopen_keeping(store, location, stream)
            store.commit(commit_of(stream, 8, 10, epoch=1, node="a", node_epoch=nodes["a"]))
            assert store.get_stream(stream).end_offset == 10
        finally:
            store.close()

    def test_the_release_completes_the_hand_over(self, shared_store: MetadataStore,
                                                 location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        taken = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        store.commit(commit_of(stream, 0, 5, epoch=1, node="a", node_epoch=nodes["a"]))
        store.release_streams("a", nodes["a"], [stream])
        released = store.get_stream(stream)
        assert released == dataclasses.replace(taken, end_offset=5, handover_from=None,
                                               handover_epoch=None, handover_since=None)
        assert holds(released) == {"a": (None, 2), "b": ((2, 2), 2), "c": (None, 2)}
        store.release_streams("a", nodes["a"], [stream])  # again: nothing left to release
        assert store.get_stream(stream) == released
        store = self.reopen_keeping(store, location, stream)
        try:
            with pytest.raises(FencedError, match=f"stream=`{stream}`"):
                store.commit(commit_of(stream, 5, 6, epoch=1, node="a", node_epoch=nodes["a"]))
            store.commit(commit_of(stream, 5, 9, epoch=2, node="b", node_epoch=nodes["b"]))
            assert store.get_stream(stream) == dataclasses.replace(released, end_offset=9)
        finally:
            store.close()

    def test_the_node_handing_over_opens_the_stream_again_and_keeps_it(
            self, shared_store: MetadataStore, location: Path) -> None:
        """Before its release: nothing is handed over any more (the owner in between wrote
        nothing, its appends waited for the release) and its time as owner goes on."""
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        mine = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        back = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        assert back == dataclasses.replace(mine, epoch=3)
        assert store.get_stream(stream) == back
        assert holds(back) == {"a": ((1, 3), 3), "b": (None, 3), "c": (None, 3)}
        store = self.reopen_keeping(store, location, stream)
        try:
            store.commit(commit_of(stream, 0, 4, epoch=3, node="a", node_epoch=nodes["a"]))
            for node, epoch in (("b", 2), ("a", 1)):  # B's epoch, and the hand-over's: gone
                with pytest.raises(FencedError, match=f"stream=`{stream}`"):
                    store.commit(commit_of(stream, 4, 5, epoch=epoch, node=node))
            assert store.get_stream(stream) == dataclasses.replace(back, end_offset=4)
        finally:
            store.close()

    def test_a_third_node_opening_leaves_the_hand_over_with_the_node_handing_over(
            self, shared_store: MetadataStore, location: Path) -> None:
        """A opens, B opens (A hands over), C opens before A's release: A still holds the
        data, so the hand-over stays from A (B wrote nothing) and C is the owner."""
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        taken = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])
        third = store.open_stream(stream, node_id="c")  # C was never registered: node epoch 0
        assert third == dataclasses.replace(taken, epoch=3, owner="c", owner_since=3)
        assert (third.handover_from, third.handover_epoch, third.handover_since) == ("a", 1, 1)
        assert holds(third) == {"a": ((1, 1), 1), "b": (None, 3), "c": (None, 3)}
        store = self.reopen_keeping(store, location, stream)
        try:
            store.commit(commit_of(stream, 0, 3, epoch=1, node="a", node_epoch=nodes["a"]))
            store.release_streams("a", nodes["a"], [stream])
            assert holds(store.get_stream(stream)) == {"a": (None, 3), "b": (None, 3),
                                                       "c": ((3, 3), 3)}
            store.commit(commit_of(stream, 3, 4, epoch=3, node="c", node_epoch=0))
            store.release_streams("c", 0, [stream])
            assert store.get_stream(stream) == dataclasses.replace(
                third, end_offset=4, owner=None, owner_since=None, handover_from=None,
                handover_epoch=None, handover_since=None)
        finally:
            store.close()

    def test_a_release_by_the_owner_leaves_the_stream_without_owner(
            self, shared_store: MetadataStore, location: Path) -> None:
        store = shared_store
        stream = store.create_stream("s").id
        nodes = register(store, "a", "b")
        mine = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.commit(commit_of(stream, 0, 5, epoch=1, node="a", node_epoch=nodes["a"]))
        store.release_streams("a", nodes["a"], [stream])
        free = store.get_stream(stream)
        assert free == dataclasses.replace(mine, end_offset=5, owner=None, owner_since=None)
        assert holds(free) == {"a": (None, 1), "b": (None, 1), "c": (None, 1)}
        store = self.reopen_keeping(store, location, stream)
        try:
            # The same node opening it again starts a new time as owner: what it held before
            # the release is not its to commit any more.
            again = store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
            assert again == dataclasses.replace(free, epoch=2, owner="a", owner_since=2)
            assert holds(again)["a"] == ((2, 2), 2)
            store.release_streams("a", nodes["a"], [stream])
            store = self.reopen_keeping(store, location, stream)
            other = store.open_stream(stream, node_id="b", node_epoch=nodes["b"])  # no hand-over
            assert other == dataclasses.replace(free, epoch=3, owner="b", owner_since=3)
            assert holds(other) == {"a": (None, 3), "b": ((3, 3), 3), "c": (None, 3)}
            store.commit(commit_of(stream, 5, 7, epoch=3, node="b", node_epoch=nodes["b"]))
            assert store.get_stream(stream).end_offset == 7
        finally:
            store.close()

    def test_a_fenced_node_neither_opens_nor_releases(self, shared_store: MetadataStore,
                                                      location: Path) -> None:
        """Node A registered again (another process has its id): the old process's releases,
        opens and commits are refused and change nothing; the new process's are not."""
        store = shared_store
        handed, owned = store.create_stream("handed").id, store.create_stream("owned").id
        nodes = register(store, "a", "b")
        for stream in (handed, owned):
            store.open_stream(stream, node_id="a", node_epoch=nodes["a"])
        store.open_stream(handed, node_id="b", node_epoch=nodes["b"])
        old = nodes["a"]
        new = store.register_node("a").node_epoch
        before = snapshot(store, [handed, owned], ("a", "b"))
        try:
            for reopen in (False, True):
                if reopen:
                    store = self.reopen_keeping(store, location, handed, owned)
                with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                    store.release_streams("a", old, [handed, owned])
                for stream in (handed, owned):
                    with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                        store.open_stream(stream, node_id="a", node_epoch=old)
                with pytest.raises(FencedError, match=f"node_epoch=`{old}`"):
                    store.commit(commit_of(handed, 0, 1, epoch=1, node="a", node_epoch=old))
                assert snapshot(store, [handed, owned], ("a", "b")) == before
            store.commit(commit_of(handed, 0, 1, epoch=1, node="a", node_epoch=new))
            store.release_streams("a", new, [handed, owned])
            assert [(m.owner, m.handover_from) for m in (store.get_stream(handed),
                                                         store.get_stream(owned))] == \
                [("b", None), (None, None)]
        finally:
            store.close()

    # ---- key-value entries ----

    def test_kv_get_put_conditions_and_delete(self, store: MetadataStore) -> None:
        assert store.kv_get("brokers", "p0") is None
        assert store.kv_write("brokers", "p0", b"stream-1")  # unconditional
        assert store.kv_get("brokers", "p0") == b"stream-1"
        assert not store.kv_write("brokers", "p0", b"x", expected=None)  # put-if-absent: no
        assert store.kv_write("brokers", "p1", b"stream-2", expected=None)  # absent: yes
        assert not store.kv_write("brokers", "p0", b"x", expected=b"other")  # CAS: wrong
        assert store.kv_get("brokers", "p0") == b"stream-1"
        assert store.kv_write("brokers", "p0", b"stream-3", expected=b"stream-1")  # CAS: right
        assert store.kv_get("brokers", "p0") == b"stream-3"
        assert store.kv_write("offsets", "p0", b"\x00" * 8)  # another namespace
        assert store.kv_items("brokers") == [("p0", b"stream-3"), ("p1", b"stream-2")]
        assert store.kv_items("brokers", prefix="p1") == [("p1", b"stream-2")]
        assert store.kv_items("nobody") == []
        assert not store.kv_write("brokers", "p1", None, expected=b"nope")  # conditional delete
        assert store.kv_write("brokers", "p1", None, expected=b"stream-2")
        assert store.kv_write("brokers", "gone", None)  # deleting nothing is fine
        assert store.kv_items("brokers") == [("p0", b"stream-3")]
        assert store.kv_write("brokers", "empty", b"")  # an empty value is a value
        assert store.kv_get("brokers", "empty") == b""
        assert not store.kv_write("brokers", "empty", b"x", expected=None)

    def test_kv_writes_are_fenced_and_durable(self, store: MetadataStore,
                                              location: Path) -> None:
        epoch = store.register_node("n1").node_epoch
        assert store.kv_write("ns", "k", b"v1", node_id="n1", node_epoch=epoch)
        store.register_node("n1")  # another process took the node over
        with pytest.raises(FencedError, match="node_epoch"):
            store.kv_write("ns", "k", b"v2", node_id="n1", node_epoch=epoch)
        assert store.kv_get("ns", "k") == b"v1"
        store = self.reopen(store, location)
        try:
            assert store.kv_get("ns", "k") == b"v1"
            assert store.kv_items("ns") == [("k", b"v1")]
        finally:
            store.close()

    def test_kv_compare_and_set_from_threads_loses_no_update(self, store: MetadataStore
                                                              ) -> None:
        """Eight threads add one to a counter 10 times each with compare-and-set, retrying
        when they lose: the counter ends at 80."""
        store.kv_write("c", "n", b"0")
        errors: list[BaseException] = []

        def add(times: int) -> None:
            try:
                for _ in range(times):
                    while True:
                        old = store.kv_get("c", "n")
                        assert old is not None
                        if store.kv_write("c", "n", str(int(old) + 1).encode(), expected=old):
                            break
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)

        workers = [threading.Thread(target=add, args=(10,)) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == [] and store.kv_get("c", "n") == b"80"

    def test_kv_bad_arguments_are_named(self, store: MetadataStore) -> None:
        untyped: Any = store  # for the calls with arguments of the wrong type
        cases: list[tuple[type[Exception], str, Callable[[], object]]] = [
            (ValueError, "namespace", lambda: store.kv_get("", "k")),
            (TypeError, "key", lambda: untyped.kv_get("ns", 5)),
            (TypeError, "bytes", lambda: untyped.kv_write("ns", "k", "text")),
            (ValueError, "at most", lambda: store.kv_write("ns", "k", bytes(MAX_KV_VALUE + 1))),
            (TypeError, "bytes", lambda: untyped.kv_write("ns", "k", b"v", expected=1)),
            (ValueError, "node_id", lambda: store.kv_write("ns", "k", b"v", node_id="a/b",
                                                            node_epoch=1)),
            (TypeError, "prefix", lambda: untyped.kv_items("ns", prefix=None)),
        ]
        for kind, name, call in cases:
            with pytest.raises(kind, match=name):
                call()
        assert store.kv_items("ns") == []

    # ---- durability, threads, lifecycle ----

    def test_everything_survives_close_and_reopen(self, store: MetadataStore,
                                                  location: Path) -> None:
        a, b = self.two_open_streams(store)
        named = store.create_stream("named").id
        store.register_node("n1")
        store.commit(Commit(node_id="n1", wal_position=10, epochs={a: 1, b: 1},
                            objects=[make_object("o1", (a, 0, 10), (b, 0, 3))]))
        store.trim_stream(a, 4)
        store.destroy_stream(b)
        before = snapshot(store, [a, b, named])
        store = self.reopen(store, location)
        try:
            assert snapshot(store, [a, b, named]) == before
            assert store.get_stream_by_name("named").id == named
            assert store.open_stream(a).epoch == 2
        finally:
            store.close()

    def test_concurrent_commits_on_different_streams_all_apply(self, store: MetadataStore
                                                               ) -> None:
        threads, rounds = 8, 15
        ids = [store.open_stream(store.create_stream().id).id for _ in range(threads)]
        errors: list[BaseException] = []
        created: list[int] = []

        def writer(i: int) -> None:
            try:
                for r in range(rounds):
                    store.commit(Commit(node_id=f"n{i}", wal_position=r + 1,
                                        epochs={ids[i]: 1},
                                        objects=[make_object(f"t{i}-{r}",
                                                             (ids[i], 2 * r, 2 * r + 2))]))
                    created.append(store.create_stream().id)
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)

        workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        for i, stream_id in enumerate(ids):
            assert store.get_stream(stream_id).end_offset == 2 * rounds
            assert [o.key for o in store.objects(stream_id)] == [f"t{i}-{r}"
                                                                 for r in range(rounds)]
            assert store.node(f"n{i}").wal_position == rounds
        assert len(set(created)) == threads * rounds

    def test_a_closed_store_refuses_every_call(self, store: MetadataStore) -> None:
        stream = store.create_stream()
        store.close()
        for call in (store.create_stream, store.streams, lambda: store.get_stream(stream.id),
                     lambda: store.open_stream(stream.id), lambda: store.node("n1"),
                     lambda: store.commit(Commit(node_id="n1", wal_position=0))):
            with pytest.raises(StreamClosed):
                call()
        store.close()  # twice is fine

    def test_bad_arguments_are_named(self, store: MetadataStore) -> None:
        stream = store.create_stream().id
        untyped: Any = store  # for the calls with arguments of the wrong type
        cases: list[tuple[type[Exception], str, Callable[[], object]]] = [
            (TypeError, "name", lambda: untyped.create_stream(b"x")),
            (ValueError, "name", lambda: store.create_stream("")),
            (ValueError, "name", lambda: store.create_stream("a\x00b")),
            (TypeError, "stream_id", lambda: untyped.get_stream("1")),
            (TypeError, "stream_id", lambda: store.get_stream(True)),
            (ValueError, "stream_id", lambda: store.get_stream(-1)),
            (ValueError, "stream_id", lambda: store.open_stream(1 << 63)),
            (ValueError, "expected_epoch", lambda: store.open_stream(stream, expected_epoch=-1)),
            (ValueError, "offset", lambda: store.trim_stream(stream, -5)),
            (TypeError, "offset", lambda: untyped.trim_stream(stream, 1.5)),
            (ValueError, "from_offset", lambda: store.objects(stream, -1)),
            (TypeError, "Commit", lambda: untyped.commit({"node_id": "n1"})),
            (ValueError, "node_id", lambda: store.node("a/b")),
            (TypeError, "node_id", lambda: untyped.register_node(None)),
            (TypeError, "name", lambda: untyped.get_stream_by_name(3)),
        ]
        for kind, word, call in cases:
            with pytest.raises(kind, match=word):
                call()
        assert store.streams() == [store.get_stream(stream)]

    def test_value_types_check_their_fields(self) -> None:
        with pytest.raises(ValueError, match="at least one record"):
            StreamRange(1, 5, 5, 10)
        with pytest.raises(ValueError, match="size"):
            StreamRange(1, 0, 5, -1)
        with pytest.raises(ValueError, match="one range per stream"):
            make_object("k", (1, 0, 5), (1, 5, 6))
        with pytest.raises(ValueError, match="larger than the object"):
            ObjectMeta("k", 10, (StreamRange(1, 0, 5, 11),))
        with pytest.raises(ValueError, match="at least one range"):
            ObjectMeta("k", 10, ())
        with pytest.raises(TypeError, match="StreamRange"):
            ObjectMeta("k", 10, ((1, 0, 5, 5),))  # type: ignore[arg-type]  # a tuple, on purpose
        one, two = make_object("k1", (1, 0, 5)), make_object("k2", (1, 6, 9))
        with pytest.raises(ValueError, match="contiguous"):
            Commit(node_id="n", wal_position=0, objects=[one, two], epochs={1: 1})
        with pytest.raises(ValueError, match="stream=`1`"):
            Commit(node_id="n", wal_position=0, objects=[one])
        with pytest.raises(ValueError, match="twice"):
            Commit(node_id="n", wal_position=0, objects=[one, one], epochs={1: 1})
        with pytest.raises(ValueError, match="added and removed"):
            Commit(node_id="n", wal_position=0, objects=[one], epochs={1: 1}, remove=["k1"])
        with pytest.raises(TypeError, match="remove"):
            Commit(node_id="n", wal_position=0, remove="k1")
        with pytest.raises(ValueError, match="wal_position"):
            Commit(node_id="n", wal_position=-1)
        ordered = Commit(node_id=3,  # type: ignore[arg-type]  # an int id is taken, as its str
                         wal_position=0, epochs={1: 1},
                         objects=[make_object("k2", (1, 5, 9)), make_object("k1", (1, 0, 5))])
        assert ordered.node_id == "3" and ordered.extents() == {1: (0, 9)}

    # ---- the model ----

    def test_matches_the_model(self, tmp_path: Path) -> None:
        """Random operations, closes and reopens: the store and the model never differ."""
        factory = self.open_store

        class Machine(MetadataMachine):
            pass

        Machine.factory = staticmethod(factory)
        Machine.base = tmp_path
        run_state_machine_as_test(Machine, settings=settings(
            max_examples=self.model_examples, stateful_step_count=self.model_steps,
            deadline=None))
