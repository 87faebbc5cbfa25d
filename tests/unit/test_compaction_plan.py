"""The compaction planner (streamlib.lifecycle.compaction.plan, docs/lifecycle.md "What is
merged"): which objects are merged into which outputs, as a pure function of the live objects
and the streams. The outputs' bytes are tested in tests/integration/test_compaction.py."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamlib.lifecycle.compaction import Limits, Task, natural_key, plan, readable
from streamlib.meta import ObjectMeta, StreamMeta, StreamRange, StreamState

# A plan from metadata alone, no bytes read or written: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

MiB = 1 << 20
LIMITS = Limits(object_bytes=64 * MiB, max_object_bytes=256 * MiB, max_objects=500,
                stream_object_bytes=4 * MiB)


def stream(stream_id: int, start: int = 0, end: int = 10**9, live: bool = True) -> StreamMeta:
    return StreamMeta(stream_id, None, 1, start, end,
                      StreamState.OPEN if live else StreamState.DESTROYED)


def rounds(sizes: Sequence[Mapping[int, int]], *, records: int = 10,
           prefix: str = "data/n/1") -> list[ObjectMeta]:
    """Upload rounds: round i holds ``sizes[i][stream]`` bytes of each stream it names, as
    ``records`` records; offsets continue from round to round."""
    ends: dict[int, int] = {}
    objects = []
    for i, held in enumerate(sizes):
        ranges = []
        for stream_id, size in sorted(held.items()):
            start = ends.get(stream_id, 0)
            ends[stream_id] = start + records
            ranges.append(StreamRange(stream_id, start, start + records, size))
        objects.append(ObjectMeta(f"{prefix}/{i + 1:012d}-x.{'m' if len(held) > 1 else 's'}obj",
                                  sum(held.values()) + 100, tuple(ranges)))
    return objects


def streams_of(*metas: StreamMeta, ids: Sequence[int] = ()) -> dict[int, StreamMeta]:
    found = {s.id: s for s in metas}
    for stream_id in ids:
        found.setdefault(stream_id, stream(stream_id))
    return found


def coverage(task: Task) -> dict[int, list[tuple[int, int]]]:
    """Each stream's pieces in the task's outputs, in output order."""
    found: dict[int, list[tuple[int, int]]] = {}
    for output in task.outputs:
        for piece in output.pieces:
            found.setdefault(piece.stream_id, []).append((piece.start, piece.end))
    return found


def test_small_rounds_merge_and_big_streams_leave_as_stream_objects() -> None:
    objects = rounds([{1: MiB // 2, 2: 3 * MiB, 3: 10_000}] * 4)
    tasks = plan(objects, streams_of(ids=[1, 2, 3]), LIMITS)
    assert len(tasks) == 1
    task = tasks[0]
    assert task.kind == "multi" and task.inputs == tuple(objects)
    # Stream 2 holds 12 MiB in the window: an object of its own; 1 and 3 share one.
    assert [sorted({p.stream_id for p in o.pieces}) for o in task.outputs] == [[2], [1, 3]]
    assert coverage(task) == {s: [(0, 10), (10, 20), (20, 30), (30, 40)] for s in (1, 2, 3)}
    assert task.outputs[0].stream_object and not task.outputs[1].stream_object


def test_shared_outputs_stay_near_the_target_size() -> None:
    limits = Limits(object_bytes=4 * MiB, max_object_bytes=64 * MiB, max_objects=500,
                    stream_object_bytes=4 * MiB)
    objects = rounds([dict.fromkeys(range(1, 11), MiB // 4)] * 4)  # 10 streams of 1 MiB each
    (task,) = plan(objects, streams_of(ids=range(1, 11)), limits)
    assert [o.size for o in task.outputs] == [4 * MiB, 4 * MiB, 2 * MiB]
    assert all(len({p.stream_id for p in o.pieces}) == 4 for o in task.outputs[:2])


def test_a_window_ends_where_a_stream_would_not_be_contiguous() -> None:
    first = rounds([{1: 100, 2: 100}] * 2)
    # Stream 1's next records are in a stream object (large: not an input), then rounds go on.
    big = ObjectMeta("data/n/1/000000000003-x.sobj", 100 * MiB,
                     (StreamRange(1, 20, 30, 100 * MiB),))
    later = [ObjectMeta(f"data/n/1/00000000000{i}-x.mobj", 300,
                        (StreamRange(1, 30 + (i - 4) * 10, 40 + (i - 4) * 10, 100),
                         StreamRange(2, 20 + (i - 4) * 10, 30 + (i - 4) * 10, 100)))
             for i in (4, 5)]
    tasks = plan([*first, big, *later], streams_of(ids=[1, 2]), LIMITS)
    assert [tuple(o.key for o in t.inputs) for t in tasks] == [
        tuple(o.key for o in first), tuple(o.key for o in later)]


def test_windows_keep_to_the_object_and_byte_limits() -> None:
    objects = rounds([{1: 10, 2: 10}] * 7)
    limits = Limits(object_bytes=64 * MiB, max_object_bytes=256 * MiB, max_objects=3,
                    stream_object_bytes=4 * MiB)
    tasks = plan(objects, streams_of(ids=[1, 2]), limits)
    assert [len(t.inputs) for t in tasks] == [3, 3]  # the seventh alone is not worth a task
    limits = Limits(object_bytes=1 * MiB, max_object_bytes=1 * MiB, max_objects=500,
                    stream_object_bytes=4 * MiB)
    objects = rounds([{1: 300_000, 2: 300_000}] * 4)  # 600,100 bytes each
    assert [len(t.inputs) for t in plan(objects, streams_of(ids=[1, 2]), limits)] == []
    objects = rounds([{1: 100_000, 2: 100_000}] * 12)  # 200,100 bytes each: 5 a window
    assert [len(t.inputs) for t in plan(objects, streams_of(ids=[1, 2]), limits)] == [5, 5, 2]


def test_trimmed_and_destroyed_data_is_not_copied() -> None:
    objects = rounds([{1: 100, 2: 100, 3: 100}] * 4)
    streams = streams_of(stream(1, start=25), stream(2, live=False), ids=[3])
    (task,) = plan(objects, streams, LIMITS)
    assert task.inputs == tuple(objects)  # every one still holds readable records of 3
    assert coverage(task) == {1: [(25, 30), (30, 40)],
                              3: [(0, 10), (10, 20), (20, 30), (30, 40)]}
    # Objects holding nothing readable are the deletion pass's, not the planner's.
    gone = plan(objects, streams_of(stream(1, start=40), stream(2, live=False),
                                    stream(3, start=40)), LIMITS)
    assert gone == []
    assert readable(objects[0], streams_of(stream(1, start=5), stream(2, live=False))) == [
        (objects[0].ranges[0], 5)]


def test_large_objects_are_not_inputs() -> None:
    objects = rounds([{1: 40 * MiB, 2: 40 * MiB}] * 3)  # 80 MiB each: above the target
    assert plan(objects, streams_of(ids=[1, 2]), LIMITS) == []


def test_a_streams_adjacent_small_stream_objects_merge() -> None:
    objects = rounds([{1: 20 * MiB}] * 7 + [{2: MiB}])
    gap = ObjectMeta("data/n/1/000000000099-x.sobj", 30 * MiB,
                     (StreamRange(1, 1000, 1010, 30 * MiB),))  # not adjacent to the others
    tasks = plan([*objects, gap], streams_of(ids=[1, 2]), LIMITS)
    assert [(t.kind, [o.ranges[0].start_offset for o in t.inputs]) for t in tasks] == [
        ("stream", [0, 10, 20]), ("stream", [30, 40, 50])]  # 60 MiB each: the 7th is alone
    assert all(len(t.outputs) == 1 and t.outputs[0].stream_object for t in tasks)


def test_rounds_of_one_node_sort_in_commit_order() -> None:
    keys = ["data/n/10/000000000001-a.mobj", "data/n/9/000000000002-b.mobj",
            "data/n/9/000000000010-c.mobj"]
    assert sorted(keys, key=natural_key) == [keys[1], keys[2], keys[0]]


# ---- the plan's invariants, on any layout ----

@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[ObjectMeta], dict[int, StreamMeta]]:
    """Upload rounds of a few streams (some rounds split big streams into stream objects, some
    objects large), then trims and destroys."""
    count = draw(st.integers(1, 5))
    ends = dict.fromkeys(range(1, count + 1), 0)
    objects: list[ObjectMeta] = []
    for i in range(draw(st.integers(1, 25))):
        held = draw(st.dictionaries(st.sampled_from(sorted(ends)),
                                    st.sampled_from([1000, MiB, 5 * MiB, 70 * MiB]),
                                    min_size=1))
        shared = []
        for stream_id, size in sorted(held.items()):
            r = StreamRange(stream_id, ends[stream_id], ends[stream_id] + 10, size)
            ends[stream_id] += 10
            if size >= 5 * MiB:
                objects.append(ObjectMeta(f"data/n/1/{i:06d}-{stream_id}.sobj", size + 10, (r,)))
            else:
                shared.append(r)
        if shared:
            objects.append(ObjectMeta(f"data/n/1/{i:06d}-m.mobj",
                                      sum(r.size for r in shared) + 10, tuple(shared)))
    streams = {}
    for stream_id, end in ends.items():
        start = draw(st.integers(0, end))
        live = draw(st.booleans()) or stream_id == 1
        streams[stream_id] = stream(stream_id, start, end, live)
    return objects, {s.id: s for s in streams.values() if s.live}


@given(layouts(), st.sampled_from([2, 3, 500]))
def test_every_plan_keeps_the_invariants(layout: tuple[list[ObjectMeta], dict[int, StreamMeta]],
                                         max_objects: int) -> None:
    objects, streams = layout
    limits = Limits(object_bytes=64 * MiB, max_object_bytes=128 * MiB, max_objects=max_objects,
                    stream_object_bytes=4 * MiB)
    tasks = plan(objects, streams, limits)
    used = [o.key for t in tasks for o in t.inputs]
    assert len(used) == len(set(used))  # an object goes to one task at most
    for task in tasks:
        assert len(task.inputs) >= 2 and len(task.inputs) <= max_objects
        assert all(o.size < limits.object_bytes for o in task.inputs)
        expected = {}
        for obj in task.inputs:
            for r, start in readable(obj, streams):
                expected.setdefault(r.stream_id, []).append((start, r.end_offset))
        found = coverage(task)
        assert {s: sorted(p) for s, p in found.items()} == {s: sorted(p)
                                                           for s, p in expected.items()}
        for output in task.outputs:
            ids = [p.stream_id for p in output.pieces]
            assert ids == sorted(ids)  # an object holds streams in id order
        for pieces in found.values():
            ordered = sorted(pieces)
            # A stream's records in the task are contiguous once the first kept one is.
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ordered))
        for output in task.outputs:
            for stream_id in {p.stream_id for p in output.pieces}:
                spans = sorted((p.start, p.end) for p in output.pieces if p.stream_id == stream_id)
                assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
