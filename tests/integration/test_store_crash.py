"""Crash safety of the store, for real (docs/store.md, "Upload, commit, trim" and "Recovery at
open"): a child process (store_crash_child.py) appends from several threads to several streams
while its uploader runs rounds every few tens of milliseconds, and is killed with SIGKILL — by
the parent at a random moment, or by itself at a point inside an upload round (before a PUT,
after the PUTs before the commit, after the commit before the WAL trim). The parent then opens
the store and checks, for every stream:

- every acknowledged append is there, exactly once, at the offset it was acknowledged at, with
  its payload;
- the offsets are dense from the start (0, or the trim point) to the end;
- what lies above the last verified end is a prefix, per writing thread, of what the child
  submitted in order — nothing that was never appended (a durable but unacknowledged tail is
  allowed);
- the committed objects' ranges of the stream are contiguous and end at its end (the recovery
  upload duplicated nothing), nothing waits for upload and the WAL is trimmed once open returns;
- a flush, close and second open give the same content and recover nothing more.

Every child after a verified open must find each stream exactly where the parent left it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from store_crash_child import STREAMS, digest, expected_records, header

import streamlib
from streamlib.testing.s3 import S3Bucket

pytestmark = [pytest.mark.slow, pytest.mark.once]  # processes and files: the C pass runs it

CHILD = Path(__file__).with_name("store_crash_child.py")
KILL_POINT_TIMEOUT = 20.0  # seconds for a child to reach its kill point (S3 start-up: ~1 s)
WAL_LEFT_AFTER_OPEN = 64 * 1024  # bytes: a trimmed WAL keeps at most its last record or so

# Small rounds, often: several uploads a second, stream objects and multi-stream objects both.
SMALL_ROUNDS = {"upload_bytes": "32KiB", "upload_interval_ms": 50,
                "stream_object_bytes": "16KiB", "block_bytes": "16KiB"}


@dataclass(frozen=True, slots=True)
class Ack:
    gen: int
    stream: int
    thread: int
    seq: int
    base: int
    count: int
    digest: str


@dataclass
class ChildRun:
    gen: int
    point: str
    ready: list[int] | None  # the streams' next offsets the child found at open
    acks: list[Ack]
    trims: dict[int, int]  # stream -> highest offset a returned trim logged
    killed: tuple[str, int] | None  # the kill point the child reached, and its round's objects


@dataclass(frozen=True, slots=True)
class Entry:
    """One batch of a stream as read back."""

    base: int
    count: int
    digest: str


@dataclass
class Content:
    start: int
    end: int
    entries: list[Entry]


@dataclass
class Opened:
    """What one open of the store found."""

    recovered: int  # WAL records recovery returned
    committed_already: int  # of which were committed already
    orphans: int  # data objects in the object store that no committed metadata names
    objects: int  # committed objects


def read_acklog(path: Path) -> tuple[list[Ack], dict[int, int], tuple[str, int] | None]:
    acks: list[Ack] = []
    trims: dict[int, int] = {}
    killed = None
    if not path.exists():
        return acks, trims, killed
    for line in path.read_text().splitlines():
        kind, *fields = line.split()
        if kind == "A" and len(fields) == 7:  # a line cut by the kill is ignored
            *numbers, payload_digest = fields
            acks.append(Ack(*map(int, numbers), payload_digest))  # type: ignore[arg-type]
        elif kind == "T" and len(fields) == 2:
            stream, offset = map(int, fields)
            trims[stream] = max(trims.get(stream, 0), offset)
        elif kind == "K":
            killed = (fields[0], int(fields[1]) if len(fields) > 1 and fields[1] else 0)
    return acks, trims, killed


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def store_log() -> Iterator[_Capture]:
    logger = logging.getLogger("streamlib")
    handler = _Capture()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # recovery reports at DEBUG when nothing is left to upload
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class CrashHarness:
    """One store, the children run on it, and the parent's model of what it must hold."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], *,
                 storage_options: dict[str, Any] | None = None, seed: int = 0,
                 keep: int | None = None) -> None:
        self.tmp = tmp_path
        self.config = config
        self.options = storage_options
        self.env = {**os.environ, "S3_STORAGE_OPTIONS": json.dumps(storage_options)}
        self.rng = random.Random(seed)
        self.keep = keep  # after a check, trim each stream to its last `keep` offsets
        self.model: dict[int, Content] = {}  # stream index -> content verified last
        self.unverified: list[ChildRun] = []
        self.gen = 0
        self.orphans = 0
        self.summary: dict[str, int] = {"children": 0, "acks": 0}

    # ---- children ----

    def run_child(self, point: str = "none", at: int = 1, *,
                  delay: tuple[float, float] = (0.05, 0.5)) -> ChildRun:
        """Run a child until it is killed: by the parent after a random delay once it is ready
        (``point="none"``), or by itself at ``point``."""
        self.gen += 1
        gen = self.gen
        acklog = self.tmp / f"acks-{gen}"
        errlog = self.tmp / f"stderr-{gen}"
        with errlog.open("wb") as err:
            child = subprocess.Popen(
                [sys.executable, str(CHILD), json.dumps(self.config), str(acklog), str(gen),
                 point, str(at), str(self.rng.randrange(1 << 30))],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=CHILD.parent, env=self.env)
        stdout = child.stdout
        assert stdout is not None
        try:
            if point == "none":
                line = stdout.readline()
                assert line.startswith("ready "), f"child {gen}: {line!r} {errlog.read_text()}"
                time.sleep(self.rng.uniform(*delay))  # a random moment to kill it: not a wait
                assert child.poll() is None, f"child {gen} died by itself: {errlog.read_text()}"
                child.send_signal(signal.SIGKILL)
            else:
                try:
                    child.wait(timeout=KILL_POINT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"child {gen} never reached {point} #{at}: "
                                f"{errlog.read_text()}")
                line = stdout.readline()
            returncode = child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            stdout.close()
        assert returncode == -signal.SIGKILL, \
            f"child {gen} exited with {returncode}: {errlog.read_text()}"
        ready = json.loads(line.split(" ", 1)[1]) if line.startswith("ready ") else None
        acks, trims, killed = read_acklog(acklog)
        if point != "none":
            assert killed is not None and killed[0] == point, (point, killed)
        if ready is not None and not self.unverified:
            # Right after a verified open: every stream exactly where the parent left it.
            found = {i: end for i, end in enumerate(ready)}
            assert found == {i: self.model[i].end if i in self.model else 0
                             for i in range(STREAMS)}, f"child {gen} found other ends"
        run = ChildRun(gen, point, ready, acks, trims, killed)
        self.unverified.append(run)
        self.summary["children"] += 1
        self.summary["acks"] += len(acks)
        self.summary[point] = self.summary.get(point, 0) + 1
        return run

    # ---- checks ----

    def open(self) -> tuple[streamlib.StreamStore, Opened]:
        with store_log() as captured:
            store = streamlib.open(self.config, storage_options=self.options)
        try:
            recovered = committed_already = -1
            for record in captured.records:
                if record.getMessage().startswith("recovered "):
                    recovered, committed_already = record.args[:2]  # type: ignore[index]
                # A kill may tear the WAL's last writes (never acknowledged): dropped, fine.
                torn = (record.msg.startswith("WAL recovery dropped")
                        and any(word in record.getMessage() for word in ("torn", "superseded")))
                assert record.levelno < logging.WARNING or torn, record.getMessage()
            stats = store.stats()
            assert stats["pending_upload_bytes"] == 0, stats
            assert stats["wal_usage_bytes"] <= WAL_LEFT_AFTER_OPEN, stats  # type: ignore[operator]
            committed = set()
            for info in store.streams():
                committed.update(o.key for o in store.metadata.objects(info.id))
            listed = {o.key for o in store.objects.list("data/")}
            assert committed <= listed, "a committed object is missing"
            opened = Opened(recovered, committed_already, len(listed - committed),
                            len(committed))
        except BaseException:
            store.close()
            raise
        return store, opened

    @staticmethod
    def read(store: streamlib.StreamStore
             ) -> tuple[dict[int, Content], dict[tuple[int, int], Any]]:
        """Every stream's batches (and the batches themselves, by stream and base offset)."""
        contents: dict[int, Content] = {}
        batches: dict[tuple[int, int], Any] = {}
        for info in store.streams():
            assert info.name is not None and info.name.startswith("s")
            index = int(info.name[1:])
            stream = store.open_stream(info.id, read_only=True)
            entries = []
            position = info.start_offset
            while position < info.next_offset:
                result = stream.fetch(position, max_bytes=256 * 1024)
                assert result.batches, f"s{index}: nothing at {position} < {info.next_offset}"
                for batch in result.batches:
                    entries.append(Entry(batch.base_offset, batch.count, digest(batch.payload)))
                    batches[index, batch.base_offset] = batch
                position = result.next_fetch_offset
            contents[index] = Content(info.start_offset, info.next_offset, entries)
            # The committed ranges: contiguous from the first object, ending at the end (the
            # recovery upload committed everything, and nothing twice).
            ranges = sorted((r for o in store.metadata.objects(info.id)
                             for r in o.ranges if r.stream_id == info.id),
                            key=lambda r: r.start_offset)
            if ranges:
                assert ranges[0].start_offset <= info.start_offset
                for a, b in itertools.pairwise(ranges):
                    assert a.end_offset == b.start_offset, f"s{index}: ranges {a} {b}"
                assert ranges[-1].end_offset == info.next_offset, f"s{index}: {ranges[-1]}"
            else:
                assert info.next_offset == info.start_offset == 0
        return contents, batches

    def check(self, contents: dict[int, Content], batches: dict[tuple[int, int], Any]) -> None:
        runs = self.unverified
        gens = {run.gen for run in runs}
        assert set(self.model) <= set(contents), "a stream disappeared"
        for index, content in contents.items():
            old = self.model.get(index, Content(0, 0, []))
            trimmed = max([run.trims.get(index, 0) for run in runs] + [old.start])
            # The children trim only below where they found the stream.
            ceiling = max([old.end] + [run.ready[index] for run in runs if run.ready])
            assert trimmed <= content.start <= ceiling, (index, trimmed, content.start)
            assert content.end >= old.end, f"s{index}: verified records lost"
            # Dense from the start to the end.
            entries = content.entries
            if entries:
                assert entries[0].base <= content.start < entries[0].base + entries[0].count
            expect = entries[0].base if entries else content.start
            for entry in entries:
                assert entry.base == expect, f"s{index}: offsets not dense at {expect}"
                expect += entry.count
            assert expect == content.end
            # Below the last verified end: what was verified, unchanged.
            verified = {e.base: e for e in old.entries}
            following: dict[tuple[int, int], int] = {}
            last_gen = 0
            for entry in entries:
                if entry.base < old.end:
                    assert verified.get(entry.base) == entry, f"s{index}: {entry} changed"
                    continue
                # Above: the children's batches, per thread in the order submitted.
                batch = batches[index, entry.base]
                gen, stream, thread, seq = header(batch)
                assert stream == index and gen in gens, (index, entry, gen, stream)
                assert gen >= last_gen, f"s{index}: child {gen} after child {last_gen}"
                last_gen = gen
                if (gen, thread) in following or content.start <= old.end:
                    assert seq == following.get((gen, thread), 0), \
                        f"s{index}: child {gen} thread {thread}: batch {seq} out of place"
                following[gen, thread] = seq + 1
                assert batch.records() == expected_records(gen, stream, thread, seq), \
                    f"s{index}: {entry} holds other records"
        for run in runs:
            for ack in run.acks:
                content = contents.get(ack.stream)
                assert content is not None, f"acknowledged stream s{ack.stream} is missing"
                if ack.base + ack.count <= content.start:
                    continue  # trimmed since (by a later child)
                batch = batches.get((ack.stream, ack.base))
                assert batch is not None and batch.count == ack.count and \
                    digest(batch.payload) == ack.digest, f"acknowledged append lost: {ack}"
                assert header(batch) == (ack.gen, ack.stream, ack.thread, ack.seq), ack

    def verify(self) -> Opened:
        """Open the store after the children's crashes; check it; flush, close, open again and
        compare; then make the verified content the model."""
        store, first = self.open()
        try:
            contents, batches = self.read(store)
            self.check(contents, batches)
            store.flush()
        finally:
            store.close()
        assert first.orphans >= self.orphans
        store, second = self.open()
        try:
            assert second.committed_already == second.recovered, \
                "a second open found data to upload"
            assert second.objects == first.objects and second.orphans == first.orphans
            again, _ = self.read(store)
            assert again == contents, "a second open reads something else"
            if self.keep is not None:  # keep the streams short: the reads stay quick
                for index, content in contents.items():
                    cut = content.end - self.keep
                    if cut > content.start:
                        store.open_stream(f"s{index}").trim(cut)
                        content.start = cut
                        content.entries = [e for e in content.entries if e.base + e.count > cut]
        finally:
            store.close()
        self.model = contents
        self.unverified = []
        self.orphans = first.orphans
        return first

    def round(self, point: str = "none", at: int = 1) -> ChildRun:
        """One child killed, then verified; the kill point's own signature checked."""
        orphans = self.orphans
        run = self.run_child(point, at)
        opened = self.verify()
        if point == "after_put":  # the round's objects were PUT and never committed
            assert run.killed is not None
            assert opened.orphans >= orphans + run.killed[1], (opened, run.killed)
        if point == "after_commit":  # committed data was still in the WAL: skipped
            assert opened.committed_already > 0, opened
        return run


