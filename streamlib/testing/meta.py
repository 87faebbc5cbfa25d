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
``capabilities.shared`` is true; elsewhere those tests skip. The lifecycle's (replacements,
doomed objects, retention: docs/lifecycle.md) are in :mod:`streamlib.testing.meta_lifecycle`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.stateful import (
    run_state_machine_as_test,
)

from streamlib.errors import (
    CommitConflict,
    FencedError,
    OffsetOutOfRange,
    StreamClosed,
    StreamExists,
    StreamNotFound,
)
from streamlib.meta import (
    MAX_KV_VALUE,
    Commit,
    MetadataStore,
    NodeMeta,
    ObjectMeta,
    Retention,
    StreamMeta,
    StreamObject,
    StreamRange,
    StreamState,
)
from streamlib.testing.meta_lifecycle import LifecycleContract
from streamlib.testing.meta_model import (
    MetadataMachine,
    MetadataModel,
    commit_of,
    holds,
    make_object,
    register,
    snapshot,
)
from streamlib.testing.meta_owners import OwnersContract, StoreFixtures


class MetadataContract(OwnersContract, LifecycleContract):
    """The behaviour docs/store.md promises of a metadata store, for any backend (with
    :class:`~streamlib.testing.meta_owners.OwnersContract`: owners and hand-overs, and
    :class:`~streamlib.testing.meta_lifecycle.LifecycleContract`: replacements, doomed
    objects, retention)."""

    model_examples = 50
    """Hypothesis examples of the model test (each up to ``model_steps`` operations)."""
    model_steps = 40

    # ---- streams ----

    def test_create_get_and_list(self, store: MetadataStore) -> None:
        assert store.streams() == []
        a = store.create_stream("orders")
        b = store.create_stream()
        assert a == StreamMeta(a.id, "orders", 0, 0, 0, StreamState.OPEN,
                               created_ms=a.created_ms) and a.live
        assert b.name is None and b.id > a.id
        assert store.get_stream(a.id) == a and store.get_stream(b.id) == b
        assert store.get_stream_by_name("orders") == a
        assert store.streams() == [a, b]
        with pytest.raises(StreamNotFound, match="stream=`12345`"):
            store.get_stream(12345)
        with pytest.raises(StreamNotFound, match="name=`'nope'`"):
            store.get_stream_by_name("nope")

    def test_a_stream_keeps_the_time_it_was_created(self, store: MetadataStore,
                                                    location: Path) -> None:
        """``created_ms`` is the clock at the create (whole milliseconds) and every change of
        the stream, every read of it and a reopen keep it."""
        before = math.floor(time.time() * 1000)
        made = store.create_stream("s", retention=Retention(max_bytes=1 << 20))
        other = store.create_and_open(node_id="n1")
        after = math.ceil(time.time() * 1000)
        assert made.created_ms is not None and other.created_ms is not None
        assert before <= made.created_ms <= other.created_ms <= after
        store.register_node("n1")
        epoch = store.open_stream(made.id).epoch
        store.commit(Commit(node_id="n1", wal_position=1, epochs={made.id: epoch},
                            objects=[make_object("o1", (made.id, 0, 5))]))
        store.trim_stream(made.id, 2)
        assert store.set_retention(made.id, None).created_ms == made.created_ms
        assert store.get_stream_by_name("s").created_ms == made.created_ms
        assert [m.created_ms for m in store.streams()] == [made.created_ms, other.created_ms]
        assert store.destroy_stream(other.id).created_ms == other.created_ms
        store = self.reopen(store, location)
        try:
            assert store.get_stream(made.id).created_ms == made.created_ms
            assert store.get_stream(other.id, include_destroyed=True).created_ms == \
                other.created_ms
        finally:
            store.close()

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

    def test_create_and_open_is_a_create_then_an_open(self, store: MetadataStore,
                                                      location: Path) -> None:
        """``create_and_open``: the stream as ``create_stream`` makes it, opened by the node
        (epoch 1); a taken name and a fenced node are refused as by the two calls, and a
        refused one creates nothing."""
        node_epoch = store.register_node("n1").node_epoch
        made = store.create_and_open("s", retention=Retention(max_bytes=1 << 20),
                                     node_id="n1", node_epoch=node_epoch)
        assert (made.name, made.epoch, made.end_offset) == ("s", 1, 0)
        assert made.retention == Retention(max_bytes=1 << 20)
        assert store.get_stream(made.id) == made
        with pytest.raises(StreamExists):
            store.create_and_open("s", node_id="n1", node_epoch=node_epoch)
        store.register_node("n1")  # another process has its id: this one is fenced
        with pytest.raises(FencedError, match=f"node_epoch=`{node_epoch}`"):
            store.create_and_open("t", node_id="n1", node_epoch=node_epoch)
        assert [m.name for m in store.streams()] == ["s"]
        store = self.reopen(store, location)
        try:
            assert store.get_stream(made.id) == made
            assert store.create_and_open(node_id="n1").id > made.id  # no epoch: not checked
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

    def test_kv_get_within_a_staleness_bound_sees_its_own_writes(self, store: MetadataStore
                                                                 ) -> None:
        """A read that accepts a bounded staleness sees every value written through the same
        handle before it — set, replaced, deleted — whatever the bound."""
        for bound in (None, 0, 60_000):
            assert store.kv_get("ns", "k", max_staleness_ms=bound) is None
            assert store.kv_write("ns", "k", b"one")
            assert store.kv_get("ns", "k", max_staleness_ms=bound) == b"one"
            assert store.kv_write("ns", "k", b"two", expected=b"one")
            assert store.kv_get("ns", "k", max_staleness_ms=bound) == b"two"
            assert store.kv_write("ns", "k", None)
            assert store.kv_get("ns", "k", max_staleness_ms=bound) is None

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
            (ValueError, "max_staleness_ms", lambda: store.kv_get("ns", "k",
                                                                  max_staleness_ms=-1)),
            (TypeError, "max_staleness_ms", lambda: untyped.kv_get("ns", "k",
                                                                   max_staleness_ms="5")),
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


__all__ = ["LifecycleContract", "MetadataContract", "MetadataMachine", "MetadataModel",
           "OwnersContract", "StoreFixtures", "commit_of", "holds", "make_object", "register",
           "snapshot"]
