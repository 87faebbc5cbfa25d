"""The public error kinds of streamlib.

Every exception streamlib raises on purpose derives from :class:`StreamLibError`, and each kind
says what the caller should do. Messages name what was wrong and end with the values, in the form
``offset out of range: stream=`7` offset=`120` valid=`[0, 100)```.

The kinds come in families, by what the caller does; catching a family catches all its kinds:

- :class:`RetryLater` — StorageUnavailable, WalFullError, HandOverPending, CacheMiss: the
  request was fine but could not be done now; retry later.
- :class:`Conflict` — OffsetMismatchError, SequenceError, StreamExists, CommitConflict,
  CompactionConflict, NodeLockedError: another writer got there first; read the state and
  decide.
- :class:`FencedError`: a newer owner holds the stream (or the node); reopen if still yours.
- :class:`OutcomeUnknown`: an append may or may not have landed; read before retrying.
- :class:`NotFound` — StreamNotFound, OffsetOutOfRange: look up what is there.
- :class:`StreamClosed`: open it again.
- :class:`CorruptDataError`: stored bytes failed validation; never retry the same bytes.
- :class:`ConfigError`: fix the named setting.
- :class:`MissingExtra`: install the optional package the message names.

:class:`ReadOnlyError` (a read-only handle asked to write) is a mistake in the calling code.

Errors about the caller's own arguments are also the matching builtin (``ConfigError`` is a
``ValueError``, ``StreamNotFound`` a ``LookupError``), so ``except ValueError`` keeps working.
Plain ``TypeError`` and ``ValueError`` are raised for wrong argument types and values that need
no streamlib-specific handling.
"""

from __future__ import annotations

LONGEST_VALUE = 200
"""Characters of a value a message shows; a longer one is cut, saying how long it was."""


def describe(what: str, **values: object) -> str:
    """Format a message as ``what: name=`value` …`` (values last), each value cut to
    :data:`LONGEST_VALUE` characters."""
    if not values:
        return what
    return what + ": " + " ".join(f"{name}=`{_cut(value)}`" for name, value in values.items())


def _cut(value: object) -> str:
    text = str(value)
    if len(text) <= LONGEST_VALUE:
        return text
    return f"{text[:LONGEST_VALUE]}…({len(text)} characters)"


class StreamLibError(Exception):
    """Base of every streamlib error."""


# ---- the families: what the caller does ----

class RetryLater(StreamLibError):
    """The request was fine but could not be done now: storage did not answer, there was no
    room, a hand-over is not finished, the data is not in memory. Nothing was applied (except
    where :class:`OutcomeUnknown` says otherwise): retry later, or elsewhere."""


class Conflict(StreamLibError):
    """The request met another state than the caller assumed: another writer or process got
    there first, or the caller's view is stale. Nothing was applied: read the current state
    and decide."""


class NotFound(StreamLibError, LookupError):
    """What was asked for is not there (any more): a stream, an offset. Look up what is."""


class ConfigError(StreamLibError, ValueError):
    """A configuration value is invalid. Fix the named field; retrying will not help."""

    NO_VALUE = object()  # for errors about a name rather than a value

    def __init__(self, field: str, problem: str, value: object = NO_VALUE) -> None:
        self.field = field
        self.value = None if value is ConfigError.NO_VALUE else value
        values: dict[str, object] = {"field": field}
        if value is not ConfigError.NO_VALUE:
            values["value"] = repr(value) if isinstance(value, str) else value
        super().__init__(describe(f"invalid config: {problem}", **values))


class ConfigWarning(UserWarning):
    """A setting was left out (an unknown ``STREAMLIB_*`` environment variable): check its
    name."""


class CorruptDataError(StreamLibError):
    """Stored bytes failed validation (checksum, framing, an impossible field).

    The data at ``position`` of ``source`` cannot be trusted and is never returned. Do not retry
    the same bytes; recovery code decides whether to skip or stop.
    """

    def __init__(self, problem: str, *, position: int | None = None, source: str | None = None,
                 status: int | None = None) -> None:
        self.problem = problem
        self.position = position
        self.source = source
        self.status = status
        values: dict[str, object] = {}
        if source is not None:
            values["source"] = source
        if position is not None:
            values["position"] = position
        super().__init__(describe(f"corrupt data: {problem}", **values))


class OffsetOutOfRange(NotFound, IndexError):
    """An offset lies outside what a stream holds.

    ``[valid_start, valid_end)`` is the stream's readable range when the call was refused;
    ``valid_end`` itself (the next offset) is accepted too: a fetch there returns nothing yet,
    a trim there empties the stream. Fetch or trim again within that.
    """

    def __init__(self, stream_id: int, offset: int, valid_start: int, valid_end: int) -> None:
        self.stream_id = stream_id
        self.offset = offset
        self.valid_start = valid_start
        self.valid_end = valid_end
        super().__init__(describe("offset out of range", stream=stream_id, offset=offset,
                                  valid=f"[{valid_start}, {valid_end})"))


