"""Deleting a shared manifest's old deltas and checkpoints (docs/shared-stores.md, "Old deltas
and checkpoints"): the objects stay bounded over thousands of commits, a paused writer never
makes a deleted version count — it reads from a checkpoint first, or finds its late create a
copy, deletes it and plans again, or says the outcome is unknown —, no reader applies such a
copy, a reader whose checkpoint is deleted under it lists again, and a dry run deletes
nothing. A paused handle is one whose clock the test moves (``Clock``) while its create or its
read waits at a gate."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import in_thread

from streamlib.errors import StorageUnavailable, StreamExists
from streamlib.io import ObjectStore
from streamlib.lifecycle.sweep import Garbage, Sweeper
from streamlib.meta import Commit
from streamlib.meta._manifest_state import encode_delta
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing import FaultyMetadataStore
from streamlib.testing.faults import FaultyFileSystem
from streamlib.testing.meta import make_object

# The manifest: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

WAIT = 30.0
"""How long a test waits for an event that should come at once: only a hang reaches it."""
GRACE_MS = 60_000


class Clock:
    """A monotonic clock the test moves: the handle's view ages only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def log_key(version: int) -> str:
    return f"manifest/log/{version:020d}"


def checkpoint_versions(objects: ObjectStore) -> list[int]:
    return [int(info.key.rpartition("/")[2]) for info in objects.list("manifest/checkpoint/")]


@pytest.fixture
def root() -> Iterator[str]:
    """A fresh root in the process's memory filesystem, emptied afterwards (it is shared by
    every test of the process, and its listings read all of it)."""
    path = f"/manifest-gc-{uuid.uuid4().hex}"
    yield path
    memory = fsspec.filesystem("memory")
    if memory.exists(path):
        memory.rm(path, recursive=True)


def arrival(suffix: str, arrived: threading.Event) -> Callable[[str], bool]:
    """A rule's match for the path ending in ``suffix``, which also tells the test it came."""
    def match(path: str) -> bool:
        if path.endswith(suffix):
            arrived.set()
            return True
        return False

    return match


def same_state(a: ManifestMetadataStore, b: ManifestMetadataStore) -> None:
    assert a.version == b.version
    assert a.streams() == b.streams()
    assert a.live_objects(limit=100_000) == b.live_objects(limit=100_000)
    assert a.kv_items("ns") == b.kv_items("ns")
    assert a.node("a") == b.node("a")


def test_objects_stay_bounded_over_thousands_of_commits(root: str) -> None:
    """Two writers (3,000 commits and 1,000 key-value writes) with a sweep every 50 commits and
    no grace: the manifest holds at most a constant number of objects, and a store opened
    afterwards — or between sweeps — sees the whole state."""
    objects = ObjectStore(fsspec.filesystem("memory"), root)
    a = ManifestMetadataStore(objects, node_id="a", checkpoint_every=10, delete_grace_ms=0)
    b = ManifestMetadataStore(objects, node_id="b", checkpoint_every=10, delete_grace_ms=0)
    stream = a.create_stream("s").id
    epoch = a.open_stream(stream).epoch
    most = deleted = 0
    for n in range(3000):
        a.commit(Commit(node_id="a", wal_position=n, epochs={stream: epoch},
                        objects=[make_object(f"o{n}", (stream, n, n + 1))]))
        if n % 3 == 0:
            b.kv_write("ns", f"k{n % 7}", str(n).encode())
        if n % 50 == 49:  # the most objects there are: just before a sweep
            most = max(most, len(objects.list("manifest/")))
            deleted += len(b.collect_garbage(0))
        if n % 1000 == 999:
            a.refresh()
            same_state(ManifestMetadataStore(objects), a)
    assert a.version > 4000 and deleted > 3800
    assert most < 120, most  # 95: ~67 versions between sweeps, and those after two checkpoints
    assert len(checkpoint_versions(objects)) <= 8
    fresh = ManifestMetadataStore(objects)
    a.refresh()
    same_state(fresh, a)
    assert fresh.get_stream(stream).end_offset == 3000
    assert [o.key for o in fresh.objects(stream, 2990)] == [f"o{n}" for n in range(2990, 3000)]
    for handle in (a, b, fresh):
        handle.close()


