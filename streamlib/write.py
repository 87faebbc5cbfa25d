"""The write path: an append from its arguments to its acknowledgement (docs/store.md, "The
write path").

```
submit ─► offset (stream order) ─► room (cache, WAL) ─► WAL append ─► durable
   ─► coordination.durable ─► acknowledge: log cache, backlog, the append's future
```

Offsets are assigned under the stream's ``order`` lock in call order, and the WAL keeps that
order, so acknowledgements come back in offset order. Conditions (``expected_offset``) and
idempotence (producer sequences) are checked before anything is written. An append waits for
room in the message cache (and, for a WAL without a capacity, under ``wal_bytes`` of data
waiting for upload) with one deadline for every wait. On a store of one node a durable append is
acknowledged at once on the WAL's thread; a shared store's coordination acknowledges it after a
look at the metadata (docs/shared-stores.md).

Each append costs one WAL :class:`~streamlib.wal.Ticket` (no future of its own) and one future
for its caller. A group WAL completes a group's tickets together, so the first callback of a
stream in the group acknowledges all of that stream's appends in it: one drain, one wake-up of
its readers, its futures settled in one pass.

Lock order: as :mod:`streamlib.node`; ``StreamState.order`` is held from the offset to the WAL
submission, never across the wait for durability.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from streamlib.cache import BATCH_OVERHEAD, weight
from streamlib.errors import (
    CorruptDataError,
    FencedError,
    OffsetMismatchError,
    OffsetOutOfRange,
    OutcomeUnknown,
    StreamClosed,
    StreamNotFound,
    WalFullError,
    describe,
)
from streamlib.records import AppendResult, PlacedBatch, RecordBatch
from streamlib.state import Inflight, Producer, StreamState
from streamlib.wal import Ticket, Wal, WalRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from streamlib.node import Node
    from streamlib.shared.coordination import Coordination

log = logging.getLogger(__name__)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class _WalTicket(Ticket):
    """An append's place in the WAL: once completed, its stream hears of it (``item`` is set
    by the appender once the append is in flight; completed before that, the appender hands it
    on itself)."""

    __slots__ = ("item", "path", "state")

    def __init__(self, path: WritePath, state: StreamState) -> None:
        super().__init__()
        self.path = path
        self.state = state
        self.item: Inflight | None = None  # set once by the appender; read alone

    def completed(self) -> None:
        item = self.item
        if item is not None:
            self.path.durable(self.state, item)


class Pressure:
    """Appends of one node waiting for room — in the WAL, or for the data waiting for upload
    (``wal_bytes`` of the object WAL, ``cache_bytes``) — logged as an episode: a WARNING when
    the first append has to wait, one at the first refusal (WalFullError), and an INFO once an
    append finds room without waiting; never a line per append. Thread-safe."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._lock = threading.Lock()
        self.since: float | None = None  # GUARDED_BY(_lock); read alone: None, no episode
        self._waits = 0  # GUARDED_BY(_lock)
        self._refused = 0  # GUARDED_BY(_lock)

    def waiting(self, where: str) -> None:
        """An append has to wait for room in ``where``."""
        with self._lock:
            first = self.since is None
            if first:
                self.since = time.monotonic()
            self._waits += 1
        if first:
            log.warning(describe(
                f"appends wait for room in {where}: uploads are not keeping up (is the object "
                f"store slow or unavailable?); an append waits up to append_timeout_ms, then "
                f"fails with WalFullError", node=self._node_id))

    def refused(self, stream_id: int, error: WalFullError) -> None:
        """An append of ``stream_id`` waited in vain."""
        with self._lock:
            if self.since is None:  # the episode ended meanwhile: this starts another
                self.since = time.monotonic()
            self._refused += 1
            first = self._refused == 1
        if first:
            log.warning(describe(
                "appends are refused: no room came within append_timeout_ms (WalFullError); "
                "refusals until there is room again are counted, not logged",
                node=self._node_id, stream=stream_id, error=error))

    def room(self) -> None:
        """An append found room without waiting: the episode, if any, ends."""
        if self.since is None:  # the usual case, without the lock
            return
        with self._lock:
            since, waits, refused = self.since, self._waits, self._refused
            self.since, self._waits, self._refused = None, 0, 0
        if since is not None:
            log.info(describe("appends find room again", node=self._node_id,
                              after=f"{time.monotonic() - since:.1f}s", waits=waits,
                              refused=refused))


