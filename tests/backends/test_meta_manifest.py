"""The object-store manifest: the metadata contract on a local directory, in memory and on S3
(moto), plus what only a shared manifest has — several writers on one manifest, a create whose
answer is lost, checkpoints, damaged deltas, stores that cannot create only if absent, an open
whose probe of the store loses an answer, and the open time and delta sizes at 100,000 streams
and objects (forged checkpoints and deltas: test_manifest_refuses_forged_objects.py)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
import zstandard

from streamlib.errors import (
    CommitConflict,
    CompactionConflict,
    ConfigError,
    CorruptDataError,
    FencedError,
    StorageUnavailable,
    StreamExists,
)
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.meta import Commit, MetadataStore, Replacement, Retention
from streamlib.meta import _manifest_checkpoint as manifest_checkpoint
from streamlib.meta import _manifest_state as manifest_state
from streamlib.meta._manifest_checkpoint import dump_state
from streamlib.meta._manifest_state import ManifestState, StreamRecord
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing.faults import FaultyFileSystem, access_denied, timeout
from streamlib.testing.meta import MetadataContract, make_object
from streamlib.testing.s3 import S3Endpoint

# The manifest: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


def local_store(location: Path) -> ObjectStore:
    location.mkdir(parents=True, exist_ok=True)
    return ObjectStore.from_url(f"file://{location}")


class TestManifestOnFiles(MetadataContract):
    def open_store(self, location: Path) -> MetadataStore:
        return ManifestMetadataStore(local_store(location), checkpoint_every=7)


class TestManifestInMemory(MetadataContract):
    def open_store(self, location: Path) -> MetadataStore:
        return ManifestMetadataStore(ObjectStore.from_url(f"memory://{location.as_posix()}"),
                                     checkpoint_every=5)


class TestManifestOnS3(MetadataContract):
    model_examples = 6
    model_steps = 20

    @pytest.fixture(autouse=True)
    def bucket(self, moto_s3: S3Endpoint) -> Iterator[str]:
        self.endpoint = moto_s3
        self.bucket = moto_s3.create_bucket()
        yield self.bucket
        moto_s3.delete_bucket(self.bucket)

    def open_store(self, location: Path) -> MetadataStore:
        """A manifest under ``location``'s path in the test's bucket, on the endpoint's one
        filesystem (built as ``ObjectStore.from_url`` builds it; a new one per handle would
        cost a botocore client, 0.1-0.4 s, at every open)."""
        root = f"{self.bucket}/{location.as_posix().strip('/')}"
        return ManifestMetadataStore(ObjectStore(self.endpoint.store_fs, root),
                                     checkpoint_every=6)


def commit_of(stream_id: int, start: int, end: int, epoch: int, node: str = "n1",
              position: int = 0) -> Commit:
    key = f"obj-{uuid.uuid4().hex}"
    return Commit(node_id=node, wal_position=position, epochs={stream_id: epoch},
                  objects=[make_object(key, (stream_id, start, end))])


def test_two_writers_on_one_manifest_see_each_other(tmp_path: Path) -> None:
    a = ManifestMetadataStore(local_store(tmp_path), node_id="a")
    b = ManifestMetadataStore(local_store(tmp_path), node_id="b")
    s1 = a.create_stream("one")
    s2 = b.create_stream("two")  # b had not seen s1: it loses version 1, catches up, takes 2
    assert (s1.id, s2.id) == (1, 2)
    with pytest.raises(StreamExists):
        b.create_stream("one")  # known to b only after it catches up: still refused
    assert [s.name for s in a.streams()] == ["one"]  # a reads its own copy...
    assert a.refresh() == 1 and [s.name for s in a.streams()] == ["one", "two"]  # ...until now
    opened = b.open_stream(s1.id)
    with pytest.raises(FencedError):  # a's epoch 0 is old: b opened the stream (epoch 1)
        a.commit(commit_of(s1.id, 0, 10, epoch=0))
    b.commit(commit_of(s1.id, 0, 10, epoch=opened.epoch, node="b"))
    a.refresh()
    assert a.get_stream(s1.id).end_offset == 10
    a.close()
    b.close()


def test_concurrent_writers_each_change_applies_exactly_once(tmp_path: Path) -> None:
    """Four writers, each with its own manifest handle and stream, commit 25 times each at the
    same time: every commit applies once, in one order every handle agrees on."""
    handles = [ManifestMetadataStore(local_store(tmp_path), node_id=f"n{i}") for i in range(4)]
    streams = [h.create_stream(f"s{i}") for i, h in enumerate(handles)]
    epochs = [h.open_stream(s.id).epoch for h, s in zip(handles, streams, strict=True)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for n in range(25):
                handles[i].commit(commit_of(streams[i].id, n * 4, n * 4 + 4, epochs[i],
                                            node=f"n{i}", position=n))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    fresh = ManifestMetadataStore(local_store(tmp_path))
    for h in [*handles, fresh]:
        h.refresh()
        assert [s.end_offset for s in h.streams()] == [100] * 4
        assert h.version == fresh.version == 4 + 4 + 100
    assert len(fresh.objects(streams[0].id)) == 25
    for h in [*handles, fresh]:
        h.close()


def test_a_create_whose_answer_is_lost_is_recognised_as_its_own(tmp_path: Path) -> None:
    """The PUT of a change lands but the client hears a timeout; the retry finds the version
    taken — by itself. The change applies once and the writer does not fence itself."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    root = f"/ambiguous-{uuid.uuid4().hex}"
    objects = ObjectStore(faulty, root, retry=RetryPolicy(initial=0.001, timeout=5))
    store = ManifestMetadataStore(objects, node_id="a")
    stream = store.create_stream("s")
    epoch = store.open_stream(stream.id).epoch
    faulty.inject("put", timeout, after=True, times=1)  # the next PUT lands, its answer is lost
    store.commit(commit_of(stream.id, 0, 5, epoch, node="a"))
    assert faulty.rules[0].hits == 1
    assert store.get_stream(stream.id).end_offset == 5
    store.commit(commit_of(stream.id, 5, 9, epoch, node="a"))  # not fenced, not conflicting
    again = ManifestMetadataStore(ObjectStore(fsspec.filesystem("memory"), root))
    assert again.get_stream(stream.id).end_offset == 9 and again.version == store.version == 4
    # Lost answers on every try: the change's outcome is unknown, said so; the next change
    # finds out that it applied.
    faulty.inject("put", timeout, after=True, times=None)
    faulty.inject("get", timeout, times=None)
    with pytest.raises(StorageUnavailable, match=r"unknown outcome|unavailable"):
        store.commit(commit_of(stream.id, 9, 12, epoch, node="a"))
    faulty.clear()
    with pytest.raises(CommitConflict, match="committed end"):  # it did apply: 9 is taken
        store.commit(commit_of(stream.id, 9, 12, epoch, node="a"))
    assert store.get_stream(stream.id).end_offset == 12


