"""Coordination of a node with the other nodes of a shared metadata store (docs/shared-stores.md):
the acknowledgement gate, the fence thread, following other nodes' changes, and both sides of
the hand-over of a stream (the state machine of :mod:`streamlib.shared.handover`).

**The acknowledgement gate.** A durable append is acknowledged only after a look at the
metadata (one ``refresh``) that *started after* its WAL write was seen complete: a hand-over of
its stream to another node cannot be missed. The fence thread does the looks, so that the WAL's
thread goes on completing writes meanwhile; one look serves every append durable before it
started. A look that fails counts for nothing. Whichever thread reads a new version of the
metadata, the next look scans the streams written here for hand-overs at that version.

**The lease** (``lease_ms`` > 0, docs/shared-stores.md "Acknowledging without a look"): each
good look that finds this node not fenced renews it to the look's start + ``lease_ms``; an
append seen durable before the lease ends is acknowledged at once, on the WAL's thread,
unless its stream is fenced here; later ones wait for a look as above. A take-over waits the
lease out before it reads this node's WAL (:mod:`streamlib.shared.takeover`).

**The old owner.** A scan that finds a stream written here owned by another node fences it
(FENCED: appends refused, durable ones parked), asks for an upload round, and once everything
acknowledged is committed releases it (RELEASING → RELEASED), then answers the parked appends
with :class:`~streamlib.errors.FencedError`. A node found taken over answers them with
:class:`~streamlib.errors.OutcomeUnknown` (the taker may keep them).

**The new owner.** A stream opened here while another node still holds it is WAITING: its
appends wait (on the stream's condition) until a look shows the release; meanwhile its readers
follow the old owner's commits. While an append waits, the fence thread looks every
:data:`~streamlib.config.RELEASE_POLL` seconds instead of every ``fence_poll_ms``.

Lock order: as :mod:`streamlib.node`; this module's own: ``_sync_lock`` (level 4), and the
leaves ``_check_done`` and ``_ack_ready`` (never held while calling out, except
``_ack_ready`` around its waits).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from streamlib.config import RELEASE_POLL
from streamlib.errors import (
    FencedError,
    HandOverPending,
    OutcomeUnknown,
    StreamNotFound,
    describe,
)
from streamlib.metrics import Event
from streamlib.outage import Outage
from streamlib.shared.coordination import Coordination
from streamlib.shared.handover import Ownership
from streamlib.state import Inflight, StreamState

if TYPE_CHECKING:
    from streamlib.meta import MetadataStore, StreamMeta
    from streamlib.node import Node
    from streamlib.write import WritePath

log = logging.getLogger(__name__)

_REMOTE = frozenset({Ownership.READER, Ownership.WAITING, Ownership.RELEASED})


class SharedCoordination(Coordination):
    """A node of a shared metadata store (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        config = node.config
        self._fence_poll = config.fence_poll_ms / 1000
        self._sync_interval = config.sync_interval_ms / 1000
        self._sync_lock = threading.Lock()  # one sync at a time
        self._synced = -math.inf  # GUARDED_BY(_sync_lock): when the metadata was last synced
        self._synced_version = -1  # GUARDED_BY(_sync_lock): the version streams were brought to
        self._stale = threading.Event()  # a release wrote nothing: the next sync reads anyway
        self._follow_asked = threading.Event()  # a cache-only read waits for news: see sync()
        self._check_done = threading.Condition()
        self._checking = False  # GUARDED_BY(_check_done): a look is running
        self._check_started = -1.0  # GUARDED_BY(_check_done): when the last good look started
        self._lease = config.lease_ms / 1000
        # GUARDED_BY(_check_done): appends durable before this are acknowledged without a
        # look (the start of the last good look that found this node not fenced, + lease).
        self._lease_end = -math.inf
        self._fences_scanned = -1  # GUARDED_BY(_check_done's ``_checking`` turn)
        self._ack_ready = threading.Condition()
        self._ack_pending: set[StreamState] = set()  # GUARDED_BY(_ack_ready)
        self._awaiting = 0  # GUARDED_BY(_ack_ready): appends waiting for a release
        self._watcher: threading.Thread | None = None
        self._looks = Outage(log, "looks at the shared metadata", "appends durable since are "
                             "acknowledged once a look works", node=node.id)

    def start(self, write: WritePath) -> None:
        super().start(write)
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name="streamlib-fences")
        self._watcher.start()

    def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            with self._ack_ready:
                self._ack_ready.notify_all()
            watcher.join()

    # ---- streams known at open ----

    def restore(self, meta: StreamMeta) -> StreamState:
        node = self._node
        if meta.handover_from == node.id:  # restarted while handing it over
            state = StreamState(meta, Ownership.FENCED,
                                reason=_fence_error(meta.id, meta.owner))
            state.epoch = meta.epoch_of(node.id)
            return state
        if meta.owner == node.id:  # restarted after a crash: still this node's
            source = meta.handover_from  # a release it was waiting for
            return StreamState(meta, Ownership.OWNED if source is None else Ownership.WAITING,
                               source=source)
        return StreamState(meta)

    def held_epochs(self, meta: StreamMeta, node_id: str) -> tuple[int, int] | None:
        return meta.held_epochs(node_id)

    # ---- the acknowledgement gate ----

    def durable(self, state: StreamState, item: Inflight) -> None:
        item.durable_at = self._node.clock()  # read after the write completed: never early
        if self._lease and not state.handover.fenced:
            with self._check_done:
                lease_end = self._lease_end
            if item.durable_at < lease_end:  # within the lease: no look needed
                assert self._write is not None
                self._write.acknowledge(state, lease_end)
                return
        self._queue(state)

    def _queue(self, state: StreamState) -> None:
        """The fence thread's next look acknowledges what of ``state`` is durable by then."""
        with self._ack_ready:
            self._ack_pending.add(state)
            self._ack_ready.notify()

    def look(self, states: Iterable[StreamState]) -> float | None:
        if any(not state.handover.fenced and state.first_durable() for state in states):
            return self._fence_check()
        return -math.inf  # nothing waits for a look

    def acknowledged(self, state: StreamState, looked: float | None) -> None:
        if not state.handover.fenced and state.first_durable():
            self._queue(state)  # durable after that look started: the next one takes it
        if state.handover.fenced:
            self._maybe_release(state)

    def _fence_check(self) -> float:
        """Before appends are acknowledged: has another node opened their stream for write
        (or taken this node over) since? Returns when the look it relied on started (after
        this call began); raises if the look failed."""
        asked = self._node.clock()
        with self._check_done:
            while True:
                if self._check_started >= asked and not self._checking:
                    return self._check_started  # a look that started after this call
                if not self._checking:
                    self._checking = True
                    break
                self._check_done.wait()
        started = self._node.clock()
        done = False
        try:
            meta = self._node.meta
            meta.refresh()
            # Other threads read the metadata too (syncs, commits): scan whenever the version
            # moved since the last scan, whoever moved it.
            if meta.version != self._fences_scanned:
                self._scan(meta)
            done = True
        finally:
            with self._check_done:
                if done:  # a look that failed is no look
                    self._check_started = started
                    if self._lease and self._node.failure is None:  # not fenced: renewed
                        self._lease_end = max(self._lease_end, started + self._lease)
                self._checking = False
                self._check_done.notify_all()
        return started

    def _watch(self) -> None:
        """The fence thread: acknowledges durable appends after a look that started after
        they were durable, and looks every ``fence_poll_ms`` anyway (every
        :data:`~streamlib.config.RELEASE_POLL` while an append waits for a release), so that
        an idle node too learns of hand-overs and of being taken over."""
        node = self._node
        write = self._write
        assert write is not None
        pause = 0.0
        while True:
            with self._ack_ready:
                if not self._ack_pending and not node.closed:
                    self._ack_ready.wait(RELEASE_POLL if self._awaiting else self._fence_poll)
                if pause:
                    self._ack_ready.wait(pause)  # the metadata did not answer: not at once
                pending, self._ack_pending = self._ack_pending, set()
                if node.closed:
                    return
            try:
                looked = self._fence_check()
                for state in pending:
                    write.acknowledge(state, looked)
                self._follow_others()
                for state in node.streams.all():
                    if state.handover.state is Ownership.FENCED:
                        self._maybe_release(state)
                pause = 0.0
                self._looks.worked()
            except Exception as error:  # acknowledged at the next look that works
                with self._ack_ready:
                    self._ack_pending |= pending
                pause = min(max(pause * 2, 0.05), 1.0)
                self._looks.failed(error)

    # ---- the old owner's side ----

    def _scan(self, meta: MetadataStore) -> None:
        """The metadata moved to a new version: fence the streams written here that another
        node opened (all of them, if this node was taken over), and follow the releases
        awaited by streams opened here (caller has the look's turn)."""
        node = self._node
        version = meta.version  # what follows sees this version or a newer one
        if meta.node(node.id).node_epoch != node.epoch and node.fail(FencedError(describe(
                "another process took over this store's node", node=node.id))):
            node.metrics.event(Event.NODE_FENCED)
            node.streams.wake_all()  # opens waiting for a release give up at once
        states = [s for s in node.streams.all() if s.handover.written_here]
        for state in states:
            try:
                m = meta.get_stream(state.id)
            except StreamNotFound:
                node.forget(state)  # destroyed by another node (fenced or not)
                continue
            with state.opening:  # not while this node opens it again
                self._fence_if_moved(state, m)
        for state in states:
            if state.handover.state is Ownership.WAITING:
                try:
                    self._follow(state, meta.get_stream(state.id))
                except StreamNotFound:
                    node.forget(state)
        self._fences_scanned = version

    def _fence_if_moved(self, state: StreamState, m: StreamMeta) -> None:
        """Fence ``state`` if the metadata (``m``, as a look read it) shows it opened for write
        by another node, or this node taken over (caller holds ``state.opening``)."""
        node = self._node
        # An open here shows as this node's ownership before this node's state has its new
        # epoch: not a fence.
        if m.owner == node.id and node.failure is None:
            return
        with state.lock:
            if state.handover.fenced or state.epoch > m.epoch:
                return  # known, or reopened here after the version the look read
            state.handover.move(Ownership.FENCED,
                                reason=_fence_error(state.id, m.owner, node.failure))
        node.metrics.event(Event.FENCED_BY_OPEN)
        if node.failure is None:  # a node taken over is logged once, not once a stream
            log.info(describe("stream fenced: another node opened it for write; this node "
                              "commits what it acknowledged, then hands the stream over",
                              stream=state.id, node=node.id, owner=m.owner, epoch=m.epoch))
        node.backlog.request()  # commit what was acknowledged, then release

    def _check_moved(self, state: StreamState) -> None:
        try:
            m = self._node.meta.get_stream(state.id)  # this process's view: no GET
        except StreamNotFound:
            return  # destroyed meanwhile: the next look forgets it
        self._fence_if_moved(state, m)

    def committed(self, states: Iterable[StreamState]) -> None:
        for state in states:
            if state.handover.fenced:
                self._maybe_release(state)

    def _maybe_release(self, state: StreamState) -> None:
        """A fenced stream whose acknowledged appends are all committed: release it to its
        new owner, then answer the appends parked since the fence."""
        node = self._node
        if node.taken_over:  # nothing to release any more
            self._answer(state, OutcomeUnknown(describe(
                "this node was taken over by another: the append may or may not be in the "
                "stream (the node taking over may have kept it)", stream=state.id)))
            return
        with state.lock:
            handover = state.handover
            if (handover.state is not Ownership.FENCED or state.inflight or state.entering
                    or state.log):
                return  # an append still to settle: released after it (WritePath._enter_wal)
            handover.move(Ownership.RELEASING)  # one release at a time; an open here waits
        try:
            node.meta.release_streams(node.id, node.epoch, [state.id])
        except Exception as error:
            with state.lock:
                handover.move(Ownership.FENCED)
            log.warning(describe("could not release a stream handed over (tried again "
                                 "after the next upload)", stream=state.id, node=node.id,
                                 error=repr(error)))
            return
        with state.lock:
            # Another node's stream now: read like one (its end moves with that node's
            # commits), and the batches kept from this node's uploads would not join them.
            state.kept_log.clear()
            handover.move(Ownership.RELEASED)
            state.wake_readers()  # tailing readers here now look at the metadata
        node.metrics.event(Event.HANDOVER_OUT)
        log.info(describe("stream handed over: released to the node that opened it",
                          stream=state.id, node=node.id))
        self._stale.set()  # the next sync reads its end (a release may write nothing)
        node.cache.drop_log(node.scope, state.id)
        self._answer(state, FencedError(str(handover.reason)))

    def _answer(self, state: StreamState, error: BaseException) -> None:
        with state.lock:
            parked = state.handover.take_parked()
        for future in parked:
            if not future.done():
                future.set_exception(error)

    def release_all(self) -> set[int]:
        node = self._node
        held = [s.id for s in node.streams.all()
                if s.handover.written_here and not s.destroyed and not s.log and not s.inflight
                and not s.damage]
        if held:
            node.meta.release_streams(node.id, node.epoch, held)
        return set(held)

    def answer_parked(self, state: StreamState, released: bool,
                      unknown: BaseException) -> None:
        released = released or state.handover.state is Ownership.RELEASED
        if state.handover.parked:
            self._answer(state, FencedError(str(state.handover.reason)) if released else unknown)

    # ---- the new owner's side ----

    def before_append(self, state: StreamState, timeout: float) -> None:
        if state.handover.state is Ownership.WAITING:
            self._await_release(state, timeout)

    def _await_release(self, state: StreamState, timeout: float) -> None:
        """This node took the stream from another that may still commit what it acknowledged:
        wait until a look shows its release (the stream is then OWNED, its end the old
        owner's), woken by the stream's condition (caller holds ``state.order``)."""
        node = self._node
        deadline = time.monotonic() + timeout
        with self._ack_ready:
            self._awaiting += 1  # the fence thread looks often now
            self._ack_ready.notify()
        try:
            with state.lock:
                handover = state.handover
                while handover.state is Ownership.WAITING:
                    if state.destroyed:
                        raise StreamNotFound(describe("the stream was destroyed",
                                                      stream=state.id))
                    left = deadline - time.monotonic()
                    if left <= 0 or node.closing.is_set():
                        raise HandOverPending(describe(
                            "the node that wrote this stream before has not released it (if "
                            "it is dead: take it over)", stream=state.id, node=handover.source))
                    state.changed.wait(left)
                if handover.state is not Ownership.OWNED:
                    raise FencedError(str(handover.reason) if handover.reason else describe(
                        "the stream was opened for write again", stream=state.id))
        finally:
            with self._ack_ready:
                self._awaiting -= 1

    def _follow(self, state: StreamState, m: StreamMeta) -> None:
        """A stream this node opened for write while its old owner commits what it
        acknowledged: readers here see those commits; once released, appends go after them."""
        with state.lock:
            if m.epoch != state.epoch or state.handover.state is not Ownership.WAITING:
                return  # opened again elsewhere: the next look fences it
            state.start_offset = max(state.start_offset, m.start_offset)
            state.move_ends(m.end_offset)
            if m.handover_from is not None:
                return
            state.handover.move(Ownership.OWNED)  # released: appends go after its end
            self._node.metrics.event(Event.HANDOVER_IN)
        log.info(describe("stream handed over to this node: released by its old owner, "
                          "appends go on here", stream=state.id, node=self._node.id,
                          next_offset=m.end_offset))

    # ---- other nodes' changes ----

    def remote(self, state: StreamState) -> bool:
        return state.handover.state in _REMOTE

    def sync(self, force: bool = False, *, wait: bool = True) -> bool:
        """Read other nodes' changes (at most every ``sync_interval_ms`` unless ``force``) and
        bring the streams this node does not write up to date: new streams, their committed
        ends, trims, destroys; streams waiting for a release follow the old owner. With
        ``wait=False``, only ask the fence thread to do so after its next look."""
        node = self._node
        if node.closed:
            return False
        if not wait:
            self._follow_asked.set()
            return False
        with self._sync_lock:
            now = time.monotonic()
            if not force and now - self._synced < self._sync_interval:
                return False
            self._synced = now
            node.meta.refresh()
            return self._bring_up_to_date(force)

    def _follow_others(self) -> None:
        """The fence thread, after a good look, if a reader that never looks (a cache-only
        fetch) asked: bring this node's view of other nodes' streams to the version the look
        read, with no read of its own; such a reader sees their commits within
        ``fence_poll_ms``."""
        if not self._follow_asked.is_set() or not self._sync_lock.acquire(blocking=False):
            return  # nobody asked, or a sync is reading (this thread never waits for a GET)
        try:
            self._follow_asked.clear()
            if not self._node.closed:
                self._bring_up_to_date(False)
        finally:
            self._sync_lock.release()

    def _bring_up_to_date(self, force: bool) -> bool:
        """:meth:`sync`'s work on the metadata as last read (caller holds ``_sync_lock``)."""
        node, meta = self._node, self._node.meta
        stale = self._stale.is_set()
        self._stale.clear()
        # Other threads read the metadata too: compare versions, not what a refresh found.
        if meta.version == self._synced_version and not force and not stale:
            return False
        self._synced_version = meta.version
        live = {m.id: m for m in meta.streams()}
        for new in live.values():
            if new.id not in node.streams:
                node.streams.add(StreamState(new))
        for state in node.streams.all():
            m = live.get(state.id)
            if m is None:
                node.forget(state)  # destroyed by another node
            elif state.handover.state is Ownership.WAITING:
                self._follow(state, m)
            else:
                with state.lock:
                    state.start_offset = max(state.start_offset, m.start_offset)
                    if not state.handover.written_here and state.move_ends(m.end_offset):
                        state.epoch = m.epoch
        return True

    def before_trim(self, state: StreamState) -> None:
        self._fence_check()  # a handle fenced by another node's open trims nothing

    def taken_over(self, recovered: Mapping[int, tuple[int, int]]) -> None:
        self.sync(force=True)
        for stream_id in recovered:  # streams this node opened, waiting for the dead one
            state = self._node.streams.get(stream_id)
            if state is not None and state.handover.state is Ownership.WAITING:
                self._follow(state, self._node.meta.get_stream(stream_id))


def _fence_error(stream_id: int, owner: str | None,
                 failure: BaseException | None = None) -> FencedError:
    """Why appends here are refused: the stream's new owner, or what took it from this node."""
    if isinstance(failure, FencedError):
        return FencedError(describe("another process took over this store's node: it no "
                                    "longer writes the stream", stream=stream_id))
    if failure is not None:
        return FencedError(describe("this node's WAL failed: it hands its streams over",
                                    stream=stream_id, error=repr(failure)))
    if owner is None:
        return FencedError(describe("the stream was released while this node wrote it (no "
                                    "owner now): open it for write again", stream=stream_id))
    return FencedError(describe("the stream was opened for write on another node: this node "
                                "handed it over", stream=stream_id, node=owner))


__all__ = ["SharedCoordination"]
