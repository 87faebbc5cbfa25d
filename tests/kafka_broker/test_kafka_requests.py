"""Requests at their edges: one the broker does not serve is answered with UNSUPPORTED_VERSION
on a connection that stays open; a topic's retention configs become its streams' retention."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.protocol import admin, metadata
from kafka_processes import BrokerProcess, kafka_settings
from raw_client import RawClient

import streamlib

pytestmark = pytest.mark.once

UNSUPPORTED_VERSION = 35


def test_an_unsupported_request_gets_its_error_code_and_the_connection_stays(
        broker: BrokerProcess) -> None:
    with RawClient(broker.bootstrap) as client:
        answer = client.request(admin.DescribeGroupsRequest[0](groups=["g"]),
                                admin.DescribeGroupsResponse)
        assert answer.groups == []
        answer = client.request(admin.ListGroupsRequest[0](), admin.ListGroupsResponse)
        assert answer.error_code == UNSUPPORTED_VERSION
        versions = client.request(metadata.ApiVersionsRequest[4](
            client_software_name="raw", client_software_version="1"),
            metadata.ApiVersionsResponse[0])  # a version not served: answered at version 0
        assert versions.error_code == UNSUPPORTED_VERSION
        assert any(key.api_key == 0 for key in versions.api_keys)
        assert client.brokers() == [0]  # the same connection still serves


def test_topic_retention_becomes_the_streams_retention(broker: BrokerProcess) -> None:
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, **kafka_settings())
    try:
        client.create_topics([NewTopic("clicks", num_partitions=2, replication_factor=1,
                                       topic_configs={"retention.ms": "3600000",
                                                      "retention.bytes": "1048576"})])
    finally:
        client.close()
    assert broker.stop() == 0
    with streamlib.open(broker.data, node_id="broker-0") as store:
        for partition in range(2):
            stream = store.open_stream(f"kafka/clicks/{partition}", read_only=True)
            assert stream.retention == streamlib.Retention(max_age=3600, max_bytes=1 << 20)