def test_checkpoints_keep_open_short_and_agree_with_the_deltas(tmp_path: Path) -> None:
    store = ManifestMetadataStore(local_store(tmp_path), checkpoint_every=10)
    stream = store.create_stream("s")
    epoch = store.open_stream(stream.id).epoch
    for n in range(35):
        store.commit(commit_of(stream.id, n, n + 1, epoch, position=n))
    checkpoints = sorted(p.name for p in (tmp_path / "manifest" / "checkpoint").iterdir())
    assert [int(c) for c in checkpoints] == [10, 20, 30]
    reopened = ManifestMetadataStore(local_store(tmp_path))
    assert reopened.version == 37 and reopened.get_stream(stream.id).end_offset == 35
    assert reopened.objects(stream.id) == store.objects(stream.id)
    assert reopened.node("n1") == store.node("n1")
    # Without its checkpoints the same state comes from the deltas alone.
    for name in checkpoints:
        (tmp_path / "manifest" / "checkpoint" / name).unlink()
    from_deltas = ManifestMetadataStore(local_store(tmp_path))
    assert from_deltas.objects(stream.id) == store.objects(stream.id)


def test_a_damaged_delta_or_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    store = ManifestMetadataStore(local_store(tmp_path), checkpoint_every=3)
    for n in range(4):
        store.create_stream(f"s{n}")
    store.close()
    log = tmp_path / "manifest" / "log"
    delta = log / f"{4:020d}"
    good = delta.read_bytes()
    delta.write_bytes(good[:-5])
    with pytest.raises(CorruptDataError, match=f"{4:020d}"):
        ManifestMetadataStore(local_store(tmp_path))
    body = json.loads(good)
    body["version"] = 9
    delta.write_bytes(json.dumps(body).encode())
    with pytest.raises(CorruptDataError, match="version 9"):
        ManifestMetadataStore(local_store(tmp_path))
    delta.write_bytes(good)
    checkpoint = tmp_path / "manifest" / "checkpoint" / f"{3:020d}"
    checkpoint.write_bytes(b"\x00" * 40)
    with pytest.raises(CorruptDataError, match="checkpoint"):
        ManifestMetadataStore(local_store(tmp_path))


