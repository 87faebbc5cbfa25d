"""Object-store and metadata faults during compaction, deletion and the sweep (docs/lifecycle.md,
"Failure cases"): 503 SlowDown, connection resets and lost answers on compaction's GETs and
PUTs, on the deletes of the deletion pass and of the sweep, and on the metadata's ``replace``,
``doomed`` and ``forget``. Within the retry budget they are retried and the pass completes;
beyond it the task or the pass fails, is counted, and a later pass finishes the work. Never
fatal, no record lost or changed, no dangling reference, and in the end the bucket holds
exactly what the metadata references. And a commit or a swap that reaches the metadata only
after the grace period, when a sweep has taken its objects for orphans. On memory and on S3
(moto), through the fault-injecting components (FaultyFileSystem over the real filesystem,
FaultyMetadataStore over the real SQLite metadata or a shared manifest)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest
from lifecycle_checks import bucket, check_coverage, doomed, live
from waits import wait_for

import streamlib
from streamlib import Record, StreamStore
from streamlib.errors import StorageUnavailable
from streamlib.io import ObjectStore
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing.faults import (
    Call,
    ErrorFactory,
    FaultyFileSystem,
    FaultyMetadataStore,
    connection_reset,
    internal_error,
    slow_down,
    timeout,
)
from streamlib.testing.s3 import S3Bucket

pytestmark = pytest.mark.once  # the object store's and the metadata's faults, not the codec

KiB = 1024
BASE: dict[str, Any] = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB",
                        "block_bytes": 16 * KiB, "stream_object_bytes": 64 * KiB,
                        "compaction_object_bytes": "1MiB", "compaction_interval_ms": 0,
                        "gc_interval_ms": 0}
RETRIED = {"retry_timeout_ms": 10_000, "delete_grace_ms": 40_000}
"""A budget no handful of injected faults exhausts (and the least grace Config allows)."""
SHORT = {"retry_timeout_ms": 300, "delete_grace_ms": 30_000}
"""A budget that a store down for good exhausts in a moment (and a grace period long enough
that a slow compaction on a loaded machine is not given up: half of it bounds a task)."""
DELETES = {"retry_timeout_ms": 800, "delete_grace_ms": 3200}
"""For the deletes: one lost answer of a real call and a retry fit in the budget, even on a
loaded machine; the grace period a little more than the least Config allows (half of it
bounds a compaction task)."""
NO_GRACE = {"retry_timeout_ms": 0, "delete_grace_ms": 0}
"""For metadata faults: no retries needed, doomed objects deleted by the pass that dooms them."""


# ---- a store whose object store and metadata can be made to fail ----

@dataclass
class Rig:
    """A store on ``kind`` ("memory" or "moto") whose objects go through ``fs`` and whose
    metadata through ``meta``; :meth:`open` opens it again (new wrappers, the same bucket and
    metadata), :meth:`plain` without fault injectors."""

    kind: str
    path: Path
    url: str
    settings: dict[str, Any]
    filesystem: Callable[[], Any]
    fs: FaultyFileSystem = field(init=False)
    meta: FaultyMetadataStore = field(init=False)
    opened: list[StreamStore] = field(default_factory=list)

    def open(self, **overrides: Any) -> StreamStore:
        self.fs = FaultyFileSystem(self.filesystem())
        self.meta = FaultyMetadataStore(SQLiteMetadataStore(self.path / "meta.sqlite"))
        store = streamlib.open(self.path, filesystem=self.fs, metadata_store=self.meta,
                               objects_url=self.url, **{**self.settings, **overrides})
        self.opened.append(store)
        return store

    def plain(self) -> StreamStore:
        store = streamlib.open(self.path, filesystem=self.filesystem(), objects_url=self.url,
                               **self.settings)
        self.opened.append(store)
        return store


@pytest.fixture
def rigs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []
    cleanups: list[Callable[[], None]] = []

    def make(kind: str, **settings: Any) -> Rig:
        path = tmp_path / f"store-{len(made)}"
        path.mkdir()
        if kind == "memory":
            url = f"memory://lifecycle-faults-{uuid.uuid4().hex}"

            def memory() -> Any:
                return fsspec.filesystem("memory")

            def forget_memory() -> None:
                with contextlib.suppress(FileNotFoundError):
                    memory().rm(url.removeprefix("memory://"), recursive=True)

            rig = Rig(kind, path, url, {**BASE, **settings}, memory)
            cleanups.append(forget_memory)
        elif kind == "moto":
            bucket: S3Bucket = request.getfixturevalue("moto_bucket")

            def s3() -> Any:
                # As the store builds it (no retries below the store's own); one for the
                # endpoint, as a new one costs a botocore client (0.1-0.4 s) at every open.
                return bucket.endpoint.store_fs

            rig = Rig(kind, path, f"s3://{bucket.name}/store-{len(made)}",
                      {**BASE, **settings}, s3)
        else:
            raise ValueError(kind)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        for store in rig.opened:
            store.close()
    for cleanup in cleanups:
        cleanup()


# ---- what is written, what is read, what is in the bucket ----

def records_of(stream: int, round_: int, n: int, rng: random.Random) -> list[Record]:
    return [Record(rng.randbytes(rng.randint(0, 500)) + b"v" * rng.randint(0, 3000),
                   key=None if i % 4 == 0 else f"k{stream}-{round_}-{i}".encode(),
                   headers=[("h", bytes([i % 256]))] if i % 3 == 0 else (),
                   timestamp=1_000_000 + round_ * 1000 + i)
            for i in range(n)]


def write_rounds(store: StreamStore, *, streams: int = 4, rounds: int = 8, seed: int = 11,
                 alone: str | None = None) -> None:
    """``rounds`` upload rounds (one flush each) over ``streams`` streams: small multi-stream
    objects, and stream objects for s0, which writes more. With ``alone``, a stream of that
    name whose records go up in rounds of their own (objects holding it alone)."""
    rng = random.Random(seed)
    handles = [store.create_stream(f"s{i}") for i in range(streams)]
    for r in range(rounds):
        for i, stream in enumerate(handles):
            stream.append(records_of(i, r, rng.randint(1, 40 if i == 0 else 8), rng))
        store.flush()
    if alone is not None:
        single = store.create_stream(alone)
        for r in range(3):
            single.append(records_of(99, r, 5, rng))
            store.flush()


Contents = dict[str | None, list[tuple[int, Record]]]


def contents(store: StreamStore) -> Contents:
    """Every live stream's records from its start offset, with their offsets."""
    found: Contents = {}
    for info in store.streams():
        stream = store.open_stream(info.id, read_only=True)
        rows: list[tuple[int, Record]] = []
        offset = stream.start_offset
        while offset < stream.next_offset:
            result = stream.fetch(offset, max_bytes=1 << 20)
            for batch in result:
                assert batch.base_offset is not None
                rows.extend(enumerate(batch.records(), batch.base_offset))
            offset = result.next_fetch_offset
        found[info.name] = [(o, r) for o, r in rows if o >= stream.start_offset]
    return found


