"""aiokafka against a broker process: the workload of test_kafka_python_client.py — a topic of
3 partitions, keyed messages with headers produced (acks=all) with each compression in turn,
consumed by a group of two members (the second joins midway: a rebalance), offsets committed,
the consumers restarted and resumed from their commits — every message exactly once, as sent,
in partition order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_processes import BrokerProcess, kafka_settings
from kafka_workload import (
    COMPRESSIONS,
    Message,
    Placed,
    check_consumed,
    check_sent_in_order,
    messages,
)

pytestmark = pytest.mark.once

TOPIC = "payments"
PER_COMPRESSION = 10_000
WAIT = 120.0  # bounds a hang only


async def produce(bootstrap: str, batch: list[Message], compression: str | None) -> list[Placed]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type=compression, linger_ms=5, **kafka_settings())
    await producer.start()
    try:
        futures = [await producer.send(TOPIC, key=m.key, value=m.value,
                                       headers=list(m.headers), timestamp_ms=m.timestamp)
                   for m in batch]
        done = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
        return [Placed(m, d.partition, d.offset) for m, d in zip(batch, done, strict=True)]
    finally:
        await producer.stop()


def consumer(bootstrap: str, name: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id="readers",
                            client_id=name, enable_auto_commit=False,
                            auto_offset_reset="earliest", session_timeout_ms=10_000,
                            heartbeat_interval_ms=500, max_poll_records=300,
                            **kafka_settings())


async def consume(reader: AIOKafkaConsumer, into: list[Placed], enough: Callable[[], bool],
                  assigned: asyncio.Event, peer: asyncio.Event | None = None) -> None:
    """Read, record, commit what was read until ``enough()``; ``assigned`` is set once this
    member has partitions. With ``peer``: after the first records, hold (every partition
    paused, the group's heartbeats and rejoin go on) until ``peer`` is set."""
    while not enough():
        polled = await reader.getmany(timeout_ms=200)
        if reader.assignment():
            assigned.set()
        for records in polled.values():
            for r in records:
                into.append(Placed(Message(r.key, r.value, tuple(r.headers), r.timestamp),
                                   r.partition, r.offset))
        if polled:
            await reader.commit()
        if peer is not None and into:  # paused again after a rebalance, until the peer reads
            if peer.is_set():
                reader.resume(*reader.paused())
            else:
                reader.pause(*reader.assignment())


async def run_group(bootstrap: str, target: int, seen: list[list[Placed]]) -> None:
    """Two members consume until ``target`` messages were read in all (``seen`` included); the
    second joins once the first has read something. Both stop."""
    first: list[Placed] = []
    second: list[Placed] = []
    seen += [first, second]

    def enough() -> bool:
        return sum(len(s) for s in seen) >= target

    a, b = consumer(bootstrap, "a"), consumer(bootstrap, "b")
    a_assigned, b_assigned = asyncio.Event(), asyncio.Event()
    try:
        await a.start()
        task_a = asyncio.create_task(consume(a, first, enough, a_assigned, b_assigned))
        while not first and not task_a.done():
            await asyncio.wait([task_a], timeout=0.05)  # until the first records (or a failure)
        await b.start()
        task_b = asyncio.create_task(consume(b, second, enough, b_assigned))
        await asyncio.wait_for(asyncio.gather(task_a, task_b), WAIT)
        assert b_assigned.is_set(), "the second member never had partitions"
    finally:
        await a.stop()
        await b.stop()


async def workload(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_settings())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    sent: list[Placed] = []
    for round_, compression in enumerate(COMPRESSIONS):
        batch = messages(PER_COMPRESSION, f"aiokafka {compression}",
                         start=round_ * PER_COMPRESSION)
        sent += await produce(bootstrap, batch, compression)
    check_sent_in_order(sent)
    assert {p.partition for p in sent} == {0, 1, 2}
    seen: list[list[Placed]] = []
    await run_group(bootstrap, len(sent) // 2, seen)
    await run_group(bootstrap, len(sent), seen)  # resumed from the commits
    check_consumed(sent, seen)


def test_aiokafka_produces_and_consumes_in_a_group(broker: BrokerProcess) -> None:
    asyncio.run(workload(broker.bootstrap))
