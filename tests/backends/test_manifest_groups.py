"""Group commit at the manifest: the changes one process makes while a delta's create is in
flight share the next delta, each checked on its own and answered on its own; other nodes, a
restarted node and a checkpoint see every change of a group; a group whose version another
node takes is planned again; a forged group is refused whole. And key-value reads with a
bounded staleness (docs/shared-stores.md, "Group commit", "Key-value entries").

Every race here is ordered by gates and waits on events — the first create held at a gate of a
:class:`FaultyFileSystem`, the others known to have queued behind it
(``GroupCommit.wait_queued``) — never by sleeps."""

from __future__ import annotations

import base64
import functools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import in_thread

import streamlib
from streamlib.errors import CommitConflict, CorruptDataError, StreamExists, StreamNotFound
from streamlib.io import ObjectStore
from streamlib.meta import Commit
from streamlib.meta._manifest_checkpoint import dump_state
from streamlib.meta._manifest_state import CREATED_FORMAT, GROUP, GROUP_FORMAT
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing.faults import FaultyFileSystem
from streamlib.testing.meta import make_object

# The manifest: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

WAIT = 60.0  # seconds: a bound on waits for events that do come, never a pacing


def log_key(version: int) -> str:
    return f"manifest/log/{version:020d}"


@pytest.fixture
def root() -> Iterator[str]:
    """A fresh root in the process-wide memory filesystem, removed afterwards."""
    path = f"/manifest-groups-{uuid.uuid4().hex}"
    yield path
    memory = fsspec.filesystem("memory")
    if memory.exists(path):
        memory.rm(path, recursive=True)


class Writer:
    """A manifest handle on ``root`` whose object store is a :class:`FaultyFileSystem`, and
    the means to hold the create of one version until the test lets it go."""

    def __init__(self, root: str, node_id: str = "w", **options: Any) -> None:
        self.faulty = FaultyFileSystem(fsspec.filesystem("memory"))
        self.root = root
        self.store = ManifestMetadataStore(ObjectStore(self.faulty, root), node_id=node_id,
                                           **options)

    def hold(self, version: int) -> tuple[threading.Event, threading.Event]:
        """Hold the create of ``version``: (arrived: set when it is held, gate: set it to let
        it go)."""
        arrived, gate = threading.Event(), threading.Event()

        def match(path: str) -> bool:
            if path.endswith(log_key(version)):
                arrived.set()
                return True
            return False

        self.faulty.inject("put", gate=gate, match=match)
        return arrived, gate

    def delta_puts(self) -> list[str]:
        """The keys of the deltas this handle's store was asked to create, in order."""
        return [path for op, path, _ in self.faulty.events if op == "put" and "/log/" in path]


def queue_behind_a_held_create(writer: Writer, first: Callable[[], Any],
                               calls: list[Callable[[], Any]]
                               ) -> tuple[list[Any], list[list[Any]]]:
    """Start ``first`` and hold its create; start ``calls``, each on its thread; once all of
    them wait in the queue, let the create go and wait for every thread. Returns the first's
    outcome and the others'."""
    arrived, gate = writer.hold(writer.store.version + 1)
    held, first_outcome = in_thread(first)
    assert arrived.wait(WAIT)  # the first is planned and its create held
    started = [in_thread(call) for call in calls]
    assert writer.store._group.wait_queued(len(calls), WAIT)  # all queued behind it
    gate.set()
    for thread in [held, *(thread for thread, _ in started)]:
        thread.join(WAIT)
        assert not thread.is_alive()
    return first_outcome, [outcome for _, outcome in started]


def read_delta(root: str, version: int) -> dict[str, Any]:
    return dict(json.loads(fsspec.filesystem("memory").cat_file(f"{root}/{log_key(version)}")))


def state_of(store: ManifestMetadataStore) -> tuple[object, ...]:
    """What a handle knows, for comparing two handles."""
    return (store.version, store.streams(), store.live_objects(limit=100_000),
            store.kv_items("ns"), store.node("n1"), store.doomed())


