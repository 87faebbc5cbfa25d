"""The broker process: the store, the listening socket, the connections.

Each connection reads requests in order and starts each at once; a writer task sends the
responses in request order (the protocol's rule). A Produce is submitted before the next request
is read (its appends land in the order sent) and answered when durable; other requests run
concurrently (a JoinGroup may wait a whole rebalance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kafka.protocol import admin, consumer, metadata, producer

from . import protocol
from .cluster import Broker, Cluster, Shared, Solo, streamlib_node
from .group_requests import GroupRequests
from .groups import Coordinator
from .handlers import Handlers, Settings
from .protocol import Request
from .storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line gives (``python -m examples.kafka_broker --help``)."""

    data: str
    host: str = "127.0.0.1"
    port: int = 9092
    node_id: int = 0
    objects_url: str | None = None
    metadata: str | None = None
    storage_options: dict[str, Any] | None = None
    settings: Settings = field(default_factory=Settings)
    heartbeat_ms: int = 1000
    session_ms: int = 10_000
    initial_rebalance_delay_ms: int = 300

    @property
    def shared(self) -> bool:
        return self.metadata == "manifest"

    def store_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"node_id": streamlib_node(self.node_id)}
        if self.objects_url:
            settings["objects_url"] = self.objects_url
        if self.metadata:
            settings["metadata"] = self.metadata
        if self.shared:
            settings["wal"] = "object"  # in the bucket: any broker can take a dead one over
        if self.storage_options:
            settings["storage_options"] = self.storage_options
        return settings


Handler = Callable[[Request], Awaitable[Any]]


class Server:
    """The requests' dispatch and the connections."""

    def __init__(self, handlers: Handlers, groups: GroupRequests) -> None:
        self.handlers = handlers
        self._dispatch: dict[int, Handler] = {
            metadata.MetadataRequest.API_KEY: handlers.metadata,
            consumer.FetchRequest.API_KEY: handlers.fetch,
            consumer.ListOffsetsRequest.API_KEY: handlers.list_offsets,
            admin.CreateTopicsRequest.API_KEY: handlers.create_topics,
            admin.DeleteTopicsRequest.API_KEY: handlers.delete_topics,
            producer.InitProducerIdRequest.API_KEY: handlers.init_producer_id,
            metadata.FindCoordinatorRequest.API_KEY: groups.find_coordinator,
            consumer.JoinGroupRequest.API_KEY: groups.join_group,
            consumer.SyncGroupRequest.API_KEY: groups.sync_group,
            consumer.HeartbeatRequest.API_KEY: groups.heartbeat,
            consumer.LeaveGroupRequest.API_KEY: groups.leave_group,
            consumer.OffsetCommitRequest.API_KEY: groups.offset_commit,
            consumer.OffsetFetchRequest.API_KEY: groups.offset_fetch,
        }
        assert set(self._dispatch) | {producer.ProduceRequest.API_KEY,
                                      protocol.API_VERSIONS} == set(protocol.SERVED)
        self._connections: set[asyncio.Task[None]] = set()

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        answers: asyncio.Queue[asyncio.Task[bytes | None] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(answers, writer))
        try:
            while True:
                size = protocol.FRAME.unpack(await reader.readexactly(4))[0]
                if not 0 < size <= protocol.MAX_FRAME_BYTES:
                    log.warning("closing a connection that sent a frame of %d bytes", size)
                    break
                request = protocol.decode_request(await reader.readexactly(size))
                if request.api_key == producer.ProduceRequest.API_KEY and request.served:
                    respond = await self.handlers.submit_produce(request)
                    await answers.put(asyncio.create_task(self._encode(request, respond())))
                else:
                    await answers.put(asyncio.create_task(self._answer(request)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the broker stops: ends here, not cancelled (asyncio's
            sender.cancel()             # stream server logs a cancelled connection task)
        except Exception:
            log.exception("closing a connection after an error")
        await answers.put(None)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        self._connections.discard(task)

    async def _answer(self, request: Request) -> bytes | None:
        if request.api_key == protocol.API_VERSIONS:
            return protocol.api_versions_response(request)
        if not request.served:
            return protocol.unsupported_response(request)
        return await self._encode(request, self._dispatch[request.api_key](request))

    @staticmethod
    async def _encode(request: Request, response: Awaitable[Any]) -> bytes | None:
        answer = await response
        return None if answer is None else protocol.encode_response(request, answer)

    @staticmethod
    async def _send(answers: asyncio.Queue[asyncio.Task[bytes | None] | None],
                    writer: asyncio.StreamWriter) -> None:
        broken = False
        while (answer := await answers.get()) is not None:
            if broken:
                answer.cancel()
                continue
            try:
                data = await answer
                if data is not None:
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                broken = True
            except Exception:
                log.exception("a request failed: closing its connection")
                broken = True
                writer.close()

    async def close(self) -> None:
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def serve(options: Options, ready: Callable[[str, int], None]) -> bool:
    """Run the broker until SIGTERM or SIGINT (or, with several brokers, until another one
    takes this one over). ``ready(host, port)`` is called once it accepts connections.
    Returns whether it stopped because it was taken over."""
    storage = await Storage.open(options.data, **options.store_settings())
    listener = None
    server = None
    cluster: Cluster | None = None
    try:
        coordinator = Coordinator(storage, initial_delay_ms=options.initial_rebalance_delay_ms)
        holder: list[Server] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await holder[0].connection(reader, writer)

        listener = await asyncio.start_server(accept, options.host, options.port)
        port = listener.sockets[0].getsockname()[1]
        me = Broker(options.node_id, options.host, port)
        stop = asyncio.Event()
        if options.shared:
            shared = Shared(me, storage, heartbeat_ms=options.heartbeat_ms,
                            session_ms=options.session_ms)
            cluster = shared
            fenced = asyncio.create_task(shared.fenced.wait())
            fenced.add_done_callback(lambda _: stop.set())
        else:
            cluster = Solo(me)
        handlers = Handlers(storage, cluster, coordinator, options.settings)
        server = Server(handlers, GroupRequests(coordinator, cluster))
        holder.append(server)
        await cluster.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        ready(options.host, port)
        await stop.wait()
        return isinstance(cluster, Shared) and cluster.fenced.is_set()
    finally:
        if listener is not None:
            listener.close()
        if server is not None:
            await server.close()
        if cluster is not None:
            await cluster.stop()
        await storage.close()
