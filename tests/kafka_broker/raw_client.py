"""A Kafka client at the level of single requests (kafka-python's protocol classes over a
socket), for what the real clients do only by chance: sending one produce request twice, as a
producer's retry after a lost answer does."""

from __future__ import annotations

import socket
import struct
from typing import Any

from kafka.protocol import metadata, producer
from kafka.record.default_records import DefaultRecordBatchBuilder

TIMEOUT = 60.0  # bounds a hang only


class RawClient:
    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: Any, response_class: Any) -> Any:
        """Send ``message`` (a versioned request object) and return the decoded answer."""
        self.correlation += 1
        message.with_header(correlation_id=self.correlation, client_id="raw")
        self.sock.sendall(bytes(message.encode(header=True, framed=True)))
        size = struct.unpack(">i", self._read(4))[0]
        frame = self._read(size)
        version = message.API_VERSION
        return response_class[version].decode(frame, version=version, header=True)

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the broker closed the connection"
            data += chunk
        return data

    def init_producer_id(self) -> tuple[int, int]:
        answer = self.request(producer.InitProducerIdRequest[0](
            transactional_id=None, transaction_timeout_ms=60_000),
            producer.InitProducerIdResponse)
        assert answer.error_code == 0, answer
        return answer.producer_id, answer.producer_epoch

    def produce(self, topic: str, partition: int, records: bytes) -> tuple[int, int]:
        """One produce request (acks=all): ``(error code, base offset)``."""
        request_class = producer.ProduceRequest
        data = request_class.TopicProduceData(
            name=topic, partition_data=[request_class.TopicProduceData.PartitionProduceData(
                index=partition, records=records)])
        answer = self.request(request_class[7](transactional_id=None, acks=-1,
                                               timeout_ms=30_000, topic_data=[data]),
                              producer.ProduceResponse)
        part = answer.responses[0].partition_responses[0]
        return part.error_code, part.base_offset

    def make_topic(self, topic: str) -> None:
        """The topic, made with one partition if it does not exist (a Metadata request that
        allows it, as clients send)."""
        answer = self.request(metadata.MetadataRequest[5](
            topics=[metadata.MetadataRequest.MetadataRequestTopic(name=topic)],
            allow_auto_topic_creation=True), metadata.MetadataResponse)
        assert answer.topics[0].error_code == 0, answer

    def leaders(self, topic: str) -> dict[int, int]:
        """``{partition: leader node id}`` as the broker's Metadata answer says."""
        answer = self.request(metadata.MetadataRequest[5](
            topics=[metadata.MetadataRequest.MetadataRequestTopic(name=topic)],
            allow_auto_topic_creation=False), metadata.MetadataResponse)
        return {p.partition_index: p.leader_id for p in answer.topics[0].partitions}

    def brokers(self) -> list[int]:
        answer = self.request(metadata.MetadataRequest[5](topics=[],
                                                          allow_auto_topic_creation=False),
                              metadata.MetadataResponse)
        return sorted(b.node_id for b in answer.brokers)


def idempotent_batch(producer_id: int, epoch: int, sequence: int, values: list[bytes],
                     timestamp: int) -> bytes:
    """A record batch v2 as an idempotent producer builds it."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=producer_id, producer_epoch=epoch,
                                        base_sequence=sequence, batch_size=1 << 20)
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=timestamp + offset, key=None, value=value, headers=[])
    return bytes(builder.build())