# ---- group commit ----

def test_changes_queued_behind_a_create_in_flight_share_the_next_delta(root: str) -> None:
    """While one create is held, ten creates queue; they are written as one delta, a group of
    ten, in the order they queued, each answered with its own stream."""
    writer = Writer(root)
    v = writer.store.version
    calls: list[Callable[[], Any]] = [functools.partial(writer.store.create_stream, f"s{n}")
                                      for n in range(10)]
    first, outcomes = queue_behind_a_held_create(
        writer, lambda: writer.store.create_stream("first"), calls)
    assert first[0].name == "first" and first[0].id == 1
    answers = [outcome[0] for outcome in outcomes]
    assert sorted(a.name for a in answers) == [f"s{n}" for n in range(10)]
    assert sorted(a.id for a in answers) == list(range(2, 12))
    assert writer.delta_puts() == [f"{root}/{log_key(v + 1)}", f"{root}/{log_key(v + 2)}"]
    assert writer.store.version == v + 2
    group = read_delta(root, v + 2)
    assert group["format"] == CREATED_FORMAT and group["op"] == GROUP  # creation times in it
    changes = group["args"]["changes"]
    assert [c["op"] for c in changes] == ["create"] * 10
    by_id = {a.id: a.name for a in answers}
    assert [(c["args"]["id"], c["args"]["name"]) for c in changes] == sorted(by_id.items())
    assert read_delta(root, v + 1)["op"] == "create"  # a change alone: no group
    for answer in answers:
        assert writer.store.get_stream(answer.id) == answer


def test_a_lone_change_on_an_idle_manifest_costs_one_create(root: str) -> None:
    writer = Writer(root)
    gets = writer.faulty.calls.get("get", 0)
    for n in range(3):
        writer.store.create_stream(f"s{n}")
    assert len(writer.delta_puts()) == 3
    assert writer.faulty.calls.get("get", 0) == gets  # nor any read


def test_a_change_whose_check_fails_is_answered_alone_and_left_out(root: str) -> None:
    """A group holding a name taken twice, an open of no stream, a key-value write whose
    condition does not hold and a commit past its deadline: those four are answered with
    their own answers, the others are written, in one delta."""
    writer = Writer(root)
    store = writer.store
    stream = store.create_stream("s").id
    store.register_node("n1")
    epoch = store.open_stream(stream).epoch
    store.kv_write("ns", "k", b"old")
    v, puts = store.version, len(writer.delta_puts())
    late = Commit(node_id="n1", wal_position=1, epochs={stream: epoch}, not_after_ms=1,
                  objects=[make_object("late", (stream, 0, 5))])
    calls: list[Callable[[], Any]] = [
        lambda: store.create_stream("twice"),
        lambda: store.create_stream("twice"),
        lambda: store.open_stream(999),
        lambda: store.kv_write("ns", "k", b"new", expected=b"not this"),
        lambda: store.commit(late),
        lambda: store.kv_write("ns", "j", b"fine"),
        lambda: store.create_stream("other"),
    ]
    _, outcomes = queue_behind_a_held_create(
        writer, lambda: store.set_retention(stream, None), calls)
    twice = sorted(type(outcome[0]).__name__ for outcome in outcomes[:2])
    assert twice == ["StreamExists", "StreamMeta"]
    assert isinstance(outcomes[2][0], StreamNotFound)
    assert outcomes[3] == [False]
    assert isinstance(outcomes[4][0], CommitConflict) and "too late" in str(outcomes[4][0])
    assert outcomes[5] == [True]
    assert outcomes[6][0].name == "other"
    assert len(writer.delta_puts()) == puts + 2 and store.version == v + 2
    changes = read_delta(root, v + 2)["args"]["changes"]
    assert sorted(c["op"] for c in changes) == ["create", "create", "kv"]
    assert store.kv_get("ns", "k") == b"old" and store.kv_get("ns", "j") == b"fine"
    assert store.get_stream(stream).end_offset == 0
    assert [s.name for s in store.streams()] == ["s", "twice", "other"]