def test_a_store_that_cannot_create_only_if_absent_is_refused() -> None:
    class Plain(fsspec.AbstractFileSystem):
        protocol = "plain"

    with pytest.raises(ConfigError, match="only if absent"):
        ManifestMetadataStore(ObjectStore(Plain(), "/root"))


def test_one_hundred_thousand_streams_and_objects_open_fast(tmp_path: Path) -> None:
    """A manifest whose checkpoint holds 100,000 streams and 100,000 objects (each of one
    stream, as stream objects are) opens in well under a second of CPU; a steady commit's
    delta stays small."""
    state = ManifestState()
    n = 100_000
    for i in range(1, n + 1):
        state.streams[i] = StreamRecord(i, f"topic-{i}", 3, 0, 1000)
        state.objects[f"data/n1/1/{i:012d}-abcdef.sobj"] = (
            1_100_000, ((i, 0, 1000, 1_050_000),))
    state.next_id = n + 1
    state.nodes = {"n1": [1, 123456789]}
    state.version = 1
    body = zstandard.ZstdCompressor(level=3).compress(json.dumps(dump_state(state)).encode())
    local_store(tmp_path).create(f"manifest/checkpoint/{1:020d}", body)
    times = []  # CPU seconds of this thread, which reads and decodes the checkpoint: other
    for _ in range(3):  # work on a loaded machine does not count
        started = time.thread_time()
        opened = ManifestMetadataStore(local_store(tmp_path))
        times.append(time.thread_time() - started)
    assert opened.get_stream(n).end_offset == 1000
    assert opened.stream_objects(n)[0].range.end_offset == 1000
    opened.open_stream(n)
    before = {p.name for p in (tmp_path / "manifest" / "log").iterdir()}
    opened.commit(Commit(node_id="n1", wal_position=123456790, epochs={n: 4}, objects=[
        make_object("data/n1/1/next.sobj", (n, 1000, 2000))]))
    new = (tmp_path / "manifest" / "log" /
           ({p.name for p in (tmp_path / "manifest" / "log").iterdir()} - before).pop())
    print(f"\nmanifest at 100,000 streams + 100,000 objects: checkpoint {len(body):,} bytes "
          f"(zstd), open {min(times) * 1000:.0f} ms (best of 3: "
          f"{', '.join(f'{t * 1000:.0f}' for t in times)} ms); one commit's delta "
          f"{new.stat().st_size} bytes")
    assert min(times) < 1.0
    assert new.stat().st_size < 1024


