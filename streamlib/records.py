"""Records, record batches, and what appends and fetches return.

A :class:`Record` is a small immutable tuple: building millions of them must stay cheap, and the
codec reads their fields column by column. A :class:`RecordBatch` is the unit of append: either
records encoded by the codec, or an opaque payload (a broker's own format) with a record count.

What is read back has types of its own, so that a type checker knows what is always there: a
:class:`PlacedBatch` (a batch at its place in a stream: ``base_offset`` is an int) and a
:class:`DecodedRecord` (``timestamp`` is an int). Each is its parent class with no field of its
own: building one costs the same, and it compares equal to its parent with the same fields.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Literal, Self

# The format's limits (docs/format.md); the codec and its C twin enforce the same.
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
MAX_BATCH_RECORDS = (1 << 31) - 1
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

Encoding = Literal["records", "opaque"]
Headers = tuple[tuple[str, bytes], ...]
_BYTES_LIKE = (bytes, bytearray, memoryview)


def now_ms() -> int:
    """Wall-clock time in milliseconds since the Unix epoch (the unit of every timestamp)."""
    return time.time_ns() // 1_000_000


def _as_bytes(value: object, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, _BYTES_LIKE):
        return bytes(memoryview(value).cast("B")) if isinstance(value, memoryview) else bytes(value)
    raise TypeError(f"{what} must be bytes, bytearray or memoryview, not {type(value).__name__}")


def check_int(value: object, what: str, low: int, high: int) -> int:
    """``value`` as a plain int in ``[low, high]``: TypeError for a non-int (bools included),
    ValueError naming ``what`` for one out of range. The one range check of the API edge."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in [{low}, {high}]: {what}=`{value}`")
    return int(value)


def check_timestamp(value: object, what: str) -> int:
    """A timestamp: signed 64-bit milliseconds."""
    return check_int(value, what, INT64_MIN, INT64_MAX)


def _headers(headers: object) -> Headers:
    if headers == () or headers is None:
        return ()
    if isinstance(headers, Mapping):
        headers = headers.items()
    if isinstance(headers, (str, bytes)) or not isinstance(headers, Iterable):
        raise TypeError("headers must be a sequence of (name, value) pairs or a mapping, "
                        f"not {type(headers).__name__}")
    result = []
    for pair in headers:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"each header must be a (name, value) pair, not {pair!r}")
        name, value = pair
        if not isinstance(name, str):
            raise TypeError(f"header name must be str, not {type(name).__name__}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"header name is not encodable as UTF-8: name=`{name!r}`") from e
        result.append((name, _as_bytes(value, f"header `{name}` value")))
    return tuple(result)


class Record(tuple[Any, ...]):
    """One record: ``value``, optional ``key``, ``headers`` and ``timestamp``.

    ``key=None`` (no key) and ``key=b""`` (an empty key) are different and both survive a round
    trip. ``headers`` are ``(name, value)`` pairs (names may repeat, as in Kafka); a mapping is
    accepted too. ``timestamp`` is milliseconds since the epoch; ``None`` takes the batch's time
    when the record is encoded, and a decoded record always has one.
    """

    __slots__ = ()

    def __new__(cls, value: bytes, key: bytes | None = None,
                headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] = (),
                timestamp: int | None = None) -> Self:
        if type(value) is not bytes:
            value = _as_bytes(value, "record value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "record key")
        if headers != ():
            headers = _headers(headers)  # None is taken as no headers, as for key
        if timestamp is not None:
            timestamp = check_timestamp(timestamp, "record timestamp")
        return tuple.__new__(cls, (value, key, headers, timestamp))

    if TYPE_CHECKING:  # the types of the itemgetter properties below (C-level reads)
        @property
        def value(self) -> bytes: ...
        @property
        def key(self) -> bytes | None: ...
        @property
        def headers(self) -> Headers: ...
        @property
        def timestamp(self) -> int | None: ...
    else:
        value = property(itemgetter(0), doc="The record's value.")
        key = property(itemgetter(1), doc="The key, or None.")
        headers = property(itemgetter(2), doc="(name, value) pairs.")
        timestamp = property(itemgetter(3), doc="Milliseconds, or None.")

    def __repr__(self) -> str:
        value, key, headers, timestamp = self
        parts = [repr(value)]
        if key is not None:
            parts.append(f"key={key!r}")
        if headers:
            parts.append(f"headers={headers!r}")
        if timestamp is not None:
            parts.append(f"timestamp={timestamp}")
        return f"Record({', '.join(parts)})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


class DecodedRecord(Record):
    """A record decoded from a batch (:meth:`RecordBatch.records`, :meth:`FetchResult.records`):
    its ``timestamp`` is always set. Equal to the :class:`Record` of the same fields."""

    __slots__ = ()

    def __new__(cls, value: bytes, key: bytes | None = None,
                headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] = (),
                timestamp: int | None = None) -> Self:
        if timestamp is None:
            raise TypeError("a DecodedRecord has a timestamp: give timestamp=")
        return super().__new__(cls, value, key, headers, timestamp)

    if TYPE_CHECKING:
        @property
        def timestamp(self) -> int: ...


