"""The asyncio face (docs/asyncio.md): each ``_async`` call answers as its blocking twin does,
with the same errors; a long poll is woken by the acknowledgement and leaves nothing behind;
cancelling any awaiting call leaves the store consistent, as documented; leaving an ``async
for`` early releases what it held; the store's threads are its own, bounded, and end at close.

Waits for what another thread does are on conditions (``until``: looked at every 5 ms on the
event loop, never a fixed sleep), with the generous timeouts of a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import blocked_in

import streamlib
from streamlib import (
    CacheMiss,
    ConfigError,
    NodeLockedError,
    OffsetOutOfRange,
    ReadOnlyError,
    RecordBatch,
    StreamClosed,
    StreamExists,
    StreamNotFound,
    StreamStore,
)
from streamlib.cache import MessageCache
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.testing.faults import FaultyFileSystem, FaultyMetadataStore
from streamlib.workers import THREAD_PREFIX

OBJECTS = itertools.count()


def batch(n: int, size: int = 256) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big") * (size // 4), count=2)


async def until(condition: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Wait on the event loop until ``condition()`` holds (looking every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        await asyncio.sleep(0.005)


def threads(*, pool: bool = False) -> list[threading.Thread]:
    """The asyncio face's threads alive now (``pool``: the store's pools only, not a thread
    of an ``open_async`` or ``aclose`` finishing)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)
            and t.is_alive() and not (pool and t.name.endswith(("-open", "-close")))]


def tailing_readers(store: StreamStore) -> float:
    return float(store.metrics()["streamlib_tailing_readers"].value())  # type: ignore[arg-type]