def test_a_group_that_loses_its_version_is_planned_again_on_the_newest(root: str) -> None:
    """A group's create is held while another node takes its version (a stream of a name in
    the group, a key the group writes only if absent, another stream): the group is planned
    again on the newest state — the name taken answers StreamExists, the condition False,
    the new streams get the next ids — and written at the next version."""
    writer = Writer(root)
    store = writer.store
    other = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root),
                                  node_id="x")
    store.create_stream("s")
    v, puts = store.version, len(writer.delta_puts())
    arrived, gate = writer.hold(v + 1)
    first, first_outcome = in_thread(lambda: store.create_stream("first"))
    assert arrived.wait(WAIT)
    calls: list[Callable[[], Any]] = [
        lambda: store.create_stream("contested"),
        lambda: store.kv_write("ns", "k", b"mine", expected=None),
        lambda: store.create_stream("a"),
        lambda: store.create_stream("b"),
    ]
    started = [in_thread(call) for call in calls]
    assert store._group.wait_queued(len(calls), WAIT)
    group_arrived, group_gate = writer.hold(v + 2)  # the group's create, at v + 2, held too
    gate.set()
    first.join(WAIT)
    assert first_outcome[0].name == "first"
    assert group_arrived.wait(WAIT)  # planned on version v + 1; its create waits
    other.refresh()
    other.create_stream("contested")  # takes v + 2
    assert other.kv_write("ns", "k", b"theirs", expected=None)  # v + 3
    group_gate.set()
    for thread, _ in started:
        thread.join(WAIT)
    outcomes = [outcome[0] for _, outcome in started]
    assert isinstance(outcomes[0], StreamExists)
    assert outcomes[1] is False
    assert [outcomes[2].name, outcomes[3].name] == ["a", "b"]
    assert sorted([outcomes[2].id, outcomes[3].id]) == [4, 5]  # after "contested" (3)
    assert writer.delta_puts()[puts:] == [f"{root}/{log_key(n)}" for n in (v + 1, v + 2, v + 4)]
    assert store.version == v + 4 and store.kv_get("ns", "k") == b"theirs"
    other.refresh()
    assert state_of(other) == state_of(store)
    assert [s.name for s in other.streams()] == ["s", "first", "contested", "a", "b"]


def test_every_change_of_a_group_is_seen_by_other_nodes_restarts_and_checkpoints(
        root: str) -> None:
    """Groups of every kind of change (creates, opens, commits, key-value writes, trims,
    registrations): another node's refresh, a node opened afresh from the deltas, and one
    opened from a checkpoint written at a group's version all reach the writer's state."""
    writer = Writer(root, checkpoint_every=3)
    store = writer.store
    other = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root),
                                  node_id="x")
    streams = [store.create_stream(f"s{n}").id for n in range(3)]
    store.register_node("n1")
    epochs = {s: store.open_stream(s, node_id="n1", node_epoch=1).epoch for s in streams}
    calls: list[Callable[[], Any]] = []
    for n, s in enumerate(streams):
        calls.append(functools.partial(store.commit, Commit(
            node_id="n1", wal_position=n, epochs={s: epochs[s]},
            objects=[make_object(f"obj-{s}", (s, 0, 10))])))
        calls.append(functools.partial(store.kv_write, "ns", f"k{n}", bytes([n])))
    calls += [lambda: store.create_stream("new"), lambda: store.register_node("n2"),
              lambda: store.open_stream(streams[0], node_id="n1", node_epoch=1)]
    v = store.version
    _, outcomes = queue_behind_a_held_create(
        writer, lambda: store.create_stream("held"), calls)
    assert not [o[0] for o in outcomes if isinstance(o[0], BaseException)]
    store.trim_stream(streams[1], 4)
    other.refresh()
    assert state_of(other) == state_of(store)
    assert other.get_stream(streams[1]).start_offset == 4
    assert [o.key for o in other.objects(streams[2])] == [f"obj-{streams[2]}"]
    assert other.kv_get("ns", "k2") == b"\x02" and other.node("n2").node_epoch == 1
    restarted = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root))
    assert state_of(restarted) == state_of(store)
    memory = fsspec.filesystem("memory")
    checkpoints = memory.find(f"{root}/manifest/checkpoint/")
    newest = int(checkpoints[-1].rsplit("/", 1)[1])
    assert newest > v  # written after a group
    for version in range(1, newest + 1):  # the deltas it covers: gone
        memory.rm_file(f"{root}/{log_key(version)}")
    from_checkpoint = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root))
    assert state_of(from_checkpoint) == state_of(store)