_BATCH_FIELDS = attrgetter("payload", "count", "base_timestamp", "max_timestamp", "encoding",
                           "base_offset")


@dataclass(frozen=True, slots=True, eq=False)
class RecordBatch:
    """The unit of append: ``count`` records and their payload.

    Build one from records with :meth:`from_records`, or wrap a payload in your own format with
    ``RecordBatch(payload, count)`` (``encoding="opaque"``: streamlib stores it as it is and
    counts ``count`` offsets for it). Batches read back from a stream are :class:`PlacedBatch`,
    whose ``base_offset`` is set.
    """

    payload: bytes
    count: int
    base_timestamp: int
    max_timestamp: int
    encoding: Encoding = "opaque"
    base_offset: int | None = None

    def __init__(self, payload: bytes | bytearray | memoryview, count: int,
                 base_timestamp: int | None = None, max_timestamp: int | None = None,
                 encoding: Encoding = "opaque", base_offset: int | None = None) -> None:
        payload = _as_bytes(payload, "batch payload")
        count = check_int(count, "batch count", 1, MAX_BATCH_RECORDS)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"batch payload exceeds the format's limit of {MAX_PAYLOAD_BYTES} "
                             f"bytes: size=`{len(payload)}`")
        if encoding == "records" and (base_timestamp is None or max_timestamp is None):
            raise ValueError("a records-encoded batch needs the base_timestamp and max_timestamp "
                             "it was encoded with")
        base_timestamp = now_ms() if base_timestamp is None else check_timestamp(
            base_timestamp, "base_timestamp")
        max_timestamp = base_timestamp if max_timestamp is None else check_timestamp(
            max_timestamp, "max_timestamp")
        if max_timestamp < base_timestamp:
            raise ValueError("max_timestamp must not be below base_timestamp: "
                             f"base_timestamp=`{base_timestamp}` max_timestamp=`{max_timestamp}`")
        if encoding not in ("records", "opaque"):
            raise ValueError(f"batch encoding must be 'records' or 'opaque': encoding=`{encoding}`")
        if base_offset is not None:
            base_offset = check_int(base_offset, "base_offset", 0, INT64_MAX - count)
        if encoding == "records":
            from streamlib import codec  # the codec imports this module

            codec.check_records(payload, count, base_timestamp, max_timestamp)
        _init(self, payload, count, base_timestamp, max_timestamp, encoding, base_offset)

    @classmethod
    def from_records(cls, records: Iterable[Record], *,
                     timestamp: int | None = None) -> RecordBatch:
        """Encode records into a batch. Records without a timestamp get ``timestamp`` (default:
        now). The batch's base timestamp is its first record's."""
        from streamlib import codec

        return codec.encode_records(records, timestamp=timestamp)

    @classmethod
    def _trusted(cls, payload: bytes, count: int, base_timestamp: int, max_timestamp: int,
                 encoding: Encoding, base_offset: int | None = None) -> Self:
        """Build without validation: only for values the codec has just produced or verified."""
        batch = object.__new__(cls)
        _init(batch, payload, count, base_timestamp, max_timestamp, encoding, base_offset)
        return batch

    @property
    def size(self) -> int:
        """Bytes of payload."""
        return len(self.payload)

    @property
    def next_offset(self) -> int:
        """The offset after this batch's last record (needs ``base_offset``)."""
        if self.base_offset is None:
            raise ValueError("this batch has not been appended: it has no base_offset")
        return self.base_offset + self.count

    def records(self) -> list[DecodedRecord]:
        """Decode the records (``encoding="records"`` only)."""
        if self.encoding != "records":
            raise TypeError("this batch holds an opaque payload: read .payload instead")
        from streamlib import codec

        return codec.decode_records(self.payload, self.count, self.base_timestamp,
                                    self.max_timestamp)

    def with_offset(self, base_offset: int) -> PlacedBatch:
        """The same batch placed at ``base_offset`` in a stream."""
        base_offset = check_int(base_offset, "base_offset", 0, INT64_MAX - self.count)
        return PlacedBatch._trusted(self.payload, self.count, self.base_timestamp,
                                    self.max_timestamp, self.encoding, base_offset)

    # Written out rather than generated: a PlacedBatch equals the RecordBatch of the same fields
    # (the generated ones compare only instances of one class).
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordBatch):
            return NotImplemented
        return bool(_BATCH_FIELDS(self) == _BATCH_FIELDS(other))

    def __hash__(self) -> int:
        return hash(_BATCH_FIELDS(self))

    def __repr__(self) -> str:
        at = "" if self.base_offset is None else f" base_offset={self.base_offset}"
        return (f"<{type(self).__name__} {self.encoding} count={self.count} "
                f"bytes={len(self.payload)}{at} "
                f"timestamps=[{self.base_timestamp}, {self.max_timestamp}]>")


