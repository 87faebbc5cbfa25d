"""Group commit at the manifest: the changes that one process makes at the same time are
written as one delta (docs/shared-stores.md, "Group commit"; the manifest itself:
:mod:`streamlib.meta.manifest`).

A change (:class:`Change`) joins a queue. The first thread that finds no writer at work becomes
the **leader**: it takes the manifest's lock, takes every change waiting (at most
:data:`GROUP_LIMIT`), has them planned and written as one delta, and answers each; the other
threads — **followers** — wait on the queue's condition for their own answer, and one whose
change is still waiting when the leader is done leads next. So while one delta's create is in
flight the changes that come queue up, and the next delta carries them all; a change alone on
an idle manifest is written at once, nothing lingers.

:func:`plan_group` plans a group on the manifest's state itself, in order, each change checked
against the state the ones before it left (the state keeps an undo journal meanwhile, so that
the group can be taken back if its create fails). A change whose check fails is answered with
its own error and left out; the others go on.

Threads that each wait for their change and then make the next (eight threads creating
streams) come back together: after a round of several changes its leader's successor waits a
moment (:meth:`GroupCommit._gather`, at most :data:`GATHER_LIMIT`) for as many to queue again.

Lock order: the manifest's ``_lock`` (the leader holds it while it writes) before
:attr:`GroupCommit._cond`, a leaf: held only to queue, take and answer changes, never across a
call out.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamlib.errors import (
    CommitConflict,
    CompactionConflict,
    FencedError,
    OffsetOutOfRange,
    StreamExists,
    StreamNotFound,
    describe,
)
from streamlib.meta._manifest_state import CREATED_FORMAT, Malformed, ManifestState

GROUP_LIMIT = 1024
"""The most changes one delta carries (a group too large for a delta is split anyway)."""
GATHER_LIMIT = 0.002
"""The longest (seconds) a leader waits for a group to gather (see :meth:`GroupCommit._gather`);
at most a quarter of the last delta's write too."""

Plan = Callable[[ManifestState], tuple[dict[str, Any] | None, Any]]
"""A change's check against a state: its delta's arguments (None: nothing to write) and the
caller's answer, or an exception."""


class Unmet(Exception):
    """A change's condition does not hold (a key-value write's expected value; a forget that
    finds nothing doomed): on the newest state, nothing is written."""


CHECKS = (StreamNotFound, StreamExists, FencedError, CommitConflict, CompactionConflict,
          OffsetOutOfRange, Unmet)
"""What a failed check raises: true of the newest state, or of an old one (then the group is
planned again after catching up)."""


@dataclass(eq=False, slots=True)
class Change:
    """One change waiting to be written: its operation, its check (``plan``), the time (ms) its
    delta must not be stamped after (``not_after``, else ``late`` is raised), and whether it
    is to be planned on the newest state (``fresh``: its answer may be given without a write,
    or its condition is better checked fresh).

    ``result`` and ``error`` are written by the leader before ``done`` is set (under the
    queue's condition) and read by the change's own thread after it."""

    op: str
    plan: Plan
    not_after: int | None = None
    late: type[Exception] = CommitConflict
    fresh: bool = False
    answered: bool = False
    result: Any = None
    error: BaseException | None = None
    done: bool = False  # GUARDED_BY(GroupCommit._cond)

    def answer(self, result: Any = None, error: BaseException | None = None) -> None:
        self.answered, self.result, self.error = True, result, error


@dataclass(slots=True)
class Planned:
    """A group as :func:`plan_group` planned it: the changes to write, each with its delta's
    arguments and its answer, and those answered without a write."""

    writes: list[tuple[Change, dict[str, Any], Any]] = field(default_factory=list)
    answers: list[tuple[Change, Any, BaseException | None]] = field(default_factory=list)

    def late(self, now_ms: int) -> bool:
        """Whether a change to write may no longer be stamped ``now_ms``."""
        return any(c.not_after is not None and now_ms > c.not_after for c, _, _ in self.writes)

    def settle(self) -> None:
        """Answer every change: the group is written (or nothing was to be written)."""
        for change, _, result in self.writes:
            change.answer(result)
        for change, result, error in self.answers:
            change.answer(result, error)


