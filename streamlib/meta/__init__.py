"""The metadata store: streams, committed objects and nodes' WAL positions (docs/store.md).

Plug-in authors implement :class:`MetadataStore`; its docstring is the contract that the shared
suite in ``streamlib.testing.meta`` checks. The store layer (opening, recovery, the uploader) is
the only user inside streamlib. The value types below check their own fields, so a backend gets
well-formed input; the ``check_*`` helpers do the same for plain arguments.
"""

from __future__ import annotations

import abc
import enum
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamlib.errors import FencedError, describe
from streamlib.meta._checks import (
    ANY,
    MAX_KV_VALUE,
    MAX_NAME_CHARS,
    TIERS,
    AnyValue,
    check_id,
    check_kv,
    check_kv_write,
    check_limit,
    check_name,
    check_node_id,
    check_text,
    check_tier,
)
from streamlib.records import INT64_MAX, check_int

# ---- the value types ----

@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a stream to keep (docs/lifecycle.md, "Retention"): records younger than
    ``max_age`` seconds (by their batches' timestamps) and the newest ``max_bytes`` bytes of its
    objects; either or both. ``Retention()`` (both None) keeps everything. The stream's owner
    applies it as trims at block granularity, so a little more than asked may stay (at most one
    block at the old end), never less."""

    max_age: float | None = None
    """Seconds; None: no limit by age."""
    max_bytes: int | None = None
    """Bytes of uploaded objects; None: no limit by size."""

    def __post_init__(self) -> None:
        if self.max_age is not None:
            if isinstance(self.max_age, bool) or not isinstance(self.max_age, int | float):
                raise TypeError(f"max_age must be a number of seconds or None, "
                                f"not {type(self.max_age).__name__}")
            if not 0 < self.max_age <= INT64_MAX / 1000:
                raise ValueError(f"max_age must be positive seconds: max_age=`{self.max_age}`")
        if self.max_bytes is not None:
            check_int(self.max_bytes, "max_bytes", 1, INT64_MAX)

    @property
    def max_age_ms(self) -> int | None:
        """``max_age`` in whole milliseconds (as the metadata keeps it: at least 1, at most
        2^63 - 1)."""
        if self.max_age is None:
            return None
        return min(INT64_MAX, max(1, round(self.max_age * 1000)))

    @classmethod
    def from_ms(cls, max_age_ms: int | None, max_bytes: int | None) -> Retention | None:
        """The retention the metadata keeps as ``(max_age_ms, max_bytes)``; None if neither."""
        if max_age_ms is None and max_bytes is None:
            return None
        return cls(None if max_age_ms is None else max_age_ms / 1000, max_bytes)

    @property
    def keeps_everything(self) -> bool:
        return self.max_age is None and self.max_bytes is None


def check_retention(value: object) -> Retention | None:
    """A retention argument: a :class:`Retention` (one that keeps everything is None) or None."""
    if value is None:
        return None
    if not isinstance(value, Retention):
        raise TypeError(f"retention must be a Retention or None, not {type(value).__name__}")
    return None if value.keeps_everything else value


def wall_clock_ms() -> int:
    """This machine's wall clock (``time.time()``) in whole milliseconds since the epoch,
    clamped into ``[0, 2^63)`` (a clock set before 1970 reads 0): a new stream's
    :attr:`StreamMeta.created_ms`."""
    return min(max(int(time.time() * 1000), 0), INT64_MAX)


class StreamState(enum.Enum):
    """Whether a stream can be used. A destroyed stream keeps its id (never reused) and its
    committed objects (until GC) but no longer counts: its name is free again."""

    OPEN = "open"
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """A stream as the metadata knows it. ``[start_offset, end_offset)`` is what is committed
    in objects and not trimmed; appends not yet uploaded live above ``end_offset`` (in the WAL)."""

    id: int
    name: str | None
    epoch: int
    """Bumped by every :meth:`MetadataStore.open_stream`; 0 for a stream never opened."""
    start_offset: int
    end_offset: int
    state: StreamState = StreamState.OPEN
    owner: str | None = None
    """The node that opened it for write last (a store that keeps owners: the manifest)."""
    handover_from: str | None = None
    """A node still to release the stream to its owner (it may commit what it acknowledged
    before the hand-over, with ``handover_epoch``); None once released."""
    handover_epoch: int | None = None
    owner_since: int | None = None
    """The epoch at which ``owner`` became the owner (its reopens keep it)."""
    handover_since: int | None = None
    """The epoch at which ``handover_from`` became the owner."""
    retention: Retention | None = None
    """What of the stream to keep (None: everything)."""
    created_ms: int | None = None
    """When the stream was created: milliseconds since the epoch (POSIX) by the creating
    node's wall clock (:func:`wall_clock_ms`); None for a stream created by a streamlib that
    did not record it. Informational: nothing orders or expires by it."""

    @property
    def live(self) -> bool:
        return self.state is StreamState.OPEN

    def held_epochs(self, node_id: str) -> tuple[int, int] | None:
        """The epochs (both ends included) of ``node_id``'s WAL records of this stream that are
        its to commit: those of its current time as owner, or of the time it is handing over.
        Records of an earlier time were committed or refused when it released the stream.
        None: none are (another node owns the stream, or this one waits for a release)."""
        if self.handover_from is not None:
            if self.handover_from != node_id or self.handover_epoch is None:
                return None
            return self.handover_since or 0, self.handover_epoch
        if self.owner != node_id:
            return None
        return self.owner_since or 0, self.epoch

    def epoch_of(self, node_id: str) -> int:
        """The epoch ``node_id`` commits this stream with: the old owner's while it hands the
        stream over, else the current one."""
        if self.handover_from == node_id and self.handover_epoch is not None:
            return self.handover_epoch
        return self.epoch


@dataclass(frozen=True, slots=True)
class StreamRange:
    """The records ``[start_offset, end_offset)`` of one stream inside one object, and how many
    bytes of the object they take (``size``: what a reader or compaction budgets for; the
    object's own index says where they are)."""

    stream_id: int
    start_offset: int
    end_offset: int
    size: int

    def __post_init__(self) -> None:
        for name in ("stream_id", "start_offset", "end_offset", "size"):
            check_id(getattr(self, name), name)
        if self.end_offset <= self.start_offset:
            raise ValueError(f"a range must hold at least one record: stream=`{self.stream_id}` "
                             f"range=`[{self.start_offset}, {self.end_offset})`")

    @property
    def count(self) -> int:
        """Records in the range."""
        return self.end_offset - self.start_offset


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """A committed object: its ``key`` in the object store, its ``size`` in bytes, and one
    :class:`StreamRange` per stream it holds data of (sorted by stream id, whatever order they
    were given in, so that two descriptions of one object compare equal)."""

    key: str
    size: int
    ranges: tuple[StreamRange, ...]
    tier: str = ""
    """Which object store holds it: ``""`` the objects store (``objects_url``), ``"archive"``
    the cheap tier (``archive_url``, written by compaction)."""

    def __post_init__(self) -> None:
        check_text(self.key, "key")
        check_id(self.size, "size")
        check_tier(self.tier)
        if isinstance(self.ranges, str | bytes) or not isinstance(self.ranges, Iterable):
            raise TypeError(f"ranges must be a sequence of StreamRange, "
                            f"not {type(self.ranges).__name__}")
        ranges = tuple(self.ranges)
        for r in ranges:
            if not isinstance(r, StreamRange):
                raise TypeError(f"ranges must hold StreamRange, not {type(r).__name__}")
        if not ranges:
            raise ValueError(f"an object needs at least one range: key=`{self.key}`")
        ranges = tuple(sorted(ranges, key=lambda r: r.stream_id))
        for a, b in itertools.pairwise(ranges):
            if a.stream_id == b.stream_id:
                raise ValueError(f"an object holds one range per stream: key=`{self.key}` "
                                 f"stream=`{a.stream_id}`")
        used = sum(r.size for r in ranges)
        if used > self.size:
            raise ValueError(f"the ranges are larger than the object: key=`{self.key}` "
                             f"size=`{self.size}` ranges=`{used}`")
        object.__setattr__(self, "ranges", ranges)  # normalised to a sorted tuple

    def range_of(self, stream_id: int) -> StreamRange | None:
        """This object's range of ``stream_id``, if it holds any."""
        for r in self.ranges:
            if r.stream_id == stream_id:
                return r
        return None


@dataclass(frozen=True, slots=True)
class StreamObject:
    """One committed object as one stream's reader needs it: its ``key`` and ``size``, and the
    ``range`` of that stream it holds (without the other streams' ranges)."""

    key: str
    size: int
    range: StreamRange
    tier: str = ""
    """The object's tier (:attr:`ObjectMeta.tier`): which object store to read it from."""


@dataclass(frozen=True, slots=True)
class DoomedObject:
    """An object no stream's ranges name any more (replaced by compaction, or holding only
    trimmed records or those of destroyed streams), waiting to be deleted: readers that resolved
    it before may still read it until ``marked_at_ms`` plus the grace period
    (docs/lifecycle.md, "Object states")."""

    key: str
    size: int
    marked_at_ms: int
    """When it was marked, milliseconds since the epoch, by the clock of the metadata store's
    writer."""
    tier: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Replacement:
    """One step of compaction or deletion: the committed objects ``inputs`` leave the streams'
    ranges (they become :class:`DoomedObject`), the new objects ``outputs`` take their place.

    ``outputs`` may be empty: the inputs then held nothing readable (every range below its
    stream's start offset, or of a destroyed stream). The metadata checks the rest
    (:meth:`MetadataStore.replace`); construction checks what it can alone: at least one input,
    keys unique and not both input and output, each stream's output ranges contiguous."""

    inputs: Sequence[str]
    outputs: Sequence[ObjectMeta] = ()
    not_after_ms: int | None = None
    """Refused (``CompactionConflict``) if the operation's time is past this (milliseconds
    since the epoch): the outputs were PUT long enough ago that the garbage collector may have
    taken them for orphans (docs/lifecycle.md, invariant 4)."""

    def __post_init__(self) -> None:
        if self.not_after_ms is not None:
            check_id(self.not_after_ms, "not_after_ms")
        inputs = tuple(check_text(k, "input key") for k in _tuple_of(self.inputs, str, "inputs"))
        outputs = _tuple_of(self.outputs, ObjectMeta, "outputs")
        if not inputs:
            raise ValueError("a replacement needs at least one input")
        keys = [o.key for o in outputs]
        duplicate = _first_duplicate(inputs) or _first_duplicate(keys)
        if duplicate is not None:
            raise ValueError(f"an object key appears twice in the replacement: "
                             f"key=`{duplicate}`")
        both = set(inputs) & set(keys)
        if both:
            raise ValueError(f"an object cannot be both input and output: key=`{min(both)}`")
        _check_contiguous(outputs, "a replacement")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)

    def extents(self) -> dict[int, tuple[int, int]]:
        """``{stream_id: (first offset, end offset)}`` of the outputs, by stream id."""
        return {stream_id: (ranges[0].start_offset, ranges[-1].end_offset)
                for stream_id, ranges in sorted(_ranges_by_stream(self.outputs).items())}


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """A node: ``node_epoch`` (bumped by :meth:`MetadataStore.register_node`, 0 for a node never
    registered) and ``wal_position``: everything of its WAL before it is in committed objects,
    so recovery replays the WAL from there."""

    node_id: str
    node_epoch: int
    wal_position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """One atomic step of the uploader: add ``objects``, move each
    stream's end offset to the end of its new ranges, and move the WAL position of ``node_id``
    to ``wal_position``.

    ``epochs`` maps every stream that has a range here (and any other stream the writer wants
    checked) to the epoch the writer holds; ``node_epoch``, if given, must be the node's
    current one. ``remove`` lists keys of committed objects that hold no readable data any more
    (every range trimmed away or of a destroyed stream): they become doomed
    (:class:`DoomedObject`), as :meth:`MetadataStore.replace` without outputs would make them.

    Construction checks what can be checked without the store (``ValueError`` / ``TypeError``):
    object keys unique, each stream's ranges contiguous across the commit and covered by
    ``epochs``, nothing both added and removed. The sequences are kept as tuples, ``epochs`` as
    a dict by stream id, and an int ``node_id`` as its str."""

    node_id: str
    wal_position: int
    objects: Sequence[ObjectMeta] = ()
    epochs: Mapping[int, int] = field(default_factory=dict)
    node_epoch: int | None = None
    remove: Sequence[str] = ()
    not_after_ms: int | None = None
    """Refused (``CommitConflict``) if the operation's time is past this (milliseconds since
    the epoch): the objects were PUT long enough ago that the garbage collector may have taken
    them for orphans (docs/lifecycle.md, invariant 4)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_id", check_node_id(self.node_id))
        if self.not_after_ms is not None:
            check_id(self.not_after_ms, "not_after_ms")
        check_id(self.wal_position, "wal_position")
        if self.node_epoch is not None:
            check_id(self.node_epoch, "node_epoch")
        objects = _tuple_of(self.objects, ObjectMeta, "objects")
        remove = tuple(check_text(k, "remove key") for k in _tuple_of(self.remove, str, "remove"))
        if not isinstance(self.epochs, Mapping):
            raise TypeError(f"epochs must be a mapping of stream id to epoch, "
                            f"not {type(self.epochs).__name__}")
        epochs = {check_id(s, "epochs stream_id"): check_id(e, "epoch")
                  for s, e in self.epochs.items()}
        keys = [o.key for o in objects]
        duplicate = _first_duplicate(keys) or _first_duplicate(remove)
        if duplicate is not None:
            raise ValueError(f"an object key appears twice in the commit: key=`{duplicate}`")
        both = set(keys) & set(remove)
        if both:
            raise ValueError(f"an object cannot be added and removed at once: key=`{min(both)}`")
        for stream_id in _ranges_by_stream(objects):
            if stream_id not in epochs:
                raise ValueError(f"epochs must give the epoch of every stream committed: "
                                 f"stream=`{stream_id}`")
        _check_contiguous(objects, "a commit")
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "remove", remove)
        object.__setattr__(self, "epochs", dict(sorted(epochs.items())))

    def extents(self) -> dict[int, tuple[int, int]]:
        """``{stream_id: (first offset, end offset)}`` of what this commit adds, by stream id."""
        return {stream_id: (ranges[0].start_offset, ranges[-1].end_offset)
                for stream_id, ranges in sorted(_ranges_by_stream(self.objects).items())}


def _tuple_of(values: object, kind: type, what: str) -> tuple[Any, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a sequence of {kind.__name__}, "
                        f"not {type(values).__name__}")
    result = tuple(values)
    for value in result:
        if not isinstance(value, kind):
            raise TypeError(f"{what} must hold {kind.__name__}, not {type(value).__name__}")
    return result


def _first_duplicate(values: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _check_contiguous(objects: Iterable[ObjectMeta], what: str) -> None:
    for stream_id, ranges in _ranges_by_stream(objects).items():
        for a, b in itertools.pairwise(ranges):
            if b.start_offset != a.end_offset:
                raise ValueError(f"a stream's ranges must be contiguous within {what}: "
                                 f"stream=`{stream_id}` ranges=`[{a.start_offset}, "
                                 f"{a.end_offset})` `[{b.start_offset}, {b.end_offset})`")


def _ranges_by_stream(objects: Iterable[ObjectMeta]) -> dict[int, list[StreamRange]]:
    by_stream: dict[int, list[StreamRange]] = {}
    for obj in objects:
        for r in obj.ranges:
            by_stream.setdefault(r.stream_id, []).append(r)
    for ranges in by_stream.values():
        ranges.sort(key=lambda r: r.start_offset)
    return by_stream


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a metadata backend declares about itself."""

    shared: bool = False
    """Nodes on different machines may use this store at once (its commits are fenced across
    them). A local store (SQLite) is safe for processes of one machine only."""
    extra: dict[str, object] = field(default_factory=dict)


class MetadataStore(abc.ABC):
    """Streams, committed objects and nodes' WAL positions, changed in atomic steps.

    The contract (docs/store.md; ``streamlib.testing.meta`` checks it):

    - **Atomic and durable.** Every operation applies whole or not at all, and is durable when it
      returns; one that raises has changed nothing. Any thread may call any method; calls are
      serialisable (each sees all or nothing of every other).
    - **Streams.** Ids are ints assigned in increasing order, never reused (not even after
      :meth:`destroy_stream`). A name is optional and unique among live streams; a destroyed
      stream frees its name. A new stream has epoch 0 and ``start_offset == end_offset == 0``.
      An operation on a stream that does not exist or was destroyed raises
      :class:`~streamlib.errors.StreamNotFound`.
    - **Epochs.** :meth:`open_stream` raises the epoch by exactly one and returns the new value
      (with ``expected_epoch``, only if the epoch is still that: compare-and-set, else
      :class:`~streamlib.errors.FencedError`). A writer holding an older epoch is fenced.
    - **Trim** moves ``start_offset`` forward, up to ``end_offset``; a lower offset changes
      nothing (a retried trim is harmless); beyond ``end_offset`` is
      :class:`~streamlib.errors.OffsetOutOfRange`.
    - **Commit** checks, in this order, and reports the first that fails with nothing applied:

      1. every stream in ``epochs`` exists and is live (``StreamNotFound``);
      2. its epoch equals the stream's current epoch, and ``node_epoch`` (if given) the node's
         (``FencedError``) — on a store that keeps owners, while a stream is handed over from
         a node, that node commits with its old epoch (``handover_epoch``) and the new owner's
         commits of the stream are refused until the release (``CommitConflict``: they would
         land before the old owner's last records);
      3. each stream's new ranges start exactly at its ``end_offset``: no gap, no overlap, so a
         duplicate or retried commit fails here (``CommitConflict``);
      4. no object key is already committed, nor doomed (``CommitConflict``);
      5. every object to remove is committed (live, not doomed) and holds no readable data
         (``CommitConflict``);
      6. the WAL position does not go back (equal is fine) (``CommitConflict``);
      7. the operation's time (the store's clock: this machine's for SQLite, the writer's for
         a manifest, taken as the change is written) is not past ``not_after_ms``, if given
         (``CommitConflict``).

      Then it adds the objects, sets each stream's ``end_offset`` to the end of its ranges,
      makes the objects in ``remove`` doomed (marked at the commit's time) and sets the node's
      WAL position.
    - **Replace** (compaction's swap; deletion's marking, without outputs) needs no epoch: it
      moves committed records between objects, never changes them, so it is safe beside the
      owner's commits and trims. It checks, in this order, and reports the first that fails
      with :class:`~streamlib.errors.CompactionConflict`, nothing applied:

      1. every input is live: committed and not doomed (of two replaces of one input, the
         second fails here);
      2. no output's key is committed or doomed;
      3. for each stream that the inputs or the outputs hold ranges of, by id: the inputs hold
         it; if the outputs hold it, the stream is live, the inputs' ranges of it that end
         above its ``start_offset`` (all of them if none does) are contiguous, ``[a, b)``,
         and the outputs' are ``[c, b)`` with ``a0 <= c <= max(a, start_offset)``, ``a0``
         the start of the inputs' ranges that reach ``b`` without a gap (a stream trimmed
         since the plan may be covered from a later offset, never from an earlier one, and
         nothing readable is left out; trimmed records the inputs hold may be carried over);
         if the outputs do not hold it, the inputs hold nothing readable of it
         (``b <= start_offset``, or the stream is destroyed); the inputs' ranges wholly
         below ``start_offset`` need not be contiguous (they go with their objects);
      4. the operation's time is not past ``not_after_ms``, if given (as for a commit).

      Then the inputs are doomed, marked at the operation's time, and the outputs live;
      nothing else changes (offsets, epochs, WAL positions).
    - **Doomed objects** are in no stream's ranges, so in no :meth:`objects`,
      :meth:`stream_objects` or :meth:`live_objects` answer; :meth:`doomed` lists them with
      the time they were marked (milliseconds since the epoch, by the writer's clock), for
      deletion after a grace period (docs/lifecycle.md). Their keys stay taken: no commit or
      replace adds an object under a doomed key, since readers may still read it.
      :meth:`forget` drops the entries once the objects are deleted.
    - **Creation time.** :meth:`create_stream` records ``created_ms`` (the store's clock:
      this machine's for SQLite, the writer's for a manifest; :func:`wall_clock_ms`), and every
      read of the stream returns it unchanged; streams created before a store kept it read
      None.
    - **Retention** is kept with the stream (:meth:`create_stream`, :meth:`set_retention`),
      in whole milliseconds (``Retention.max_age_ms``): what is read back is
      ``Retention.from_ms`` of it, None for one that keeps everything.
    - **Nodes.** :meth:`node` of a node never seen is epoch 0, position 0; :meth:`register_node`
      raises the node's epoch by one (a process taking over the node's WAL).
    - **Key-value entries** (``kv_*``): bytes under ``(namespace, key)``, for a broker's own
      bookkeeping; a write is one operation like the others, conditional on the current value
      (``expected``: :data:`ANY`, None for "absent", or the bytes there) and fenced by
      ``node_epoch`` like a commit.
    - **Bad arguments** raise ``TypeError`` / ``ValueError`` naming the value, before anything is
      read or changed. After :meth:`close`, every call raises
      :class:`~streamlib.errors.StreamClosed`; closing twice is fine.
    """

    capabilities: Capabilities = Capabilities()

    # ---- other processes' changes ----

    def refresh(self) -> int:
        """Read the changes other processes made since this one last looked; returns how many
        versions the metadata moved. Reads in between may answer from what this process has
        seen (a shared store's nodes look before every acknowledgement, docs/shared-stores.md).
        A store whose reads always see every change has nothing to do (the default)."""
        return 0

    @property
    def version(self) -> int:
        """A number that moves whenever the metadata this process sees changes (its own
        changes or others' read by :meth:`refresh`). A store with ``capabilities.shared`` must
        keep it; the default (0, never moving) is for stores whose every read is current."""
        return 0

    def collect_garbage(self, grace_ms: int, *,
                        dry_run: bool = False) -> list[tuple[str, str, int, str]]:
        """Delete the store's own objects that no reader needs any more (a manifest's old deltas
        and checkpoints, docs/shared-stores.md), none younger than ``grace_ms`` milliseconds,
        and return them — or, with ``dry_run``, what it would delete, deleting nothing — as
        ``(store URL, key, size, reason)``. A store with nothing of the kind (the default; the
        local SQLite store) returns ``[]``."""
        return []

    # ---- streams ----

    @abc.abstractmethod
    def create_stream(self, name: str | None = None, *,
                      retention: Retention | None = None) -> StreamMeta:
        """A new stream with a fresh id (and ``retention``, kept with it);
        :class:`~streamlib.errors.StreamExists` if a live stream has ``name``."""

    @abc.abstractmethod
    def set_retention(self, stream_id: int, retention: Retention | None) -> StreamMeta:
        """Keep ``retention`` with the live stream (None, or one that keeps everything: no
        limit) and return the stream so. No epoch is needed: any node may change it; the owner
        applies it."""

    @abc.abstractmethod
    def get_stream(self, stream_id: int, *, include_destroyed: bool = False) -> StreamMeta:
        """The stream ``stream_id``; a destroyed one only with ``include_destroyed`` (GC needs to
        tell destroyed from unknown)."""

    @abc.abstractmethod
    def get_stream_by_name(self, name: str) -> StreamMeta:
        """The live stream called ``name``."""

    @abc.abstractmethod
    def streams(self) -> list[StreamMeta]:
        """Every live stream, by id."""

    @abc.abstractmethod
    def open_stream(self, stream_id: int, *, expected_epoch: int | None = None,
                    node_id: str | int | None = None,
                    node_epoch: int | None = None) -> StreamMeta:
        """Raise the stream's epoch by one (only if it is ``expected_epoch``, when given) and
        return the stream with its new epoch. ``node_id``: the node opening it, for a store
        that keeps owners (docs/shared-stores.md): it becomes the owner (``owner_since`` the
        new epoch, unless it owned the stream already); when another node owned it, the stream
        is handed over from that node (``handover_from``, with its epoch and first epoch),
        which may still commit what it acknowledged and then releases it
        (:meth:`release_streams`). While a hand-over is pending it stays with the node handing
        over, whoever opens the stream next; if that node opens the stream itself, nothing is
        handed over any more and its time as owner goes on (its ``owner_since`` is kept). An
        open without ``node_id`` changes the epoch only (owner and hand-over stay). Stores
        without owners ignore ``node_id``. With ``node_epoch`` too, a node fenced since
        (another process registered its id, or took it over) gets
        :class:`~streamlib.errors.FencedError`."""

    def create_and_open(self, name: str | None = None, *, retention: Retention | None = None,
                        node_id: str | int, node_epoch: int | None = None) -> StreamMeta:
        """A new stream (as :meth:`create_stream`) opened by ``node_id`` (as
        :meth:`open_stream`: a fenced ``node_epoch`` gets
        :class:`~streamlib.errors.FencedError`, and nothing is created), returned with its
        epoch and owner. This default makes two changes, the node checked first — a crash
        between them, or a fence that lands between them, leaves a stream that nobody has
        opened; a backend may make them one (a transaction, one manifest delta)."""
        if node_epoch is not None:
            current = self.node(check_node_id(node_id)).node_epoch
            if current != check_id(node_epoch, "node_epoch"):
                raise FencedError(describe("a change by a fenced node", node=node_id,
                                           node_epoch=node_epoch, current=current))
        meta = self.create_stream(name, retention=retention)
        return self.open_stream(meta.id, node_id=node_id, node_epoch=node_epoch)

    def release_streams(self, node_id: str | int, node_epoch: int,
                        stream_ids: Sequence[int]) -> None:
        """``node_id`` (at ``node_epoch``, else :class:`~streamlib.errors.FencedError`,
        whatever it holds) is done with these streams: a hand-over from it completes, and
        streams it owns have no owner any more (its epoch stays the stream's: a later open by
        any node is no hand-over). Streams it does not hold are left alone. A store without
        owners has nothing to do."""
        check_node_id(node_id)
        check_id(node_epoch, "node_epoch")
        for stream_id in stream_ids:
            check_id(stream_id)

    @abc.abstractmethod
    def trim_stream(self, stream_id: int, offset: int) -> StreamMeta:
        """Move ``start_offset`` up to ``offset`` (never back, never past ``end_offset``)."""

    @abc.abstractmethod
    def destroy_stream(self, stream_id: int) -> StreamMeta:
        """Mark the stream destroyed and return it so; its objects stay until GC removes them."""

    # ---- objects and nodes ----

    @abc.abstractmethod
    def commit(self, commit: Commit) -> None:
        """Apply ``commit`` whole, or raise and change nothing (see the class docstring)."""

    @abc.abstractmethod
    def objects(self, stream_id: int, from_offset: int = 0) -> list[ObjectMeta]:
        """The committed objects holding records of ``stream_id`` at or above ``from_offset``,
        in offset order (trimmed records are not filtered: pass ``start_offset`` for that)."""

    def stream_objects(self, stream_id: int, from_offset: int = 0, *,
                       limit: int | None = None) -> list[StreamObject]:
        """:meth:`objects`, each narrowed to this stream's range: what a reader's index needs
        (the first ``limit`` of them, when given: a reader's index holds a window of a long
        stream's objects). A multi-stream object holds ranges of thousands of streams; a
        backend should answer this without reading them, and with ``limit`` without reading
        the stream's later objects (the default derives it from :meth:`objects`)."""
        found = [StreamObject(obj.key, obj.size, obj.range_of(stream_id),  # type: ignore[arg-type]
                              obj.tier)
                 for obj in self.objects(stream_id, from_offset)]
        return found if limit is None else found[:check_limit(limit)]

    @abc.abstractmethod
    def live_objects(self, after: str | None = None, limit: int = 1000) -> list[ObjectMeta]:
        """Up to ``limit`` (at least 1) committed objects, not doomed, with every range, in
        key order from the first key greater than ``after``: a page of what compaction plans
        from and garbage collection keeps. Ranges of destroyed streams are included."""

    @abc.abstractmethod
    def replace(self, replacement: Replacement) -> None:
        """Swap ``replacement.inputs`` for its outputs, whole or not at all (see the class
        docstring)."""

    @abc.abstractmethod
    def doomed(self) -> list[DoomedObject]:
        """Every doomed object, by ``marked_at_ms`` then key."""

    @abc.abstractmethod
    def forget(self, keys: Sequence[str]) -> int:
        """Drop these doomed entries (their objects are deleted); keys not doomed are ignored,
        so a repeated call is harmless. Returns how many were dropped."""

    @abc.abstractmethod
    def node(self, node_id: str | int) -> NodeMeta:
        """The node's epoch and WAL position (0 and 0 if it was never seen)."""

    @abc.abstractmethod
    def register_node(self, node_id: str | int) -> NodeMeta:
        """Raise the node's epoch by one (creating it at epoch 1) and return it."""

    # ---- key-value entries ----

    @abc.abstractmethod
    def kv_get(self, namespace: str, key: str, *,
               max_staleness_ms: int | None = None) -> bytes | None:
        """The value under ``(namespace, key)``, or None.

        ``max_staleness_ms`` (an int in ``[0, 2^63)``, else TypeError or ValueError): the
        caller accepts a value that was the newest at most that long ago. A store that keeps a
        view of the metadata (the manifest) answers from it if the view was read from the
        store, or written through this handle, at most that long ago, and reads the store
        first otherwise; None (the default) always reads first. A value written through this
        handle is seen by its later reads in any case. Stores that read the newest state
        anyway (SQLite) check the argument and ignore it."""

    @abc.abstractmethod
    def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The entries of ``namespace`` whose key starts with ``prefix``, by key."""

    @abc.abstractmethod
    def kv_write(self, namespace: str, key: str, value: bytes | None, *,
                 expected: bytes | AnyValue | None = ANY, node_id: str | int | None = None,
                 node_epoch: int | None = None) -> bool:
        """Set (``value`` bytes) or delete (None) the entry, if its current value is
        ``expected`` (:data:`ANY`: whatever it is; None: absent). True if it was written, False
        if the condition did not hold (nothing changed). With ``node_id`` and
        ``node_epoch``, :class:`~streamlib.errors.FencedError` unless that is the node's
        current epoch."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's resources; later calls raise StreamClosed."""

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "ANY",
    "MAX_KV_VALUE",
    "MAX_NAME_CHARS",
    "TIERS",
    "AnyValue",
    "Capabilities",
    "Commit",
    "DoomedObject",
    "MetadataStore",
    "NodeMeta",
    "ObjectMeta",
    "Replacement",
    "Retention",
    "StreamMeta",
    "StreamObject",
    "StreamRange",
    "StreamState",
    "check_id",
    "check_kv",
    "check_kv_write",
    "check_limit",
    "check_name",
    "check_node_id",
    "check_retention",
    "check_text",
    "check_tier",
    "wall_clock_ms",
]