class PlacedBatch(RecordBatch):
    """A batch at its place in a stream: ``base_offset`` is set (an int, never None). What
    fetches and ``read()`` return, and what :meth:`RecordBatch.with_offset` makes; built by
    hand, it takes ``base_offset=`` (for a fake of a stream in a test)."""

    __slots__ = ()

    if TYPE_CHECKING:
        @property
        def base_offset(self) -> int: ...

    def __init__(self, payload: bytes | bytearray | memoryview, count: int,
                 base_timestamp: int | None = None, max_timestamp: int | None = None,
                 encoding: Encoding = "opaque", *, base_offset: int) -> None:
        if base_offset is None:
            raise TypeError("a PlacedBatch has a base_offset: give base_offset=")
        super().__init__(payload, count, base_timestamp, max_timestamp, encoding, base_offset)


def _init(batch: RecordBatch, payload: bytes, count: int, base_timestamp: int,
          max_timestamp: int, encoding: Encoding, base_offset: int | None) -> None:
    # The batch is frozen: its fields are set through the slots' own setters (twice a batch
    # an append: one call each, no loop).
    payload_, count_, base_, max_, encoding_, offset_ = _SETTERS
    payload_(batch, payload)
    count_(batch, count)
    base_(batch, base_timestamp)
    max_(batch, max_timestamp)
    encoding_(batch, encoding)
    offset_(batch, base_offset)


_SETTERS: tuple[Any, ...] = tuple(RecordBatch.__dict__[name].__set__
                                  for name in RecordBatch.__slots__)
assert RecordBatch.__slots__ == ("payload", "count", "base_timestamp", "max_timestamp",
                                 "encoding", "base_offset")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an appended batch landed: offsets ``[base_offset, next_offset)``."""

    base_offset: int
    count: int

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.count


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Batches in offset order, and where to fetch next.

    The first batch may begin before the offset asked for (batch granularity).
    ``next_fetch_offset`` is the offset to pass to the next fetch; ``start_offset`` and
    ``end_offset`` are the stream's readable range ``[start, end)`` when the fetch was answered
    (``end_offset`` is the stream's ``next_offset`` then)."""

    batches: tuple[PlacedBatch, ...]
    next_fetch_offset: int
    start_offset: int
    end_offset: int

    def __post_init__(self) -> None:
        given: Iterable[RecordBatch] = self.batches  # built by hand: any iterable of batches
        batches = given if isinstance(given, tuple) else tuple(given)
        for batch in batches:  # every fetch runs this: the class compared first, no call
            if batch.__class__ is not PlacedBatch and not isinstance(batch, PlacedBatch):
                batches = tuple(map(_placed, batches))
                break
        if batches is not given:
            object.__setattr__(self, "batches", batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[PlacedBatch]:
        return iter(self.batches)

    def records(self) -> Iterator[tuple[int, DecodedRecord]]:
        """``(offset, record)`` for every record. Every batch must be records-encoded: an
        opaque one raises TypeError before anything is returned."""
        if any(batch.encoding != "records" for batch in self.batches):
            raise TypeError("this result holds opaque batches: read their .payload instead")
        return self._records()

    def _records(self) -> Iterator[tuple[int, DecodedRecord]]:
        for batch in self.batches:
            yield from enumerate(batch.records(), batch.base_offset)


def _placed(batch: RecordBatch) -> PlacedBatch:
    """A batch of a FetchResult built by hand, as a PlacedBatch (it needs its base_offset)."""
    if isinstance(batch, PlacedBatch):
        return batch
    if batch.base_offset is None:
        raise ValueError("fetched batches carry their base_offset")
    return batch.with_offset(batch.base_offset)
