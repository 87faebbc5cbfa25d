"""The write-ahead log: one interface, three backends (docs/wal.md).

Plug-in authors implement :class:`Wal`; its docstring is the contract that the shared suite in
``streamlib.testing.wal`` checks. The stream layer is the only user inside streamlib.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

from streamlib.records import PlacedBatch, RecordBatch


@dataclass(frozen=True, slots=True)
class WalRecord:
    """What the WAL stores: one batch of one stream, placed at ``batch.base_offset``, written by
    a writer holding ``epoch`` of that stream. A RecordBatch given with its ``base_offset`` is
    taken as the :class:`~streamlib.records.PlacedBatch` it is."""

    stream_id: int
    epoch: int
    batch: PlacedBatch

    def __post_init__(self) -> None:
        batch: object = self.batch
        if not isinstance(batch, RecordBatch):
            raise TypeError(f"batch must be a RecordBatch, not {type(batch).__name__}")
        if not isinstance(batch, PlacedBatch):
            if batch.base_offset is None:
                raise ValueError("a WAL record's batch needs its base_offset (batch.with_offset)")
            object.__setattr__(self, "batch", batch.with_offset(batch.base_offset))
        for name in ("stream_id", "epoch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise ValueError(f"{name} must be an int in [0, 2^64): {name}=`{value}`")

    @property
    def base_offset(self) -> int:
        return self.batch.base_offset

    @property
    def count(self) -> int:
        return self.batch.count


@dataclass(frozen=True, slots=True)
class WalEntry:
    """A recovered record and the WAL position it was found at."""

    position: int
    record: WalRecord


@dataclass(frozen=True, slots=True)
class Damage:
    """Logical WAL positions ``[start, end)`` that recovery could not return, and why."""

    start: int
    end: int
    reason: str

    @property
    def size(self) -> int:
        return self.end - self.start


class Recovery:
    """The records recovery found, in order, and (once iterated) what it had to drop.

    Iterate it once; ``end`` is where appends continue, ``dropped`` lists :class:`Damage`."""

    def __init__(self, scan: Callable[[Recovery], Iterator[WalEntry]], start: int) -> None:
        self._scan = scan
        self.start = start
        self.end = start
        self.dropped: list[Damage] = []
        self.records = 0
        self.bytes = 0
        self.done = False

    def __iter__(self) -> Iterator[WalEntry]:
        if self.done:
            raise RuntimeError("a Recovery can be iterated only once")
        from streamlib.wal._format import record_size  # the format module imports this one

        for entry in self._scan(self):
            self.records += 1
            self.bytes += record_size(entry.record)
            yield entry
        self.done = True

    def drop(self, start: int, end: int, reason: str) -> None:
        """For backends: report damage."""
        if end > start:
            self.dropped.append(Damage(start, end, reason))

    def entries(self) -> list[WalEntry]:
        """Iterate to the end and return every record."""
        return list(self)


class Ticket:
    """One record handed to :meth:`Wal.submit`, which the WAL completes once: it sets
    ``position`` once the record is durable, or ``error`` once it never will be, and then
    calls :meth:`completed`. The light twin of :meth:`Wal.append`'s future for a caller that
    keeps an object of its own per append: no future, no condition, no lock. The rules are the
    futures': tickets complete in submission order, and a group WAL sets every ticket of a
    group before it calls the first one's :meth:`completed`."""

    __slots__ = ("error", "position")

    def __init__(self) -> None:
        # Written once by the WAL, before ``completed``; read alone (None: not yet).
        self.position: int | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        """Whether the WAL has completed it (durable, or failed)."""
        return self.position is not None or self.error is not None

    def completed(self) -> None:
        """Called once by the WAL, holding no lock of its own, on the thread that completed
        the record (a writer thread, or one that leads): it must be quick."""