def check_clean(store: StreamStore) -> None:
    """Nothing waits for deletion and the bucket holds exactly the live objects."""
    meta = store.metadata
    assert meta.doomed() == []
    assert bucket(store) == live(meta)


def lifecycle(store: StreamStore) -> dict[str, Any]:
    stats = store.stats()["lifecycle"]
    assert isinstance(stats, dict)
    return stats


def first_call_of_each(part: str) -> Callable[[str], bool]:
    """A FaultyFileSystem match: the first call on each path containing ``part`` (so that each
    call of the store fails once and its retry goes through)."""
    seen: set[str] = set()

    def match(path: str) -> bool:
        if part not in path or path in seen:
            return False
        seen.add(path)
        return True

    return match


def reopened_contents(rig: Rig, store: StreamStore) -> Contents:
    """What a store opened afresh on the same bucket and metadata reads (from the objects: no
    cache of the first store's helps it). Closes ``store``."""
    store.close()
    with rig.plain() as again:
        live_keys = live(again.metadata)
        assert live_keys <= bucket(again), f"dangling: {sorted(live_keys - bucket(again))}"
        return contents(again)


def grace_passed(store: StreamStore) -> Callable[[], bool]:
    """Whether every doomed object's grace period has passed (by this machine's clock, which
    marks them here) and the sweep finds no unreferenced object younger than it (by the
    store's clock): a condition to wait on, by asking the store itself."""
    grace = store.config.delete_grace_ms

    def due() -> bool:
        now_ms = time.time() * 1000
        return (all(d.marked_at_ms + grace <= now_ms for d in store.metadata.doomed())
                and store.collect_garbage(dry_run=True).young == 0)

    return due


# ---- compaction's GETs and PUTs ----