def test_threads_of_two_nodes_each_change_applies_exactly_once(tmp_path: Path) -> None:
    """Two nodes, four threads each: every thread commits 20 times to a stream of its own and
    adds one to a shared counter 5 times with compare-and-set. Every commit applies once, the
    counter loses no update, and both nodes and a fresh one agree. (On local files: fsspec's
    memory filesystem cannot be listed while other threads write to it.)"""
    url = f"file://{tmp_path}"
    nodes = [ManifestMetadataStore(ObjectStore.from_url(url), node_id=f"n{i}")
             for i in range(2)]
    nodes[0].kv_write("ns", "counter", b"0")
    streams = [(node, node.create_stream(f"{i}-{t}").id) for i, node in enumerate(nodes)
               for t in range(4)]
    epochs = [node.open_stream(stream).epoch for node, stream in streams]
    start = nodes[0].version
    errors: list[BaseException] = []

    def work(index: int) -> None:
        node, stream = streams[index]
        try:
            for n in range(20):
                node.commit(Commit(node_id="n1", wal_position=0, epochs={stream: epochs[index]},
                                   objects=[make_object(f"o-{stream}-{n}",
                                                        (stream, n * 2, n * 2 + 2))]))
                if n % 4 == 0:
                    while True:
                        old = node.kv_get("ns", "counter")
                        assert old is not None
                        if node.kv_write("ns", "counter", str(int(old) + 1).encode(),
                                         expected=old):
                            break
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    fresh = ManifestMetadataStore(ObjectStore.from_url(url))
    for node in nodes:
        node.refresh()
        assert state_of(node) == state_of(fresh)
    assert fresh.kv_get("ns", "counter") == b"40"
    assert [s.end_offset for s in fresh.streams()] == [40] * 8
    assert fresh.version - start <= 8 * 20 + 40  # at most one delta a change


# ---- what a reader accepts of a group ----

def populated(root: str) -> tuple[ObjectStore, ManifestMetadataStore]:
    objects = ObjectStore(fsspec.filesystem("memory"), root)
    store = ManifestMetadataStore(objects, node_id="w")
    one = store.create_stream("one").id
    epoch = store.open_stream(one, node_id="a").epoch
    store.commit(Commit(node_id="a", wal_position=1, epochs={one: epoch},
                        objects=[make_object("obj-1", (one, 0, 5))]))
    store.kv_write("ns", "k", b"v")
    store.live_objects()  # its sorted keys are built: a group's undo keeps them too
    return objects, store


def forge(objects: ObjectStore, store: ManifestMetadataStore, op: str, args: object,
          fmt: int = GROUP_FORMAT) -> str:
    key = log_key(store.version + 1)
    objects.create(key, json.dumps({
        "format": fmt, "version": store.version + 1, "put": uuid.uuid4().hex, "node": "w",
        "time": 1_795_000_000_000, "op": op, "args": args}).encode())
    return key


