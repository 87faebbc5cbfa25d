"""The interface between a node's streams and the other nodes of its bucket
(docs/shared-stores.md), and its implementation for a store of one node.

The store's write path, uploader, read path and facade call these hooks at fixed points; what a
hook does depends on the metadata's ``capabilities.shared``
(:func:`streamlib._assembly.coordination_for` chooses):

=================  ==========================================  ==============================
hook               on a store of one node                      on a shared store
=================  ==========================================  ==============================
``restore``        every stream starts READER                  ownership as the metadata says
``held_epochs``    every record of the node is its to commit   those of its time as owner
``durable``        acknowledge at once (WAL thread)            after a look at the metadata
``look``           no look                                     one look for these streams
``acknowledged``   nothing                                     requeue later ones; release
``before_append``  nothing                                     wait for the old owner's release
``committed``      nothing                                     release streams handed over
``remote``         never                                       another node may write it
``sync``           nothing to read                             read other nodes' changes
                                                               (or have the next look do it)
``before_trim``    nothing                                     a look (a fenced handle trims
                                                               nothing)
``release_all``    nothing                                     release the node's streams
``answer_parked``  nothing parked                              answer appends parked at a fence
``taken_over``     move the ends of streams not written here   sync, adopt released streams
=================  ==========================================  ==============================

``open_for_write`` is the same on both: it waits for a release of the stream by this node, if
one is under way (only a shared store has them), then opens the stream in the metadata.
"""

from __future__ import annotations

import abc
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from streamlib.errors import FencedError, HandOverPending, describe
from streamlib.metrics import Event
from streamlib.shared.handover import Ownership
from streamlib.state import Inflight, StreamState

if TYPE_CHECKING:
    from streamlib.meta import Retention, StreamMeta
    from streamlib.node import Node
    from streamlib.write import WritePath

log = logging.getLogger(__name__)


