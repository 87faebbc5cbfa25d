"""FaultyMetadataStore (streamlib.testing.faults): every kind of fault, on the SQLite store and
on the manifest over memory://, and the whole metadata contract through a wrapper without
rules (it changes nothing until told to)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streamlib.errors import (
    CommitConflict,
    FencedError,
    StorageUnavailable,
    StreamClosed,
    StreamNotFound,
)
from streamlib.io import ObjectStore, open_filesystem
from streamlib.meta import Commit, MetadataStore, NodeMeta, Replacement, Retention, StreamMeta
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing import FaultyMetadataStore
from streamlib.testing.faults import METADATA_OPERATIONS, Call, Gate
from streamlib.testing.meta import MetadataContract, make_object

# Metadata calls and threads: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

WAIT = 30.0
"""How long a test waits for an event that should come at once: only a hang reaches it."""


def memory_manifest(name: str) -> ManifestMetadataStore:
    return ManifestMetadataStore(ObjectStore.from_url(f"memory://{name}"), checkpoint_every=5)


@contextlib.contextmanager
def memory_root(name: str) -> Iterator[str]:
    """A unique memory:// name, removed afterwards (memory:// is one filesystem per process)."""
    yield name
    fs, root = open_filesystem(f"memory://{name}")
    with contextlib.suppress(FileNotFoundError):
        fs.rm(root, recursive=True)


@pytest.fixture(params=["sqlite", "manifest"])
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyMetadataStore]:
    """A faulty wrapper of a fresh SQLite store or manifest; its gates are released and the
    store closed afterwards."""
    with memory_root(f"faulty-meta-{uuid.uuid4().hex}") as name:
        inner: MetadataStore = (SQLiteMetadataStore(tmp_path / "meta.sqlite")
                                if request.param == "sqlite" else memory_manifest(name))
        wrapper = FaultyMetadataStore(inner, gate_timeout=WAIT)
        try:
            yield wrapper
        finally:
            wrapper.clear()
            inner.close()


class Background:
    """A call run in a thread of its own (named ``name``), its answer or error kept."""

    def __init__(self, call: Callable[[], object], name: str = "background") -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            self.result = call()
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def answer(self) -> object:
        """The call's result once it has returned (its error raised here)."""
        assert self.done.wait(WAIT), "the call did not return"
        self.thread.join(WAIT)
        if self.error is not None:
            raise self.error
        return self.result


def opened_stream(store: MetadataStore, name: str = "s") -> StreamMeta:
    return store.open_stream(store.create_stream(name).id)


def commit_of(stream: StreamMeta, start: int, end: int, position: int = 0) -> Commit:
    return Commit(node_id="n1", wal_position=position, epochs={stream.id: stream.epoch},
                  objects=[make_object(f"obj-{uuid.uuid4().hex}", (stream.id, start, end))])


# ---- passing through ----


def test_every_call_passes_through_and_is_counted(faulty: FaultyMetadataStore) -> None:
    inner = faulty.store
    assert faulty.capabilities == inner.capabilities
    created = faulty.create_stream("a")
    assert faulty.get_stream(created.id) == inner.get_stream(created.id) == created
    assert faulty.get_stream_by_name("a") == created
    opened = faulty.open_stream(created.id, expected_epoch=0)
    node = faulty.register_node("n1")
    commit = commit_of(opened, 0, 10, position=3)
    faulty.commit(commit)
    assert faulty.objects(created.id) == inner.objects(created.id) == list(commit.objects)
    assert faulty.stream_objects(created.id, 5) == inner.stream_objects(created.id, 5)
    assert faulty.node("n1") == inner.node("n1") == NodeMeta("n1", 1, 3)
    assert faulty.kv_write("ns", "k", b"v", expected=None, node_id="n1", node_epoch=1)
    assert faulty.kv_get("ns", "k") == b"v" and faulty.kv_items("ns") == [("k", b"v")]
    assert faulty.trim_stream(created.id, 4).start_offset == 4
    kept = faulty.set_retention(created.id, Retention(max_bytes=100))
    assert kept == inner.get_stream(created.id) and kept.retention == Retention(max_bytes=100)
    assert faulty.live_objects() == inner.live_objects(limit=1) == list(commit.objects)
    merged = make_object("merged", (created.id, 0, 10))
    faulty.replace(Replacement(inputs=[commit.objects[0].key], outputs=[merged]))
    assert inner.objects(created.id) == [merged]
    assert [d.key for d in faulty.doomed()] == [commit.objects[0].key]
    assert faulty.forget([commit.objects[0].key]) == 1 and inner.doomed() == []
    faulty.release_streams("n1", node.node_epoch, [created.id])
    assert faulty.destroy_stream(created.id) == inner.get_stream(created.id,
                                                                 include_destroyed=True)
    assert faulty.streams() == inner.streams() == []
    assert faulty.refresh() == 0  # nobody else changed anything
    assert faulty.version == getattr(inner, "version", 0)
    assert faulty.collect_garbage(0, dry_run=True) == []  # nothing old enough to delete
    faulty.close()
    assert faulty.calls == dict.fromkeys(METADATA_OPERATIONS, 1)
    with pytest.raises(StreamClosed):
        inner.streams()