def test_a_lost_answer_on_a_real_s3_server(moto_s3: S3Endpoint) -> None:
    """The same through s3fs against moto: the conditional PUT lands on the server, the client
    is told it timed out; the retry's 412 is read back as this writer's own delta."""
    bucket = moto_s3.create_bucket()
    try:
        faulty = FaultyFileSystem(moto_s3.filesystem())
        objects = ObjectStore(faulty, f"{bucket}/m", retry=RetryPolicy(initial=0.01, timeout=10))
        store = ManifestMetadataStore(objects, node_id="a")
        stream = store.create_stream("s")
        epoch = store.open_stream(stream.id).epoch
        puts = sum(op == "put" for op, _, _ in faulty.events)
        faulty.inject("put", timeout, after=True, times=1)
        store.commit(commit_of(stream.id, 0, 5, epoch, node="a"))
        assert faulty.rules[0].hits == 1
        assert sum(op == "put" for op, _, _ in faulty.events) == puts + 2  # landed + retry
        store.commit(commit_of(stream.id, 5, 6, epoch, node="a"))
        fresh = ManifestMetadataStore(ObjectStore(moto_s3.filesystem(), f"{bucket}/m"))
        assert fresh.get_stream(stream.id).end_offset == 6 and fresh.version == 4
    finally:
        moto_s3.delete_bucket(bucket)


def test_owners_and_hand_overs_survive_in_checkpoints(tmp_path: Path) -> None:
    """With a checkpoint at every version, each step of a hand-over reads back the same from
    the checkpoint alone (the contract's reopens read them mostly from deltas)."""
    store = ManifestMetadataStore(local_store(tmp_path), checkpoint_every=1)
    stream = store.create_stream("s").id
    steps: list[Callable[[], object]] = [
        lambda: store.open_stream(stream, node_id="a"),
        lambda: store.open_stream(stream, node_id="b"),  # handed over from A
        lambda: store.commit(commit_of(stream, 0, 5, epoch=1, node="a")),
        lambda: store.open_stream(stream, node_id="c"),  # every owner field set
        lambda: store.release_streams("a", 0, [stream]),
        lambda: store.release_streams("c", 0, [stream]),
    ]
    seen = []
    for step in steps:
        step()
        assert (tmp_path / "manifest" / "checkpoint" / f"{store.version:020d}").exists()
        reopened = ManifestMetadataStore(local_store(tmp_path))
        seen.append(reopened.get_stream(stream))
        assert seen[-1] == store.get_stream(stream)
        reopened.close()
    assert (seen[3].owner, seen[3].owner_since, seen[3].handover_from, seen[3].handover_epoch,
            seen[3].handover_since) == ("c", 3, "a", 1, 1)
    assert (seen[-1].owner, seen[-1].handover_from) == (None, None)
    store.close()


def test_a_server_that_ignores_create_only_conditions_is_refused() -> None:
    """An S3-compatible server that drops If-None-Match (a second create of a key succeeds):
    the manifest finds out at open and refuses it by name."""

    class IgnoresConditions(FaultyFileSystem):
        def pipe_file(self, path: str, value: bytes, **kwargs: object) -> object:
            kwargs.pop("mode", None)  # the condition is lost on the way
            return super().pipe_file(path, value, **kwargs)

    plain = IgnoresConditions(fsspec.filesystem("memory"))
    with pytest.raises(ConfigError, match="ignores create-only writes"):
        ManifestMetadataStore(ObjectStore(plain, f"/ignores-{uuid.uuid4().hex}"))
    honest = FaultyFileSystem(fsspec.filesystem("memory"))
    ManifestMetadataStore(ObjectStore(honest, f"/honest-{uuid.uuid4().hex}")).close()


def open_twenty_times_losing_the_probes_first_answer(faulty: FaultyFileSystem,
                                                     objects: ObjectStore) -> None:
    """Open a manifest 20 times, each time losing the answer of the probe's first create (it
    lands; the client hears a timeout and retries into "exists"): every open succeeds and
    leaves no probe object behind."""
    for _ in range(20):
        rule = faulty.inject("put", timeout, after=True, match=lambda path: "/probe/" in path)
        ManifestMetadataStore(objects).close()
        assert rule.hits == 1
        assert objects.list("manifest/probe/") == []
        faulty.clear()


