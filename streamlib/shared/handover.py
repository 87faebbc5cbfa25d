"""The hand-over of a stream between nodes, as a state machine (docs/shared-stores.md, "The
hand-over as a state machine").

Every stream a node knows has one :class:`HandOver`, which says who writes the stream as this
node sees it. The states and every legal transition are in :data:`TRANSITIONS`; a move not in it
raises :class:`IllegalTransition` (a bug in streamlib, never a user error). The fields are
guarded by the stream's lock, and every move wakes the stream's condition, so that whoever waits
for a release (an open here, an append of the new owner) is woken, never polling.

On a store of one node only ``READER`` and ``OWNED`` occur.
"""

from __future__ import annotations

import enum
import threading
from concurrent.futures import Future
from typing import Any


class Ownership(enum.Enum):
    """Who writes a stream, as this node sees it."""

    READER = "reader"
    """Not written here: another node's stream, or nobody's. Its ends follow the metadata."""
    WAITING = "waiting"
    """Opened for write here while another node (``source``) still holds it: appends wait for
    that node's release; readers here follow its commits."""
    OWNED = "owned"
    """Written here."""
    FENCED = "fenced"
    """Opened for write on another node: appends are refused, appends already durable are
    parked, what was acknowledged is being committed."""
    RELEASING = "releasing"
    """Everything acknowledged is committed; the release is being written."""
    RELEASED = "released"
    """Handed over: read like another node's stream. An open for write here takes it back."""


_O = Ownership
TRANSITIONS: dict[Ownership, frozenset[Ownership]] = {
    _O.READER: frozenset({_O.OWNED, _O.WAITING}),  # opened here; recovered records of its own
    _O.WAITING: frozenset({_O.OWNED, _O.WAITING, _O.FENCED}),  # released; reopened; taken
    _O.OWNED: frozenset({_O.OWNED, _O.WAITING, _O.FENCED}),  # reopened here; opened elsewhere
    _O.FENCED: frozenset({_O.RELEASING}),  # its acknowledged appends are committed
    _O.RELEASING: frozenset({_O.RELEASED, _O.FENCED}),  # the release landed; or it failed
    _O.RELEASED: frozenset({_O.OWNED, _O.WAITING}),  # opened here again
}
"""Every legal move: ``TRANSITIONS[from]`` holds the states it may go to."""

WRITTEN_HERE = frozenset({_O.WAITING, _O.OWNED, _O.FENCED, _O.RELEASING})
"""States in which this node's WAL may hold records of the stream that are its to commit."""


class IllegalTransition(RuntimeError):
    """A move the hand-over's transition table does not allow: a bug in streamlib."""


class HandOver:
    """One stream's :class:`Ownership` on this node, with what goes with it: ``reason`` (the
    error that refuses appends, from FENCED on), ``source`` (the node handing the stream to
    this one, while WAITING; kept if this node is fenced meanwhile: the stream is then read
    like another node's) and ``parked`` (appends durable after the fence, answered once the
    stream is released). Every field is guarded by the stream's lock; ``changed`` is the
    stream's condition on that lock."""

    __slots__ = ("changed", "parked", "reason", "source", "state")

    def __init__(self, changed: threading.Condition, state: Ownership = Ownership.READER, *,
                 reason: BaseException | None = None, source: str | None = None) -> None:
        """Start in ``state``: READER for a stream met now, or what the metadata says of a
        stream this node held before it restarted."""
        assert (reason is not None) == (state is Ownership.FENCED), "a fence needs its reason"
        self.changed = changed
        self.state = state  # GUARDED_BY(stream lock)
        self.reason = reason  # GUARDED_BY(stream lock)
        self.source = source  # GUARDED_BY(stream lock)
        self.parked: list[Future[Any]] = []  # GUARDED_BY(stream lock)

    def __repr__(self) -> str:
        return f"<HandOver {self.state.value} source={self.source}>"

    def move(self, to: Ownership, *, reason: BaseException | None = None,
             source: str | None = None) -> None:
        """Go to ``to`` (caller holds the stream's lock) and wake the stream's waiters. Moving
        to FENCED sets ``reason``; to OWNED or WAITING (an open here) clears it and sets
        ``source``."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"hand-over: {self.state.value} -> {to.value} is not a "
                                    f"legal move")
        if to is Ownership.FENCED and self.state is not Ownership.RELEASING:
            assert reason is not None, "a fence needs its reason"
            self.reason = reason
        elif to in (Ownership.OWNED, Ownership.WAITING):
            self.reason = None
            self.source = source
        self.state = to
        self.changed.notify_all()

    @property
    def written_here(self) -> bool:
        """Whether this node writes the stream, or still has to finish writing it."""
        return self.state in WRITTEN_HERE

    @property
    def fenced(self) -> bool:
        """Whether appends here are refused (FENCED, RELEASING, RELEASED)."""
        return self.reason is not None

    @property
    def handing_over(self) -> bool:
        """Whether this node is still handing the stream over (FENCED or RELEASING): an open
        here waits for the release."""
        return self.state in (Ownership.FENCED, Ownership.RELEASING)

    def take_parked(self) -> list[Future[Any]]:
        """The parked appends, now to be answered (caller holds the stream's lock)."""
        parked, self.parked = self.parked, []
        return parked


__all__ = ["TRANSITIONS", "WRITTEN_HERE", "HandOver", "IllegalTransition", "Ownership"]
