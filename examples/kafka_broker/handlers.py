"""The requests: each handler takes kafka-python's decoded request and returns the response
object (the server encodes it at the request's version).

Produce is in two steps (:meth:`Handlers.submit_produce`): the server awaits its submission
before it reads the next request of the connection — so that one connection's appends land in
the order sent — and awaits its durability as the response.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kafka.protocol import admin, consumer, metadata, producer

from . import batches
from .batches import BatchError
from .cluster import Cluster
from .groups import Coordinator
from .producers import ProducerTable, SequenceRefused
from .protocol import ErrorCode, Request
from .storage import (
    PRODUCERS,
    FencedError,
    OffsetOutOfRange,
    PartitionLog,
    RetryLater,
    Storage,
    StorageError,
    StreamNotFound,
    Topic,
    retention_of,
)

log = logging.getLogger(__name__)

TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
CLUSTER_ID = "streamlib-kafka"
EARLIEST = -2
LATEST = -1


@dataclass(frozen=True, slots=True)
class Settings:
    """What the broker does on its own: topics made on first use, and their partitions."""

    auto_create: bool = True
    default_partitions: int = 1


def error_of(error: BaseException) -> ErrorCode:
    """The Kafka error code for what a streamlib call raised."""
    if isinstance(error, FencedError):
        return ErrorCode.NOT_LEADER_OR_FOLLOWER
    if isinstance(error, SequenceRefused):
        return ErrorCode(error.code)
    if isinstance(error, StreamNotFound):
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    if isinstance(error, OffsetOutOfRange):
        return ErrorCode.OFFSET_OUT_OF_RANGE
    if isinstance(error, RetryLater):
        return ErrorCode.KAFKA_STORAGE_ERROR
    if isinstance(error, StorageError) and "sequence" in str(error):
        return ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    log.error("unexpected error: %r", error)
    return ErrorCode.UNKNOWN_SERVER_ERROR


class Handlers:
    """Every request the broker serves."""

    def __init__(self, storage: Storage, cluster: Cluster, coordinator: Coordinator,
                 settings: Settings) -> None:
        self.storage = storage
        self.cluster = cluster
        self.coordinator = coordinator
        self.settings = settings
        self.producers = ProducerTable()

    # ---- partitions this broker leads ----

    async def _leading(self, topic: str, partition: int) -> tuple[PartitionLog | None, ErrorCode]:
        """The partition's log if this broker leads it, else the error to answer with."""
        found = await self.storage.topic(topic)
        if found is None or not 0 <= partition < found.partitions:
            return None, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        opened = self.storage.opened(topic, partition)
        if opened is not None:
            return opened, ErrorCode.NONE
        if await self.cluster.leader(topic, partition) != self.cluster.node_id:
            return None, ErrorCode.NOT_LEADER_OR_FOLLOWER
        try:
            return await self.storage.partition(topic, partition), ErrorCode.NONE
        except StreamNotFound:
            self.storage.forget_topic(topic)
            return None, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        except StorageError as error:
            return None, error_of(error)

    def _lost(self, topic: str, partition: int, code: ErrorCode) -> None:
        """A partition's append or fetch failed with ``code``: forget a handle that was fenced
        (another broker leads it now) or whose stream is gone."""
        if code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
            self.storage.drop_partition(topic, partition)
            self.producers.forget(topic, partition)

    # ---- metadata and topics ----

    async def metadata(self, request: Request) -> Any:
        body = request.body
        response_class = metadata.MetadataResponse
        names = None if body.topics is None or (request.version == 0 and not body.topics) \
            else [t.name for t in body.topics]
        known = await self.storage.topics()
        if names is None:
            names = sorted(known)
        auto = self.settings.auto_create and (request.version < 4
                                              or body.allow_auto_topic_creation)
        live = {b.node_id for b in self.cluster.brokers()}
        topics = []
        for name in names:
            topic = known.get(name)
            error = ErrorCode.NONE
            if topic is None and auto and TOPIC_NAME.fullmatch(name):
                topic = Topic(name, self.settings.default_partitions)
                if await self.storage.create_topic(topic):
                    await self.cluster.topic_created(name, topic.partitions)
                topic = await self.storage.topic(name)
            if topic is None:
                error = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION if TOPIC_NAME.fullmatch(name) \
                    else ErrorCode.INVALID_TOPIC_EXCEPTION
            partitions = []
            for index in range(topic.partitions if topic else 0):
                leader = await self.cluster.leader(name, index)
                if leader not in live:  # a broker being taken over: clients must not go there
                    leader = None
                nodes = [] if leader is None else [leader]
                partitions.append(response_class.MetadataResponseTopic.MetadataResponsePartition(
                    error_code=ErrorCode.NONE if leader is not None
                    else ErrorCode.LEADER_NOT_AVAILABLE,
                    partition_index=index, leader_id=-1 if leader is None else leader,
                    leader_epoch=-1, replica_nodes=nodes, isr_nodes=nodes, offline_replicas=[]))
            topics.append(response_class.MetadataResponseTopic(
                error_code=error, name=name, is_internal=False, partitions=partitions))
        brokers = [response_class.MetadataResponseBroker(node_id=b.node_id, host=b.host,
                                                         port=b.port, rack=None)
                   for b in self.cluster.brokers()]
        return response_class(throttle_time_ms=0, brokers=brokers, cluster_id=CLUSTER_ID,
                              controller_id=self.cluster.node_id, topics=topics)

    async def create_topics(self, request: Request) -> Any:
        response_class = admin.CreateTopicsResponse
        results = []
        for wanted in request.body.topics:
            code, message = await self._create_topic(wanted, request.body.validate_only)
            results.append(response_class.CreatableTopicResult(
                name=wanted.name, error_code=code, error_message=message,
                num_partitions=wanted.num_partitions, replication_factor=1, configs=None))
        return response_class(throttle_time_ms=0, topics=results)

    async def _create_topic(self, wanted: Any, validate_only: bool) -> tuple[ErrorCode, str | None]:
        if not TOPIC_NAME.fullmatch(wanted.name) or wanted.name in (".", ".."):
            return ErrorCode.INVALID_TOPIC_EXCEPTION, f"invalid topic name: {wanted.name!r}"
        partitions = wanted.num_partitions
        if partitions == -1:
            partitions = self.settings.default_partitions
        if partitions < 1:
            return ErrorCode.INVALID_PARTITIONS, f"partitions must be at least 1: {partitions}"
        if wanted.replication_factor not in (-1, 1) or wanted.assignments:
            return (ErrorCode.INVALID_REPLICATION_FACTOR,
                    "replicas are not served: durability is the store's (replication factor 1)")
        configs = {c.name: c.value for c in wanted.configs if c.value is not None}
        if configs.get("cleanup.policy", "delete") != "delete":
            return ErrorCode.INVALID_CONFIG, "only cleanup.policy=delete is served"
        if configs.get("message.timestamp.type", "CreateTime") != "CreateTime":
            return ErrorCode.INVALID_CONFIG, "only message.timestamp.type=CreateTime is served"
        try:
            retention_of(configs)
        except ValueError as error:
            return ErrorCode.INVALID_CONFIG, str(error)
        if validate_only:
            exists = await self.storage.topic(wanted.name) is not None
            return (ErrorCode.TOPIC_ALREADY_EXISTS, None) if exists else (ErrorCode.NONE, None)
        if not await self.storage.create_topic(Topic(wanted.name, partitions, configs)):
            return ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {wanted.name!r} already exists"
        await self.cluster.topic_created(wanted.name, partitions)
        return ErrorCode.NONE, None

    async def delete_topics(self, request: Request) -> Any:
        response_class = admin.DeleteTopicsResponse
        results = []
        for name in request.body.topic_names:
            topic = await self.storage.topic(name)
            deleted = await self.storage.delete_topic(name)
            for partition in range(topic.partitions if topic is not None else 0):
                self.producers.forget(name, partition)
            results.append(response_class.DeletableTopicResult(
                name=name, error_code=ErrorCode.NONE if deleted
                else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
        return response_class(throttle_time_ms=0, responses=results)

    # ---- produce ----

    async def submit_produce(self, request: Request) -> Callable[[], Awaitable[Any]]:
        """Submit the request's appends (in order); returns what awaits their durability and
        builds the response (None for acks=0: no response is sent)."""
        body = request.body
        acks = body.acks
        waits: list[tuple[str, list[tuple[int, Awaitable[Any] | ErrorCode, PartitionLog | None]]]]
        waits = []
        for topic_data in body.topic_data:
            parts: list[tuple[int, Awaitable[Any] | ErrorCode, PartitionLog | None]] = []
            waits.append((topic_data.name, parts))
            for data in topic_data.partition_data:
                if acks not in (0, 1, -1):
                    parts.append((data.index, ErrorCode.INVALID_REQUIRED_ACKS, None))
                    continue
                if body.transactional_id is not None:
                    parts.append((data.index, ErrorCode.INVALID_REQUEST, None))
                    continue
                parts.append(await self._submit_partition(topic_data.name, data))

        async def respond() -> Any:
            response_class = producer.ProduceResponse
            topics = []
            for name, parts in waits:
                answers = []
                for index, pending, log_ in parts:
                    code, base = await self._settle(name, index, pending)
                    answers.append(response_class.TopicProduceResponse.PartitionProduceResponse(
                        index=index, error_code=code, base_offset=base, log_append_time_ms=-1,
                        log_start_offset=-1 if log_ is None or code else log_.start_offset,
                        record_errors=[], error_message=None))
                topics.append(response_class.TopicProduceResponse(
                    name=name, partition_responses=answers))
            if acks == 0:
                return None
            return response_class(responses=topics, throttle_time_ms=0)

        return respond

    async def _submit_partition(self, topic: str, data: Any
                                ) -> tuple[int, Awaitable[Any] | ErrorCode, PartitionLog | None]:
        log_, code = await self._leading(topic, data.index)
        if log_ is None:
            return data.index, code, None
        try:
            found = batches.split(bytes(data.records or b""))
        except BatchError as error:
            return data.index, ErrorCode(error.code), log_
        appends = []
        try:
            for batch in found:
                producer_id, sequence = None, None
                if batch.idempotent:
                    producer_id, sequence = self.producers.place(topic, data.index, batch)
                appends.append(log_.append(batch, producer_id, sequence))
        except (SequenceRefused, StorageError) as error:
            for append in appends:  # those already submitted still land; nothing waits for them
                append.add_done_callback(_ignore)
            code = error_of(error)
            self._lost(topic, data.index, code)
            return data.index, code, log_
        return data.index, asyncio.gather(*appends), log_

    async def _settle(self, topic: str, partition: int,
                      pending: Awaitable[Any] | ErrorCode) -> tuple[ErrorCode, int]:
        if isinstance(pending, ErrorCode):
            return pending, -1
        try:
            results = await pending
        except (SequenceRefused, StorageError) as error:
            code = error_of(error)
            self._lost(topic, partition, code)
            return code, -1
        return ErrorCode.NONE, results[0].base_offset

    # ---- fetch ----

    async def fetch(self, request: Request) -> Any:
        body = request.body
        deadline = time.monotonic() + max(0, body.max_wait_ms) / 1000
        while True:
            topics, size, waiting = await self._fetch_once(body)
            left = deadline - time.monotonic()
            if size >= max(1, body.min_bytes) or not waiting or left <= 0:
                break
            tasks = [asyncio.create_task(log_.wait_for_append(offset))
                     for log_, offset in waiting]
            try:
                await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return consumer.FetchResponse(throttle_time_ms=0, error_code=ErrorCode.NONE,
                                      session_id=0, responses=topics)

    async def _fetch_once(self, body: Any) -> tuple[list[Any], int, list[tuple[PartitionLog, int]]]:
        response_class = consumer.FetchResponse
        room = body.max_bytes if body.max_bytes > 0 else 1 << 30
        size = 0
        waiting: list[tuple[PartitionLog, int]] = []
        topics = []
        for topic in body.topics:
            partitions = []
            for wanted in topic.partitions:
                code, records, log_ = ErrorCode.NONE, b"", None
                log_, code = await self._leading(topic.topic, wanted.partition)
                if log_ is not None:
                    try:
                        records = await self._read(log_, wanted.fetch_offset,
                                                   min(wanted.partition_max_bytes,
                                                       max(0, room - size)), size == 0)
                    except StorageError as error:
                        code = error_of(error)
                        self._lost(topic.topic, wanted.partition, code)
                    if code == ErrorCode.NONE and not records \
                            and wanted.fetch_offset == log_.next_offset:
                        waiting.append((log_, wanted.fetch_offset))
                size += len(records)
                end = log_.next_offset if log_ is not None else -1
                partitions.append(response_class.FetchableTopicResponse.PartitionData(
                    partition_index=wanted.partition, error_code=code, high_watermark=end,
                    last_stable_offset=end,
                    log_start_offset=log_.start_offset if log_ is not None else -1,
                    aborted_transactions=None, preferred_read_replica=-1,
                    records=records))
            topics.append(response_class.FetchableTopicResponse(topic=topic.topic,
                                                                partitions=partitions))
        return topics, size, waiting

    @staticmethod
    async def _read(log_: PartitionLog, offset: int, max_bytes: int, first: bool) -> bytes:
        """The batches from ``offset`` as a fetch serves them (base offsets written in); at
        least one batch when ``first`` (the response's first data), else within ``max_bytes``."""
        if offset == log_.next_offset or (max_bytes <= 0 and not first):
            return b""
        found = await log_.fetch(offset, max_bytes)
        return b"".join(batches.at_offset(b.payload, b.base_offset) for b in found)

    # ---- list offsets ----

    async def list_offsets(self, request: Request) -> Any:
        response_class = consumer.ListOffsetsResponse
        topics = []
        for topic in request.body.topics:
            partitions = []
            for wanted in topic.partitions:
                code, offset, timestamp = await self._offset(topic.name, wanted.partition_index,
                                                             wanted.timestamp)
                partitions.append(response_class.ListOffsetsTopicResponse
                                  .ListOffsetsPartitionResponse(
                                      partition_index=wanted.partition_index, error_code=code,
                                      timestamp=timestamp, offset=offset, leader_epoch=-1))
            topics.append(response_class.ListOffsetsTopicResponse(name=topic.name,
                                                                  partitions=partitions))
        return response_class(throttle_time_ms=0, topics=topics)

    async def _offset(self, topic: str, partition: int, wanted: int) -> tuple[ErrorCode, int, int]:
        log_, code = await self._leading(topic, partition)
        if log_ is None:
            return code, -1, -1
        if wanted == EARLIEST:
            return ErrorCode.NONE, log_.start_offset, -1
        if wanted == LATEST:
            return ErrorCode.NONE, log_.next_offset, -1
        if wanted < 0:
            return ErrorCode.UNSUPPORTED_VERSION, -1, -1
        try:
            offset = await log_.offset_for_timestamp(wanted)
            if offset is None:
                return ErrorCode.NONE, -1, -1
            found = await log_.fetch(offset, 1)
        except StorageError as error:
            return error_of(error), -1, -1
        for batch in found:  # the batch holding ``offset``: its first record at or past it
            hit = batches.first_at_or_after(batch.payload, batch.base_offset, wanted)
            if hit is not None:
                return ErrorCode.NONE, hit[0], hit[1]
        return ErrorCode.NONE, offset, -1

    # ---- producers ----

    async def init_producer_id(self, request: Request) -> Any:
        response_class = producer.InitProducerIdResponse
        if request.body.transactional_id is not None:
            return response_class(throttle_time_ms=0, error_code=ErrorCode.INVALID_REQUEST,
                                  producer_id=-1, producer_epoch=-1)

        def bump(current: bytes | None) -> bytes:
            return str(int(current or b"0") + 1).encode()

        try:
            after = await self.storage.kv_update(PRODUCERS, "next-id", bump)
        except StorageError as error:
            return response_class(throttle_time_ms=0, error_code=error_of(error),
                                  producer_id=-1, producer_epoch=-1)
        assert after is not None
        return response_class(throttle_time_ms=0, error_code=ErrorCode.NONE,
                              producer_id=int(after) - 1, producer_epoch=0)


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "never retrieved" warning