def test_rules_name_a_known_operation(faulty: FaultyMetadataStore) -> None:
    with pytest.raises(ValueError, match="op=`comit`"):
        faulty.inject("comit", StorageUnavailable)
    with pytest.raises(ValueError, match="times"):
        faulty.inject("commit", StorageUnavailable, times=0)
    assert faulty.rules == []


# ---- errors ----


def test_an_error_before_a_call_applies_nothing(faulty: FaultyMetadataStore) -> None:
    stream = opened_stream(faulty)
    faulty.inject("commit", StorageUnavailable)
    with pytest.raises(StorageUnavailable, match="injected fault: op=`commit` thread=`Main"):
        faulty.commit(commit_of(stream, 0, 10))
    assert faulty.get_stream(stream.id).end_offset == 0 and faulty.objects(stream.id) == []
    faulty.commit(commit_of(stream, 0, 10))  # times=1: the next one goes through
    assert faulty.get_stream(stream.id).end_offset == 10
    assert faulty.calls["commit"] == 2 and faulty.rules[0].hits == 1


def test_an_error_can_be_built_from_the_call(faulty: FaultyMetadataStore) -> None:
    stream = opened_stream(faulty)
    rule = faulty.inject("trim_stream", lambda call: FencedError(
        f"fenced at {call.args['offset']} by {call.thread}"))
    with pytest.raises(FencedError, match="fenced at 0 by MainThread"):
        faulty.trim_stream(stream.id, 0)
    assert rule.calls == [Call("trim_stream", {"stream_id": stream.id, "offset": 0},
                               "MainThread")]


def test_a_lost_answer_leaves_the_commit_applied(faulty: FaultyMetadataStore) -> None:
    stream = opened_stream(faulty)
    commit = commit_of(stream, 0, 10, position=7)
    faulty.inject("commit", StorageUnavailable, after=True)
    with pytest.raises(StorageUnavailable):
        faulty.commit(commit)
    assert faulty.get_stream(stream.id).end_offset == 10  # applied all the same
    assert faulty.objects(stream.id) == list(commit.objects)
    assert faulty.node("n1").wal_position == 7
    with pytest.raises(CommitConflict):  # the caller's retry: the contract says it conflicts
        faulty.commit(commit)


def test_a_lost_answer_of_a_create_leaves_the_stream_created(faulty: FaultyMetadataStore
                                                             ) -> None:
    faulty.inject("create_stream", StorageUnavailable, after=True)
    with pytest.raises(StorageUnavailable):
        faulty.create_stream("lost")
    assert faulty.get_stream_by_name("lost").name == "lost"


# ---- delays ----


def test_a_delay_holds_the_call_at_least_that_long(faulty: FaultyMetadataStore) -> None:
    stream = faulty.create_stream("s")
    faulty.inject("get_stream", delay=0.05, times=2)
    started = time.monotonic()
    faulty.get_stream(stream.id)
    faulty.get_stream(stream.id)
    assert time.monotonic() - started >= 0.1


# ---- gates ----


