"""The metadata's part of the object lifecycle (docs/lifecycle.md) that every store must keep:
replacements (compaction's swap, deletion's marking), doomed objects and ``forget``, the paged
``live_objects``, retention kept with each stream. Part of
:class:`~streamlib.testing.meta.MetadataContract`."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamlib.errors import (
    CommitConflict,
    CompactionConflict,
    StreamClosed,
    StreamNotFound,
)
from streamlib.meta import (
    Commit,
    MetadataStore,
    ObjectMeta,
    Replacement,
    Retention,
    StreamObject,
)
from streamlib.testing.meta_model import make_object, snapshot
from streamlib.testing.meta_owners import StoreFixtures


def now_ms() -> int:
    return int(time.time() * 1000)


class Layout:
    """Streams ``a``, ``b``, ``c`` (open at epoch 1) and, committed by node ``n1``:
    ``o1`` = a [0, 10) + b [0, 5), ``o2`` = a [10, 20), ``o3`` = a [20, 25) + b [5, 8),
    ``o4`` = c [0, 4)."""

    def __init__(self, store: MetadataStore) -> None:
        self.a, self.b, self.c = (store.open_stream(store.create_stream(name).id).id
                                  for name in ("a", "b", "c"))
        a, b, c = self.a, self.b, self.c
        self.o1 = make_object("o1", (a, 0, 10), (b, 0, 5))
        self.o2 = make_object("o2", (a, 10, 20))
        self.o3 = make_object("o3", (a, 20, 25), (b, 5, 8))
        self.o4 = make_object("o4", (c, 0, 4))
        store.commit(Commit(node_id="n1", wal_position=10, epochs={a: 1, b: 1},
                            objects=[self.o1, self.o2]))
        store.commit(Commit(node_id="n1", wal_position=20, epochs={a: 1, b: 1, c: 1},
                            objects=[self.o3, self.o4]))
        self.ids = [a, b, c]


def keys_of(objects: list[ObjectMeta] | list[StreamObject]) -> list[str]:
    return [o.key for o in objects]


class LifecycleContract(StoreFixtures):
    """Replace, doomed objects, ``forget``, ``live_objects`` and retention."""

    # ---- replace ----

    def test_replace_swaps_the_inputs_for_the_outputs(self, store: MetadataStore,
                                                      location: Path) -> None:
        t = Layout(store)
        streams, node = store.streams(), store.node("n1")
        merged = make_object("m1", (t.a, 0, 20))
        moved = make_object("m2", (t.b, 0, 5), tier="archive")
        before = now_ms()
        store.replace(Replacement(inputs=["o1", "o2"], outputs=[merged, moved]))
        after = now_ms()
        assert store.objects(t.a) == [merged, t.o3]
        assert store.objects(t.b) == [moved, t.o3]
        assert store.objects(t.a, 19) == [merged, t.o3] and store.objects(t.a, 20) == [t.o3]
        assert store.stream_objects(t.b) == [
            StreamObject("m2", moved.size, moved.ranges[0], "archive"),
            StreamObject("o3", t.o3.size, t.o3.range_of(t.b), "")]  # type: ignore[arg-type]
        assert store.streams() == streams and store.node("n1") == node  # nothing else moved
        assert store.live_objects() == [merged, moved, t.o3, t.o4]
        doomed = store.doomed()
        assert [(d.key, d.size, d.tier) for d in doomed] == [("o1", t.o1.size, ""),
                                                             ("o2", t.o2.size, "")]
        for d in doomed:  # by the writer's clock, which is this machine's here
            assert before - 5_000 <= d.marked_at_ms <= after + 5_000
        assert doomed[0].marked_at_ms == doomed[1].marked_at_ms
        # Doomed objects go on: an archive output compacted again, and a deletion.
        store.replace(Replacement(inputs=["m2", "o3"], outputs=[
            make_object("m3", (t.a, 20, 25), (t.b, 0, 8))]))
        assert keys_of(store.objects(t.a)) == ["m1", "m3"]
        assert {(d.key, d.tier) for d in store.doomed()} == {
            ("o1", ""), ("o2", ""), ("m2", "archive"), ("o3", "")}
        kept = snapshot(store, t.ids)
        store = self.reopen(store, location)
        try:
            assert snapshot(store, t.ids) == kept
        finally:
            store.close()

    @pytest.mark.parametrize("broken", [
        "input never committed", "input doomed", "output key live", "output key doomed",
        "output of a destroyed stream", "inputs not contiguous", "outputs short of the end",
        "outputs past the end", "outputs start above the first readable record",
        "outputs start below the inputs", "readable records left out",
        "output of a stream without inputs", "output of an unknown stream"])
    def test_a_refused_replace_changes_nothing(self, store: MetadataStore, broken: str) -> None:
        t = Layout(store)
        inputs, ranges = ["o1", "o2"], [(t.a, 0, 20), (t.b, 0, 5)]
        key = "new"
        match = {"input never committed": "not committed", "input doomed": "doomed already",
                 "output key live": "taken", "output key doomed": "taken",
                 "output of a destroyed stream": "destroyed",
                 "inputs not contiguous": "not contiguous",
                 "outputs short of the end": "end where", "outputs past the end": "end where",
                 "outputs start above the first readable record": "leave out",
                 "outputs start below the inputs": "below",
                 "readable records left out": "no output",
                 "output of a stream without inputs": "do not hold",
                 "output of an unknown stream": "do not hold"}[broken]
        if broken == "input never committed":
            inputs.append("nope")
        elif broken == "input doomed":
            store.replace(Replacement(inputs=["o4"], outputs=[make_object("c1", (t.c, 0, 4))]))
            inputs.append("o4")
        elif broken == "output key live":
            key = "o3"
        elif broken == "output key doomed":
            store.replace(Replacement(inputs=["o4"], outputs=[make_object("c1", (t.c, 0, 4))]))
            key = "o4"
        elif broken == "output of a destroyed stream":
            store.destroy_stream(t.b)
        elif broken == "inputs not contiguous":
            inputs, ranges = ["o1", "o3"], [(t.a, 0, 25), (t.b, 0, 8)]
        elif broken == "outputs short of the end":
            ranges[0] = (t.a, 0, 19)
        elif broken == "outputs past the end":
            ranges[0] = (t.a, 0, 21)
        elif broken == "outputs start above the first readable record":
            store.trim_stream(t.a, 3)
            ranges[0] = (t.a, 4, 20)
        elif broken == "outputs start below the inputs":
            inputs, ranges = ["o2"], [(t.a, 9, 20)]
        elif broken == "readable records left out":
            ranges = [(t.a, 0, 20)]
        elif broken == "output of a stream without inputs":
            ranges.append((t.c, 0, 4))
        elif broken == "output of an unknown stream":
            ranges.append((t.c + 1000, 0, 4))
        before = snapshot(store, t.ids)
        with pytest.raises(CompactionConflict, match=match):
            store.replace(Replacement(inputs=inputs, outputs=[make_object(key, *ranges)]))
        assert snapshot(store, t.ids) == before

    def test_a_trimmed_stream_is_covered_from_its_first_readable_record(
            self, store: MetadataStore) -> None:
        """Trimmed since the plan, a stream may be covered from any offset up to its start
        (a batch across the start is copied whole), never above it."""
        t = Layout(store)
        store.trim_stream(t.a, 15)
        with pytest.raises(CompactionConflict, match="leave out"):
            store.replace(Replacement(inputs=["o1", "o2"], outputs=[
                make_object("m1", (t.a, 16, 20), (t.b, 0, 5))]))
        store.replace(Replacement(inputs=["o1", "o2"], outputs=[
            make_object("m1", (t.a, 12, 20), (t.b, 0, 5))]))
        assert keys_of(store.objects(t.a, 15)) == ["m1", "o3"]
        store.replace(Replacement(inputs=["m1"], outputs=[
            make_object("m2", (t.a, 15, 20), (t.b, 0, 5))]))  # exactly at the start: fine
        assert store.objects(t.a)[0].range_of(t.a).start_offset == 15  # type: ignore[union-attr]

    def test_trimmed_records_are_carried_over_only_without_a_gap(
            self, store: MetadataStore) -> None:
        """An input wholly below the start may join a merge even when it is not contiguous
        with the rest, and trimmed records may be carried over from as low as the inputs
        hold them without a gap up to their end — never across a gap (another object holds
        those offsets)."""
        t = Layout(store)
        store.trim_stream(t.a, 22)
        with pytest.raises(CompactionConflict, match="below what the inputs hold"):
            store.replace(Replacement(inputs=["o1", "o3"], outputs=[
                make_object("m1", (t.a, 0, 25), (t.b, 0, 8))]))
        store.replace(Replacement(inputs=["o1", "o3"], outputs=[
            make_object("m1", (t.a, 20, 25), (t.b, 0, 8))]))
        store.replace(Replacement(inputs=["o2", "m1"], outputs=[
            make_object("m2", (t.a, 10, 25), (t.b, 0, 8))]))  # [10, 20) + [20, 25): no gap
        assert keys_of(store.objects(t.a)) == ["m2"]

    def test_inputs_without_readable_records_need_no_outputs(self, store: MetadataStore
                                                             ) -> None:
        """Deletion's marking: an object whose every range is trimmed away or of a destroyed
        stream is replaced by nothing; records below the start may still be carried over."""
        t = Layout(store)
        store.trim_stream(t.a, 20)
        with pytest.raises(CompactionConflict, match="no output"):  # b [0, 5) is readable
            store.replace(Replacement(inputs=["o1"]))
        store.destroy_stream(t.b)
        store.replace(Replacement(inputs=["o1"]))
        store.replace(Replacement(inputs=["o2"], outputs=[make_object("m2", (t.a, 10, 20))]))
        assert keys_of(store.objects(t.a)) == ["m2", "o3"]
        assert keys_of(store.live_objects()) == ["m2", "o3", "o4"]
        assert sorted(d.key for d in store.doomed()) == ["o1", "o2"]
        store.destroy_stream(t.c)
        store.replace(Replacement(inputs=["o4"]))  # a destroyed stream's objects: doomed whole
        assert "o4" in {d.key for d in store.doomed()}

    def test_of_two_replaces_of_one_input_the_second_conflicts(self, store: MetadataStore
                                                                ) -> None:
        t = Layout(store)
        store.replace(Replacement(inputs=["o2"], outputs=[make_object("x1", (t.a, 10, 20))]))
        before = snapshot(store, t.ids)
        with pytest.raises(CompactionConflict, match="key=`o2`"):
            store.replace(Replacement(inputs=["o2"],
                                      outputs=[make_object("y1", (t.a, 10, 20))]))
        assert snapshot(store, t.ids) == before
        assert "y1" not in keys_of(store.live_objects())

    def test_concurrent_replaces_of_one_input_one_wins(self, store: MetadataStore) -> None:
        t = Layout(store)
        outcomes: list[str] = []
        go = threading.Barrier(4)

        def compact(i: int) -> None:
            go.wait()
            try:
                store.replace(Replacement(inputs=["o1", "o2"], outputs=[
                    make_object(f"w{i}", (t.a, 0, 20), (t.b, 0, 5))]))
                outcomes.append(f"w{i}")
            except CompactionConflict:
                outcomes.append("conflict")

        workers = [threading.Thread(target=compact, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        winners = [o for o in outcomes if o != "conflict"]
        assert len(outcomes) == 4 and len(winners) == 1
        assert keys_of(store.objects(t.a)) == [winners[0], "o3"]

    # ---- doomed objects ----

    def test_a_commit_dooms_what_it_removes(self, store: MetadataStore) -> None:
        t = Layout(store)
        store.trim_stream(t.a, 20)
        store.trim_stream(t.b, 5)
        before = now_ms()
        store.commit(Commit(node_id="n1", wal_position=30, remove=["o1", "o2"]))
        assert keys_of(store.live_objects()) == ["o3", "o4"]
        doomed = store.doomed()
        assert [(d.key, d.size, d.tier) for d in doomed] == [("o1", t.o1.size, ""),
                                                             ("o2", t.o2.size, "")]
        assert all(before - 5_000 <= d.marked_at_ms <= now_ms() + 5_000 for d in doomed)
        for remove in (["o1"], ["o2", "nothing"]):  # doomed already, or never committed
            with pytest.raises(CommitConflict, match="key=`o"):
                store.commit(Commit(node_id="n1", wal_position=30, remove=remove))

    def test_a_doomed_key_is_never_committed_again(self, store: MetadataStore) -> None:
        t = Layout(store)
        store.replace(Replacement(inputs=["o4"], outputs=[make_object("c1", (t.c, 0, 4))]))
        before = snapshot(store, t.ids)
        with pytest.raises(CommitConflict, match="key=`o4`"):
            store.commit(Commit(node_id="n1", wal_position=40, epochs={t.c: 1},
                                objects=[make_object("o4", (t.c, 4, 9))]))
        with pytest.raises(CompactionConflict, match="key=`o4`"):
            store.replace(Replacement(inputs=["c1"], outputs=[make_object("o4", (t.c, 0, 4))]))
        assert snapshot(store, t.ids) == before

    def test_forget_drops_doomed_entries_only(self, store: MetadataStore,
                                              location: Path) -> None:
        t = Layout(store)
        store.replace(Replacement(inputs=["o1", "o2"], outputs=[
            make_object("m1", (t.a, 0, 20), (t.b, 0, 5))]))
        live = store.live_objects()
        assert store.forget([]) == 0
        assert store.forget(["o1", "o1", "m1", "o3", "never"]) == 1  # live and unknown: ignored
        assert [d.key for d in store.doomed()] == ["o2"]
        assert store.forget(["o1"]) == 0  # again: harmless
        assert store.live_objects() == live
        store = self.reopen(store, location)
        try:
            assert [d.key for d in store.doomed()] == ["o2"]
            assert store.forget(("o2",)) == 1 and store.doomed() == []
        finally:
            store.close()

    # ---- live objects ----

    def test_live_objects_come_in_pages_by_key(self, store: MetadataStore) -> None:
        stream = store.open_stream(store.create_stream().id).id
        keys = ["k07", "k03", "k11", "k01", "k05"]
        for n, key in enumerate(keys):
            store.commit(Commit(node_id="n1", wal_position=n, epochs={stream: 1},
                                objects=[make_object(key, (stream, n, n + 1))]))
        everything = store.live_objects()
        assert keys_of(everything) == sorted(keys)
        assert everything == sorted(store.objects(stream), key=lambda o: o.key)
        assert keys_of(store.live_objects(limit=2)) == ["k01", "k03"]
        assert keys_of(store.live_objects("k03", 2)) == ["k05", "k07"]
        assert keys_of(store.live_objects("k04")) == ["k05", "k07", "k11"]  # any str bounds
        assert keys_of(store.live_objects("")) == sorted(keys)
        assert store.live_objects("k11") == [] and store.live_objects("z") == []
        store.trim_stream(stream, 5)
        store.replace(Replacement(inputs=["k01"]))
        store.destroy_stream(stream)  # a destroyed stream's objects: still listed
        assert keys_of(store.live_objects(limit=1 << 40)) == ["k03", "k05", "k07", "k11"]

    def test_a_change_past_its_deadline_is_refused_whole(self, store: MetadataStore) -> None:
        """``not_after_ms``: a commit or a swap whose objects the garbage collector may have
        taken for orphans is refused in its own step, nothing applied."""
        t = Layout(store)
        before = snapshot(store, t.ids)
        past, future = int(time.time() * 1000) - 1, int(time.time() * 1000) + 3_600_000
        late = Commit(node_id="n1", wal_position=30, epochs={t.a: 1}, not_after_ms=past,
                      objects=[make_object("late", (t.a, 25, 30))])
        with pytest.raises(CommitConflict, match="too late"):
            store.commit(late)
        with pytest.raises(CompactionConflict, match="too late"):
            store.replace(Replacement(inputs=["o2"], outputs=[make_object("m", (t.a, 10, 20))],
                                      not_after_ms=past))
        assert snapshot(store, t.ids) == before and store.doomed() == []
        store.commit(dataclasses.replace(late, not_after_ms=future))
        store.replace(Replacement(inputs=["o2"], outputs=[make_object("m", (t.a, 10, 20))],
                                  not_after_ms=future))
        assert keys_of(store.objects(t.a)) == ["o1", "m", "o3", "late"]
        with pytest.raises(ValueError, match="not_after_ms"):
            Commit(node_id="n1", wal_position=0, not_after_ms=-1)

    def test_a_streams_objects_come_in_windows(self, store: MetadataStore) -> None:
        """``stream_objects(..., limit=)``: the first ``limit`` from the offset, as a reader's
        index window loads them."""
        stream = store.open_stream(store.create_stream().id).id
        for n in range(6):
            store.commit(Commit(node_id="n1", wal_position=n, epochs={stream: 1},
                                objects=[make_object(f"w{n}", (stream, 10 * n, 10 * n + 10))]))
        assert [o.key for o in store.stream_objects(stream, 0, limit=2)] == ["w0", "w1"]
        assert [o.key for o in store.stream_objects(stream, 25, limit=3)] == ["w2", "w3", "w4"]
        assert [o.key for o in store.stream_objects(stream, 30, limit=3)] == ["w3", "w4", "w5"]
        assert [o.key for o in store.stream_objects(stream, 50, limit=9)] == ["w5"]
        assert store.stream_objects(stream, 60, limit=1) == []
        assert store.stream_objects(stream, 0, limit=6) == store.stream_objects(stream, 0)
        for bad in (0, -1):
            with pytest.raises(ValueError, match="limit"):
                store.stream_objects(stream, 0, limit=bad)
        with pytest.raises(TypeError, match="limit"):
            store.stream_objects(stream, 0, limit="2")  # type: ignore[arg-type]

    # ---- retention ----

    def test_retention_is_kept_with_the_stream(self, store: MetadataStore,
                                               location: Path) -> None:
        week = Retention(max_age=7 * 86400, max_bytes=10 ** 12)
        kept = store.create_stream("r", retention=week)
        assert kept.retention == week and store.get_stream(kept.id) == kept
        unlimited = store.create_stream(retention=Retention())
        plain = store.create_stream("plain")
        assert unlimited.retention is None and plain.retention is None
        assert store.streams() == [kept, unlimited, plain]
        opened = store.open_stream(kept.id)
        assert opened.retention == week and opened.epoch == 1
        small = store.set_retention(plain.id, Retention(max_bytes=4096))
        assert small == dataclasses.replace(plain, retention=Retention(max_bytes=4096))
        # Whole milliseconds, at least one.
        odd = store.set_retention(kept.id, Retention(max_age=0.0004))
        assert odd.retention == Retention(max_age=0.001) and odd.epoch == 1
        assert store.set_retention(kept.id, Retention(max_age=1.5)).retention == \
            Retention(max_age=1.5)
        assert store.set_retention(plain.id, None).retention is None
        store.set_retention(plain.id, Retention(max_age=60))
        assert store.set_retention(plain.id, Retention()).retention is None
        store.set_retention(plain.id, Retention(max_age=60, max_bytes=1))
        streams = store.streams()
        store = self.reopen(store, location)
        try:
            assert store.streams() == streams
            assert store.get_stream(plain.id).retention == Retention(max_age=60, max_bytes=1)
            assert store.trim_stream(plain.id, 0).retention == Retention(max_age=60,
                                                                         max_bytes=1)
            gone = store.destroy_stream(plain.id)
            assert gone.retention == Retention(max_age=60, max_bytes=1)
            for stream_id in (plain.id, 12345):
                with pytest.raises(StreamNotFound, match=f"stream=`{stream_id}`"):
                    store.set_retention(stream_id, week)
        finally:
            store.close()

    # ---- arguments and closing ----

    def test_lifecycle_bad_arguments_are_named(self, store: MetadataStore) -> None:
        t = Layout(store)
        untyped: Any = store  # for the calls with arguments of the wrong type
        before = snapshot(store, t.ids)
        cases: list[tuple[type[Exception], str, Callable[[], object]]] = [
            (ValueError, "limit", lambda: store.live_objects(limit=0)),
            (TypeError, "limit", lambda: untyped.live_objects(limit="5")),
            (TypeError, "limit", lambda: untyped.live_objects(limit=True)),
            (TypeError, "after", lambda: untyped.live_objects(after=5)),
            (TypeError, "Replacement", lambda: untyped.replace({"inputs": ["o1"]})),
            (TypeError, "keys", lambda: untyped.forget("o1")),
            (TypeError, "key", lambda: untyped.forget([5])),
            (ValueError, "key", lambda: store.forget([""])),
            (TypeError, "retention", lambda: untyped.set_retention(t.a, 3600)),
            (TypeError, "retention", lambda: untyped.create_stream("x", retention="1h")),
            (TypeError, "stream_id", lambda: untyped.set_retention("1", None)),
            (ValueError, "max_age", lambda: Retention(max_age=-1)),
            (ValueError, "max_bytes", lambda: Retention(max_bytes=0)),
            (TypeError, "max_age", lambda: Retention(max_age="1h")),  # type: ignore[arg-type]
            (ValueError, "at least one input", lambda: Replacement(inputs=[])),
            (TypeError, "inputs", lambda: Replacement(inputs="o1")),
            (ValueError, "twice", lambda: Replacement(inputs=["o1", "o1"])),
            (ValueError, "both input and output", lambda: Replacement(
                inputs=["o1"], outputs=[make_object("o1", (t.a, 0, 10))])),
            (ValueError, "contiguous", lambda: Replacement(inputs=["o1"], outputs=[
                make_object("x", (t.a, 0, 5)), make_object("y", (t.a, 6, 10))])),
            (ValueError, "tier", lambda: make_object("x", (t.a, 0, 5), tier="cold")),
        ]
        for kind, word, call in cases:
            with pytest.raises(kind, match=word):
                call()
        assert snapshot(store, t.ids) == before

    def test_a_closed_store_refuses_the_lifecycle_calls(self, store: MetadataStore) -> None:
        stream = store.create_stream().id
        store.close()
        for call in (lambda: store.set_retention(stream, None), store.live_objects,
                     lambda: store.replace(Replacement(inputs=["o1"])), store.doomed,
                     lambda: store.forget(["o1"]),
                     lambda: store.create_stream(retention=Retention(max_bytes=1))):
            with pytest.raises(StreamClosed):
                call()


__all__ = ["Layout", "LifecycleContract"]