class WritePath:
    """Appends of one node's streams, from submission to acknowledgement."""

    def __init__(self, node: Node, wal: Wal, coordination: Coordination) -> None:
        self._node = node
        self._wal = wal
        self._coordination = coordination
        self._wal_end = lambda: wal.end_position  # for the backlog, made once
        self._pressure = Pressure(node.id)

    def submit(self, state: StreamState, epoch: int, batch: RecordBatch,
               expected_offset: int | None, producer_id: object, sequence: int | None,
               timeout: float | None, lead: bool = False) -> Future[AppendResult]:
        """Append ``batch`` (checked by the handle) to ``state`` with a handle of ``epoch``:
        the future completes once it is durable (and, on a shared store, once a look at the
        metadata shows the stream still this node's). ``lead``: the caller waits for the
        future next, so it offers to write the WAL itself (:meth:`~streamlib.wal.Wal.lead`),
        once it holds no lock."""
        config = self._node.config
        # One deadline for every wait of this append: room in memory, room in the WAL.
        started = time.monotonic()
        deadline = started + (config.append_timeout_ms / 1000 if timeout is None else timeout)
        with state.order:
            item = self._place(state, epoch, batch, expected_offset, producer_id, sequence,
                               (started, deadline), lead)
        if not isinstance(item, Inflight):
            return item  # a retry: the original append's future
        try:
            if item.wal.done:  # completed before it was in flight: nobody acknowledged it
                self.durable(state, item)
        finally:
            if lead:  # its WAL record waits for this call (Wal.submit)
                self._wal.lead()
        return item.future

    def _place(self, state: StreamState, epoch: int, batch: RecordBatch,
               expected_offset: int | None, producer_id: object, sequence: int | None,
               times: tuple[float, float], lead: bool) -> Inflight | Future[AppendResult]:
        """The checks, the offset and the WAL submission (caller holds ``state.order``): the
        append in flight, or an earlier append's future (a retry). ``times``: when the append
        was called, and its deadline (monotonic seconds)."""
        deadline = times[1]
        self._node.check_open()
        if state.destroyed:
            raise StreamNotFound(describe("the stream was destroyed", stream=state.id))
        state.check_writer(epoch)
        self._node.check_appendable()
        if state.damage is not None:
            raise CorruptDataError(state.damage)
        if state.handover.reason is not None:
            raise FencedError(str(state.handover.reason))
        self._coordination.before_append(state, _left(deadline))
        producer = None
        if producer_id is not None:
            assert sequence is not None
            producer = state.producers.setdefault(producer_id, Producer())
            earlier = producer.known(state.id, producer_id, sequence, batch.count)
            if earlier is not None:
                return earlier
        if expected_offset is not None and expected_offset != state.assigned_end:
            raise OffsetMismatchError(state.id, expected_offset, state.assigned_end)
        placed = batch.with_offset(state.assigned_end)
        item = self._enter_wal(state, epoch, placed, times, lead)
        state.assigned_end = placed.next_offset
        if producer is not None:
            assert sequence is not None
            producer.remember(sequence, batch.count, item.future)
        return item

    def durable(self, state: StreamState, item: Inflight) -> None:
        """The WAL write of ``item`` completed (on the thread that completed it)."""
        self._coordination.durable(state, item)
        if self._node.closing.is_set():  # finish() may wait for it
            with state.lock:
                state.changed.notify_all()

    def _enter_wal(self, state: StreamState, epoch: int, placed: PlacedBatch,
                   times: tuple[float, float], lead: bool) -> Inflight:
        """Room for ``placed``, then its WAL call (caller holds ``state.order``). ``lead``:
        the caller calls ``Wal.lead`` once it holds no lock, whatever happens."""
        node = self._node
        started, deadline = times
        waited = False  # for room, anywhere (see Pressure)
        if self._wal.capacity is None:  # the WAL does not fill up: bound the memory here
            waited = self._wait_for_room(state.id, placed.size, deadline)
        waited = self._reserve(state.id, placed.size + BATCH_OVERHEAD, deadline) or waited
        # While the WAL call runs, its record may become durable before this stream knows of
        # it: the uploader must not trim past it. Any position it gets is at or above the
        # WAL's end as it is now.
        token = node.backlog.enter(self._wal_end)
        try:
            # Checked again, and counted, in one hold of the lock: the stream may have been
            # fenced since submit() checked (while this append waited for room, say). A fence
            # after this sees the append (``entering``, then ``inflight``), and the release
            # waits until it is settled: released before it, it would stay parked for good.
            with state.lock:
                if state.handover.reason is not None:
                    raise FencedError(str(state.handover.reason))
                state.entering += 1
            ticket = _WalTicket(self, state)
            try:
                record = WalRecord(state.id, epoch, placed)
                waited = self._submit_to_wal(state.id, record, ticket, deadline, lead) or waited
            except BaseException:
                with state.lock:
                    state.entering -= 1  # nothing written (the next look releases the stream)
                raise
            item = Inflight(placed, ticket, started)
            with state.lock:
                state.entering -= 1
                state.inflight.append(item)
            ticket.item = item
        except BaseException:
            node.cache.unpin(node.scope, placed.size + BATCH_OVERHEAD)
            raise
        finally:
            node.backlog.entered(token)
        if not waited and self._pressure.since is not None:
            self._pressure.room()
        return item

    def _submit_to_wal(self, stream_id: int, record: WalRecord, ticket: Ticket,
                       deadline: float, lead: bool) -> bool:
        """The WAL call; whether it waited for room (a full WAL refuses at once a call that
        gives it no time: then the wait is logged, and the call made again to wait)."""
        try:
            self._wal.submit(record, ticket, 0.0, lead=lead)
            return False
        except WalFullError:
            pass
        self._pressure.waiting("the WAL")
        try:
            self._wal.submit(record, ticket, _left(deadline), lead=lead)
        except WalFullError as error:
            self._pressure.refused(stream_id, error)
            raise
        return True

    def _wait_for_room(self, stream_id: int, size: int, deadline: float) -> bool:
        """Back-pressure for a WAL without a capacity (the object WAL): data acknowledged and
        not yet committed, which the log cache holds, stays within ``wal_bytes``. Whether it
        waited."""
        node = self._node
        limit = node.config.wal_bytes
        room = node.backlog.wait_for_room(size, limit, 0.0, node.closing)
        waited = not room
        if waited:
            self._pressure.waiting("wal_bytes of data waiting for upload")
            room = node.backlog.wait_for_room(size, limit, _left(deadline), node.closing)
        if node.closing.is_set():
            raise StreamClosed("the store is closing")
        if not room:
            error = WalFullError(describe(
                "data waiting for upload stayed above wal_bytes: uploads are not keeping up",
                pending=node.backlog.bytes, size=size, wal_bytes=limit))
            self._pressure.refused(stream_id, error)
            raise error
        return waited

    def _reserve(self, stream_id: int, size: int, deadline: float) -> bool:
        """Room in the message cache for a batch until it is uploaded (back-pressure when
        uploads fall behind: the log cache shares the cache's budget). Whether it waited."""
        node = self._node
        if node.cache.try_reserve(node.scope, size):
            return False
        self._pressure.waiting("the message cache (cache_bytes)")
        if not node.cache.reserve(node.scope, size, _left(deadline),
                                  abort=node.closing_or_closed):
            if node.closing_or_closed():
                raise StreamClosed("the store is closing")
            error = WalFullError(describe(
                "data waiting for upload filled the message cache (cache_bytes): uploads are "
                "not keeping up", size=size, cache_bytes=node.cache.max_bytes,
                pinned=node.cache.pinned_bytes))
            self._pressure.refused(stream_id, error)
            raise error
        return True

    # ---- acknowledgement ----

    def acknowledge(self, state: StreamState, looked: float | None = None) -> None:
        """Acknowledge what the WAL completed of ``state``, in order (on a shared store only
        what was durable when a look at the metadata started: ``looked``, its start)."""
        node = self._node

        def publish(position: int, added: int, error: BaseException | None,
                    acked: Sequence[Inflight]) -> None:
            node.backlog.acknowledged(position, added)
            if acked:
                node.metrics.acknowledged(acked, position)
            if error is not None and not isinstance(error, StreamClosed):
                node.fail(error)  # a failed WAL write fails the WAL for good

        dropped = state.drain(publish, looked)
        if dropped:
            node.cache.unpin(node.scope, weight(dropped))
        self._coordination.acknowledged(state, looked)

    def acknowledge_all(self, states: list[StreamState]) -> None:
        """Acknowledge whatever the WAL completed but no callback has yet, for all these
        streams (after one look at a shared store's metadata for them all)."""
        looked = self._coordination.look(states)
        for state in states:
            self.acknowledge(state, looked)

    # ---- closing ----

    def trim(self, state: StreamState, epoch: int, offset: int,
             upload: Callable[[], None]) -> None:
        """Records below ``offset`` become unreadable: the metadata's start offset moves, then
        the log cache lets them go. The metadata trims committed data only: what is not
        uploaded yet is uploaded first (``upload``). ``epoch``: the writer's (a fenced one is
        refused)."""
        node = self._node
        with state.lock:
            low, high = state.start_offset, state.acked_end
            committed = state.committed_end
        if offset > high:
            raise OffsetOutOfRange(state.id, offset, low, high)
        if offset <= low:
            return
        if offset > committed:
            upload()
        self._coordination.before_trim(state)
        with node.changes:
            state.check_writer(epoch)
            if state.handover.reason is not None:
                raise FencedError(str(state.handover.reason))
            meta = node.meta.trim_stream(state.id, offset)
            with state.lock:
                state.start_offset = max(state.start_offset, meta.start_offset)
        state.release_kept(offset)
        node.cache.drop_log(node.scope, state.id, below=offset)

    def finish(self, states: list[StreamState]) -> None:
        """Close: wait until no append is between its offset and its WAL submission and
        every WAL write has completed, then acknowledge them all (on a shared store after a
        look, or two if the first started before some write was seen complete)."""
        for state in states:
            with state.order:
                pass
            with state.lock:  # woken by durable(), as the store is closing
                state.changed.wait_for(state.wal_done)
        for _ in range(3):
            try:
                self.acknowledge_all(states)
            except Exception as error:  # answered by settle_at_close: outcome unknown
                log.warning("close: could not look at the metadata to acknowledge the last "
                            "appends: %r", error)
                return
            if not any(state.first_durable() and not state.handover.fenced
                       for state in states):
                return

    def settle_at_close(self, state: StreamState, released: bool) -> None:
        """Answer what the store could not settle before closing: appends durable but never
        acknowledged (a look at the metadata failed), and appends parked at a hand-over
        (refused if the stream was ``released``, else of unknown outcome: the next open may
        commit them)."""
        with state.lock:
            unsettled = [item.future for item in state.inflight]
            state.inflight.clear()
        unknown = OutcomeUnknown(describe(
            "the store closed before the append could be settled (a look at the shared "
            "manifest failed, or the stream's release): it may or may not be in the stream",
            stream=state.id))
        for future in unsettled:
            if not future.done():
                future.set_exception(unknown)
        self._coordination.answer_parked(state, released, unknown)


__all__ = ["WritePath"]
