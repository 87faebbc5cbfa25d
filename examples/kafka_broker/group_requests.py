"""The group coordinator's requests: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
LeaveGroup, OffsetCommit, OffsetFetch — kafka-python's request objects in, response objects out;
the state is :mod:`groups`'."""

from __future__ import annotations

from typing import Any

from kafka.protocol import consumer, metadata

from .cluster import Cluster
from .groups import Coordinator
from .protocol import ErrorCode, Request
from .storage import StorageError

GROUP_KEY = 0


class GroupRequests:
    def __init__(self, coordinator: Coordinator, cluster: Cluster) -> None:
        self.coordinator = coordinator
        self.cluster = cluster

    def _mine(self, group_id: str) -> bool:
        return self.cluster.coordinator(group_id) == self.cluster.node_id

    async def find_coordinator(self, request: Request) -> Any:
        response_class = metadata.FindCoordinatorResponse
        body = request.body
        if body.key_type != GROUP_KEY:
            return response_class(throttle_time_ms=0,
                                  error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE,
                                  error_message="transactions are not served",
                                  node_id=-1, host="", port=-1)
        node = self.cluster.coordinator(body.key)
        broker = next(b for b in self.cluster.brokers() if b.node_id == node)
        return response_class(throttle_time_ms=0, error_code=ErrorCode.NONE, error_message=None,
                              node_id=broker.node_id, host=broker.host, port=broker.port)

    async def join_group(self, request: Request) -> Any:
        response_class = consumer.JoinGroupResponse
        body = request.body
        if not self._mine(body.group_id):
            return response_class(throttle_time_ms=0, error_code=ErrorCode.NOT_COORDINATOR,
                                  generation_id=-1, protocol_name="", leader="",
                                  member_id=body.member_id, members=[])
        rebalance_ms = body.rebalance_timeout_ms if request.version >= 1 else -1
        result = await self.coordinator.join(
            body.group_id, body.member_id, request.client_id or "", body.session_timeout_ms,
            rebalance_ms if rebalance_ms > 0 else body.session_timeout_ms, body.protocol_type,
            [(p.name, bytes(p.metadata)) for p in body.protocols])
        members = [response_class.JoinGroupResponseMember(member_id=member_id,
                                                          group_instance_id=None,
                                                          metadata=subscription)
                   for member_id, subscription in result.members]
        return response_class(throttle_time_ms=0, error_code=result.error,
                              generation_id=result.generation, protocol_type=body.protocol_type,
                              protocol_name=result.protocol or "", leader=result.leader,
                              member_id=result.member_id or body.member_id, members=members)

    async def sync_group(self, request: Request) -> Any:
        response_class = consumer.SyncGroupResponse
        body = request.body
        if not self._mine(body.group_id):
            return response_class(throttle_time_ms=0, error_code=ErrorCode.NOT_COORDINATOR,
                                  assignment=b"")
        assignments = {a.member_id: bytes(a.assignment) for a in body.assignments}
        code, assignment = await self.coordinator.sync(body.group_id, body.generation_id,
                                                       body.member_id, assignments)
        group = self.coordinator.known(body.group_id)
        return response_class(throttle_time_ms=0, error_code=code,
                              protocol_type=None if group is None else group.protocol_type,
                              protocol_name=None if group is None else group.protocol,
                              assignment=assignment)

    async def heartbeat(self, request: Request) -> Any:
        body = request.body
        code = ErrorCode.NOT_COORDINATOR if not self._mine(body.group_id) else \
            self.coordinator.heartbeat(body.group_id, body.generation_id, body.member_id)
        return consumer.HeartbeatResponse(throttle_time_ms=0, error_code=code)

    async def leave_group(self, request: Request) -> Any:
        response_class = consumer.LeaveGroupResponse
        body = request.body
        if not self._mine(body.group_id):
            return response_class(throttle_time_ms=0, error_code=ErrorCode.NOT_COORDINATOR,
                                  members=[])
        if request.version < 3:
            code = self.coordinator.leave(body.group_id, body.member_id)
            return response_class(throttle_time_ms=0, error_code=code, members=[])
        answers = [response_class.MemberResponse(
            member_id=m.member_id, group_instance_id=m.group_instance_id,
            error_code=self.coordinator.leave(body.group_id, m.member_id)) for m in body.members]
        return response_class(throttle_time_ms=0, error_code=ErrorCode.NONE, members=answers)

    async def offset_commit(self, request: Request) -> Any:
        response_class = consumer.OffsetCommitResponse
        body = request.body
        code = ErrorCode.NOT_COORDINATOR if not self._mine(body.group_id) else \
            self.coordinator.may_commit(body.group_id, body.generation_id_or_member_epoch,
                                        body.member_id)
        if code == ErrorCode.NONE:
            offsets = {f"{t.name}/{p.partition_index}": (
                p.committed_offset, p.committed_metadata,
                p.committed_leader_epoch if request.version >= 6 else -1)
                for t in body.topics for p in t.partitions}
            try:
                await self.coordinator.commit(body.group_id, offsets)
            except StorageError:
                code = ErrorCode.COORDINATOR_NOT_AVAILABLE
        topics = [response_class.OffsetCommitResponseTopic(
            name=t.name, partitions=[response_class.OffsetCommitResponseTopic
                                     .OffsetCommitResponsePartition(
                                         partition_index=p.partition_index, error_code=code)
                                     for p in t.partitions]) for t in body.topics]
        return response_class(throttle_time_ms=0, topics=topics)

    async def offset_fetch(self, request: Request) -> Any:
        response_class = consumer.OffsetFetchResponse
        topic_class = response_class.OffsetFetchResponseTopic
        partition_class = topic_class.OffsetFetchResponsePartition
        body = request.body
        if not self._mine(body.group_id):
            return response_class(throttle_time_ms=0, topics=[],
                                  error_code=ErrorCode.NOT_COORDINATOR)
        try:
            committed = await self.coordinator.committed(body.group_id)
        except StorageError:
            return response_class(throttle_time_ms=0, topics=[],
                                  error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
        wanted: dict[str, list[int]] = {}
        if body.topics is None:
            for key in committed:
                name, _, index = key.rpartition("/")
                wanted.setdefault(name, []).append(int(index))
        else:
            wanted = {t.name: list(t.partition_indexes) for t in body.topics}
        topics = []
        for name, partitions in wanted.items():
            answers = []
            for partition in partitions:
                offset, meta, epoch = committed.get(f"{name}/{partition}", (-1, "", -1))
                answers.append(partition_class(partition_index=partition, committed_offset=offset,
                                               committed_leader_epoch=epoch, metadata=meta or "",
                                               error_code=ErrorCode.NONE))
            topics.append(topic_class(name=name, partitions=answers))
        return response_class(throttle_time_ms=0, topics=topics, error_code=ErrorCode.NONE)
