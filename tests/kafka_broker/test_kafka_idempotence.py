"""Idempotent producers: a batch sent again (a producer's retry after a lost answer) is stored
once and answered with its first offset; a real idempotent client's messages land once each."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_processes import BrokerProcess, Brokers, kafka_settings
from raw_client import RawClient, idempotent_batch

pytestmark = pytest.mark.once

TOPIC = "ledger"
WAIT = 60.0  # bounds a hang only


def stored_values(bootstrap: str, topic: str = TOPIC) -> list[bytes]:
    """Every value of partition 0, from the beginning to the end offset."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                           **kafka_settings())
    try:
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        reader.seek_to_beginning(partition)
        end = reader.end_offsets([partition])[partition]
        values: list[bytes] = []
        while reader.position(partition) < end:
            for records in reader.poll(timeout_ms=1000).values():
                values += [r.value for r in records]
        return values
    finally:
        reader.close()


def test_a_retried_batch_is_stored_once(broker: BrokerProcess) -> None:
    with RawClient(broker.bootstrap) as client:
        client.make_topic(TOPIC)
        producer_id, epoch = client.init_producer_id()
        first = idempotent_batch(producer_id, epoch, 0, [b"a", b"b", b"c"], 1_000)
        assert client.produce(TOPIC, 0, first) == (0, 0)
        assert client.produce(TOPIC, 0, first) == (0, 0)  # the retry: its first offset again
        second = idempotent_batch(producer_id, epoch, 3, [b"d", b"e"], 2_000)
        assert client.produce(TOPIC, 0, second) == (0, 3)
        assert client.produce(TOPIC, 0, first) == (0, 0)  # an older batch, still remembered
        gap = idempotent_batch(producer_id, epoch, 9, [b"f"], 3_000)
        assert client.produce(TOPIC, 0, gap)[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
    assert stored_values(broker.bootstrap) == [b"a", b"b", b"c", b"d", b"e"]


@pytest.mark.xfail(strict=True, reason=(
    "streamlib keeps idempotent producers' sequences in memory only: after a restart a retry "
    "is appended again (the durable producer state is the library's next step)"))
def test_a_batch_retried_after_a_restart_is_stored_once(brokers: Brokers) -> None:
    broker = brokers("broker")
    with RawClient(broker.bootstrap) as client:
        client.make_topic(TOPIC)
        producer_id, epoch = client.init_producer_id()
        batch = idempotent_batch(producer_id, epoch, 0, [b"a", b"b"], 1_000)
        assert client.produce(TOPIC, 0, batch) == (0, 0)
    assert broker.stop() == 0
    broker.start()
    with RawClient(broker.bootstrap) as client:
        assert client.produce(TOPIC, 0, batch) == (0, 0)
    assert stored_values(broker.bootstrap) == [b"a", b"b"]


def test_an_idempotent_client_stores_each_message_once(broker: BrokerProcess) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True,
                             acks="all", linger_ms=5, **kafka_settings())
    try:
        futures = [producer.send(TOPIC, value=f"m{n}".encode(), partition=0)
                   for n in range(2_000)]
        producer.flush(timeout=WAIT)
        offsets = [f.get(timeout=WAIT).offset for f in futures]
    finally:
        producer.close(timeout=WAIT)
    assert offsets == list(range(2_000))
    assert stored_values(broker.bootstrap) == [f"m{n}".encode() for n in range(2_000)]