RETRIED_FAULTS = [
    pytest.param("get", slow_down, False, id="get-503"),
    pytest.param("get", connection_reset, False, id="get-reset"),
    pytest.param("get", internal_error, True, id="get-lost-answer"),
    pytest.param("put", slow_down, False, id="put-503"),
    pytest.param("put", connection_reset, False, id="put-reset"),
    pytest.param("put", timeout, True, id="put-lost-answer"),
]


@pytest.mark.parametrize("kind", ["memory", "moto"])
@pytest.mark.parametrize(("op", "error", "after"), RETRIED_FAULTS)
def test_faults_on_compactions_gets_and_puts_are_retried(
        rigs: Callable[..., Rig], kind: str, op: str, error: ErrorFactory, after: bool) -> None:
    rig = rigs(kind, **RETRIED)
    store = rig.open()
    write_rounds(store)
    before = contents(store)
    inputs_before = live(store.metadata)
    # Every GET of an object compaction reads, and every PUT of an output, fails once.
    part = "/data/" if op == "get" else "/data/compacted/"
    rule = rig.fs.inject(op, error, times=None, match=first_call_of_each(part), after=after)
    report = store.compact()
    rig.fs.clear()
    assert report.failures == 0 and report.conflicts == 0, report.errors
    assert report.objects_read >= 4 and report.objects_written >= 1
    faulted = report.objects_read if op == "get" else report.objects_written
    assert rule.hits == faulted, (rule.paths, report)
    stats = lifecycle(store)
    assert stats["failures"] == 0 and stats["compaction"]["failures"] == 0
    # The inputs wait for their grace period; nothing else is in the bucket.
    meta = store.metadata
    assert doomed(meta) <= inputs_before and len(doomed(meta)) == report.objects_read
    assert bucket(store) == live(meta) | doomed(meta)
    check_coverage(meta)
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


@pytest.mark.parametrize("kind", ["memory", "moto"])
@pytest.mark.parametrize("op", ["get", "put"])
def test_compaction_faults_beyond_the_budget_fail_the_task_and_the_next_pass_succeeds(
        rigs: Callable[..., Rig], kind: str, op: str) -> None:
    rig = rigs(kind, **SHORT)
    store = rig.open()
    write_rounds(store)
    before = contents(store)
    keys_before = live(store.metadata)
    part = "/data/" if op == "get" else "/data/compacted/"
    rig.fs.inject(op, slow_down, times=None, match=lambda path: part in path)  # down for good
    report = store.compact()
    rig.fs.clear()
    assert report.tasks >= 1 and report.failures == report.tasks, report
    assert report.objects_written == 0 and report.objects_doomed == 0
    assert all("StorageUnavailable" in e for e in report.errors), report.errors
    stats = lifecycle(store)
    assert stats["passes"] == 1 and stats["failures"] == 0  # the pass itself went on
    assert stats["compaction"]["failures"] == report.failures
    # Nothing changed: the same live objects, nothing doomed, no output left behind.
    meta = store.metadata
    assert live(meta) == keys_before and meta.doomed() == []
    assert bucket(store) == keys_before
    assert contents(store) == before
    # The store is back: the next pass does the work.
    again = store.compact()
    assert again.failures == 0 and again.objects_written >= 1, again.errors
    assert bucket(store) == live(meta) | doomed(meta)
    check_coverage(meta)
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


@pytest.mark.parametrize("kind", ["memory", "moto"])
def test_an_output_whose_put_answers_are_all_lost_is_an_orphan_the_sweep_collects(
        rigs: Callable[..., Rig], kind: str) -> None:
    """Every PUT of compaction's outputs lands and its answer is lost, until the budget is
    spent: the task fails with the object in the bucket, unreferenced. After the grace
    period the sweep deletes it; nothing else changed."""
    rig = rigs(kind, retry_timeout_ms=300, delete_grace_ms=3000)  # young for a while
    store = rig.open()
    write_rounds(store)
    before = contents(store)
    keys_before = live(store.metadata)
    rule = rig.fs.inject("put", timeout, times=None, after=True,
                         match=lambda path: "/data/compacted/" in path)
    report = store.compact()
    rig.fs.clear()
    assert report.tasks >= 1 and report.failures == report.tasks, report
    assert report.objects_written == 0 and rule.hits >= 2  # tried again, landed every time
    meta = store.metadata
    assert live(meta) == keys_before and meta.doomed() == []
    orphans = bucket(store) - keys_before
    assert orphans and all(k.startswith("data/compacted/") for k in orphans), orphans
    assert len(orphans) == report.tasks  # one per failed task: its first output
    assert store.collect_garbage().garbage == []  # young: a compaction may still commit them
    wait_for(grace_passed(store), timeout=60, what="the grace period to pass")
    garbage = store.collect_garbage()
    assert {g.key for g in garbage.garbage} == orphans
    assert bucket(store) == keys_before
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