def test_a_writer_paused_for_the_grace_period_reads_from_a_checkpoint_first(root: str) -> None:
    """A writer that read the state at version v, then was paused longer than the grace period
    while the other node moved on and the sweep deleted ``log/v+1`` on (the sweep, with no
    grace, stands for one that ran once the grace had passed on the writer's clock): its next
    change lists the checkpoints first, so it is planned on the newest state and written after
    it — it never creates ``log/v+1`` again (with a fresh view its create would succeed
    there)."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    clock = Clock()
    paused = ManifestMetadataStore(ObjectStore(faulty, root), node_id="w", checkpoint_every=5,
                                   delete_grace_ms=GRACE_MS, clock=clock)
    plain = ObjectStore(fsspec.filesystem("memory"), root)
    other = ManifestMetadataStore(plain, node_id="x", checkpoint_every=5, delete_grace_ms=0)
    other.create_stream("first")
    paused.refresh()
    v = paused.version
    for n in range(20):
        other.create_stream(f"x{n}")
    assert log_key(v + 1) in {key for _, key, _, _ in other.collect_garbage(0)}
    clock.now += 2 * GRACE_MS / 1000
    made = paused.create_stream("w")
    assert paused.version == other.version + 1 and made.id == 22
    assert not [path for op, path, _ in faulty.events
                if op == "put" and path.endswith(log_key(v + 1))]
    fresh = ManifestMetadataStore(plain)
    assert [s.name for s in fresh.streams()] == ["first", *(f"x{n}" for n in range(20)), "w"]
    same_state(fresh, paused)


def test_a_create_that_lands_after_its_version_was_deleted_is_not_applied(root: str) -> None:
    """The race the check before a change cannot close: the writer's view is fresh when it
    plans, then its create of ``log/v+1`` stalls while the other node moves on and the sweep
    deletes ``log/v+1``; the create lands — a copy of a deleted version. Back from the create
    late, the writer lists the checkpoints, finds one at or above v+1 written before its
    delta, deletes the copy, loads the checkpoint and writes its change after it: applied
    once, at the right place."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    objects = ObjectStore(faulty, root)
    writer = ManifestMetadataStore(objects, node_id="w", checkpoint_every=3, delete_grace_ms=0)
    other = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root),
                                  node_id="x", checkpoint_every=3, delete_grace_ms=0)
    other.create_stream("first")
    writer.refresh()
    v = writer.version
    arrived, gate = threading.Event(), threading.Event()
    faulty.inject("put", gate=gate, match=arrival(log_key(v + 1), arrived))
    thread, outcome = in_thread(lambda: writer.create_stream("w"))
    assert arrived.wait(WAIT)  # planned on version v; its create waits
    for n in range(10):
        other.create_stream(f"x{n}")
    assert log_key(v + 1) in {key for _, key, _, _ in other.collect_garbage(0)}
    gate.set()
    thread.join(WAIT)
    assert [type(o).__name__ for o in outcome] == ["StreamMeta"]
    assert ("put", f"{root}/{log_key(v + 1)}", True) in faulty.events  # the copy was made...
    assert ("delete", f"{root}/{log_key(v + 1)}", True) in faulty.events  # ...and deleted
    assert not objects.exists(log_key(v + 1))
    assert outcome[0].id == 12 and writer.version == other.version + 1
    fresh = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root))
    assert [s.name for s in fresh.streams()] == ["first", *(f"x{n}" for n in range(10)), "w"]
    other.refresh()
    same_state(fresh, writer)
    same_state(fresh, other)