def test_opening_survives_a_lost_answer_of_its_probe() -> None:
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    objects = ObjectStore(faulty, f"/probe-{uuid.uuid4().hex}",
                          retry=RetryPolicy(initial=0.001, timeout=5))
    assert objects.create_trusts_the_server  # the probe runs: no plain memory filesystem
    open_twenty_times_losing_the_probes_first_answer(faulty, objects)


def test_opening_survives_a_lost_answer_of_its_probe_on_a_real_s3_server(
        moto_s3: S3Endpoint) -> None:
    bucket = moto_s3.create_bucket()
    try:
        faulty = FaultyFileSystem(moto_s3.filesystem())
        objects = ObjectStore(faulty, f"{bucket}/m", retry=RetryPolicy(initial=0.01, timeout=10))
        open_twenty_times_losing_the_probes_first_answer(faulty, objects)
    finally:
        moto_s3.delete_bucket(bucket)


def test_every_failure_of_the_probe_is_a_streamlib_error_and_leaves_no_probe() -> None:
    """A server that ignores create-only conditions is still refused when an answer is lost;
    a store that stays unavailable, or refuses the writes, fails the open with the error
    that says what to do; no probe object stays in any case."""

    class IgnoresConditions(FaultyFileSystem):
        def pipe_file(self, path: str, value: bytes, **kwargs: object) -> object:
            kwargs.pop("mode", None)  # the condition is lost on the way
            return super().pipe_file(path, value, **kwargs)

    ignores = IgnoresConditions(fsspec.filesystem("memory"))
    objects = ObjectStore(ignores, f"/ignores-{uuid.uuid4().hex}",
                          retry=RetryPolicy(initial=0.001, timeout=5))
    for lost in (1, 2):  # the answer of the first create lost, or of the second
        if lost == 2:
            ignores.inject("put", match=lambda path: "/probe/" in path)  # passes the first
        ignores.inject("put", timeout, after=True, match=lambda path: "/probe/" in path)
        with pytest.raises(ConfigError, match="ignores create-only writes"):
            ManifestMetadataStore(objects)
        ignores.clear()
        assert objects.list("manifest/probe/") == []
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    objects = ObjectStore(faulty, f"/failing-{uuid.uuid4().hex}",
                          retry=RetryPolicy(initial=0.001, timeout=0.5))
    cases: list[tuple[str, Callable[[str], BaseException], type[Exception]]] = [
        ("put", timeout, StorageUnavailable),  # never answers: nothing landed
        ("get", timeout, StorageUnavailable),  # the read-back after a lost answer's "exists"
        ("put", access_denied, ConfigError),
        ("list", access_denied, ConfigError),
    ]
    for op, error, expected in cases:
        if op == "get":
            faulty.inject("put", timeout, after=True, match=lambda path: "/probe/" in path)
        faulty.inject(op, error, times=None)
        with pytest.raises(expected):
            ManifestMetadataStore(objects)
        faulty.clear()
        assert objects.list("manifest/probe/") == [], op


def test_a_delta_that_does_not_apply_changes_nothing(tmp_path: Path) -> None:
    """A well-formed delta whose commit removes an object never committed (a bug or a tamper
    elsewhere): refused by name, and a handle that tried to catch up keeps its state whole —
    reading again does not see half of it, nor does retrying apply half twice."""
    store = ManifestMetadataStore(local_store(tmp_path))
    stream = store.create_stream("s").id
    epoch = store.open_stream(stream).epoch
    store.commit(commit_of(stream, 0, 5, epoch))
    before = store.objects(stream)
    bad = {"format": 1, "version": store.version + 1, "put": "x", "node": "n1", "time": 0,
           "op": "commit", "args": {"node": "n1", "wal_position": 9, "remove": ["nothing"],
                                    "objects": [["new", 100, [[stream, 5, 9, 40]]]]}}
    local_store(tmp_path).create(f"manifest/log/{store.version + 1:020d}",
                                 json.dumps(bad).encode())
    for _ in range(2):
        with pytest.raises(CorruptDataError, match="never committed"):
            store.refresh()
        assert store.objects(stream) == before
        assert store.get_stream(stream).end_offset == 5
    with pytest.raises(CorruptDataError, match=f"{store.version + 1:020d}"):
        ManifestMetadataStore(local_store(tmp_path))