# ---- the swap's answer lost ----

def with_outputs(call: Call) -> bool:
    return bool(call.args["replacement"].outputs)


def reset(call: Call) -> BaseException:
    return ConnectionResetError(f"connection reset (injected): {call.op}")


@pytest.mark.parametrize("kind", ["memory", "moto"])
def test_a_swap_whose_answer_is_lost_loses_nothing_and_leaves_nothing(
        rigs: Callable[..., Rig], kind: str) -> None:
    rig = rigs(kind, **NO_GRACE)
    store = rig.open()
    write_rounds(store)
    before = contents(store)
    rule = rig.meta.inject("replace", reset, after=True, match=with_outputs)  # applied, lost
    report = store.compact()
    assert rule.hits == 1
    assert report.failures == 1 and "ConnectionResetError" in report.errors[0], report
    meta = store.metadata
    # The swap did apply: its outputs are live, its inputs doomed (and, with no grace period,
    # deleted by the same pass); this store was never told, so its readers' indexes may still
    # name the inputs: a read finds them gone and loads the index again.
    swapped = rule.calls[0].args["replacement"]
    assert {o.key for o in swapped.outputs} <= live(meta)
    assert not set(swapped.inputs) & live(meta)
    assert live(meta) <= bucket(store), "dangling references"
    check_coverage(meta)
    assert contents(store) == before
    store.compact()
    garbage = store.collect_garbage()
    assert garbage.garbage == [] and garbage.young == 0  # the outputs were not orphans
    check_clean(store)
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


@pytest.mark.parametrize("kind", ["memory", "moto"])
@pytest.mark.parametrize("check_fails", [False, True], ids=["told", "not-told"])
def test_a_swap_that_failed_leaves_its_outputs_to_be_deleted(
        rigs: Callable[..., Rig], kind: str, check_fails: bool) -> None:
    """A replace that raised before it applied: the compactor asks the metadata whether its
    outputs are live; told they are not, it deletes them at once; not told (that look fails
    too), it leaves them, and the sweep deletes them as orphans."""
    rig = rigs(kind, **NO_GRACE)
    store = rig.open()
    write_rounds(store)
    before = contents(store)
    keys_before = live(store.metadata)
    rig.meta.inject("replace", reset, match=with_outputs)
    if check_fails:
        rig.meta.inject("stream_objects", reset, thread="MainThread")
    report = store.compact()
    rig.meta.clear()
    assert report.failures == 1, report
    meta = store.metadata
    # The failed task's inputs are still live (other tasks may have swapped theirs).
    assert live(meta) <= bucket(store)
    check_coverage(meta)
    left = bucket(store) - live(meta) - doomed(meta)
    if check_fails:
        assert left and all(k.startswith("data/compacted/") for k in left), left
        assert not left & keys_before
    else:
        assert left == set()
    assert contents(store) == before
    garbage = store.collect_garbage()
    assert {g.key for g in garbage.garbage} == left
    assert all(g.reason == "orphan" for g in garbage.garbage)
    store.compact()  # the failed task again, then the deletion of what it doomed
    store.compact()
    check_clean(store)
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


# ---- metadata faults in the deletion pass ----

def reset_marks(call: Call) -> bool:
    return not call.args["replacement"].outputs


DELETION_FAULTS = [
    pytest.param("forget", None, True, id="forget-lost-answer"),
    pytest.param("forget", None, False, id="forget-refused"),
    pytest.param("doomed", None, False, id="doomed-refused"),
    pytest.param("replace", reset_marks, True, id="mark-lost-answer"),
    pytest.param("replace", reset_marks, False, id="mark-refused"),
]