class FencedError(StreamLibError):
    """A newer epoch owns the stream (another handle, another node), or another process took
    this store's node over. This handle can no longer write; reopen to continue (if this node
    still may)."""


class OutcomeUnknown(StreamLibError):
    """The append was written to the WAL but could not be settled: the store closed, or its
    node was taken over, before it could tell whether the append counts. It may or may not be
    in the stream: read the stream to find out before appending it again (a blind retry may
    write it twice)."""


class StreamNotFound(NotFound):
    """No stream has that id or name (it may have been destroyed)."""


class StreamClosed(StreamLibError):
    """The stream or store was closed; open it again to use it."""


class StorageUnavailable(RetryLater, OSError):
    """The WAL or object store could not be reached after retries, or the object store's local
    disk cannot store data now (full, read-only, failing: ``errno`` is ``ENOSPC``, ``EDQUOT``,
    ``EROFS`` or ``EIO``). Nothing acknowledged is lost: retry later (after freeing room)."""


class WalFullError(RetryLater, TimeoutError):
    """The WAL stayed full for longer than the append timeout: uploads are not keeping up with
    appends (or trims are held back). Retry later; nothing of this append was written."""


class NodeLockedError(Conflict):
    """Another process has this store's node open (its lock beside the metadata, or its WAL).
    Close it there, or give this store another ``node_id``."""


class HandOverPending(RetryLater, TimeoutError):
    """An append to a stream just opened for write here waited for the node that wrote it
    before to release it (docs/shared-stores.md) and gave up. If that node is dead, take it
    over (``store.take_over``); else retry."""


class StreamExists(Conflict, ValueError):
    """A live stream already has that name. Use that stream (look it up by name), or create
    this one under another name."""


class CommitConflict(Conflict):
    """A metadata commit's preconditions do not hold against the stored state, so nothing of it
    was applied: a range does not start at its stream's committed end (a gap, or data committed
    already — a retried commit that had succeeded lands here), an object key is taken, an
    object to remove is unknown or still holds readable data, the node's WAL position would
    go back, or the stream is being handed over to the committing node, whose commits wait
    for the old owner's release. Reload the metadata and decide: if your objects are already
    committed, the retry is done; otherwise rebuild the commit from the current state."""


class CompactionConflict(Conflict):
    """A compaction's (or deletion's) swap was refused because what it planned from changed:
    an input was compacted or deleted by another node first, a stream was destroyed, or the
    ranges moved. Nothing was applied; the objects it wrote are not referenced and are to be
    deleted. Plan again from the current metadata."""


class OffsetMismatchError(Conflict):
    """A conditional append (``expected_offset=``) found the stream at another offset, so
    nothing was written. Another writer got there first, or the caller's view is stale: read
    ``actual`` (the stream's next offset) and decide."""

    def __init__(self, stream_id: int, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(describe("conditional append refused: the stream is at another offset",
                                  stream=stream_id, expected=expected, actual=actual))


class SequenceError(Conflict, ValueError):
    """An idempotent append's sequence number does not follow the producer's last one (a gap),
    is older than the sequences the stream remembers, or repeats a sequence with a different
    batch. Nothing was written; the producer's state is out of step with the stream's."""


class ReadOnlyError(StreamLibError):
    """This stream handle was opened read-only; open the stream for write to append or trim.
    (A stream held read-only because recovery found its acknowledged data damaged refuses
    appends with :class:`CorruptDataError` instead.)"""


class MissingExtra(StreamLibError, ImportError):
    """An optional part of streamlib (an exporter of its metrics) needs a package that is not
    installed: install the extra the message names (``pip install "streamlib[prometheus]"``).
    """

    def __init__(self, extra: str, package: str, what: str) -> None:
        self.extra = extra
        super().__init__(describe(f"{what} needs the {package} package: pip install "
                                  f"\"streamlib[{extra}]\"", package=package), name=package)


class CacheMiss(RetryLater):
    """A cache-only read (``fetch(..., cache_only=True)``) needs data that is not in memory:
    nothing was fetched. Do the same fetch without ``cache_only`` where waiting on the object
    store is fine (a worker thread), or later."""

    def __init__(self, stream_id: int, offset: int, what: str) -> None:
        self.stream_id = stream_id
        self.offset = offset
        super().__init__(describe(f"not in memory: {what}", stream=stream_id, offset=offset))


_DEPRECATED = {"WalLockedError": ("NodeLockedError", NodeLockedError)}


def __getattr__(name: str) -> type[StreamLibError]:
    """Old names, kept for a while with a DeprecationWarning."""
    if name in _DEPRECATED:
        import warnings

        new, kind = _DEPRECATED[name]
        warnings.warn(f"streamlib.errors.{name} is now {new}", DeprecationWarning, stacklevel=2)
        return kind
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