def faulty_store(path: Path, **settings: Any) -> tuple[FaultyFileSystem, dict[str, Any]]:
    """A fault injector over memory objects of the test's own, and the options that open a
    store on them."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    url = f"memory://asyncio-{path.name}-{next(OBJECTS)}"
    return faulty, {"filesystem": faulty, "objects_url": url, **settings}


# ---- the same answers, the same errors ----


def test_the_store_s_async_calls_answer_as_their_blocking_twins(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match="compression"):
            await streamlib.open_async(tmp_path / "bad", compression="gzip")
        store = await streamlib.open_async(tmp_path / "s")
        async with store:
            with pytest.raises(NodeLockedError):
                await streamlib.open_async(tmp_path / "s")
            orders = await store.create_stream_async("orders")
            with pytest.raises(StreamExists):
                await store.create_stream_async("orders")
            with pytest.raises(StreamNotFound):
                await store.get_async("nope")
            with pytest.raises(StreamNotFound):
                await store.open_stream_async("nope")
            assert await store.get_async("orders") == store.get("orders")
            assert await store.streams_async() == store.streams()
            again = await store.open_stream_async("orders")
            assert again.epoch == (orders.epoch or 0) + 1
            reader = await store.open_stream_async(orders.id, read_only=True)
            with pytest.raises(ReadOnlyError):
                await reader.append_async([b"x"])
            with pytest.raises(ReadOnlyError):
                await reader.trim_async(0)
            drafts = await store.create_stream_async()
            await store.destroy_stream_async(drafts.id)
            with pytest.raises(StreamNotFound):
                await store.get_async(drafts.id)
            assert (await store.compact_async()).tasks == 0
            garbage = await store.collect_garbage_async(dry_run=True)
            assert garbage.dry_run and garbage.objects == 0
        with pytest.raises(StreamClosed):
            await store.flush_async()
        with pytest.raises(StreamClosed):
            await store.streams_async()
        await store.aclose()  # twice is fine

    asyncio.run(main())


def test_the_handle_s_async_calls_answer_as_their_blocking_twins(tmp_path: Path) -> None:
    async def main() -> None:
        async with streamlib.open_async(tmp_path, upload_interval_ms=3_600_000) as store:
            stream = await store.create_stream_async("s")
            for n in range(10):
                await stream.append_async(batch(n))
            await store.flush_async()  # offsets 0-19 in objects, the rest in the log cache
            for n in range(10, 15):
                await stream.append_async(batch(n))
            cold = await store.open_stream_async("s", read_only=True)
            for start, end, max_bytes in [(0, None, 1 << 20), (3, 9, 300), (20, None, 1),
                                          (30, None, 1 << 20), (25, 27, 0)]:
                got = await cold.fetch_async(start, end, max_bytes=max_bytes)
                assert got == cold.fetch(start, end, max_bytes=max_bytes), (start, end)
            with pytest.raises(OffsetOutOfRange) as error:
                await stream.fetch_async(31)
            assert (error.value.valid_start, error.value.valid_end) == (0, 30)
            with pytest.raises(ValueError, match="end_offset"):
                await stream.fetch_async(5, 2)
            with pytest.raises(ValueError, match="timeout"):
                await stream.fetch_async(0, timeout=-1)
            for timestamp in (0, int(time.time() * 1000) + 10_000):
                assert (await stream.offset_for_timestamp_async(timestamp)
                        == stream.offset_for_timestamp(timestamp))
            await stream.trim_async(4)
            assert stream.start_offset == 4
            with pytest.raises(OffsetOutOfRange):
                await stream.fetch_async(0)
            await stream.set_retention_async(streamlib.Retention(max_bytes=1 << 30))
            assert await stream.retention_async() == stream.retention
            stream.close()
            with pytest.raises(StreamClosed):
                await stream.fetch_async(4)

    asyncio.run(main())


def test_a_cache_only_fetch_async_answers_from_memory_or_raises_cache_miss(
        tmp_path: Path) -> None:
    async def main() -> None:
        store = await streamlib.open_async(tmp_path, upload_interval_ms=3_600_000)
        async with store:
            stream = await store.create_stream_async()
            for n in range(4):
                await stream.append_async(batch(n))
            await store.flush_async()
        async with streamlib.open_async(tmp_path) as store:  # cold: all in objects
            stream = await store.open_stream_async(1, read_only=True)
            with pytest.raises(CacheMiss):
                await stream.fetch_async(0, cache_only=True)
            await stream.fetch_async(0)  # its blocks are cached now
            assert len((await stream.fetch_async(0, cache_only=True)).batches) == 4

    asyncio.run(main())


def test_the_key_value_async_calls_answer_as_their_blocking_twins(tmp_path: Path) -> None:
    async def main() -> None:
        async with streamlib.open_async(tmp_path) as store:
            kv = store.kv("offsets")
            assert await kv.put_if_absent_async("a", b"1")
            assert not await kv.put_if_absent_async("a", b"2")
            assert await kv.get_async("a") == kv.get("a") == b"1"
            assert await kv.get_async("b", b"default") == b"default"
            assert not await kv.compare_and_set_async("a", b"0", b"3")
            assert await kv.compare_and_set_async("a", b"1", b"3")
            await kv.put_async("p/x", b"x")
            assert await kv.items_async("p/") == kv.items("p/") == {"p/x": b"x"}
            bump = lambda v: str(int(v or b"0") + 1).encode()  # noqa: E731
            assert await asyncio.gather(*(kv.update_async("n", bump) for _ in range(10)))
            assert await kv.get_async("n") == b"10"
            assert await kv.delete_async("a", b"3") and not await kv.delete_async("a")
            with pytest.raises(TypeError):
                await kv.put_async("a", "text")  # type: ignore[arg-type]
        with pytest.raises(StreamClosed):
            await kv.get_async("n")

    asyncio.run(main())


# ---- long polls ----


def test_a_long_poll_fetch_async_is_woken_by_the_acknowledgement_and_leaves_nothing(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with streamlib.open_async(tmp_path) as store:
            stream = await store.create_stream_async()
            state = stream._state  # its async_waiters: what the wake-ups resolve

            def waiters() -> list[Any]:
                return state.async_waiters

            for n in range(20):
                poll = asyncio.create_task(stream.fetch_async(2 * n, timeout=30))
                await until(lambda: len(waiters()) == 1, what="the poll to wait at the tail")
                await stream.append_async(batch(n))
                got = await poll
                assert [b.base_offset for b in got] == [2 * n]
                assert not waiters()
            for _ in range(5):  # timeouts: an empty answer, and no waiter left each time
                got = await stream.fetch_async(40, timeout=0.01)
                assert got.batches == () and got.next_fetch_offset == 40
            assert not waiters()
            polls = [asyncio.create_task(stream.fetch_async(40, timeout=30)) for _ in range(50)]
            await until(lambda: len(waiters()) == 50)
            for poll in polls[::2]:
                poll.cancel()  # cancelled: withdrawn
            await until(lambda: len(waiters()) == 25)
            await stream.append_async(batch(99))
            for poll in polls[1::2]:
                assert len((await poll).batches) == 1
            assert not waiters()
            forever = asyncio.create_task(stream.fetch_async(42, timeout=math.inf))
            await until(lambda: len(waiters()) == 1)
        # a wait without end ends with the store: empty if it looked before the close ended
        outcome = (await asyncio.gather(forever, return_exceptions=True))[0]
        assert isinstance(outcome, StreamClosed) or outcome.batches == ()

    asyncio.run(main())


# ---- cancellation ----


def test_an_append_async_cancelled_in_its_queue_is_not_made_and_one_taken_lands(
        tmp_path: Path) -> None:
    """Uploads held at the metadata's commit fill the cache: an append waits for room on the
    store's appending thread (taken: it lands once room comes, cancelled or not); the ones
    after it wait in the queue (cancelled there, they are never made); meanwhile the loop
    runs on."""
    meta = FaultyMetadataStore(SQLiteMetadataStore(tmp_path / "meta.sqlite"))

    async def main() -> None:
        store = await streamlib.open_async(tmp_path, metadata_store=meta, cache_bytes="1MiB",
                                           upload_bytes="256KiB", append_timeout_ms=60_000)
        async with store:
            stream = await store.create_stream_async()
            gate = meta.pause("commit", times=None)
            appender = next(t for t in threads() if "-append-" in t.name)

            def waits_for_room() -> bool:
                return blocked_in(appender, MessageCache.reserve)

            landed = []
            n = 0
            taken = None
            while taken is None:  # until one waits for room
                task = asyncio.create_task(stream.append_async(batch(n, 64 * 1024)))
                await until(lambda: task.done() or waits_for_room())  # noqa: B023 (this task)
                if task.done():
                    landed.append(task.result().base_offset)
                else:
                    taken = task
                n += 1
            queued = [asyncio.create_task(stream.append_async(batch(1000 + i, 64 * 1024)))
                      for i in range(3)]
            ticks = 0
            for _ in range(10):  # the loop runs on while appends wait for room
                await asyncio.sleep(0.001)
                ticks += 1
            assert ticks == 10 and not taken.done()
            taken.cancel()
            for task in queued:
                task.cancel()
            gate.release()
            await until(lambda: stream.next_offset == 2 * (len(landed) + 1),
                        what="the taken append to land")
            with pytest.raises(asyncio.CancelledError):
                await taken
            for task in queued:
                with pytest.raises(asyncio.CancelledError):
                    await task
            await store.flush_async()
            assert stream.next_offset == 2 * (len(landed) + 1)  # the queued ones: never made
            got = await stream.fetch_async(0, max_bytes=1 << 30)
            assert [b.payload for b in got] == [batch(i, 64 * 1024).payload
                                                for i in range(len(landed) + 1)]

    asyncio.run(main())


def test_a_cancelled_open_async_closes_the_store_it_opened(tmp_path: Path) -> None:
    meta = FaultyMetadataStore(SQLiteMetadataStore(tmp_path / "meta.sqlite"))
    gate = meta.pause("register_node")

    async def main() -> None:
        opening = asyncio.create_task(streamlib.open_async(tmp_path, metadata_store=meta))
        await until(gate.reached.is_set, what="the open to reach the metadata")
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        gate.release()
        await until(lambda: not threads(), what="the abandoned store to close")
        async with streamlib.open_async(tmp_path) as store:  # its node lock is free
            assert await store.streams_async() == []

    asyncio.run(main())


def test_a_cancelled_aclose_still_closes_and_a_second_one_waits_for_it(
        tmp_path: Path) -> None:
    meta = FaultyMetadataStore(SQLiteMetadataStore(tmp_path / "meta.sqlite"))

    async def main() -> None:
        store = await streamlib.open_async(tmp_path, metadata_store=meta)
        stream = await store.create_stream_async()
        await stream.append_async(batch(0))
        gate = meta.pause("commit")  # the close's last upload waits there
        closing = asyncio.create_task(store.aclose())
        await until(gate.reached.is_set, what="the close's upload")
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        second = asyncio.create_task(store.aclose())
        await asyncio.sleep(0.01)
        assert not second.done()  # it waits for the close under way
        gate.release()
        await second
        with pytest.raises(StreamClosed):
            await store.get_async(stream.id)
        async with streamlib.open_async(tmp_path) as again:  # the close uploaded it
            assert (await again.get_async(stream.id)).next_offset == 2

    asyncio.run(main())


def test_a_close_with_appends_in_flight_answers_every_one(tmp_path: Path) -> None:
    async def main() -> tuple[list[Any], int]:
        store = await streamlib.open_async(tmp_path)
        stream = await store.create_stream_async()
        appends = [asyncio.create_task(stream.append_async(batch(n))) for n in range(300)]
        await asyncio.sleep(0)  # each has made its call
        await store.aclose()
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        return outcomes, stream.id

    outcomes, stream_id = asyncio.run(main())
    made = [o for o in outcomes if isinstance(o, streamlib.AppendResult)]
    assert all(isinstance(o, streamlib.AppendResult | StreamClosed) for o in outcomes)
    assert [r.base_offset for r in made] == list(range(0, 2 * len(made), 2))
    with streamlib.open(tmp_path) as store:  # every append answered with a result is there
        assert store.get(stream_id).next_offset == 2 * len(made)


def test_leaving_async_fors_early_releases_what_they_held(tmp_path: Path) -> None:
    """Readers broken out of early — at the tail, or with a read of the object store in
    flight on a store thread — release their waits and their readers in the cache; no
    executor thread of the loop's is used, the store's stay within its pool, and end at
    close."""
    faulty, options = faulty_store(tmp_path, async_threads=2)
    loop_threads = {t.ident for t in threading.enumerate()}

    async def main() -> None:
        async with streamlib.open_async(tmp_path, **options) as store:
            stream = await store.create_stream_async()
            for n in range(20):
                await stream.append_async(batch(n))
            await store.flush_async()
        async with streamlib.open_async(tmp_path, **options) as store:  # all in objects
            stream = await store.open_stream_async(1, read_only=True)
            state = stream._state
            gate = threading.Event()
            rule = faulty.inject("get", gate=gate, times=None)
            readers = []
            for _ in range(10):  # each waits on a GET held at the gate
                readers.append(asyncio.create_task(anext(aiter(stream.read_async(0)))))
            await until(lambda: rule.hits >= 1, what="reads to reach the object store")
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            assert len(threads(pool=True)) <= 2 + 1  # the pool of 2 and the appending thread
            gate.set()
            await until(lambda: tailing_readers(store) == 0, what="the readers to be released")
            for _ in range(20):  # broken out of at the tail
                async with contextlib.aclosing(stream.read_async(38)) as batches:
                    async for got in batches:
                        assert got.base_offset == 38
                        break
            assert tailing_readers(store) == 0
            assert not state.async_waiters
            assert not [t for t in threading.enumerate()
                        if t.ident not in loop_threads and t.name.startswith("asyncio")]
        await until(lambda: not threads(), what="the store's threads to end")

    asyncio.run(main())


def test_the_store_s_threads_are_its_own_bounded_and_end_at_close(tmp_path: Path) -> None:
    """``open_async`` starts the store's threads off the loop; thirty reads of a slow object
    store at once share its pool of three; none is the loop's default executor's; none is
    left after the close."""
    faulty, options = faulty_store(tmp_path, async_threads=3)
    loop_threads = {t.ident for t in threading.enumerate()}

    async def main() -> None:
        async with streamlib.open_async(tmp_path, **options) as store:
            assert len(threads(pool=True)) == 3 + 1  # the pool and the appending thread
            stream = await store.create_stream_async()
            for n in range(10):
                await stream.append_async(batch(n))
            await store.flush_async()
        await until(lambda: not threads(), what="the store's threads to end")
        async with streamlib.open_async(tmp_path, **options) as store:  # all in objects
            stream = await store.open_stream_async(1, read_only=True)
            faulty.inject("get", delay=0.02, times=None)
            results = await asyncio.gather(*(stream.fetch_async(2 * n) for n in range(10)
                                             for _ in range(3)))
            assert all(r.batches for r in results)
            assert len(threads(pool=True)) == 3 + 1
        assert not [t for t in threading.enumerate()
                    if t.ident not in loop_threads and t.name.startswith("asyncio")]

    asyncio.run(main())
    assert not [t for t in threads() if _alive_after(t)]


def _alive_after(thread: threading.Thread) -> bool:
    thread.join(10)  # a closed store's thread ends at once: joined, not waited for a time
    return thread.is_alive()


def test_a_store_opened_without_asyncio_serves_it_too(streamlib_store: StreamStore) -> None:
    """A store from ``streamlib.open`` (here the plugin's fixture) starts its asyncio threads
    on first need; the fixture's close ends them (it checks)."""
    async def main() -> list[int]:
        stream = await streamlib_store.create_stream_async()
        results = await asyncio.gather(*(stream.append_async(batch(n)) for n in range(20)))
        async with streamlib.Follower({stream: 0}, idle_timeout=0.05) as follower:
            return [got.base_offset async for _, got in follower] + [r.base_offset
                                                                    for r in results[:1]]

    assert asyncio.run(main()) == [*range(0, 40, 2), 0]