@pytest.mark.parametrize(("op", "match", "after"), DELETION_FAULTS)
def test_metadata_faults_in_the_deletion_pass_are_finished_by_the_next_pass(
        rigs: Callable[..., Rig], op: str, match: Callable[[Call], bool] | None,
        after: bool) -> None:
    rig = rigs("memory", **NO_GRACE)
    store = rig.open()
    write_rounds(store, alone="gone")
    gone = store.open_stream("gone")
    gone.trim(gone.next_offset)  # its objects hold nothing readable: to be marked
    before = contents(store)
    assert before["gone"] == []
    rule = rig.meta.inject(op, reset, match=match, after=after)
    with pytest.raises(ConnectionResetError):
        store.compact()
    assert rule.hits == 1
    stats = lifecycle(store)
    assert stats["failures"] == 1 and "ConnectionResetError" in stats["last_error"]
    meta = store.metadata
    assert live(meta) <= bucket(store), "dangling references"
    assert contents(store) == before
    # Left as it is: doomed entries whose objects may be gone already, inputs not compacted.
    report = store.compact()
    assert report.failures == 0, report.errors
    store.compact()
    assert store.collect_garbage().garbage == []  # every object was in the metadata
    check_clean(store)
    assert not any(r.stream_id == gone.id for o in meta.live_objects() for r in o.ranges)
    stats = lifecycle(store)
    assert stats["failures"] == 1 and stats["passes"] >= 2
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


# ---- the deletes of the deletion pass and of the sweep ----

def doomed_and_orphans(store: StreamStore) -> tuple[set[str], set[str]]:
    """Objects to delete, both kinds, past their grace period: doomed ones (compaction's inputs
    and the objects of a stream trimmed whole) and orphans (rounds that never committed)."""
    write_rounds(store, rounds=5, alone="gone")
    gone = store.open_stream("gone")
    gone.trim(gone.next_offset)
    orphans = {f"data/9/1/{n:012d}-orphan.mobj" for n in range(3)}
    for key in orphans:
        store.objects.put(key, b"left by a round that never committed")
    report = store.compact()
    assert report.failures == 0 and report.objects_written >= 1, report.errors
    wait_for(grace_passed(store), timeout=60, what="the grace period to pass")
    marked = doomed(store.metadata)
    assert len(marked) > report.objects_read  # the trimmed stream's objects too
    assert marked | orphans | live(store.metadata) == bucket(store)
    return marked, orphans


DELETE_FAULTS = [
    pytest.param("memory", slow_down, False, id="503-memory"),
    pytest.param("memory", connection_reset, False, id="reset-memory"),
    pytest.param("memory", timeout, True, id="lost-answer-memory"),
    pytest.param("moto", slow_down, False, id="503-moto"),
    pytest.param("moto", timeout, True, id="lost-answer-moto"),
]


@pytest.mark.parametrize(("kind", "error", "after"), DELETE_FAULTS)
def test_faults_on_deletes_and_listings_are_retried(
        rigs: Callable[..., Rig], kind: str, error: ErrorFactory, after: bool) -> None:
    rig = rigs(kind, **DELETES)
    store = rig.open()
    marked, orphans = doomed_and_orphans(store)
    before = contents(store)
    deletes = rig.fs.inject("delete", error, times=None, match=first_call_of_each("/data/"),
                            after=after)
    listing = rig.fs.inject("list", error, match=lambda path: "/data" in path, after=after)
    store.compact()
    assert store.metadata.doomed() == []
    garbage = store.collect_garbage()
    assert {g.key for g in garbage.garbage} == orphans
    assert deletes.hits >= 2 and listing.hits == 1  # the pass's delete, the sweep's
    stats = lifecycle(store)
    assert stats["failures"] == 0
    assert stats["deletion"]["deleted"] == len(marked) and stats["gc_deleted"] == len(orphans)
    check_clean(store)
    assert contents(store) == before
    assert reopened_contents(rig, store) == before