class HeldAfterLanding(FaultyFileSystem):
    """A create of a key ending in ``held`` lands, then its answer waits for ``gate`` (a slow
    answer); ``arrived`` is set once it landed."""

    def __init__(self, fs: Any, **kwargs: Any) -> None:
        super().__init__(fs, **kwargs)
        self.held = ""
        self.arrived, self.gate = threading.Event(), threading.Event()

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> Any:
        result = super().pipe_file(path, value, **kwargs)
        if self.held and path.endswith(self.held):
            self.arrived.set()
            assert self.gate.wait(WAIT)
        return result


def test_a_late_create_another_node_built_on_has_an_unknown_outcome(root: str) -> None:
    """A create that landed at once but whose answer came back after another node had read it
    and written a checkpoint past it: the writer cannot tell it from a copy of a deleted
    version, and says so (StorageUnavailable, "unknown outcome") rather than guess; its next
    call reads from the checkpoint and finds the change applied."""
    held = HeldAfterLanding(fsspec.filesystem("memory"))
    writer = ManifestMetadataStore(ObjectStore(held, root), node_id="w", checkpoint_every=3,
                                   delete_grace_ms=0)
    other = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root),
                                  node_id="x", checkpoint_every=3, delete_grace_ms=0)
    v = writer.version
    held.held = log_key(v + 1)
    thread, outcome = in_thread(lambda: writer.create_stream("w"))
    assert held.arrived.wait(WAIT)
    for n in range(6):
        other.create_stream(f"x{n}")  # after the writer's: a checkpoint past it
    assert max(checkpoint_versions(ObjectStore(fsspec.filesystem("memory"), root))) > v + 1
    held.gate.set()
    thread.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailable)
    assert "unknown outcome" in str(outcome[0])
    with pytest.raises(StreamExists):
        writer.create_stream("w")  # it did apply
    assert [s.name for s in writer.streams()] == ["w", *(f"x{n}" for n in range(6))]


def copy_of_a_deleted_version(objects: ObjectStore, version: int, stream_id: int) -> None:
    """What a paused writer's late create leaves before it finds out: at a deleted version, a
    delta that applies to the state before it."""
    objects.create(log_key(version), encode_delta({
        "format": 2, "version": version, "put": uuid.uuid4().hex, "node": "w", "time": 0,
        "op": "create", "args": {"id": stream_id, "name": "ghost"}}))


def test_no_reader_applies_a_copy_of_a_deleted_version(root: str) -> None:
    """A copy at ``log/v+1`` (a paused writer's late create, not yet deleted) is read by no
    handle: one paused at version v lists the checkpoints before it reads (its view is older
    than half the grace period); one whose read of ``log/v+1`` stalled past half the grace
    period drops what it read and loads the checkpoint; one opened now starts from the
    checkpoint above it."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    plain = ObjectStore(fsspec.filesystem("memory"), root)
    other = ManifestMetadataStore(plain, node_id="x", checkpoint_every=3, delete_grace_ms=0)
    other.create_stream("first")
    paused_clock, stalled_clock = Clock(), Clock()
    watched = FaultyFileSystem(fsspec.filesystem("memory"))
    paused = ManifestMetadataStore(ObjectStore(watched, root), delete_grace_ms=GRACE_MS,
                                   clock=paused_clock)
    stalled = ManifestMetadataStore(ObjectStore(faulty, root), delete_grace_ms=GRACE_MS,
                                    clock=stalled_clock)
    v = paused.version
    assert stalled.version == v
    arrived, gate = threading.Event(), threading.Event()
    faulty.inject("get", gate=gate, match=arrival(log_key(v + 1), arrived))
    thread, outcome = in_thread(stalled.refresh)
    assert arrived.wait(WAIT)
    for n in range(10):
        other.create_stream(f"x{n}")
    assert log_key(v + 1) in {key for _, key, _, _ in other.collect_garbage(0)}
    copy_of_a_deleted_version(plain, v + 1, 2)
    paused_clock.now += GRACE_MS / 1000
    stalled_clock.now += GRACE_MS / 1000
    gate.set()
    thread.join(WAIT)
    assert outcome == [other.version - v]
    seen = len(watched.events)
    paused.refresh()
    assert not [path for op, path, _ in watched.events[seen:]
                if op == "get" and path.endswith(log_key(v + 1))]  # it listed first
    fresh = ManifestMetadataStore(plain)
    for handle in (paused, stalled, fresh):
        assert "ghost" not in [s.name for s in handle.streams()]
        same_state(handle, other)
    assert plain.exists(log_key(v + 1))  # still there: no reader took it


def test_a_reader_whose_checkpoint_is_deleted_before_it_reads_it_lists_again(root: str) -> None:
    """A store opened while a sweep runs: it listed checkpoint K as the newest, K was deleted
    (two newer ones were written) before its GET; it lists again and opens from the newest."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    plain = ObjectStore(fsspec.filesystem("memory"), root)
    other = ManifestMetadataStore(plain, node_id="x", checkpoint_every=3, delete_grace_ms=0)
    for n in range(4):
        other.create_stream(f"s{n}")
    newest = max(checkpoint_versions(plain))
    arrived, gate = threading.Event(), threading.Event()
    faulty.inject("get", gate=gate, match=arrival(f"checkpoint/{newest:020d}", arrived))
    thread, outcome = in_thread(lambda: ManifestMetadataStore(ObjectStore(faulty, root)))
    assert arrived.wait(WAIT)
    for n in range(4, 12):
        other.create_stream(f"s{n}")
    assert f"manifest/checkpoint/{newest:020d}" in {
        key for _, key, _, _ in other.collect_garbage(0)}
    gate.set()
    thread.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], ManifestMetadataStore)
    assert outcome[0].opened_version > newest
    same_state(outcome[0], other)


