"""The object store fails and comes back: appends go on (the WAL holds them), uploads are
retried, nothing is lost; and the limits of that: flush() says the store is unavailable, a full
WAL makes appends wait and then fail with WalFullError, never lose data."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import fsspec
import pytest
from waits import blocked_in, wait_for

import streamlib
from streamlib import RecordBatch, StorageUnavailable, StreamClosed, StreamStore, WalFullError
from streamlib.node import Backlog
from streamlib.testing.faults import FaultyFileSystem, internal_error, slow_down


def faulty_store(path: Path, **overrides: object) -> tuple[StreamStore, FaultyFileSystem]:
    """A store whose objects go to memory through a fault injector; reopen it with
    :func:`reopen` (the same objects, no faults)."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    store = streamlib.open(path, filesystem=faulty, objects_url=objects_url(path),
                           **overrides)  # type: ignore[arg-type]
    return store, faulty


def objects_url(path: Path) -> str:
    return f"memory://{path.name}-{abs(hash(str(path)))}"


def reopen(path: Path) -> StreamStore:
    return streamlib.open(path, objects_url=objects_url(path))


def batch(n: int) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big") * 64, count=2)


def test_throttled_puts_are_retried_within_a_round(tmp_path: Path) -> None:
    store, faulty = faulty_store(tmp_path)
    with store:
        stream = store.create_stream()
        stream.append(batch(0))
        faulty.inject("put", slow_down, times=3)
        store.flush()  # three 503 SlowDown, then the PUT goes through
        assert store.stats()["objects_uploaded"] == 1
        assert store.stats()["upload_failures"] == 0
        assert stream.fetch(0).batches[0].payload == batch(0).payload


def test_appends_go_on_while_the_object_store_is_down(tmp_path: Path) -> None:
    store, faulty = faulty_store(tmp_path, upload_bytes="4KiB", upload_interval_ms=20,
                                 retry_timeout_ms=100)
    with store:
        stream = store.create_stream()
        faulty.inject("put", internal_error, times=None)  # down until cleared
        for n in range(200):  # far more than the size trigger: rounds start and fail
            assert stream.append(batch(n)).base_offset == 2 * n
        wait_for(lambda: store.stats()["upload_failures"] >= 2, timeout=20)  # type: ignore[operator]
        with pytest.raises(StorageUnavailable, match="object store unavailable"):
            store.flush()
        assert store.stats()["objects_uploaded"] == 0
        assert store.stats()["pending_upload_bytes"] == 200 * 256
        got = stream.fetch(0, max_bytes=1 << 20)  # served from memory meanwhile
        assert [b.payload for b in got] == [batch(n).payload for n in range(200)]
        faulty.clear()  # back up: the uploader's next try goes through
        wait_for(lambda: store.stats()["pending_upload_bytes"] == 0, timeout=20)
    with reopen(tmp_path) as again:
        got = again.open_stream(stream.id).fetch(0, max_bytes=1 << 20)
        assert [b.payload for b in got] == [batch(n).payload for n in range(200)]


def test_a_full_wal_makes_appends_wait_then_fail_without_losing_anything(tmp_path: Path) -> None:
    store, faulty = faulty_store(tmp_path, wal_bytes="256KiB", upload_interval_ms=20,
                                 retry_timeout_ms=50, append_timeout_ms=300)
    faulty.inject("put", internal_error, times=None)
    stream = store.create_stream()
    acked = 0
    with pytest.raises(WalFullError):
        for n in range(10_000):
            stream.append(RecordBatch(bytes(1000), count=1))
            acked = n + 1
    assert 100 < acked < 300  # the WAL's room, then back-pressure
    faulty.clear()
    wait_for(lambda: store.stats()["pending_upload_bytes"] == 0, timeout=20)
    stream.append(RecordBatch(bytes(1000), count=1))  # room again
    store.close()
    with reopen(tmp_path) as again:
        assert again.get(stream.id).next_offset == acked + 1


def test_close_while_the_object_store_is_down_keeps_the_data_for_the_next_open(
        tmp_path: Path) -> None:
    store, faulty = faulty_store(tmp_path, retry_timeout_ms=50)
    stream = store.create_stream()
    for n in range(10):
        stream.append(batch(n))
    faulty.inject("put", internal_error, times=None)
    store.close()  # logs that the last upload failed; the WAL keeps the data
    assert store.stats()["objects_uploaded"] == 0
    with reopen(tmp_path) as again:  # recovery uploads it
        assert again.stats()["objects_uploaded"] == 1
        got = again.open_stream(stream.id).fetch(0)
        assert [b.payload for b in got] == [batch(n).payload for n in range(10)]


def test_close_releases_an_append_waiting_for_room_with_the_object_wal(tmp_path: Path) -> None:
    """The object WAL never fills, so the store itself holds data waiting for upload to
    wal_bytes; an append waiting there when the store closes gives up at once."""
    wal_url = objects_url(tmp_path) + "-wal"
    store, faulty = faulty_store(tmp_path, wal="object", wal_url=wal_url, wal_bytes="256KiB",
                                 retry_timeout_ms=50, append_timeout_ms=20_000)
    faulty.inject("put", internal_error, times=None, match=lambda path: "/data/" in path)
    stream = store.create_stream()
    for n in range(2):  # 200,000 bytes wait for upload: the next 100,000 do not fit
        stream.append(RecordBatch(bytes([n]) * 100_000, count=1))
    outcome: list[BaseException | None] = []

    def blocked_append() -> None:
        try:
            stream.append(RecordBatch(b"w" * 100_000, count=1))
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    waiter = threading.Thread(target=blocked_append)
    waiter.start()
    wait_for(lambda: blocked_in(waiter, Backlog.wait_for_room), what="the append to wait for room")
    assert outcome == []  # waiting for room: the uploads fail
    started = time.monotonic()
    store.close()
    waiter.join(timeout=10)
    assert time.monotonic() - started < 5
    assert len(outcome) == 1 and isinstance(outcome[0], StreamClosed)
    with streamlib.open(tmp_path, objects_url=objects_url(tmp_path), wal="object",
                        wal_url=wal_url) as again:
        got = again.open_stream(stream.id).fetch(0, max_bytes=1 << 22)
        assert [b.payload[:1] for b in got] == [b"\x00", b"\x01"]