@pytest.mark.parametrize("kind", ["memory", "moto"])
def test_deletes_failing_beyond_the_budget_are_tried_again_by_the_next_pass(
        rigs: Callable[..., Rig], kind: str) -> None:
    rig = rigs(kind, **DELETES)
    store = rig.open()
    marked, orphans = doomed_and_orphans(store)
    before = contents(store)
    held = bucket(store)
    rig.fs.inject("delete", slow_down, times=None, match=lambda path: "/data/" in path)
    with pytest.raises(StorageUnavailable):
        store.compact()
    with pytest.raises(StorageUnavailable):
        store.collect_garbage()
    stats = lifecycle(store)
    assert stats["failures"] == 2 and "StorageUnavailable" in stats["last_error"]
    assert stats["deletion"]["deleted"] == 0 and stats["gc_deleted"] == 0
    assert doomed(store.metadata) == marked and bucket(store) == held  # nothing deleted
    # Never fatal: the store takes appends and uploads them meanwhile.
    s1 = store.open_stream("s1")
    s1.append([b"during the outage"])
    store.flush()
    before["s1"].append((s1.next_offset - 1, Record(b"during the outage")))
    got = contents(store)
    assert [(o, r.value) for o, r in got["s1"]] == [(o, r.value) for o, r in before["s1"]]
    rig.fs.clear()
    store.compact()
    garbage = store.collect_garbage()
    assert {g.key for g in garbage.garbage} == orphans
    check_clean(store)
    assert lifecycle(store)["deletion"]["deleted"] == len(marked)
    assert [(o, r.value) for o, r in reopened_contents(rig, store)["s1"]] == [
        (o, r.value) for o, r in before["s1"]]


def test_a_sweep_whose_listing_fails_deletes_nothing_and_the_next_one_collects(
        rigs: Callable[..., Rig]) -> None:
    rig = rigs("memory", retry_timeout_ms=300, delete_grace_ms=1200)
    store = rig.open()
    write_rounds(store, rounds=2)
    orphan = "data/9/1/000000000001-orphan.mobj"
    store.objects.put(orphan, b"left by a round that never committed")
    wait_for(grace_passed(store), timeout=60, what="the grace period to pass")
    rig.fs.inject("list", slow_down, times=None, match=lambda path: "/data" in path)
    with pytest.raises(StorageUnavailable):
        store.collect_garbage()
    stats = lifecycle(store)
    assert stats["failures"] == 1 and stats["sweeps"] == 0 and stats["gc_deleted"] == 0
    assert store.objects.exists(orphan)
    rig.fs.clear()
    assert [g.key for g in store.collect_garbage().garbage] == [orphan]
    check_clean(store)


def test_deletes_whose_answers_are_lost_beyond_the_budget_leave_entries_the_next_pass_forgets(
        rigs: Callable[..., Rig]) -> None:
    """On S3 a delete of keys already gone succeeds: every lost answer of a delete that went
    through makes the retry delete nothing and lose its answer again, until the budget is
    spent. The doomed entries then name objects that are gone; the next pass deletes them
    again (a missing key is a success) and forgets them."""
    rig = rigs("moto", **DELETES)
    store = rig.open()
    marked, orphans = doomed_and_orphans(store)
    before = contents(store)
    rig.fs.inject("delete", timeout, times=None, after=True, match=lambda path: "/data/" in path)
    with pytest.raises(StorageUnavailable):
        store.compact()
    with pytest.raises(StorageUnavailable):
        store.collect_garbage()
    meta = store.metadata
    assert doomed(meta) == marked  # still in the metadata
    assert not (marked | orphans) & bucket(store)  # but gone from the bucket
    assert bucket(store) == live(meta)
    assert contents(store) == before
    rig.fs.clear()
    store.compact()
    assert store.collect_garbage().garbage == []
    check_clean(store)
    assert lifecycle(store)["deletion"]["deleted"] == len(marked)
    assert reopened_contents(rig, store) == before


# ---- the background thread ----

def test_the_background_pass_survives_an_outage_and_finishes_the_work(
        rigs: Callable[..., Rig]) -> None:
    """With compaction's GETs and every delete failing, the lifecycle thread's passes and sweeps
    fail again and again (counted, logged); once the store is back, they compact, delete the
    doomed objects and collect the orphan."""
    rig = rigs("memory", retry_timeout_ms=200, delete_grace_ms=800)
    store = rig.open(compaction_interval_ms=50, gc_interval_ms=100, compaction_bytes_per_s=0)
    rig.fs.inject("get", slow_down, times=None, match=lambda path: "/data/" in path)
    rig.fs.inject("delete", slow_down, times=None, match=lambda path: "/data/" in path)
    orphan = "data/9/1/000000000001-orphan.mobj"
    store.objects.put(orphan, b"left by a round that never committed")
    write_rounds(store, alone="gone")
    gone = store.open_stream("gone")
    gone.trim(gone.next_offset)

    def failing() -> bool:
        stats = lifecycle(store)
        return bool(stats["failures"] >= 2 and stats["compaction"]["failures"] >= 1
                    and stats["deletion"]["marked"] >= 3)

    wait_for(failing, timeout=60, what="background passes and sweeps to fail")
    stats = lifecycle(store)
    assert stats["compaction"]["objects_written"] == 0 and stats["deletion"]["deleted"] == 0
    assert store.objects.exists(orphan)
    rig.fs.clear()
    before = contents(store)

    def finished() -> bool:
        stats = lifecycle(store)
        return bool(stats["compaction"]["objects_written"] >= 1 and stats["gc_deleted"] >= 1
                    and not store.metadata.doomed()
                    and not store.objects.exists(orphan))

    wait_for(finished, timeout=60, what="the background passes to finish the work")
    store.close()  # stops the thread: nothing changes under the last checks
    with rig.plain() as again:
        assert bucket(again) == live(again.metadata) | doomed(again.metadata)
        assert contents(again) == before