def test_a_dry_run_deletes_nothing(tmp_path: Path) -> None:
    objects = ObjectStore.from_url(f"file://{tmp_path}")
    store = ManifestMetadataStore(objects, checkpoint_every=4, delete_grace_ms=0)
    for n in range(30):
        store.create_stream(f"s{n}")
    before = objects.list("manifest/")
    would = store.collect_garbage(0, dry_run=True)
    assert objects.list("manifest/") == before and len(would) > 20
    checkpoints = checkpoint_versions(objects)
    kept = checkpoints[-2]  # with no grace: the two newest checkpoints, the deltas after both
    assert {key for _, key, _, _ in would} == {
        *(f"manifest/checkpoint/{c:020d}" for c in checkpoints if c < kept),
        *(log_key(u) for u in range(1, kept + 1))}
    assert store.collect_garbage(0) == would
    assert len(objects.list("manifest/")) == len(before) - len(would)
    # The handle's own grace period is the least one used: nothing is old enough for it.
    young = ManifestMetadataStore(objects, delete_grace_ms=GRACE_MS)
    assert young.collect_garbage(0) == []


def test_the_sweep_deletes_the_manifests_old_objects(tmp_path: Path) -> None:
    """The lifecycle's sweep reports the manifest's deletions as ``"manifest"`` garbage of the
    manifest's store, through a faulty metadata wrapper too; the SQLite store has none."""
    objects = ObjectStore.from_url(f"file://{tmp_path / 'bucket'}")
    manifest = ManifestMetadataStore(objects, checkpoint_every=4, delete_grace_ms=0)
    for n in range(12):
        manifest.create_stream(f"s{n}")
    faulty = FaultyMetadataStore(manifest)
    sweeper = Sweeper(meta=faulty, stores={"": objects}, wal_stores=[], grace_ms=0)
    dry = sweeper.sweep(dry_run=True)
    report = sweeper.sweep()
    assert dry.garbage == report.garbage and faulty.calls["collect_garbage"] == 2
    assert report.garbage and all(
        g == Garbage(objects.url, g.key, g.size, "manifest") and g.key.startswith("manifest/")
        for g in report.garbage)
    assert not any(objects.exists(g.key) for g in report.garbage)
    sqlite = SQLiteMetadataStore(str(tmp_path / "meta.sqlite"))
    assert sqlite.collect_garbage(0) == []
    sqlite.close()