def test_a_paused_call_waits_until_released(faulty: FaultyMetadataStore) -> None:
    stream = opened_stream(faulty)
    gate = faulty.pause("commit")
    committing = Background(lambda: faulty.commit(commit_of(stream, 0, 10)))
    assert gate.reached.wait(WAIT)
    assert not committing.done.is_set() and gate.arrivals == 1
    assert faulty.get_stream(stream.id).end_offset == 0  # held before it ran: nothing applied
    gate.release()
    committing.answer()
    assert faulty.get_stream(stream.id).end_offset == 10
    assert gate.released


def test_a_call_paused_after_it_ran_is_applied_but_has_not_returned(
        faulty: FaultyMetadataStore) -> None:
    stream = opened_stream(faulty)
    gate = faulty.pause("trim_stream", after=True)
    faulty.commit(commit_of(stream, 0, 10))
    trimming = Background(lambda: faulty.trim_stream(stream.id, 6))
    assert gate.reached.wait(WAIT)
    assert faulty.get_stream(stream.id).start_offset == 6  # the change is in
    assert not trimming.done.is_set()  # the answer is not out
    gate.release()
    assert isinstance(trimming.answer(), StreamMeta)


def test_a_pause_and_a_lost_answer_combine(faulty: FaultyMetadataStore) -> None:
    """A gate and an error in one rule: the test looks at the applied change while the caller
    waits, then the caller gets the error."""
    gate = Gate()
    faulty.inject("register_node", StorageUnavailable, after=True, gate=gate)
    registering = Background(lambda: faulty.register_node("n9"))
    assert gate.reached.wait(WAIT)
    assert faulty.node("n9").node_epoch == 1
    gate.release()
    with pytest.raises(StorageUnavailable):
        registering.answer()


def test_a_forgotten_gate_fails_the_call_instead_of_hanging(faulty: FaultyMetadataStore
                                                           ) -> None:
    faulty.gate_timeout = 0.05
    faulty.pause("node")
    with pytest.raises(TimeoutError, match="a test left a gate closed: op=`node`"):
        faulty.node("n1")


def test_clear_releases_every_paused_call(faulty: FaultyMetadataStore) -> None:
    stream = faulty.create_stream("s")
    reads = faulty.pause("get_stream", times=None)
    writes = faulty.pause("kv_write", after=True)
    waiting = [Background(lambda: faulty.get_stream(stream.id)) for _ in range(2)]
    waiting.append(Background(lambda: faulty.kv_write("ns", "k", b"v")))
    assert reads.wait_reached(2, WAIT) and writes.wait_reached(1, WAIT)
    assert not any(call.done.is_set() for call in waiting)
    faulty.clear()
    assert [call.answer() for call in waiting] == [stream, stream, True]
    assert faulty.rules == [] and reads.released and writes.released
    assert faulty.get_stream(stream.id) == stream  # no rule left to hold it


# ---- picking calls: threads, arguments, times ----


def test_a_thread_name_picks_only_that_threads_calls(faulty: FaultyMetadataStore) -> None:
    stream = faulty.create_stream("s")
    rule = faulty.inject("get_stream", StorageUnavailable, thread="streamlib-fences",
                         times=None)

    def read() -> StreamMeta:
        return faulty.get_stream(stream.id)

    assert read() == stream  # this thread is not named so
    for name in ("streamlib-fences2", "streamlib-fences_x", "fences"):
        assert Background(read, name).answer() == stream, name
    with pytest.raises(StorageUnavailable, match="thread=`streamlib-fences`"):
        Background(read, "streamlib-fences").answer()
    with ThreadPoolExecutor(1, thread_name_prefix="streamlib-fences") as pool, \
            pytest.raises(StorageUnavailable, match="thread=`streamlib-fences_0`"):
        pool.submit(read).result(WAIT)  # a pool's workers are <prefix>_<n>
    assert rule.hits == 2 and faulty.calls["get_stream"] == 6
    faulty.clear()
    faulty.inject("get_stream", StorageUnavailable, thread=lambda name: name.endswith("-9"))
    assert Background(read, "reader-1").answer() == stream
    with pytest.raises(StorageUnavailable):
        Background(read, "reader-9").answer()


