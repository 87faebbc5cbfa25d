"""A broker killed (SIGKILL) while a producer with acks=all is sending, then restarted: every
message it acknowledged is there afterwards."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka_processes import BrokerProcess, kafka_settings
from waits import wait_for

pytestmark = pytest.mark.once

TOPIC = "events"
PARTITIONS = 3
WAIT = 120.0  # bounds a hang only
MOST = 200_000  # the producer's bound: it stops long before


def acknowledged(futures: list[Any]) -> int:
    return sum(1 for f in list(futures) if f.is_done and f.succeeded())


def read_all(bootstrap: str) -> list[bytes]:
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                           **kafka_settings())
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        ends = reader.end_offsets(partitions)
        values: list[bytes] = []
        while any(reader.position(p) < ends[p] for p in partitions):
            for records in reader.poll(timeout_ms=1000).values():
                values += [r.value for r in records]
        return values
    finally:
        reader.close()


def test_every_acknowledged_message_survives_a_sigkill(broker: BrokerProcess) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, **kafka_settings())
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2,
                             retries=1_000, retry_backoff_ms=50, reconnect_backoff_ms=50,
                             reconnect_backoff_max_ms=500, delivery_timeout_ms=120_000,
                             **kafka_settings(request_timeout_ms=10_000))
    futures: list[Any] = []
    values: list[bytes] = []
    stop = threading.Event()
    failed: Future[None] = Future()

    def send() -> None:
        try:
            for n in range(MOST):
                if stop.is_set():
                    break
                value = f"event {n}".encode()
                values.append(value)
                futures.append(producer.send(TOPIC, key=str(n % 10).encode(), value=value))
            failed.set_result(None)
        except BaseException as error:
            failed.set_exception(error)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: acknowledged(futures) >= 2_000, WAIT, "acknowledgements")
        broker.kill()  # mid-stream: sends in flight, batches waiting
        killed_at = len(futures)
        broker.start()  # the same port: the producer reconnects
        wait_for(lambda: len(futures) > killed_at + 1_000 and
                 futures[killed_at + 1_000].is_done, WAIT, "sends after the restart")
    finally:
        stop.set()
        sender.join(WAIT)
        producer.flush(timeout=WAIT)
        producer.close(timeout=WAIT)
    failed.result(0)
    acked = {values[n] for n, f in enumerate(futures) if f.is_done and f.succeeded()}
    assert len(acked) > 3_000
    stored = set(read_all(broker.bootstrap))
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