class Coordination(abc.ABC):
    """What a node does about other nodes at each step of the data flow (the table in the
    module docstring). Hooks are called without locks held unless they say otherwise."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._write: WritePath | None = None

    def start(self, write: WritePath) -> None:
        """The store is open: ``write`` acknowledges appends (threads start here)."""
        self._write = write

    def stop(self) -> None:  # noqa: B027  (a hook: only a shared store has threads to stop)
        """The store closed: threads end."""

    # ---- streams known at open ----

    @abc.abstractmethod
    def restore(self, meta: StreamMeta) -> StreamState:
        """The state of a stream the metadata holds when the store opens."""

    @abc.abstractmethod
    def held_epochs(self, meta: StreamMeta, node_id: str) -> tuple[int, int] | None:
        """The epochs (both ends included) of ``node_id``'s WAL records of the stream that are
        its to commit (None: none are)."""

    # ---- the write path ----

    @abc.abstractmethod
    def durable(self, state: StreamState, item: Inflight) -> None:
        """A WAL write of ``state`` (``item``) completed (on the WAL's thread)."""

    @abc.abstractmethod
    def look(self, states: Iterable[StreamState]) -> float | None:
        """One look before acknowledging the durable appends of ``states``: when it started
        (None: acknowledgements need no look)."""

    @abc.abstractmethod
    def acknowledged(self, state: StreamState, looked: float | None) -> None:
        """The write path acknowledged what it could of ``state`` after ``looked``."""

    @abc.abstractmethod
    def before_append(self, state: StreamState, timeout: float) -> None:
        """An append is about to take an offset (caller holds ``state.order``)."""

    def open_for_write(self, state: StreamState) -> int:
        """Open the stream for write on this node (a new epoch in the metadata) and return the
        epoch. After every append of earlier handles, never in the middle of a commit or of a
        fence decision about the stream (``opening``: a look that read the metadata before this
        open must not fence it); a release by this node under way is waited for first."""
        node = self._node
        deadline = time.monotonic() + node.config.append_timeout_ms / 1000
        while True:
            self._await_own_release(state, deadline)
            with state.order, node.changes.shared(), state.opening:
                with state.lock:
                    if state.handover.handing_over:
                        continue  # fenced meanwhile: the release comes first
                node.check_open()
                meta = node.meta.open_stream(state.id, node_id=node.id, node_epoch=node.epoch)
                with state.lock:
                    self._opened(state, meta)
            if meta.handover_from not in (None, node.id):
                log.info(describe("stream opened for write while another node holds it: "
                                  "appends here wait until that node has committed what it "
                                  "acknowledged and released the stream", stream=state.id,
                                  node=node.id, holder=meta.handover_from, epoch=meta.epoch))
            return meta.epoch

    def create_for_write(self, name: str | None,
                         retention: Retention | None) -> tuple[StreamState, int]:
        """A new stream, created and opened for write by this node in one change of the
        metadata (:meth:`~streamlib.meta.MetadataStore.create_and_open`): its state and the
        epoch to write with. A sync may have added the stream's state meanwhile (as this
        node's: the metadata names it the owner), so a look that read the metadata before the
        state was added here is made up for at once (:meth:`_check_moved`)."""
        node = self._node
        with node.changes.shared():
            node.check_open()
            meta = node.meta.create_and_open(name, retention=retention, node_id=node.id,
                                             node_epoch=node.epoch)
        state = node.streams.add(StreamState(meta))
        with state.order, node.changes.shared(), state.opening:
            with state.lock:
                if not state.handover.written_here or state.epoch < meta.epoch:
                    self._opened(state, meta)
            self._check_moved(state)
        return state, meta.epoch

    def _opened(self, state: StreamState, meta: StreamMeta) -> None:
        """The stream is opened for write here at ``meta.epoch`` (caller holds ``order``,
        ``opening`` and ``lock``)."""
        handover = state.handover
        source = meta.handover_from if meta.handover_from != self._node.id else None
        idle = not state.log and not state.inflight  # nothing of its own to commit
        state.epoch = meta.epoch
        if not handover.written_here or (idle and meta.end_offset > state.committed_end):
            # Others wrote it (or committed what they held): theirs is the end.
            state.committed_end = state.acked_end = state.assigned_end = max(
                state.committed_end, meta.end_offset)
            state.index.clear()
            state.commits += 1
        handover.move(Ownership.OWNED if source is None else Ownership.WAITING, source=source)
        self._node.metrics.event(Event.WRITE_OPEN)

    def _check_moved(self, state: StreamState) -> None:  # noqa: B027  (a shared store's hook)
        """A stream just created here was added to the node's streams after its create landed:
        fence it now if a look read past another node's open of it meanwhile (caller holds
        ``opening``)."""

    def _await_own_release(self, state: StreamState, deadline: float) -> None:
        """This node handed the stream over before: that must be complete (released) before
        it opens the stream again. Woken by the stream's moves, the node's failure, close."""
        node = self._node
        with state.lock:
            while state.handover.handing_over:
                if node.taken_over:
                    raise FencedError(describe("another process took over this store's node",
                                               node=node.id, stream=state.id))
                left = deadline - time.monotonic()
                if left <= 0 or node.closing.is_set():
                    raise HandOverPending(describe("this node is still handing the stream "
                                                   "over to another: retry", stream=state.id))
                state.changed.wait(left)

    # ---- commits, reads, trims ----

    @abc.abstractmethod
    def committed(self, states: Iterable[StreamState]) -> None:
        """A commit of these streams applied."""

    @abc.abstractmethod
    def remote(self, state: StreamState) -> bool:
        """Whether another node may be writing ``state`` (its appends wake nobody here)."""

    @abc.abstractmethod
    def sync(self, force: bool = False, *, wait: bool = True) -> bool:
        """Read other nodes' changes (at most every ``sync_interval_ms`` unless ``force``);
        whether anything changed. ``wait=False`` reads nothing now: the view moves with the
        next look the node makes anyway (a cache-only fetch, which never waits on a GET)."""

    @abc.abstractmethod
    def before_trim(self, state: StreamState) -> None:
        """A trim is about to change the metadata."""

    # ---- closing, take-over ----

    @abc.abstractmethod
    def release_all(self) -> set[int]:
        """A clean close: the streams this node gives up."""

    @abc.abstractmethod
    def answer_parked(self, state: StreamState, released: bool,
                      unknown: BaseException) -> None:
        """At close: answer the appends parked at a fence of ``state``: refused if the stream
        was ``released``, else ``unknown`` (the next open may commit them)."""

    @abc.abstractmethod
    def taken_over(self, recovered: Mapping[int, tuple[int, int]]) -> None:
        """Another node's data was committed for these streams (``{id: (start, end)}``) by a
        take-over: this node's view of the streams it does not write moves to the new ends."""


class LocalCoordination(Coordination):
    """A store of one node: no owners, no looks; a durable append is acknowledged at once."""

    def restore(self, meta: StreamMeta) -> StreamState:
        return StreamState(meta)

    def held_epochs(self, meta: StreamMeta, node_id: str) -> tuple[int, int] | None:
        return 0, sys.maxsize  # every record of the node

    def durable(self, state: StreamState, item: Inflight) -> None:
        assert self._write is not None
        self._write.acknowledge(state)

    def look(self, states: Iterable[StreamState]) -> float | None:
        return None

    def acknowledged(self, state: StreamState, looked: float | None) -> None:
        pass

    def before_append(self, state: StreamState, timeout: float) -> None:
        pass

    def committed(self, states: Iterable[StreamState]) -> None:
        pass

    def remote(self, state: StreamState) -> bool:
        return False

    def sync(self, force: bool = False, *, wait: bool = True) -> bool:
        return False

    def before_trim(self, state: StreamState) -> None:
        pass

    def release_all(self) -> set[int]:
        return set()

    def answer_parked(self, state: StreamState, released: bool,
                      unknown: BaseException) -> None:
        pass

    def taken_over(self, recovered: Mapping[int, tuple[int, int]]) -> None:
        for stream_id, (_, end) in recovered.items():
            state = self._node.streams.get(stream_id)
            if state is None:
                continue
            with state.lock:
                if not state.handover.written_here:
                    state.move_ends(end)


__all__ = ["Coordination", "LocalCoordination"]