def test_a_paused_thread_does_not_hold_the_others(faulty: FaultyMetadataStore) -> None:
    """A fence thread held after its refresh while every other thread's refreshes go
    through."""
    gate = faulty.pause("refresh", after=True, thread="streamlib-fences")
    fencing = Background(faulty.refresh, "streamlib-fences")
    assert gate.reached.wait(WAIT)
    assert faulty.refresh() == 0 and Background(faulty.refresh, "other").answer() == 0
    assert not fencing.done.is_set()
    gate.release()
    assert fencing.answer() == 0
    assert gate.arrivals == 1 and faulty.calls["refresh"] == 3


def test_a_predicate_on_the_arguments_picks_calls(faulty: FaultyMetadataStore) -> None:
    a, b = opened_stream(faulty, "a"), opened_stream(faulty, "b")
    rule = faulty.inject("commit", StorageUnavailable, times=None,
                         match=lambda call: b.id in call.args["commit"].epochs)
    faulty.commit(commit_of(a, 0, 5))
    with pytest.raises(StorageUnavailable):
        faulty.commit(commit_of(b, 0, 5))
    assert rule.hits == 1 and [s.end_offset for s in faulty.streams()] == [5, 0]
    faulty.clear()
    faulty.inject("get_stream", StreamNotFound,
                  match=lambda call: call.args["include_destroyed"] is True)
    assert faulty.get_stream(a.id) == dataclasses.replace(a, end_offset=5)
    with pytest.raises(StreamNotFound):
        faulty.get_stream(a.id, include_destroyed=True)


def test_times_is_honoured(faulty: FaultyMetadataStore) -> None:
    rule = faulty.inject("node", StorageUnavailable, times=2)
    for _ in range(2):
        with pytest.raises(StorageUnavailable):
            faulty.node("n1")
    assert faulty.node("n1").node_epoch == 0  # the third goes through
    assert rule.hits == 2 and faulty.calls["node"] == 3
    forever = faulty.inject("kv_get", StorageUnavailable, times=None)
    for _ in range(5):
        with pytest.raises(StorageUnavailable):
            faulty.kv_get("ns", "k")
    assert forever.hits == 5
    faulty.clear()
    assert faulty.kv_get("ns", "k") is None


def test_the_first_rule_that_applies_takes_the_call(faulty: FaultyMetadataStore) -> None:
    first = faulty.inject("streams", StreamNotFound)
    second = faulty.inject("streams", StorageUnavailable)
    with pytest.raises(StreamNotFound):
        faulty.streams()
    with pytest.raises(StorageUnavailable):  # the first is spent
        faulty.streams()
    assert (first.hits, second.hits) == (1, 1) and faulty.streams() == []


# ---- the manifest: refresh and version move with other writers ----


def test_refresh_and_version_pass_through_and_refresh_can_be_paused() -> None:
    with memory_root(f"faulty-refresh-{uuid.uuid4().hex}") as name:
        writer = memory_manifest(name)
        reader = FaultyMetadataStore(memory_manifest(name), gate_timeout=WAIT)
        try:
            writer.create_stream("one")
            assert reader.version == 0 and reader.refresh() == 1 and reader.version == 1
            writer.create_stream("two")
            gate = reader.pause("refresh", after=True, thread="streamlib-fences")
            fencing = Background(reader.refresh, "streamlib-fences")
            assert gate.reached.wait(WAIT)
            assert reader.version == 2 and [s.name for s in reader.streams()] == ["one", "two"]
            assert not fencing.done.is_set()
            gate.release()
            assert fencing.answer() == 1
            reader.inject("refresh", StorageUnavailable)
            with pytest.raises(StorageUnavailable):
                reader.refresh()
            assert reader.calls["refresh"] == 3
        finally:
            reader.clear()
            reader.close()
            writer.close()


# ---- the contract, through a wrapper without rules ----


class TestFaultyMetadataPassesTheContract(MetadataContract):
    model_examples = 10

    def open_store(self, location: Path) -> MetadataStore:
        return FaultyMetadataStore(memory_manifest(f"{location.as_posix()}-faulty"))
