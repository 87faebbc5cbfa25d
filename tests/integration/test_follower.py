"""The fan-in (streamlib.Follower): one task follows many streams and gets each one's batches
as they are acknowledged, in offset order within a stream; catch-up reads of the object store
run on the store's threads; streams join and leave; a failing stream leaves with its error and
the others go on; closing it (or the store) leaves no wait and no reader behind."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import streamlib
from streamlib import Follower, RecordBatch, StreamNotFound, StreamStore


def batch(n: int) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big") * 16, count=1)


async def until(condition: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Wait on the event loop until ``condition()`` holds (looking every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        await asyncio.sleep(0.005)


def waiting(streams: list[streamlib.Stream]) -> int:
    """Futures registered in the streams' waiters (what the acknowledgements resolve)."""
    return sum(len(s._state.async_waiters) for s in streams)


def tailing(store: StreamStore) -> float:
    return float(store.metrics()["streamlib_tailing_readers"].value())  # type: ignore[arg-type]


def test_one_task_follows_many_streams_as_their_appends_arrive(
        streamlib_store: StreamStore) -> None:
    async def main() -> None:
        streams = [await streamlib_store.create_stream_async() for _ in range(50)]
        rng = random.Random(7)
        order = [rng.randrange(50) for _ in range(500)]
        got: dict[int, list[int]] = {s.id: [] for s in streams}
        tasks = len(asyncio.all_tasks())

        async with Follower({s: 0 for s in streams}) as follower:
            async def consume() -> None:
                async for stream, placed in follower:
                    got[stream.id].append(placed.base_offset)
                    if sum(map(len, got.values())) == len(order):
                        return

            consumer = asyncio.create_task(consume())
            await until(lambda: waiting(streams) == 50, what="every stream to be waited on")
            assert len(asyncio.all_tasks()) == tasks + 1  # the consumer: none a stream
            for i in order:
                await streams[i].append_async(batch(i))
                if rng.random() < 0.1:
                    await asyncio.sleep(0)
            await consumer
            assert follower.positions == {s: len(got[s.id]) for s in streams}
        for stream in streams:
            assert got[stream.id] == list(range(order.count(streams.index(stream))))
        assert waiting(streams) == 0 and tailing(streamlib_store) == 0

    asyncio.run(main())


def test_a_follower_catches_up_from_objects_then_follows_the_tails(tmp_path: Path) -> None:
    async def main() -> None:
        async with streamlib.open_async(tmp_path, upload_interval_ms=3_600_000) as store:
            streams = [await store.create_stream_async() for _ in range(20)]
            for n in range(10):
                await asyncio.gather(*(s.append_async(batch(n)) for s in streams))
            await store.flush_async()
        async with streamlib.open_async(tmp_path) as store:  # cold: everything in objects
            streams = [await store.open_stream_async(i + 1) for i in range(20)]
            got: dict[int, list[int]] = {s.id: [] for s in streams}
            async with Follower({s: 0 for s in streams}, max_bytes=100, reads=3) as follower:
                async for stream, placed in follower:
                    got[stream.id].append(placed.base_offset)
                    if sum(map(len, got.values())) == 200:
                        break
                assert all(offsets == list(range(10)) for offsets in got.values())
                assert store.stats()["cache"]["gets"] > 0  # read from the objects
                await streams[3].append_async(batch(10))  # then the tail
                stream, placed = await anext(follower)
                assert (stream, placed.base_offset) == (streams[3], 10)

    asyncio.run(main())


def test_streams_join_and_leave_a_follower_while_it_runs(streamlib_store: StreamStore) -> None:
    async def main() -> None:
        a, b, c = [await streamlib_store.create_stream_async(n) for n in "abc"]
        for stream in (a, b, c):
            await stream.append_async(batch(0))
        follower = Follower([(a, 0)])
        assert (await anext(follower))[0] is a
        follower.add(b, 0)
        with pytest.raises(ValueError, match="already"):
            follower.add(b, 0)
        assert (await anext(follower))[0] is b
        follower.remove(a)
        await a.append_async(batch(1))
        follower.add(c, 1)  # from its end: nothing yet
        waiter = asyncio.create_task(anext(follower))
        await until(lambda: waiting([b, c]) == 2)
        await c.append_async(batch(1))
        assert (await waiter)[0] is c
        assert follower.positions == {b: 1, c: 2}
        await follower.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(follower)
        assert waiting([a, b, c]) == 0 and tailing(streamlib_store) == 0

    asyncio.run(main())


def test_a_destroyed_stream_leaves_with_its_error_and_the_others_go_on(
        streamlib_store: StreamStore) -> None:
    async def main() -> None:
        keep, drop = [await streamlib_store.create_stream_async(n) for n in ("keep", "drop")]
        async with Follower({keep: 0, drop: 0}) as follower:
            waiter = asyncio.create_task(anext(follower))
            await until(lambda: waiting([keep, drop]) == 2)
            await streamlib_store.destroy_stream_async("drop")
            with pytest.raises(StreamNotFound):
                await waiter
            assert len(follower) == 1
            await keep.append_async(batch(0))
            assert (await anext(follower))[0] is keep

    asyncio.run(main())


def test_a_follower_ends_when_its_store_closes_or_nothing_comes(tmp_path: Path) -> None:
    async def main() -> None:
        store = await streamlib.open_async(tmp_path)
        streams = [await store.create_stream_async() for _ in range(5)]
        started = time.monotonic()
        async with Follower({s: 0 for s in streams}, idle_timeout=0.05) as follower:
            assert [item async for item in follower] == []
        assert time.monotonic() - started >= 0.05
        follower = Follower({s: 0 for s in streams})
        ending = asyncio.create_task(anext(follower))
        await until(lambda: waiting(streams) == 5)
        await store.aclose()
        with pytest.raises(StopAsyncIteration):
            await ending
        assert waiting(streams) == 0

    asyncio.run(main())


def test_a_follower_sees_another_node_s_appends(streamlib_stores: Callable[..., StreamStore]
                                                 ) -> None:
    """Another node's appends wake nobody here: the follower looks at the shared metadata
    every ``reader_poll_ms`` while it waits on such a stream."""
    writer, reader = streamlib_stores("a"), streamlib_stores("b")

    async def main() -> None:
        stream = await writer.create_stream_async("remote")
        remote = await reader.open_stream_async("remote", read_only=True)
        async with Follower({remote: 0}) as follower:
            waiter = asyncio.create_task(anext(follower))
            await until(lambda: waiting([remote]) == 1)
            await stream.append_async(batch(0))
            await writer.flush_async()  # committed: what another node can see
            got, placed = await asyncio.wait_for(waiter, 20)
            assert got is remote and placed.base_offset == 0
            assert waiting([remote]) <= 1  # polls do not pile up waits

    asyncio.run(main())