def snapshot(store: ManifestMetadataStore) -> tuple[object, ...]:
    state = store._state
    return (state.version, json.dumps(dump_state(state), sort_keys=True), dict(state.names),
            {stream: list(entries) for stream, entries in state.by_stream.items()},
            state.next_id, state.keys_after(None, 1000))


def change(op: str, **args: object) -> dict[str, object]:
    return {"op": op, "args": args}


B64 = base64.b64encode(b"x").decode()
GOOD = [  # every kind of change a later one of a group may undo
    change("create", id=2, name="two"),
    change("open", id=1, epoch=5, owner="b", since=5, **{"from": ["a", 1, 1]}),
    change("commit", node="a", wal_position=9, objects=[["obj-2", 100, [[1, 5, 9, 40]]]],
           remove=["obj-1"]),
    change("kv", namespace="ns", key="k", value=None),
    change("kv", namespace="new", key="k", value=B64),
    change("register", node="c", epoch=1),
    change("trim", id=1, offset=5),
    change("retention", id=2, max_age_ms=1000, max_bytes=None),
    change("destroy", id=2),
    change("forget", keys=["obj-1"]),
    change("replace", inputs=["obj-2"], outputs=[["obj-3", 100, [[1, 5, 9, 40]], "archive"]]),
    change("release", node="b", streams=[1]),
]


def test_a_well_formed_group_of_every_operation_applies_in_order(root: str) -> None:
    objects, store = populated(root)
    forge(objects, store, GROUP, {"changes": GOOD})
    assert store.refresh() == 1
    assert [s.name for s in store.streams()] == ["one"]
    assert store.get_stream(1).start_offset == 5 and store.get_stream(1).owner is None
    assert [o.key for o in store.objects(1)] == ["obj-3"]
    assert sorted(d.key for d in store.doomed()) == ["obj-2"]
    assert store.kv_get("ns", "k") is None and store.kv_get("new", "k") == b"x"
    assert store.node("c").node_epoch == 1
    assert state_of(ManifestMetadataStore(objects)) == state_of(store)


@pytest.mark.parametrize("cut", range(len(GOOD)))
def test_a_group_refused_at_any_change_changes_nothing(root: str, cut: int) -> None:
    """A group whose change after ``cut`` good ones does not apply (it names an unknown
    stream): refused by name at refresh and at open, and the handle's state is as before,
    whatever the changes before it did."""
    objects, store = populated(root)
    before = snapshot(store)
    bad = change("trim", id=99, offset=0)
    key = forge(objects, store, GROUP, {"changes": [*GOOD[:cut + 1], bad]})
    for _ in range(2):
        with pytest.raises(CorruptDataError) as refused:
            store.refresh()
        assert refused.value.source == key
        assert snapshot(store) == before
    with pytest.raises(CorruptDataError):
        ManifestMetadataStore(objects)


@pytest.mark.parametrize(("name", "op", "args", "fmt"), [
    ("a group of format 2", GROUP, {"changes": GOOD[:2]}, 2),
    ("a single change of format 3", "destroy", {"id": 1}, GROUP_FORMAT),
    ("a creation time in a group of format 3", GROUP,
     {"changes": [change("create", id=2, name="two", created_ms=5), GOOD[1]]}, GROUP_FORMAT),
    ("a group of one change", GROUP, {"changes": GOOD[:1]}, GROUP_FORMAT),
    ("an empty group", GROUP, {"changes": []}, GROUP_FORMAT),
    ("a group in a group", GROUP, {"changes": [GOOD[0], change(GROUP, changes=GOOD[3:5])]},
     GROUP_FORMAT),
    ("a change without args", GROUP, {"changes": [GOOD[0], {"op": "destroy"}]},
     GROUP_FORMAT),
    ("a change of an unknown operation", GROUP, {"changes": [GOOD[0], change("drop", id=1)]},
     GROUP_FORMAT),
    ("changes as an object", GROUP, {"changes": {"op": "destroy"}}, GROUP_FORMAT),
    ("an unknown argument", GROUP, {"changes": GOOD[:2], "more": 1}, GROUP_FORMAT),
])
def test_a_malformed_group_is_refused_by_name(root: str, name: str, op: str, args: object,
                                              fmt: int) -> None:
    objects, store = populated(root)
    before = snapshot(store)
    key = forge(objects, store, op, args, fmt)
    with pytest.raises(CorruptDataError) as refused:
        store.refresh()
    assert refused.value.source == key, name
    assert snapshot(store) == before


