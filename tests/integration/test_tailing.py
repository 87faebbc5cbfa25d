"""Tailing reads: a long-poll fetch and the read / read_async iterators wake when an append is
acknowledged (no polling), time out cleanly, and end when the handle or the store closes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from waits import blocked_in, wait_for

import streamlib
from streamlib import RecordBatch, Stream, StreamClosed, StreamStore


def open_store(path: Path) -> StreamStore:
    return streamlib.open(path, upload_interval_ms=3_600_000)


def batch(n: int) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big"), count=1)


def append_once_waiting(stream: Stream, n: int, reader: threading.Thread) -> tuple[
        threading.Thread, list[float]]:
    """Append batch ``n`` once ``reader`` waits at the tail in a long-poll fetch; the list gets
    the time the append began."""
    sent: list[float] = []

    def run() -> None:
        wait_for(lambda: blocked_in(reader, Stream.fetch), what="the fetch to wait at the tail")
        sent.append(time.monotonic())
        stream.append(batch(n))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, sent


def test_a_long_poll_wakes_within_milliseconds_of_an_append(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream()
        wakes = []
        for n in range(20):
            writer, sent = append_once_waiting(stream, n, threading.current_thread())
            result = stream.fetch(n, timeout=10)
            woke = time.monotonic()
            writer.join()
            assert [b.payload for b in result] == [batch(n).payload]
            wakes.append(woke - sent[0])
        wakes.sort()
        # The wake follows the durable append (an fdatasync) by well under the poll's timeout.
        assert wakes[10] < 0.05, wakes


def test_a_long_poll_times_out_with_an_empty_result(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream()
        stream.append(batch(0))
        started = time.monotonic()
        result = stream.fetch(1, timeout=0.2)
        assert result.batches == () and result.next_fetch_offset == 1
        assert 0.19 <= time.monotonic() - started < 2
        assert stream.fetch(0, timeout=5).batches[0].payload == batch(0).payload  # no wait
        with pytest.raises(ValueError, match="timeout"):
            stream.fetch(1, timeout=-1)


def test_the_read_iterator_follows_the_tail(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream()
        for n in range(3):
            stream.append(batch(n))
        store.flush()  # the first ones come from objects, the rest from the log cache
        seen: list[bytes] = []

        def consume() -> None:
            for b in stream.read(0, idle_timeout=5):
                seen.append(b.payload)
                if len(seen) == 10:
                    return

        reader = threading.Thread(target=consume)
        reader.start()
        for n in range(3, 10):  # each append wakes the reader, which has read all before it
            wait_for(lambda: len(seen) == stream.next_offset and blocked_in(reader, Stream.read),
                     what="the reader to wait at the tail")
            stream.append(batch(n))
        reader.join(timeout=10)
        assert seen == [batch(n).payload for n in range(10)]


def test_the_read_iterator_ends_after_its_idle_timeout_and_when_the_store_closes(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    stream = store.create_stream()
    stream.append(batch(0))
    started = time.monotonic()
    assert [b.payload for b in stream.read(0, idle_timeout=0.1)] == [batch(0).payload]
    assert time.monotonic() - started < 2
    ended = threading.Event()

    def wait_forever() -> None:
        for _ in stream.read(1):
            pass
        ended.set()

    reader = threading.Thread(target=wait_forever)
    reader.start()
    wait_for(lambda: blocked_in(reader, Stream.read), what="the reader to wait at the tail")
    assert not ended.is_set()
    store.close()
    reader.join(timeout=5)
    assert ended.is_set()
    with pytest.raises(StreamClosed):
        stream.fetch(0, timeout=1)


def test_read_async_wakes_on_appends_and_ends_on_idle(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream()

        async def main() -> tuple[list[bytes], list[float]]:
            seen: list[bytes] = []
            delays: list[float] = []

            async def produce() -> None:
                for n in range(5):
                    await asyncio.sleep(0.02)
                    sent = time.monotonic()
                    await stream.append_async(batch(n))
                    delays.append(sent)

            producer = asyncio.create_task(produce())
            async for b in stream.read_async(0, idle_timeout=0.5):
                seen.append(b.payload)
            await producer
            return seen, delays

        seen, _ = asyncio.run(main())
        assert seen == [batch(n).payload for n in range(5)]


def test_closing_a_handle_ends_its_waiting_readers(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream()
        reader_handle = store.open_stream(stream.id, read_only=True)
        done = threading.Event()

        def wait() -> None:
            list(reader_handle.read(0))
            done.set()

        thread = threading.Thread(target=wait)
        thread.start()
        wait_for(lambda: blocked_in(thread, Stream.read), what="the reader to wait at the tail")
        reader_handle.close()
        thread.join(timeout=5)
        assert done.is_set()
        stream.append(batch(1))  # the writer is unaffected