def file_config(tmp_path: Path, **extra: object) -> dict[str, Any]:
    return {"path": str(tmp_path / "store"), **SMALL_ROUNDS, **extra}


def kill_plan(rng: random.Random, random_kills: int, per_point: int) -> list[tuple[str, int]]:
    plan = [("none", 1)] * random_kills
    for point in ("before_put", "after_put", "after_commit"):
        plan += [(point, rng.randint(1, 4)) for _ in range(per_point)]
    rng.shuffle(plan)
    return plan


def run_plan(harness: CrashHarness, plan: list[tuple[str, int]]) -> None:
    started = time.monotonic()
    for point, at in plan:
        harness.round(point, at)
    print(f"\n{len(plan)} crash rounds in {time.monotonic() - started:.1f}s: "
          f"{harness.summary}")


def test_file_store_survives_sigkill(tmp_path: Path) -> None:
    """Fourteen kills on one store (file WAL, file:// objects): five at random moments, three
    at each point of an upload round, in a shuffled order."""
    harness = CrashHarness(tmp_path, file_config(tmp_path), seed=1, keep=300)
    run_plan(harness, kill_plan(random.Random(1), random_kills=5, per_point=3))
    assert harness.summary["acks"] > 14 * 100, harness.summary


def test_recovery_survives_a_crash_loop(tmp_path: Path) -> None:
    """Killed inside the recovery upload of ``open``, twice in a row (after its PUTs, then
    after its commit), then opened twice: nothing lost, nothing doubled."""
    harness = CrashHarness(tmp_path, file_config(tmp_path), seed=2)
    harness.round("none")
    baseline = harness.orphans
    first = harness.run_child("after_put", at=3)  # leaves a WAL full of uncommitted data
    assert first.ready is not None and first.acks
    for point in ("after_put", "after_commit"):
        run = harness.run_child(point, at=1)  # the first round: the one open runs
        assert run.ready is None and not run.acks, f"{point}: killed after open returned"
    opened = harness.verify()
    assert opened.committed_already > 0, opened  # the loop's last commit, not trimmed
    assert opened.orphans >= baseline + 2, opened  # the first two rounds' objects
    harness.round("none")


def test_block_wal_store_survives_sigkill(tmp_path: Path) -> None:
    harness = CrashHarness(tmp_path, file_config(tmp_path, wal="block", wal_bytes="4MiB"),
                           seed=3)
    run_plan(harness, [("none", 1), ("before_put", 2), ("after_put", 2), ("after_commit", 3),
                       ("none", 1)])


def test_object_wal_store_survives_sigkill(tmp_path: Path) -> None:
    harness = CrashHarness(tmp_path, file_config(tmp_path, wal="object"), seed=4)
    run_plan(harness, [("none", 1), ("after_put", 2), ("before_put", 3), ("after_commit", 2),
                       ("none", 1)])


def test_s3_store_survives_sigkill(tmp_path: Path, moto_bucket: S3Bucket) -> None:
    """Objects on S3 (moto's server in this process), the file WAL on local disk."""
    config = file_config(tmp_path, objects_url=f"{moto_bucket.url}/store", compression="zstd",
                         upload_interval_ms=100)
    harness = CrashHarness(tmp_path, config,
                           storage_options=moto_bucket.endpoint.storage_options(), seed=5)
    run_plan(harness, [("none", 1), ("after_put", 2), ("after_commit", 2), ("before_put", 2)])