def test_a_replace_on_an_old_state_is_planned_again_on_the_newest(tmp_path: Path) -> None:
    """A writer that has not seen another's commit plans a replace of its objects again once
    it has caught up; one that has not seen another's replace of the same inputs finds them
    doomed, and writes nothing."""
    a = ManifestMetadataStore(local_store(tmp_path), node_id="a")
    b = ManifestMetadataStore(local_store(tmp_path), node_id="b")
    stream = a.create_stream("s").id
    epoch = a.open_stream(stream).epoch
    a.commit(Commit(node_id="a", wal_position=1, epochs={stream: epoch},
                    objects=[make_object("o1", (stream, 0, 5)), make_object("o2", (stream, 5, 9))]))
    b.replace(Replacement(inputs=["o1", "o2"], outputs=[make_object("b1", (stream, 0, 9))]))
    assert [o.key for o in b.objects(stream)] == ["b1"]
    version = b.version
    with pytest.raises(CompactionConflict, match="doomed already"):
        a.replace(Replacement(inputs=["o1"], outputs=[make_object("a1", (stream, 0, 5))]))
    assert a.version == b.version == version  # a caught up, and wrote nothing
    assert [o.key for o in a.objects(stream)] == ["b1"]
    assert sorted(d.key for d in a.doomed()) == ["o1", "o2"]
    assert b.forget(["o1"]) == 1
    assert a.forget(["o1", "o2"]) == 1  # a catches up: o1 is forgotten already
    assert a.doomed() == [] and b.refresh() == 1 and b.doomed() == []
    a.close()
    b.close()


def test_the_lifecycle_survives_in_checkpoints(tmp_path: Path) -> None:
    """With a checkpoint at every version, retentions, tiers and doomed objects (with their
    marks) read back the same from the checkpoint alone."""
    store = ManifestMetadataStore(local_store(tmp_path), checkpoint_every=1)
    stream = store.create_stream("s", retention=Retention(max_age=60)).id
    epoch = store.open_stream(stream).epoch
    steps: list[Callable[[], object]] = [
        lambda: store.commit(Commit(node_id="n1", wal_position=1, epochs={stream: epoch},
                                    objects=[make_object("o1", (stream, 0, 5))])),
        lambda: store.replace(Replacement(inputs=["o1"], outputs=[
            make_object("a1", (stream, 0, 5), tier="archive")])),
        lambda: store.set_retention(stream, Retention(max_bytes=1 << 30)),
        lambda: store.trim_stream(stream, 5),
        lambda: store.commit(Commit(node_id="n1", wal_position=1, remove=["a1"])),
        lambda: store.forget(["o1"]),
    ]
    for step in steps:
        step()
        assert (tmp_path / "manifest" / "checkpoint" / f"{store.version:020d}").exists()
        reopened = ManifestMetadataStore(local_store(tmp_path))
        assert reopened.opened_version == store.version
        assert reopened.get_stream(stream) == store.get_stream(stream)
        assert reopened.live_objects() == store.live_objects()
        assert reopened.stream_objects(stream) == store.stream_objects(stream)
        assert reopened.doomed() == store.doomed()
        reopened.close()
    assert [(d.key, d.tier) for d in store.doomed()] == [("a1", "archive")]
    store.close()


FORMAT_1_LOG = [  # deltas as format-1 writers wrote them
    {"op": "create", "args": {"id": 1, "name": "s"}},
    {"op": "open", "args": {"id": 1, "epoch": 1, "owner": "a", "since": 1, "from": None}},
    {"op": "commit", "args": {"node": "a", "wal_position": 9, "remove": [],
                              "objects": [["o1", 100, [[1, 0, 5, 50]]],
                                          ["o2", 100, [[1, 5, 9, 40]]]]}},
    {"op": "trim", "args": {"id": 1, "offset": 5}},
    {"op": "commit", "args": {"node": "a", "wal_position": 9, "objects": [], "remove": ["o1"]}},
]


