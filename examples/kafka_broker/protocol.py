"""The Kafka wire protocol as this broker speaks it: frames, the request classes by API key,
the versions served, the error codes.

Encoding and decoding are kafka-python's (``kafka.protocol``: one class per API, generated from
Kafka's own JSON message definitions, every version); this module only chooses which APIs and
versions the broker serves and frames what goes over the socket.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

from kafka.protocol import admin, consumer, metadata, producer

FRAME = struct.Struct(">i")
REQUEST_PREFIX = struct.Struct(">hhi")  # api key, api version, correlation id
MAX_FRAME_BYTES = 100 * 1024 * 1024


class ErrorCode(IntEnum):
    """The Kafka error codes this broker answers with (Kafka's names)."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    MESSAGE_TOO_LARGE = 10
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_CONFIG = 40
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    INVALID_PRODUCER_EPOCH = 47
    KAFKA_STORAGE_ERROR = 56
    INVALID_RECORD = 87


# The APIs served and the versions of each: the newest versions that name topics by name
# (topic ids came later) and that the handlers answer in full.
SERVED: dict[int, tuple[Any, Any, int, int]] = {}
"""API key -> (request class, response class, lowest version, highest version)."""


def _serve(request: Any, response: Any, low: int, high: int) -> None:
    SERVED[request.API_KEY] = (request, response, low, high)


_serve(producer.ProduceRequest, producer.ProduceResponse, 3, 9)
_serve(consumer.FetchRequest, consumer.FetchResponse, 4, 11)
_serve(consumer.ListOffsetsRequest, consumer.ListOffsetsResponse, 1, 6)
_serve(metadata.MetadataRequest, metadata.MetadataResponse, 0, 9)
_serve(consumer.OffsetCommitRequest, consumer.OffsetCommitResponse, 2, 8)
_serve(consumer.OffsetFetchRequest, consumer.OffsetFetchResponse, 1, 7)
_serve(metadata.FindCoordinatorRequest, metadata.FindCoordinatorResponse, 0, 3)
_serve(consumer.JoinGroupRequest, consumer.JoinGroupResponse, 0, 7)
_serve(consumer.HeartbeatRequest, consumer.HeartbeatResponse, 0, 4)
_serve(consumer.LeaveGroupRequest, consumer.LeaveGroupResponse, 0, 4)
_serve(consumer.SyncGroupRequest, consumer.SyncGroupResponse, 0, 5)
_serve(metadata.ApiVersionsRequest, metadata.ApiVersionsResponse, 0, 3)
_serve(admin.CreateTopicsRequest, admin.CreateTopicsResponse, 2, 5)
_serve(admin.DeleteTopicsRequest, admin.DeleteTopicsResponse, 1, 5)
_serve(producer.InitProducerIdRequest, producer.InitProducerIdResponse, 0, 4)

API_VERSIONS = metadata.ApiVersionsRequest.API_KEY


def _known_classes() -> dict[int, tuple[Any, Any]]:
    """Every API kafka-python knows (request and response class by key): a request for one the
    broker does not serve is still decoded and answered with UNSUPPORTED_VERSION."""
    known: dict[int, tuple[Any, Any]] = {}
    for module in (admin, consumer, metadata, producer):
        for name in dir(module):
            if not name.endswith("Request"):
                continue
            request = getattr(module, name)
            response = getattr(module, name[: -len("Request")] + "Response", None)
            if response is not None and isinstance(getattr(request, "API_KEY", None), int):
                known[request.API_KEY] = (request, response)
    return known


KNOWN = _known_classes()


class Request:
    """One decoded request: its API key, version, correlation id and body (kafka-python's
    message object, or None for an API or version the broker does not serve)."""

    __slots__ = ("api_key", "body", "client_id", "correlation_id", "version")

    def __init__(self, api_key: int, version: int, correlation_id: int, body: Any,
                 client_id: str | None) -> None:
        self.api_key = api_key
        self.version = version
        self.correlation_id = correlation_id
        self.body = body
        self.client_id = client_id

    @property
    def served(self) -> bool:
        return self.body is not None and self.api_key in SERVED and \
            SERVED[self.api_key][2] <= self.version <= SERVED[self.api_key][3]


def decode_request(frame: bytes) -> Request:
    """A request from one frame (without its length prefix). A request of an API or version
    the broker does not serve comes back with ``body`` None when kafka-python cannot decode it
    at that version either."""
    api_key, version, correlation_id = REQUEST_PREFIX.unpack_from(frame)
    classes = KNOWN.get(api_key)
    if classes is None or not 0 <= version <= classes[0].max_version:
        return Request(api_key, version, correlation_id, None, None)
    body = classes[0].decode(frame, version=version, header=True)
    return Request(api_key, version, correlation_id, body, body.header.client_id)


def encode_response(request: Request, response: Any) -> bytes:
    """The frame answering ``request`` (length prefix, header, body) at its version."""
    response.API_VERSION = request.version  # before the header: a response header has no version
    response.with_header(correlation_id=request.correlation_id)
    return bytes(response.encode(header=True, framed=True))


def api_versions_response(request: Request) -> bytes:
    """ApiVersions: the APIs served and their versions. A version of ApiVersions itself that is
    not served is answered at version 0 with UNSUPPORTED_VERSION (Kafka's rule: the client then
    retries with a version from the list)."""
    response_class = metadata.ApiVersionsResponse
    keys = [response_class.ApiVersion(api_key=key, min_version=low, max_version=high)
            for key, (_, _, low, high) in sorted(SERVED.items())]
    low, high = SERVED[API_VERSIONS][2:]
    if not low <= request.version <= high:
        response = response_class(error_code=ErrorCode.UNSUPPORTED_VERSION, api_keys=keys)
        response.API_VERSION = 0
        response.with_header(correlation_id=request.correlation_id)
        return bytes(response.encode(header=True, framed=True))
    response = response_class(error_code=ErrorCode.NONE, api_keys=keys, throttle_time_ms=0)
    return encode_response(request, response)


def unsupported_response(request: Request) -> bytes:
    """The answer to a request the broker does not serve: UNSUPPORTED_VERSION in the response's
    top-level error code where it has one (its lists left empty), at the request's version; for
    an API unknown even to kafka-python, the correlation id and the error code alone."""
    classes = KNOWN.get(request.api_key)
    if classes is None or not 0 <= request.version <= classes[1].max_version:
        body = struct.pack(">ih", request.correlation_id, ErrorCode.UNSUPPORTED_VERSION)
        return FRAME.pack(len(body)) + body
    response = classes[1](version=request.version)
    fields = {field["name"] for field in classes[1].json["fields"]}
    if "ErrorCode" in fields:
        response.error_code = ErrorCode.UNSUPPORTED_VERSION
    return encode_response(request, response)
