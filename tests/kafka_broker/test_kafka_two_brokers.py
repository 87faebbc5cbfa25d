"""Two brokers on one moto bucket (``--metadata manifest``): partitions spread over both; one
is killed, the other takes it over (its streams and its WAL in the bucket), the producer goes
on after its metadata refresh, and nothing acknowledged is lost."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka_processes import Brokers, kafka_settings
from raw_client import RawClient
from waits import wait_for

from streamlib.testing.s3 import S3Bucket

pytestmark = pytest.mark.once

TOPIC = "shipments"
PARTITIONS = 4
WAIT = 120.0  # bounds a hang only


def shared(bucket: S3Bucket, node: int) -> list[str]:
    return ["--node-id", str(node), "--objects-url", f"{bucket.url}/kafka",
            "--metadata", "manifest", "--storage-options", json.dumps(bucket.storage_options),
            "--heartbeat-ms", "200", "--session-ms", "2000"]


def sees(bootstrap: str, nodes: list[int]) -> bool:
    with RawClient(bootstrap) as client:
        return client.brokers() == nodes


def send(producer: KafkaProducer, start: int, count: int) -> list[bytes]:
    """``count`` messages over every partition; returns those acknowledged (all must be)."""
    futures = [(f"parcel {n}".encode(), producer.send(TOPIC, value=f"parcel {n}".encode(),
                                                       partition=n % PARTITIONS))
               for n in range(start, start + count)]
    producer.flush(timeout=WAIT)
    for _, future in futures:
        future.get(timeout=WAIT)
    return [value for value, _ in futures]


def test_a_broker_takes_over_a_dead_one(moto_bucket: S3Bucket, brokers: Brokers) -> None:
    # (the bucket first: it is deleted after the brokers stop)
    first = brokers("first", *shared(moto_bucket, 1))
    second = brokers("second", *shared(moto_bucket, 2))
    wait_for(lambda: sees(first.bootstrap, [1, 2]) and sees(second.bootstrap, [1, 2]), WAIT,
             "the brokers to see each other")
    admin = KafkaAdminClient(bootstrap_servers=first.bootstrap, **kafka_settings())
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=[first.bootstrap, second.bootstrap], acks="all",
                             linger_ms=5, retries=10_000, retry_backoff_ms=100,
                             reconnect_backoff_ms=100, reconnect_backoff_max_ms=500,
                             metadata_max_age_ms=1_000, delivery_timeout_ms=WAIT * 1000,
                             **kafka_settings(request_timeout_ms=10_000))
    try:
        acked = send(producer, 0, 1_000)
        with RawClient(first.bootstrap) as client:
            leaders = client.leaders(TOPIC)
        assert set(leaders.values()) == {1, 2}, leaders
        second.kill()
        acked += send(producer, 1_000, 1_000)  # waits out the take-over, then goes on
    finally:
        producer.close(timeout=WAIT)
    wait_for(lambda: sees(first.bootstrap, [1]), WAIT, "the second broker to be gone")
    reader = KafkaConsumer(bootstrap_servers=first.bootstrap, enable_auto_commit=False,
                           **kafka_settings())
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        ends = reader.end_offsets(partitions)
        stored: list[bytes] = []
        while any(reader.position(p) < ends[p] for p in partitions):
            for records in reader.poll(timeout_ms=1000).values():
                stored += [r.value for r in records]
    finally:
        reader.close()
    lost = set(acked) - set(stored)
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
