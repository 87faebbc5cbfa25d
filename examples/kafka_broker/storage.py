"""The broker's storage on streamlib: the one module that calls streamlib.

Topics are entries of the key-value namespace ``kafka.topics``; each topic-partition is a
stream named ``kafka/<topic>/<partition>`` holding the producers' record batches as opaque
streamlib batches (DESIGN.md, "Storage mapping").

Everything here is called from the event loop. Calls that may wait on I/O run in
``asyncio.to_thread``; appends are ``Stream.append_future`` awaited through
``asyncio.wrap_future`` (the call itself returns at once unless the WAL or the cache is full);
fetches try the cache first on the loop (``cache_only=True``) and go to a thread on a miss; the
long poll awaits ``Stream.read_async``. When streamlib's asyncio face lands, this module is what
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlib
from streamlib import (
    AppendResult,
    CacheMiss,
    OffsetOutOfRange,
    PlacedBatch,
    RecordBatch,
    Retention,
    Stream,
    StreamExists,
    StreamNotFound,
)

from .batches import KafkaBatch

TOPICS = "kafka.topics"
OFFSETS = "kafka.offsets"
GROUPS = "kafka.groups"
PRODUCERS = "kafka.producers"
BROKERS = "kafka.brokers"
LEADERS = "kafka.leaders"

# streamlib errors the handlers turn into Kafka error codes (re-exported: they import nothing
# of streamlib themselves).
FencedError = streamlib.FencedError
RetryLater = streamlib.RetryLater
StorageError = streamlib.StreamLibError
__all__ = ["FencedError", "OffsetOutOfRange", "RetryLater", "StorageError", "StreamNotFound"]


def stream_name(topic: str, partition: int) -> str:
    return f"kafka/{topic}/{partition}"


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic as ``kafka.topics`` keeps it."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"partitions": self.partitions, "configs": self.configs}).encode()

    @classmethod
    def decode(cls, name: str, value: bytes) -> Topic:
        found = json.loads(value)
        return cls(name, int(found["partitions"]), dict(found.get("configs") or {}))


def retention_of(configs: dict[str, str]) -> Retention | None:
    """A topic's ``retention.ms`` and ``retention.bytes`` (-1: no limit) as a streamlib
    Retention (None: keep everything). ValueError for values that are not integers."""
    age_ms = int(configs.get("retention.ms", "-1"))
    size = int(configs.get("retention.bytes", "-1"))
    if age_ms < 0 and size < 0:
        return None
    return Retention(max_age=age_ms / 1000 if age_ms > 0 else None,
                     max_bytes=size if size > 0 else None)


class PartitionLog:
    """One topic-partition: its stream, written through a handle opened for write."""

    def __init__(self, topic: str, partition: int, stream: Stream) -> None:
        self.topic = topic
        self.partition = partition
        self.stream = stream

    @property
    def start_offset(self) -> int:
        return self.stream.start_offset

    @property
    def next_offset(self) -> int:
        return self.stream.next_offset

    def append(self, batch: KafkaBatch, producer: str | None,
               sequence: int | None) -> asyncio.Future[AppendResult]:
        """Submit one Kafka batch as one opaque streamlib batch; the future completes once it
        is durable. Appends submitted in one order land in that order."""
        placed = RecordBatch(batch.payload, batch.records, base_timestamp=batch.first_timestamp,
                             max_timestamp=batch.max_timestamp)
        future = self.stream.append_future(placed, producer_id=producer, sequence=sequence)
        return asyncio.wrap_future(future)

    async def fetch(self, offset: int, max_bytes: int) -> tuple[PlacedBatch, ...]:
        """The batches from ``offset`` (the first may start before it), at most ``max_bytes``
        but at least one batch; OffsetOutOfRange outside ``[start_offset, next_offset]``."""
        try:
            result = self.stream.fetch(offset, max_bytes=max_bytes, cache_only=True)
        except CacheMiss:
            result = await asyncio.to_thread(self.stream.fetch, offset, max_bytes=max_bytes)
        return result.batches

    async def wait_for_append(self, offset: int) -> None:
        """Returns once the stream reaches past ``offset`` (woken by the acknowledgement). Cancel
        it to stop waiting."""
        reader = self.stream.read_async(offset, max_bytes=1)
        try:
            await anext(reader, None)
        finally:  # an async generator: closed now, so that the store forgets its reader now
            close = getattr(reader, "aclose", None)
            if close is not None:
                await close()

    async def offset_for_timestamp(self, timestamp: int) -> int | None:
        return await asyncio.to_thread(self.stream.offset_for_timestamp, timestamp)

    def close(self) -> None:
        self.stream.close()


class Storage:
    """The store, the topics, the partitions this broker has opened, and the key-value
    entries the coordinator and the cluster keep."""

    def __init__(self, store: streamlib.StreamStore) -> None:
        self.store = store
        self._topics: dict[str, Topic] = {}
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[Stream]] = {}

    @classmethod
    async def open(cls, path: str, **settings: Any) -> Storage:
        store = await asyncio.to_thread(streamlib.open, path, **settings)
        return cls(store)

    async def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        await asyncio.to_thread(self.store.close)

    # ---- topics ----

    async def topics(self) -> dict[str, Topic]:
        """Every topic, as the metadata has it now."""
        items = await asyncio.to_thread(self.store.kv(TOPICS).items)
        self._topics = {name: Topic.decode(name, value) for name, value in items.items()}
        return dict(self._topics)

    async def topic(self, name: str) -> Topic | None:
        """One topic (from memory if this broker has seen it)."""
        found = self._topics.get(name)
        if found is not None:
            return found
        value = await asyncio.to_thread(self.store.kv(TOPICS).get, name)
        if value is None:
            return None
        self._topics[name] = topic = Topic.decode(name, value)
        return topic

    async def create_topic(self, topic: Topic) -> bool:
        """Create the topic's streams and its entry; False if the topic exists. The streams
        come first: a crash between leaves streams that the next create of the name reuses."""
        kv = self.store.kv(TOPICS)
        if await asyncio.to_thread(kv.get, topic.name) is not None:
            return False
        retention = retention_of(topic.configs)

        def create() -> None:
            for partition in range(topic.partitions):
                name = stream_name(topic.name, partition)
                with contextlib.suppress(StreamExists):
                    self.store.create_stream(name, retention=retention).close()

        await asyncio.to_thread(create)
        created = await asyncio.to_thread(kv.put_if_absent, topic.name, topic.encode())
        if created:
            self._topics[topic.name] = topic
        return bool(created)

    async def delete_topic(self, name: str) -> bool:
        """Remove the topic's entry, then destroy its streams; False if there is no topic."""
        topic = await self.topic(name)
        if topic is None or not await asyncio.to_thread(self.store.kv(TOPICS).delete, name):
            return False
        self._topics.pop(name, None)
        for partition in range(topic.partitions):
            log = self._logs.pop((name, partition), None)
            if log is not None:
                log.close()

        def destroy() -> None:
            for partition in range(topic.partitions):
                with contextlib.suppress(StreamNotFound):
                    self.store.destroy_stream(stream_name(name, partition))

        await asyncio.to_thread(destroy)
        return True

    def forget_topic(self, name: str) -> None:
        """Drop what this broker remembers of a topic (another broker deleted it)."""
        self._topics.pop(name, None)
        for key in [key for key in self._logs if key[0] == name]:
            self._logs.pop(key).close()

    # ---- partitions ----

    def opened(self, topic: str, partition: int) -> PartitionLog | None:
        """The partition's log if this broker has it open for write."""
        return self._logs.get((topic, partition))

    async def partition(self, topic: str, partition: int) -> PartitionLog:
        """The partition's log, opened for write here (a hand-over if another node wrote it:
        that node is fenced). StreamNotFound if it does not exist."""
        key = (topic, partition)
        log = self._logs.get(key)
        if log is not None:
            return log
        opening = self._opening.get(key)
        if opening is None:  # one open at a time: a second open for write would fence the first
            opening = self._opening[key] = asyncio.ensure_future(
                asyncio.to_thread(self.store.open_stream, stream_name(topic, partition)))
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        stream = await asyncio.shield(opening)
        log = self._logs.get(key)
        if log is None or log.stream is not stream:
            log = self._logs[key] = PartitionLog(topic, partition, stream)
        return log

    def drop_partition(self, topic: str, partition: int) -> None:
        """Forget the partition's handle (it was fenced: another broker leads it now)."""
        log = self._logs.pop((topic, partition), None)
        if log is not None:
            log.close()

    async def owner(self, topic: str, partition: int) -> str | None:
        """The node that writes the partition's stream now, as the shared metadata says."""
        def look() -> str | None:
            info = self.store.get(stream_name(topic, partition))
            return self.store.metadata.get_stream(info.id).owner

        return await asyncio.to_thread(look)

    # ---- key-value entries ----

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        return await asyncio.to_thread(self.store.kv(namespace).get, key)

    async def kv_items(self, namespace: str) -> dict[str, bytes]:
        return await asyncio.to_thread(self.store.kv(namespace).items)

    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        await asyncio.to_thread(self.store.kv(namespace).put, key, value)

    async def kv_delete(self, namespace: str, key: str, expected: bytes | None = None) -> bool:
        return await asyncio.to_thread(self.store.kv(namespace).delete, key, expected)

    async def kv_update(self, namespace: str, key: str,
                        change: Callable[[bytes | None], bytes | None]) -> bytes | None:
        return await asyncio.to_thread(self.store.kv(namespace).update, key, change)

    # ---- nodes ----

    async def take_over(self, node_id: str) -> None:
        """Take a dead node over: fence it, commit what its WAL acknowledged, release its
        streams (docs/shared-stores.md)."""
        await asyncio.to_thread(self.store.take_over, node_id)
