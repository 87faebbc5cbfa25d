"""ListOffsets: earliest, latest, and by timestamp — the first offset whose record's
timestamp is at least the one asked for, inside compressed batches too."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_processes import BrokerProcess, kafka_settings

pytestmark = pytest.mark.once

TOPIC = "prices"
WAIT = 60.0  # bounds a hang only
BASE = 1_790_000_000_000


def test_list_offsets_by_timestamp_matches_what_was_produced(broker: BrokerProcess) -> None:
    sent: list[tuple[int, int]] = []  # (timestamp, offset), in offset order
    for compression, start in ((None, 0), ("gzip", 300), ("zstd", 600)):
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                 compression_type=compression, linger_ms=20,
                                 **kafka_settings())
        try:
            futures = [(BASE + 10 * n, producer.send(TOPIC, value=b"x", partition=0,
                                                     timestamp_ms=BASE + 10 * n))
                       for n in range(start, start + 300)]
            producer.flush(timeout=WAIT)
            sent += [(ts, f.get(timeout=WAIT).offset) for ts, f in futures]
        finally:
            producer.close(timeout=WAIT)
    partition = TopicPartition(TOPIC, 0)
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, **kafka_settings())
    try:
        assert reader.beginning_offsets([partition]) == {partition: 0}
        assert reader.end_offsets([partition]) == {partition: 900}
        for asked in (0, BASE, BASE + 5, BASE + 10, BASE + 2_995, BASE + 3_000, BASE + 6_001,
                      BASE + 8_990, BASE + 8_991, BASE + 50_000):
            expected = next(((offset, ts) for ts, offset in sent if ts >= asked), None)
            found = reader.offsets_for_times({partition: asked})[partition]
            got = None if found is None else (found.offset, found.timestamp)
            assert got == expected, f"timestamp {asked}"
    finally:
        reader.close()