def test_a_format_1_manifest_opens_and_goes_on_in_format_2(tmp_path: Path) -> None:
    """A manifest written by format-1 writers (what they removed is doomed now, marked at the
    delta's time); this code's changes after it are format 2, which a format-1 reader refuses
    by its number."""
    objects = local_store(tmp_path)
    for version, entry in enumerate(FORMAT_1_LOG, 1):
        objects.create(f"manifest/log/{version:020d}", json.dumps(
            {"format": 1, "version": version, "put": uuid.uuid4().hex, "node": "a",
             "time": 1_795_000_000_000 + version, **entry}).encode())
    store = ManifestMetadataStore(objects, node_id="b")
    assert store.version == len(FORMAT_1_LOG) and store.get_stream(1).retention is None
    assert [o.key for o in store.live_objects()] == ["o2"]
    assert [(d.key, d.marked_at_ms) for d in store.doomed()] == [("o1", 1_795_000_000_005)]
    store.replace(Replacement(inputs=["o2"], outputs=[make_object("m", (1, 5, 9))]))
    written = json.loads(objects.get(f"manifest/log/{store.version:020d}"))
    assert written["format"] == 2 and written["op"] == "replace"
    assert ManifestMetadataStore(objects).doomed() == store.doomed()
    store.close()


def test_creation_times_are_format_4_and_older_deltas_and_checkpoints_read_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create as the release before wrote it (format 2, no creation time) reads None; this
    code's creates carry theirs in format 4 (alone, or in a group), and checkpoints keep them
    in a column (format 4), read back the same. A reader of formats up to 3 refuses either by
    its number."""
    objects = local_store(tmp_path)
    objects.create(f"manifest/log/{1:020d}", json.dumps(
        {"format": 2, "version": 1, "put": uuid.uuid4().hex, "node": "a",
         "time": 1_795_000_000_000, "op": "create", "args": {"id": 1, "name": "old"}}).encode())
    store = ManifestMetadataStore(objects, node_id="b", checkpoint_every=3)
    assert store.get_stream(1).created_ms is None
    made = store.create_stream("new")
    opened = store.create_and_open("opened", node_id="b")  # a group: create and open
    assert made.created_ms is not None and opened.created_ms is not None
    deltas = [json.loads(objects.get(f"manifest/log/{v:020d}")) for v in (2, 3)]
    assert [(d["format"], d["op"]) for d in deltas] == [(4, "create"), (4, "group")]
    assert deltas[0]["args"]["created_ms"] == made.created_ms
    checkpoint = json.loads(zstandard.ZstdDecompressor().decompress(
        objects.get(f"manifest/checkpoint/{3:020d}")))
    assert checkpoint["format"] == 4
    assert checkpoint["streams"]["created_ms"] == [None, made.created_ms, opened.created_ms]
    store.trim_stream(made.id, 0)  # writes nothing
    store.destroy_stream(1)
    assert json.loads(objects.get(f"manifest/log/{4:020d}"))["format"] == 2  # none held
    replayed = local_store(tmp_path / "replayed")  # the same deltas, no checkpoint
    for version in range(1, 5):
        key = f"manifest/log/{version:020d}"
        replayed.create(key, objects.get(key))
    for root in (objects, replayed):  # the checkpoint and a delta after it; every delta
        reopened = ManifestMetadataStore(root)
        assert reopened.get_stream(made.id) == made
        assert reopened.get_stream(opened.id) == store.get_stream(opened.id)
        assert reopened.get_stream(1, include_destroyed=True).created_ms is None
        reopened.close()
    store.close()
    monkeypatch.setattr(manifest_state, "FORMATS", (1, 2, 3))  # as the release before read
    monkeypatch.setattr(manifest_checkpoint, "CHECKPOINT_FORMATS", (1, 2))
    with pytest.raises(CorruptDataError, match="format 4"):
        ManifestMetadataStore(objects)
    with pytest.raises(CorruptDataError, match="format 4"):
        ManifestMetadataStore(replayed)
