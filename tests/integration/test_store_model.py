"""The store against a plain model: random creates, appends (records and opaque batches of many
sizes, some pipelined), fetches (random start, end and max_bytes), time lookups, trims, flushes,
destroys, closes and reopens, and second writers — on the local store with sizes small enough
that uploads happen all the time, and on S3 (moto's server, a fresh bucket per example).

The model is what docs/store.md promises: per stream, the batches appended (placed at dense
offsets) and a start offset; fetch returns the batches holding offsets of ``[start, end)``, whole,
at least one, stopping before the one that would take the total past ``max_bytes``."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import streamlib
from streamlib import (
    AppendResult,
    FencedError,
    OffsetOutOfRange,
    Record,
    RecordBatch,
    Stream,
    StreamClosed,
    StreamExists,
    StreamNotFound,
    StreamStore,
)
from streamlib.testing.s3 import S3Endpoint

SMALL = {"upload_bytes": "1KiB", "stream_object_bytes": "2KiB", "block_bytes": "4KiB",
         "durability": "unsafe-no-fsync"}
"""Sizes that make uploads (size-triggered, in the background), stream objects, multi-stream
objects and multi-block objects happen within a few appends. Nothing fsynced: the model checks
what the store answers, through clean closes and reopens, not what a power loss leaves."""

NAMES = ("a", "b", None)
VALUE_SIZES = (0, 1, 10, 100, 700, 2000)
OPAQUE_SIZES = (1, 30, 300, 1500, 5000)
MAX_BYTES = (0, 1, 100, 1000, 3000, 10_000, 1 << 20)

timestamps = st.integers(1000, 1010)
records = st.builds(
    Record,
    value=st.sampled_from(VALUE_SIZES).map(lambda n: b"v" * n),
    key=st.none() | st.sampled_from([b"", b"k"]),
    headers=st.sampled_from([(), (("h", b"1"),)]),
    timestamp=timestamps,
)
record_batches = st.lists(records, min_size=1, max_size=4).map(RecordBatch.from_records)
opaque_batches = st.builds(
    lambda size, count, ts, spread, fill: RecordBatch(bytes([fill]) * size, count,
                                                      base_timestamp=ts, max_timestamp=ts + spread),
    st.sampled_from(OPAQUE_SIZES), st.integers(1, 10), timestamps, st.integers(0, 3),
    st.integers(0, 255))
batches = record_batches | opaque_batches


@dataclass
class ModelStream:
    name: str | None
    epoch: int = 1
    start: int = 0
    batches: list[RecordBatch] = field(default_factory=list)  # placed, dense from 0

    @property
    def next(self) -> int:
        return self.batches[-1].next_offset if self.batches else 0

    def append(self, batch: RecordBatch) -> AppendResult:
        placed = batch.with_offset(self.next)
        self.batches.append(placed)
        return AppendResult(self.next - batch.count, batch.count)

    def fetch(self, start: int, end: int | None, max_bytes: int) -> list[RecordBatch]:
        end = self.next if end is None else min(end, self.next)
        if start >= end:  # an empty range holds no record, even inside a batch
            return []
        result: list[RecordBatch] = []
        total = 0
        for batch in self.batches:
            if batch.next_offset <= start or batch.base_offset >= end:  # type: ignore[operator]
                continue
            if result and total + batch.size > max_bytes:
                break
            result.append(batch)
            total += batch.size
        return result

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        for batch in self.batches:
            base = batch.base_offset
            assert base is not None
            if batch.next_offset <= self.start:
                continue
            if batch.encoding == "opaque":
                if batch.max_timestamp >= timestamp:
                    return max(base, self.start)
                continue
            for offset, record in enumerate(batch.records(), base):
                if offset >= self.start and record.timestamp >= timestamp:  # type: ignore[operator]
                    return offset
        return None


class StoreMachine(RuleBasedStateMachine):
    """A store and the model fed the same operations must never differ."""

    base: ClassVar[Path]
    options: ClassVar[Callable[[Path], dict[str, Any]]]  # config for one example's store
    cleanup: ClassVar[Callable[[dict[str, Any]], None]] = staticmethod(lambda options: None)
    runs = itertools.count()
    uploaded: ClassVar[Counter[str]]  # objects of each kind over every example (set per test)

    def __init__(self) -> None:
        super().__init__()
        cls = type(self)
        self.path = cls.base / f"run{next(cls.runs)}"
        self.config = cls.options(self.path)
        self.store: StreamStore = self.open()
        self.model: dict[int, ModelStream] = {}
        self.writers: dict[int, Stream] = {}
        self.fenced: list[tuple[int, Stream]] = []
        self.retired: list[Stream] = []  # handles of a closed store
        self.destroyed: list[int] = []

    def open(self) -> StreamStore:
        options = dict(self.config)
        storage_options = options.pop("storage_options", None)
        return streamlib.open(self.path, storage_options=storage_options, **options)

    def close(self) -> None:
        self.store.close()
        stats = self.store.stats()
        type(self).uploaded.update(stream=stats["stream_objects_uploaded"],  # type: ignore[arg-type]
                                   multi=stats["objects_uploaded"]  # type: ignore[operator]
                                   - stats["stream_objects_uploaded"])

    def teardown(self) -> None:
        self.close()
        type(self).cleanup(self.config)

    # ---- helpers ----

    def pick(self, data: st.DataObject) -> tuple[int, ModelStream]:
        stream_id = data.draw(st.sampled_from(sorted(self.model)), label="stream")
        return stream_id, self.model[stream_id]

    def reader(self, stream_id: int, data: st.DataObject) -> Stream:
        if data.draw(st.booleans(), label="read-only handle"):
            return self.store.open_stream(stream_id, read_only=True)
        return self.writers[stream_id]

    # ---- rules ----

    @initialize()
    def both_kinds_of_objects(self) -> None:
        """Every example starts with a stream object and a multi-stream object read back
        (the random rules reach both too, but not in every run)."""
        self.create(None)
        self.create(None)
        big, small = sorted(self.model)
        for stream_id, size in ((big, 3000), (small, 10)):
            batch = RecordBatch(b"i" * size, 1, base_timestamp=1000)
            assert self.writers[stream_id].append(batch) == self.model[stream_id].append(batch)
        self.store.flush()

    @rule(name=st.sampled_from(NAMES))
    def create(self, name: str | None) -> None:
        if name is not None and any(m.name == name for m in self.model.values()):
            with pytest.raises(StreamExists):
                self.store.create_stream(name)
            return
        stream = self.store.create_stream(name)
        assert stream.id not in self.model and stream.id not in self.destroyed
        assert all(stream.id > i for i in [*self.model, *self.destroyed])
        assert (stream.name, stream.epoch, stream.next_offset) == (name, 1, 0)
        self.model[stream.id] = ModelStream(name)
        self.writers[stream.id] = stream

    @precondition(lambda self: self.model)
    @rule(data=st.data(), batch=batches)
    def append(self, data: st.DataObject, batch: RecordBatch) -> None:
        stream_id, model = self.pick(data)
        expected = model.append(batch)
        assert self.writers[stream_id].append(batch) == expected

    @precondition(lambda self: self.model)
    @rule(data=st.data(), size=st.integers(2048, 6000), count=st.integers(1, 5))
    def append_large(self, data: st.DataObject, size: int, count: int) -> None:
        """A batch of at least stream_object_bytes: whichever round takes it writes a stream
        object (so every run reads stream objects back, not by the luck of the sizes)."""
        stream_id, model = self.pick(data)
        batch = RecordBatch(b"L" * size, count, base_timestamp=1005)
        assert self.writers[stream_id].append(batch) == model.append(batch)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), many=st.lists(batches, min_size=2, max_size=8))
    def append_pipelined(self, data: st.DataObject, many: list[RecordBatch]) -> None:
        stream_id, model = self.pick(data)
        writer = self.writers[stream_id]
        futures: list[Future[AppendResult]] = [writer.append_future(b) for b in many]
        assert [f.result() for f in futures] == [model.append(b) for b in many]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), max_bytes=st.sampled_from(MAX_BYTES))
    def fetch(self, data: st.DataObject, max_bytes: int) -> None:
        stream_id, model = self.pick(data)
        start = data.draw(st.integers(model.start, model.next), label="start")
        end = data.draw(st.none() | st.integers(start, model.next + 3), label="end")
        result = self.reader(stream_id, data).fetch(start, end, max_bytes=max_bytes)
        expected = model.fetch(start, end, max_bytes)
        assert list(result.batches) == expected
        assert result.next_fetch_offset == (expected[-1].next_offset if expected else start)
        assert (result.start_offset, result.end_offset) == (model.start, model.next)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fetch_everything(self, data: st.DataObject) -> None:
        """Fetches from the start to the end, as a consumer would: the whole stream, once."""
        stream_id, model = self.pick(data)
        stream = self.reader(stream_id, data)
        max_bytes = data.draw(st.sampled_from(MAX_BYTES), label="max_bytes")
        offset, got = model.start, []
        while offset < model.next:
            result = stream.fetch(offset, max_bytes=max_bytes)
            assert result.batches
            got.extend(result.batches)
            offset = result.next_fetch_offset
        assert got == model.fetch(model.start, None, 1 << 62)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fetch_out_of_range(self, data: st.DataObject) -> None:
        stream_id, model = self.pick(data)
        offsets = [model.next + 1, model.next + 1000]
        if model.start:
            offsets.append(data.draw(st.integers(0, model.start - 1), label="below"))
        offset = data.draw(st.sampled_from(offsets), label="offset")
        with pytest.raises(OffsetOutOfRange) as raised:
            self.reader(stream_id, data).fetch(offset)
        assert (raised.value.valid_start, raised.value.valid_end) == (model.start, model.next)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), timestamp=st.integers(995, 1015))
    def offset_for_timestamp(self, data: st.DataObject, timestamp: int) -> None:
        stream_id, model = self.pick(data)
        found = self.reader(stream_id, data).offset_for_timestamp(timestamp)
        assert found == model.offset_for_timestamp(timestamp)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def trim(self, data: st.DataObject) -> None:
        stream_id, model = self.pick(data)
        offset = data.draw(st.integers(0, model.next) | st.just(model.next + 1), label="offset")
        writer = self.writers[stream_id]
        if offset > model.next:
            with pytest.raises(OffsetOutOfRange):
                writer.trim(offset)
            return
        writer.trim(offset)
        model.start = max(model.start, offset)
        assert writer.start_offset == model.start

    @rule()
    def flush(self) -> None:
        self.store.flush()
        assert self.store.stats()["pending_upload_bytes"] == 0

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def open_for_write_again(self, data: st.DataObject) -> None:
        stream_id, model = self.pick(data)
        by_name = model.name is not None and data.draw(st.booleans(), label="by name")
        handle = self.store.open_stream(model.name if by_name else stream_id)  # type: ignore[arg-type]
        model.epoch += 1
        assert handle.epoch == model.epoch
        self.fenced.append((stream_id, self.writers[stream_id]))
        self.writers[stream_id] = handle

    @precondition(lambda self: self.fenced)
    @rule(data=st.data(), batch=batches)
    def fenced_writer_appends(self, data: st.DataObject, batch: RecordBatch) -> None:
        stream_id, handle = data.draw(st.sampled_from(self.fenced), label="fenced")
        kind = StreamNotFound if stream_id in self.destroyed else FencedError
        with pytest.raises(kind):
            handle.append(batch)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        stream_id, _ = self.pick(data)
        self.store.destroy_stream(stream_id)
        del self.model[stream_id]
        self.destroyed.append(stream_id)
        with pytest.raises(StreamNotFound):
            self.writers.pop(stream_id).fetch(0)

    @rule()
    def close_and_reopen(self) -> None:
        self.close()
        self.retired.extend(self.writers.values())
        self.store = self.open()
        self.fenced.clear()
        for stream_id, model in self.model.items():
            self.writers[stream_id] = self.store.open_stream(stream_id)
            model.epoch += 1
            assert self.writers[stream_id].epoch == model.epoch

    @precondition(lambda self: self.retired)
    @rule(data=st.data())
    def a_handle_of_the_closed_store(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(self.retired), label="retired")
        with pytest.raises(StreamClosed):
            handle.fetch(0)

    # ---- invariants ----

    @invariant()
    def upload_counters_agree(self) -> None:
        stats = self.store.stats()
        assert 0 <= stats["stream_objects_uploaded"] <= stats["objects_uploaded"]  # type: ignore[operator]

    @invariant()
    def the_wal_holds_everything_not_committed(self) -> None:
        """White-box: every acknowledged batch not yet committed is still in the WAL (at or
        after its trim position) — what makes a crash lose nothing at any moment."""
        trim = self.store._wal.trim_position  # type: ignore[union-attr]
        for state in self.store._node.streams.all():  # type: ignore[union-attr]
            with state.lock:
                assert not state.log_positions or state.log_positions[0] >= trim
                assert state.log == [] or state.log[0].base_offset == state.committed_end

    @invariant()
    def streams_agree(self) -> None:
        infos = self.store.streams()
        assert [i.id for i in infos] == sorted(self.model)
        for info in infos:
            model = self.model[info.id]
            assert (info.name, info.start_offset, info.next_offset, info.epoch) == (
                model.name, model.start, model.next, model.epoch)


def run(machine: type[StoreMachine], examples: int, steps: int) -> None:
    machine.uploaded = Counter()
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None))
    # The sizes are small enough that both kinds of objects were read back, not only the log.
    assert machine.uploaded["stream"] and machine.uploaded["multi"], machine.uploaded


def test_local_store_matches_the_model(tmp_path: Path) -> None:
    class Local(StoreMachine):
        base = tmp_path
        options = staticmethod(lambda path: dict(SMALL))

    run(Local, examples=60, steps=30)


@pytest.mark.once  # the codec's work is the local model's: the C pass runs it (conftest.py)
def test_s3_store_matches_the_model(tmp_path: Path, moto_s3: S3Endpoint) -> None:
    def options(path: Path) -> dict[str, Any]:
        bucket = moto_s3.create_bucket()
        # The endpoint's one filesystem, as the store would build it: a store's own costs a
        # new botocore client (0.1-0.4 s) at every open and reopen.
        return {**SMALL, "objects_url": f"s3://{bucket}/store", "filesystem": moto_s3.store_fs}

    class OnS3(StoreMachine):
        base = tmp_path
        cleanup = staticmethod(
            lambda options: moto_s3.delete_bucket(options["objects_url"][5:].split("/")[0]))

    OnS3.options = staticmethod(options)  # type: ignore[assignment]
    run(OnS3, examples=12, steps=20)