def plan_group(state: ManifestState, changes: list[Change], now_ms: int,
               caught_up: bool) -> Planned | None:
    """Plan ``changes`` in order on ``state``, applying each planned one to it, with the undo
    journal kept (the caller keeps or rolls back). None: a check failed on a state that may be
    old (not ``caught_up``) — nothing is applied; catch up and plan again. A change past its
    ``not_after`` at ``now_ms`` is answered with its ``late`` error."""
    planned = Planned()
    state.begin()
    try:
        for change in changes:
            if change.not_after is not None and now_ms > change.not_after:
                planned.answers.append((change, None, change.late(describe(
                    "too late: its objects were PUT long enough ago that the garbage "
                    "collector may have deleted them as orphans", not_after_ms=change.not_after,
                    now_ms=now_ms))))
                continue
            try:
                args, result = change.plan(state)
            except CHECKS as error:
                if not caught_up:
                    state.rollback()
                    return None
                planned.answers.append((change, None, error))
                continue
            except Exception as error:  # that change's own answer: the others go on
                planned.answers.append((change, None, error))
                continue
            if args is None:
                planned.answers.append((change, result, None))
                continue
            try:  # in the newest format: it holds whatever a writer writes
                state.apply(change.op, args, now_ms, CREATED_FORMAT)
            except Malformed as error:  # every reader would refuse it: never written
                planned.answers.append((change, None, RuntimeError(describe(
                    "a manifest change does not apply to the state it was checked on (a bug)",
                    op=change.op, error=str(error)))))
                continue
            planned.writes.append((change, args, result))
    except BaseException:
        state.rollback()
        raise
    return planned


class GroupCommit:
    """The queue of changes waiting to be written, and its leader (see the module).

    ``write`` is called by the leader with the manifest's ``lock`` held and a batch of changes
    (oldest first); it answers every one of them, or raises, and then the error answers those
    it left unanswered."""

    def __init__(self, lock: threading.RLock, write: Callable[[list[Change]], None],
                 limit: int = GROUP_LIMIT) -> None:
        self._lock = lock
        self._write = write
        self._limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._waiting: collections.deque[Change] = collections.deque()  # GUARDED_BY(_cond)
        self._leading = False  # GUARDED_BY(_cond)
        # The last round's changes and seconds: GUARDED_BY the leader's turn (handed on under
        # _cond).
        self._last_size = 0
        self._last_seconds = 0.0

    def submit(self, *changes: Change) -> Any:
        """Write ``changes`` (queued together, in this order, with whatever else is waiting)
        and return the last one's answer, or raise the first error. The caller must not hold
        the manifest's lock."""
        with self._cond:
            self._waiting.extend(changes)
            self._cond.notify_all()  # for wait_queued
            while not all(change.done for change in changes) and self._leading:
                self._cond.wait()
            lead = not all(change.done for change in changes)
            self._leading = self._leading or lead
        if lead:
            try:
                while not all(change.done for change in changes):
                    self._round()
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        for change in changes:
            if change.error is not None:
                raise change.error
        return changes[-1].result

    def _gather(self) -> None:
        """When the last round carried several changes, wait (briefly) until as many wait
        again before writing: the threads answered by that round are about to submit their
        next changes, and without the wait a leader would write the first alone and the rest
        in a second delta, every round. A change alone, after a round of one, is written at
        once."""
        want = self._last_size
        if want <= 1:
            return
        with self._cond:
            self._cond.wait_for(lambda: len(self._waiting) >= want,
                                min(GATHER_LIMIT, self._last_seconds / 4))

    def _round(self) -> None:
        """Take the changes waiting and have them written: one leader's turn."""
        self._gather()
        with self._lock:
            with self._cond:
                batch = [self._waiting.popleft()
                         for _ in range(min(self._limit, len(self._waiting)))]
            started = time.monotonic()
            try:
                self._write(batch)
            except BaseException as error:
                for change in batch:
                    if not change.answered:
                        change.answer(error=error)
                if not isinstance(error, Exception):
                    raise  # an interrupt: the leader stops here; a follower leads next
            finally:
                self._last_size, self._last_seconds = len(batch), time.monotonic() - started
                with self._cond:
                    for change in batch:
                        change.done = True
                    self._cond.notify_all()

    def wait_queued(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` changes wait to be written (False: ``timeout`` seconds
        passed first): a test's way to know that its threads have queued."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._waiting) >= count, timeout)


__all__ = ["CHECKS", "GROUP_LIMIT", "Change", "GroupCommit", "Plan", "Planned", "Unmet",
           "plan_group"]
