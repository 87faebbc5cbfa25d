"""kafka-python against a broker process: a topic of 3 partitions, keyed messages with headers
produced (acks=all) with each compression in turn, consumed by a group of two members (the
second joins midway: a rebalance), offsets committed, the consumers restarted and resumed from
their commits — every message exactly once, as sent, in partition order."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka_processes import BrokerProcess, kafka_settings
from kafka_workload import (
    COMPRESSIONS,
    Message,
    Placed,
    check_consumed,
    check_sent_in_order,
    messages,
)
from waits import wait_for

pytestmark = pytest.mark.once

TOPIC = "orders"
PER_COMPRESSION = 10_000
WAIT = 120.0  # bounds a hang only


def produce(bootstrap: str, batch: list[Message], compression: str | None) -> list[Placed]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             compression_type=compression, linger_ms=5,
                             **kafka_settings())
    try:
        futures = [(m, producer.send(TOPIC, key=m.key, value=m.value, headers=list(m.headers),
                                     timestamp_ms=m.timestamp)) for m in batch]
        producer.flush(timeout=WAIT)
        return [Placed(m, f.get(timeout=WAIT).partition, f.get(timeout=WAIT).offset)
                for m, f in futures]
    finally:
        producer.close(timeout=WAIT)


def consumer(bootstrap: str, name: str) -> KafkaConsumer:
    return KafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id="readers",
                         client_id=name, enable_auto_commit=False,
                         auto_offset_reset="earliest", session_timeout_ms=10_000,
                         heartbeat_interval_ms=500, max_poll_records=300,
                         **kafka_settings())


def consume(reader: KafkaConsumer, into: list[Placed], enough: Callable[[], bool],
            errors: list[BaseException], assigned: threading.Event,
            peer: threading.Event | None = None) -> None:
    """Poll, record, commit what was read (synchronously) until ``enough()``; ``assigned`` is
    set once this member has partitions. With ``peer``: after the first records, hold (poll
    with every partition paused, so heartbeats and the rejoin go on) until ``peer`` is set —
    the second member's join and the rebalance happen while this one is midway."""
    try:
        while not enough():
            polled = reader.poll(timeout_ms=200)
            if reader.assignment():
                assigned.set()
            for records in polled.values():
                for r in records:
                    into.append(Placed(Message(r.key, r.value, tuple(r.headers), r.timestamp),
                                       r.partition, r.offset))
                reader.commit()
            if peer is not None and into:  # paused again after a rebalance, until the peer reads
                if peer.is_set():
                    reader.resume(*reader.paused())
                else:
                    reader.pause(*reader.assignment())
    except BaseException as error:
        errors.append(error)


def run_group(bootstrap: str, target: int, seen: list[list[Placed]]) -> None:
    """Two members of the group consume until ``target`` messages were read in all (``seen``
    included); the second joins once the first has read something (a rebalance). Both close."""
    first: list[Placed] = []
    second: list[Placed] = []
    seen += [first, second]
    errors: list[BaseException] = []

    def enough() -> bool:
        return sum(len(s) for s in seen) >= target or bool(errors)

    a = consumer(bootstrap, "a")
    b = consumer(bootstrap, "b")
    a_assigned, b_assigned = threading.Event(), threading.Event()
    try:
        thread_a = threading.Thread(target=consume,
                                    args=(a, first, enough, errors, a_assigned, b_assigned))
        thread_a.start()
        wait_for(lambda: first or not thread_a.is_alive(), WAIT, "the first member's reads")
        thread_b = threading.Thread(target=consume,
                                    args=(b, second, enough, errors, b_assigned))
        thread_b.start()
        for thread in (thread_a, thread_b):
            thread.join(WAIT)
            assert not thread.is_alive(), "a consumer did not finish"
        assert not errors, errors
        assert b_assigned.is_set(), "the second member never had partitions"
    finally:
        a.close(autocommit=False)
        b.close(autocommit=False)


def test_kafka_python_produces_and_consumes_in_a_group(broker: BrokerProcess) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, **kafka_settings())
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    sent: list[Placed] = []
    for round_, compression in enumerate(COMPRESSIONS):
        batch = messages(PER_COMPRESSION, f"kafka-python {compression}",
                         start=round_ * PER_COMPRESSION)
        sent += produce(broker.bootstrap, batch, compression)
    check_sent_in_order(sent)
    assert {p.partition for p in sent} == {0, 1, 2}

    seen: list[list[Placed]] = []
    run_group(broker.bootstrap, len(sent) // 2, seen)  # then both members close
    run_group(broker.bootstrap, len(sent), seen)  # resumed from the commits
    check_consumed(sent, seen)