# ---- key-value reads with a bounded staleness ----

class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_kv_read_within_its_staleness_bound_answers_from_the_view(root: str) -> None:
    """A read accepting 1 s of staleness answers from the handle's view without a GET while
    the view was read less than 1 s ago, and looks first once it is older; a read without a
    bound always looks; the handle's own writes are seen at once."""
    clock = Clock()
    writer = Writer(root, clock=clock)
    reader = writer.store
    other = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root),
                                  node_id="x")
    other.kv_write("ns", "k", b"one")
    assert reader.kv_get("ns", "k") == b"one"  # looks: the view is current now
    other.kv_write("ns", "k", b"two")
    gets = writer.faulty.calls.get("get", 0)
    clock.now += 0.5
    assert reader.kv_get("ns", "k", max_staleness_ms=1000) == b"one"  # from the view
    assert writer.faulty.calls.get("get", 0) == gets
    clock.now += 0.6  # the view is 1.1 s old
    assert reader.kv_get("ns", "k", max_staleness_ms=1000) == b"two"  # looked first
    assert writer.faulty.calls.get("get", 0) > gets
    other.kv_write("ns", "k", b"three")
    assert reader.kv_get("ns", "k", max_staleness_ms=1000) == b"two"
    clock.now += 0.001
    assert reader.kv_get("ns", "k", max_staleness_ms=0) == b"three"  # older than 0 ms: looks
    assert reader.kv_write("ns", "mine", b"own")  # a write makes the view current too
    clock.now += 5.0
    assert reader.kv_get("ns", "mine", max_staleness_ms=10_000) == b"own"
    other.kv_write("ns", "k", b"four")
    assert reader.kv_get("ns", "k") == b"four"  # no bound: looks


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1 << 63, ValueError),
                                              (1.5, TypeError), ("5", TypeError),
                                              (True, TypeError)])
def test_a_bad_staleness_bound_is_refused(root: str, tmp_path: Path, value: object,
                                          error: type[Exception]) -> None:
    store = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root))
    with pytest.raises(error, match="max_staleness_ms"):
        store.kv_get("ns", "k", max_staleness_ms=value)  # type: ignore[arg-type]
    with streamlib.open(tmp_path / "node", metadata="manifest") as node, \
            pytest.raises(error, match="max_staleness_ms"):
        node.kv("ns").get("k", max_staleness_ms=value)  # type: ignore[arg-type]


def test_a_store_reads_its_own_kv_writes_within_any_staleness(tmp_path: Path) -> None:
    """Through the public API: ``KeyValue.get`` with a staleness bound sees what this node
    wrote, and another node's write once its bound has passed (0: at once)."""
    objects = f"file://{tmp_path / 'objects'}"
    with streamlib.open(tmp_path / "a", node_id="a", metadata="manifest",
                        objects_url=objects) as a, \
            streamlib.open(tmp_path / "b", node_id="b", metadata="manifest",
                           objects_url=objects) as b:
        offsets = a.kv("offsets")
        offsets.put("g/p0", b"10")
        assert offsets.get("g/p0", max_staleness_ms=60_000) == b"10"
        b.kv("offsets").put("g/p0", b"20")
        assert offsets.get("g/p0", max_staleness_ms=0) == b"20"
        assert offsets.get("missing", b"none", max_staleness_ms=60_000) == b"none"