def _complete(ticket: Ticket, future: Future[int]) -> None:
    error = future.exception()
    if error is None:
        ticket.position = future.result()
    else:
        ticket.error = error
    ticket.completed()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend declares about itself (not discovered by trial and error)."""

    aligned_writes: bool = False
    """Writes are multiples of 4 KiB at 4 KiB-aligned offsets (O_DIRECT-friendly)."""
    shared_storage: bool = False
    """Another node can recover this WAL (it lives in shared object storage)."""
    max_record_bytes: int = 64 * 1024 * 1024 + 96
    """The largest WAL record (header and framed batch) an append accepts."""
    extra: dict[str, object] = field(default_factory=dict)


class Wal(abc.ABC):
    """A durable, ordered log of :class:`WalRecord` s.

    The contract (docs/wal.md):

    - :meth:`append` returns a future that completes with the record's position once the record
      is durable, or fails if it never will be. Futures complete in append order: when one
      completes, every earlier record is durable too. A record is durable whole or not at all.
      :meth:`submit` does the same with a :class:`Ticket` in place of the future.
    - Positions are logical byte positions, increasing, unique for the life of the WAL across
      restarts; ``usage`` is ``end_position - trim_position``.
    - :meth:`recover` must be called once, before the first append; it returns every durable
      record at or after the trim position, in order, never a damaged one, and reports what it
      dropped. Appends then continue at ``Recovery.end``.
    - :meth:`trim` lets the WAL discard records before a position; it never goes back.
    - With bounded ``capacity``, an append that does not fit blocks the caller until a trim
      frees room (woken by the trim, not by polling) or ``timeout`` passes
      (:class:`~streamlib.errors.WalFullError`); waiting appends keep their order. With
      ``timeout=0`` it raises at once, having written nothing (the write path tries that
      first, to know when appends start waiting).
    - :meth:`close` settles every pending future and releases the WAL's resources and locks.
    """

    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def recover(self) -> Recovery:
        """Scan the durable records after the trim position (call once, before appending)."""

    @abc.abstractmethod
    def append(self, record: WalRecord, timeout: float | None = None) -> Future[int]:
        """Queue ``record``; the future completes with its position once it is durable.
        Blocks while the WAL is full, at most ``timeout`` seconds (None: the WAL's default)."""

    def submit(self, record: WalRecord, ticket: Ticket, timeout: float | None = None, *,
               lead: bool = False) -> None:
        """:meth:`append`, completing ``ticket`` instead of a future (same order, same
        durability, same back-pressure). ``lead``: the caller calls :meth:`lead` next, holding
        no lock, whatever happens in between: the WAL need not wake a writer for this record.
        The default goes through :meth:`append`'s future."""
        self.append(record, timeout).add_done_callback(partial(_complete, ticket))

    def lead(self) -> None:  # noqa: B027  (a hook: a WAL without a writer thread has none)
        """An appending thread that is about to wait for its own append (just queued), holding
        no lock, offers to write: a WAL may write and sync what is queued in this thread and
        complete the futures there — callbacks included — instead of waking a writer thread
        and waiting for it (the leader of a group commit). The default does nothing."""

    @abc.abstractmethod
    def trim(self, position: int) -> None:
        """Records before ``position`` may be discarded (positions from ``append`` or recovery).
        """

    @property
    @abc.abstractmethod
    def capacity(self) -> int | None:
        """Bytes the WAL can hold, or None if unbounded."""

    @property
    @abc.abstractmethod
    def trim_position(self) -> int: ...

    @property
    @abc.abstractmethod
    def end_position(self) -> int:
        """The end of the log as written so far: a record appended from now on gets a position
        at or above it (exactly it when nothing is queued)."""

    @property
    def usage(self) -> int:
        """Bytes between the trim position and the end (records and padding)."""
        return self.end_position - self.trim_position

    @property
    def waiting_appends(self) -> int:
        """Appends waiting for room now (back-pressure); 0 for a WAL that never makes them
        wait."""
        return 0

    @abc.abstractmethod
    def close(self) -> None:
        """Fail or complete every pending append, stop background work, release locks."""

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Capabilities", "Damage", "Recovery", "Ticket", "Wal", "WalEntry", "WalRecord"]