# ---- a swap answered after the grace period ----

def test_a_swap_held_past_the_grace_period_never_commits_swept_outputs(tmp_path: Path) -> None:
    """Two nodes on one shared manifest. Node A's compaction writes its outputs, then its
    replace is slow to reach the metadata (held at a gate: a paused process, a metadata store
    that answers late, a manifest version lost again and again to other writers). Meanwhile
    the grace period passes and node B's sweep deletes the outputs, which nothing references
    yet. When A's replace goes on it must not make them live: every record must still read."""
    shared = tmp_path / "bucket"
    shared.mkdir()
    settings = {**BASE, "metadata": "manifest", "objects_url": f"file://{shared}",
                "retry_timeout_ms": 0, "delete_grace_ms": 300}
    faulty = FaultyMetadataStore(ManifestMetadataStore(ObjectStore.from_url(f"file://{shared}"),
                                                       node_id="a"))
    with streamlib.open(tmp_path / "node-a", node_id="a", metadata_store=faulty,
                        **settings) as a, \
            streamlib.open(tmp_path / "node-b", node_id="b", **settings) as b:
        write_rounds(a)
        before = contents(a)
        gate = faulty.pause("replace", match=with_outputs)
        outcome: list[object] = []
        compaction = threading.Thread(target=lambda: outcome.append(a.compact()))
        compaction.start()
        try:
            assert gate.wait_reached(timeout=60), "the compaction never reached its swap"
            outputs = {o.key for o in faulty.rules[0].calls[0].args["replacement"].outputs}
            wait_for(lambda: outputs <= {g.key for g in b.collect_garbage(dry_run=True).garbage},
                     timeout=60, what="the outputs to be older than the grace period")
            swept = {g.key for g in b.collect_garbage().garbage}
            assert outputs <= swept
        finally:
            gate.release()
            compaction.join(60)
        assert not compaction.is_alive()
        b.metadata.refresh()
        missing = live(b.metadata) - bucket(b)
        assert missing == set(), f"live objects missing from the bucket: {sorted(missing)}"
        assert contents(b) == before


def test_an_upload_commit_held_past_the_grace_period_never_commits_swept_objects(
        rigs: Callable[..., Rig]) -> None:
    """The same for an upload round: its object is PUT, then its commit is slow to reach the
    metadata; meanwhile the grace period passes and a sweep deletes the object, which nothing
    references yet. When the commit goes on, the acknowledged records must still read (from
    the WAL's copy, uploaded again), never from an object that is gone."""
    rig = rigs("memory", retry_timeout_ms=0, delete_grace_ms=300)
    store = rig.open()
    stream = store.create_stream("s")
    stream.append([b"acknowledged"])
    gate = rig.meta.pause("commit")
    outcome: list[object] = []

    def flush() -> None:
        try:
            store.flush()
            outcome.append("flushed")
        except Exception as error:
            outcome.append(error)

    uploading = threading.Thread(target=flush)
    uploading.start()
    try:
        assert gate.wait_reached(timeout=60), "the upload never reached its commit"
        (put,) = bucket(store)
        wait_for(lambda: put in {g.key for g in store.collect_garbage(dry_run=True).garbage},
                 timeout=60, what="the object to be older than the grace period")
        assert put in {g.key for g in store.collect_garbage().garbage}
    finally:
        gate.release()
        uploading.join(60)
    assert not uploading.is_alive()
    missing = live(store.metadata) - bucket(store)
    assert missing == set(), f"live objects missing from the bucket: {sorted(missing)}"
    store.close()
    with rig.plain() as again:
        assert [r.value for b in again.open_stream("s").fetch(0) for r in b.records()] == [
            b"acknowledged"]
