"""Who leads what: one broker alone, or several brokers sharing one bucket.

:class:`Solo` is a broker alone: it leads every partition and coordinates every group.
:class:`Shared` is one of several brokers on a shared manifest (DESIGN.md, "Several brokers on
one bucket"): brokers register in ``kafka.brokers`` and beat there; a partition's leader is
named in ``kafka.leaders`` and leads by having its stream open for write; a broker whose beat
stops for ``session_ms`` is taken over by one of the others, which hands its partitions to the
live brokers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Protocol

from .storage import BROKERS, LEADERS, FencedError, Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Broker:
    node_id: int
    host: str
    port: int


def streamlib_node(node_id: int) -> str:
    """The streamlib node id of broker ``node_id``."""
    return f"broker-{node_id}"


class Cluster(Protocol):
    """What the handlers ask about the brokers."""

    node_id: int

    def brokers(self) -> list[Broker]: ...

    async def leader(self, topic: str, partition: int) -> int | None:
        """The node id leading the partition (None: none now)."""
        ...

    def coordinator(self, group: str) -> int:
        """The node id coordinating ``group``."""
        ...

    async def topic_created(self, topic: str, partitions: int) -> None:
        """Give a new topic's partitions their leaders."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Solo:
    """A broker alone: it leads everything."""

    def __init__(self, me: Broker) -> None:
        self.me = me
        self.node_id = me.node_id

    def brokers(self) -> list[Broker]:
        return [self.me]

    async def leader(self, topic: str, partition: int) -> int | None:
        return self.node_id

    def coordinator(self, group: str) -> int:
        return self.node_id

    async def topic_created(self, topic: str, partitions: int) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def leader_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class Shared:
    """One of several brokers on one bucket.

    The live brokers are those whose ``beat`` this broker saw change within ``session_ms`` of
    its own monotonic clock (no clock agreement). The watcher task beats, looks at the others
    every ``heartbeat_ms``, and takes over those that went quiet.
    """

    def __init__(self, me: Broker, storage: Storage, *, heartbeat_ms: int = 1000,
                 session_ms: int = 10_000) -> None:
        self.me = me
        self.node_id = me.node_id
        self._storage = storage
        self._heartbeat = heartbeat_ms / 1000
        self._session = session_ms / 1000
        self._beat = 0
        # node id -> (its address, its last beat value seen, when it changed on our clock)
        self._seen: dict[int, tuple[Broker, bytes, float]] = {}
        self._leaders: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.fenced = asyncio.Event()

    # ---- the view ----

    def brokers(self) -> list[Broker]:
        return sorted([self.me, *(seen[0] for seen in self._seen.values())],
                      key=lambda b: b.node_id)

    def coordinator(self, group: str) -> int:
        live = self.brokers()
        return live[zlib.crc32(group.encode()) % len(live)].node_id

    async def leader(self, topic: str, partition: int) -> int | None:
        key = leader_key(topic, partition)
        found = self._leaders.get(key)
        if found is None:
            value = await self._storage.kv_get(LEADERS, key)
            if value is None:
                return None
            found = self._leaders[key] = int(value)
        return found

    async def topic_created(self, topic: str, partitions: int) -> None:
        live = self.brokers()
        for partition in range(partitions):
            node = live[partition % len(live)].node_id
            await self._storage.kv_put(LEADERS, leader_key(topic, partition), str(node).encode())
            self._leaders[leader_key(topic, partition)] = node

    # ---- life ----

    async def start(self) -> None:
        await self._beat_once()
        await self._look()
        self._task = asyncio.create_task(self._watch(), name="cluster-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _beat_once(self) -> None:
        self._beat += 1
        value = json.dumps({"host": self.me.host, "port": self.me.port, "beat": self._beat})
        await self._storage.kv_put(BROKERS, str(self.node_id), value.encode())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)  # the beat's period, not a wait for an event
            try:
                await self._beat_once()
                await self._look()
            except FencedError:
                log.error("this broker was taken over by another: stopping")
                self.fenced.set()
                return
            except Exception:  # the next beat tries again; the session bounds the outage
                log.exception("cluster watch failed")

    async def _look(self) -> None:
        """Read the brokers' entries and the leaders; take over the brokers gone quiet."""
        now = time.monotonic()
        entries = await self._storage.kv_items(BROKERS)
        seen: dict[int, tuple[Broker, bytes, float]] = {}
        for key, value in entries.items():
            node = int(key)
            if node == self.node_id:
                continue
            found = json.loads(value)
            broker = Broker(node, found["host"], int(found["port"]))
            before = self._seen.get(node)
            changed = now if before is None or before[1] != value else before[2]
            seen[node] = (broker, value, changed)
        self._seen = seen
        self._leaders = {key: int(value) for key, value
                         in (await self._storage.kv_items(LEADERS)).items()}
        for node, (_, value, changed) in list(seen.items()):
            if now - changed >= self._session:
                await self._take_over(node, value)

    async def _take_over(self, node: int, value: bytes) -> None:
        """Take a quiet broker over, if this broker wins the right to (its entry removed by a
        delete that expects the value last seen), then give its partitions to the live."""
        if not await self._storage.kv_delete(BROKERS, str(node), value):
            return
        self._seen.pop(node, None)
        log.warning("broker %d went quiet: taking it over", node)
        await self._storage.take_over(streamlib_node(node))
        live = self.brokers()
        moved = sorted(key for key, leader in self._leaders.items() if leader == node)
        for index, key in enumerate(moved):
            successor = live[index % len(live)].node_id
            await self._storage.kv_put(LEADERS, key, str(successor).encode())
            self._leaders[key] = successor
        log.warning("broker %d taken over: %d partitions moved", node, len(moved))
