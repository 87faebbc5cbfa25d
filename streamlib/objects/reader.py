"""Reading an object through an :class:`~streamlib.io.ObjectStore` with few ranged GETs: one for
the footer and the index (the object's tail), then one per run of the blocks a read needs.

Lock order: ``ObjectReader._load_lock`` → ``IndexCache._lock``, ``ObjectReader._count_lock``;
the last two are leaves. A first index load holds ``_load_lock`` across its GETs. These sit
below the node's order (:mod:`streamlib.node`) and the message cache, which calls a reader with
its own lock released; nothing here calls back up.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence

from streamlib import codec
from streamlib.codec import BlockInfo
from streamlib.errors import CorruptDataError, StorageUnavailable
from streamlib.io import ObjectStore
from streamlib.objects._format import (
    FOOTER_SIZE,
    IndexEntry,
    ObjectIndex,
    decode_footer,
    decode_index,
)
from streamlib.records import INT64_MAX, UINT64_MAX, PlacedBatch, check_int

KiB = 1024
MiB = 1024 * KiB
_RAW_LENGTH = struct.Struct("<I")
_RAW_LENGTH_AT = 20
"""Where a data block's header holds ``raw_length`` (docs/format.md, "Data block")."""
TAIL_RATIO = 8 * KiB
"""The tail GET reads at least one byte per TAIL_RATIO bytes of object (up to TAIL_MAX): an index
of 1 MiB blocks (64 bytes an entry) fits in it for objects up to 8 GiB."""
TAIL_MAX = 1 * MiB
"""The most the object's size adds to the tail GET. The size comes from the metadata and is only
a claim until that GET returns the bytes up to it, and a store may allocate what a GET asks for
before it knows how much the object holds (a local file's read does): so what the claim makes
the reader ask for, before it is checked, stays small. A larger index takes a second GET."""


class IndexCache:
    """A thread-safe LRU of parsed object indexes, bounded by their estimated memory
    (:attr:`ObjectIndex.memory_size`). Shared by the readers of a store; keys are whatever the
    readers choose (:class:`ObjectReader` uses ``(store url, key)``).

    An index heavier than ``max_bytes`` alone is not kept. ``hits`` and ``misses`` count
    :meth:`get` answers."""

    def __init__(self, max_bytes: int = 16 * MiB) -> None:
        self.max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        self.hits = 0  # GUARDED_BY(_lock); read alone (a counter)
        self.misses = 0  # GUARDED_BY(_lock); read alone (a counter)
        # GUARDED_BY(_lock); ``len`` and ``in`` read it alone (one dict call each, atomic: an
        # answer that may be stale by the time it is used, which a reader tolerates)
        self._items: OrderedDict[Hashable, ObjectIndex] = OrderedDict()
        self._bytes = 0  # GUARDED_BY(_lock); read alone by ``nbytes``
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The estimated memory of the indexes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> ObjectIndex | None:
        with self._lock:
            index = self._items.get(key)
            if index is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return index

    def put(self, key: Hashable, index: ObjectIndex) -> None:
        """Keep ``index`` under ``key`` (replacing what was there), evicting the least recently
        used ones until the bound holds."""
        if not isinstance(index, ObjectIndex):
            raise TypeError(f"index must be an ObjectIndex, not {type(index).__name__}")
        weight = index.memory_size
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.memory_size
            if weight > self.max_bytes:
                return
            self._items[key] = index
            self._bytes += weight
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.memory_size

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.memory_size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def plan_runs(entries: Iterable[IndexEntry], merge_gap: int,
              limit: int | None = None) -> Iterator[list[IndexEntry]]:
    """Group blocks (sorted by position, no repeats) into runs, each fetched with one GET: a block
    joins the run before it when at most ``merge_gap`` bytes lie between them (fetching a small gap
    costs less than another request) and, with ``limit``, while the run holds fewer than
    ``limit`` stored bytes (so that a read bounded by max_bytes does not fetch far beyond it)."""
    run: list[IndexEntry] = []
    stored = 0
    for entry in entries:
        if run and (entry.position - run[-1].end > merge_gap
                    or (limit is not None and stored >= limit)):
            yield run
            run, stored = [], 0
        run.append(entry)
        stored += entry.size
    if run:
        yield run


def plan_parts(entries: Iterable[IndexEntry], merge_gap: int,
               most: int) -> Iterator[list[IndexEntry]]:
    """The runs of :func:`plan_runs`, each cut into parts of at most ``most`` bytes from the
    start of its first block to the end of its last (at least one block): what a readahead
    fetches with one GET each, several at once."""
    for run in plan_runs(entries, merge_gap):
        part: list[IndexEntry] = []
        for entry in run:
            if part and entry.end - part[0].position > most:
                yield part
                part = []
            part.append(entry)
        if part:
            yield part


def _header_problem(info: BlockInfo, entry: IndexEntry) -> str:
    """How a block's header disagrees with its index entry; empty if it does not."""
    checks = [("size", info.length, entry.size), ("stream", info.stream_id, entry.stream_id),
              ("start_offset", info.base_offset, entry.start_offset),
              ("end_offset", info.next_offset, entry.end_offset),
              ("record_count", info.record_count, entry.record_count),
              ("first_timestamp", info.first_timestamp, entry.first_timestamp),
              ("max_timestamp", info.max_timestamp, entry.max_timestamp)]
    return " ".join(f"{name}=`{block}` (index `{indexed}`)"
                    for name, block, indexed in checks if block != indexed)


class ObjectReader:
    """Reads one object of ``size`` bytes (known from metadata) under ``key`` of ``store``.

    The first use fetches the footer and the index with one ranged GET of the object's last
    ``32 + max(tail_guess, min(size / 8 KiB, 1 MiB))`` bytes, and a second GET (of the missing
    part only) when the index is larger than that; the parsed index is kept by the reader and, when
    ``cache`` is given, in the shared :class:`IndexCache`. Blocks are then fetched with one
    ranged GET per run of blocks at most ``merge_gap`` bytes apart.

    Every check of docs/format.md is made: a damaged footer, index or block raises
    :class:`~streamlib.errors.CorruptDataError` naming ``key`` and the position in the object;
    damaged data is never returned. ``size`` is checked too, by the GETs themselves: an object
    that ends before it (a GET that ends early, or fails where the object has ended) raises
    CorruptDataError naming where it ended; one longer than it shows no footer at ``size``. A
    missing object raises FileNotFoundError (from the store).

    No block decodes to more than ``max_block_bytes``: a block whose header (or index entry)
    says more is refused with CorruptDataError before anything is decompressed (the limit of
    ``Config.max_block_bytes``; the format's own is 128 MiB), and one whose header disagrees
    with its entry's ``raw_size`` too.

    ``gets`` and ``fetched_bytes`` count the GETs this reader made and the bytes they returned.
    A reader may be shared by threads.
    """

    def __init__(self, store: ObjectStore, key: str, size: int, *,
                 cache: IndexCache | None = None, tail_guess: int = 64 * KiB,
                 merge_gap: int = 64 * KiB, max_block_bytes: int = codec.MAX_BLOCK) -> None:
        if not isinstance(store, ObjectStore):
            raise TypeError(f"store must be an ObjectStore, not {type(store).__name__}")
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if cache is not None and not isinstance(cache, IndexCache):
            raise TypeError(f"cache must be an IndexCache, not {type(cache).__name__}")
        self.store = store
        self.key = key
        self.size = check_int(size, "size", 0, INT64_MAX)
        self.cache = cache
        self.tail_guess = check_int(tail_guess, "tail_guess", 0, INT64_MAX)
        self.merge_gap = check_int(merge_gap, "merge_gap", 0, INT64_MAX)
        self.max_block_bytes = check_int(max_block_bytes, "max_block_bytes", 1, codec.MAX_BLOCK)
        self.gets = 0  # GUARDED_BY(_count_lock); read alone (a counter)
        self.fetched_bytes = 0  # GUARDED_BY(_count_lock); read alone (a counter)
        # Written once, GUARDED_BY(_load_lock); read alone first (a reference: None or final)
        self._index: ObjectIndex | None = None
        self._load_lock = threading.Lock()
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectReader({self.store.url}/{self.key}, size={self.size})"

    def decoded_bound(self, entry: IndexEntry) -> int:
        """The most the block of ``entry`` may take once decoded, before it is fetched: its
        index's ``raw_size`` (format 2), else ``max_block_bytes`` (format 1 does not say)."""
        return self.max_block_bytes if entry.raw_size is None else entry.raw_size

    @property
    def _cache_key(self) -> tuple[str, str]:
        return self.store.url, self.key

    # ---- the index ----

    def index(self) -> ObjectIndex:
        """The object's checked index (fetched on first use)."""
        if self._index is not None:
            return self._index
        with self._load_lock:  # one load, however many threads ask at once
            if self._index is None:
                cached = None if self.cache is None else self.cache.get(self._cache_key)
                if cached is not None and cached.size == self.size:
                    self._index = cached
                else:
                    self._index = self._load_index()
                    if self.cache is not None:
                        self.cache.put(self._cache_key, self._index)
            return self._index

    def _load_index(self) -> ObjectIndex:
        if self.size < FOOTER_SIZE:
            raise CorruptDataError(f"object of `{self.size}` bytes is too small for a footer",
                                   position=0, source=self.key)
        guess = max(self.tail_guess, min(self.size // TAIL_RATIO, TAIL_MAX))
        tail_start = self.size - min(self.size, FOOTER_SIZE + guess)
        # Once this GET has returned every byte asked for, the object is known to hold `size`
        # bytes: the index GET below and the block GETs later stay within what it holds.
        tail = self._get(tail_start, self.size)
        position, index_size, version = decode_footer(memoryview(tail)[-FOOTER_SIZE:],
                                                      self.size, source=self.key)
        if position < tail_start:  # the guess was short: fetch only what is missing
            block: bytes | memoryview = self._get(position, tail_start) + tail[:-FOOTER_SIZE]
        else:
            block = memoryview(tail)[position - tail_start:position - tail_start + index_size]
        return decode_index(block, position, self.size, version=version, source=self.key)

    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, all of them: fewer is damage (the object is
        shorter than its recorded size), reported by where the object ended."""
        with self._count_lock:
            self.gets += 1
        try:
            data = self.store.get(self.key, start, end)
        except (FileNotFoundError, StorageUnavailable):
            raise
        except OSError as error:
            # A GET past the end may fail instead of coming back short (a local file refuses
            # to seek beyond the largest size its filesystem allows): if the object ends before
            # `end`, that is what is wrong; otherwise the store's error stands.
            held = self._listed_size()
            if held is not None and held < end:
                raise CorruptDataError(
                    f"object of `{held}` bytes is shorter than its recorded size `{self.size}` "
                    f"(a ranged GET of `[{start}, {end})` failed)",
                    position=held, source=self.key) from error
            raise
        with self._count_lock:
            self.fetched_bytes += len(data)
        if len(data) != end - start:
            raise CorruptDataError(f"object is shorter than its recorded size `{self.size}` "
                                   f"(a ranged GET of `[{start}, {end})` ended early)",
                                   position=start + len(data), source=self.key)
        return data

    def _listed_size(self) -> int | None:
        """The object's size as the store lists it, or None if the listing fails or lacks it
        (this runs only to explain a failed GET: the GET's error is the one to report then)."""
        try:
            listed = self.store.list(self.key)
        except Exception:  # the GET's error, raised by the caller, says more than this one
            return None
        return next((info.size for info in listed if info.key == self.key), None)

    # ---- blocks ----

    def read(self, stream_id: int, start_offset: int, end_offset: int | None = None,
             max_bytes: int | None = None) -> list[PlacedBatch]:
        """The batches of ``stream_id`` holding records of ``[start_offset, end_offset)``
        (``None``: to the end of what this object holds), in offset order, each with its
        ``base_offset``; the first may begin before ``start_offset`` (batch granularity).

        With ``max_bytes``, the result stops before the batch that would take the payload total
        past it, but holds at least one batch. A stream the object does not hold, or a range
        outside what it holds of the stream, gives an empty list: which objects hold what is the
        metadata's business, and :meth:`ObjectIndex.range_of` answers it for this one.
        Offsets below zero, or ``end_offset`` below ``start_offset``, raise ValueError."""
        stream_id = check_int(stream_id, "stream_id", 0, UINT64_MAX)
        start_offset = check_int(start_offset, "start_offset", 0, INT64_MAX)
        if end_offset is not None:
            end_offset = check_int(end_offset, "end_offset", start_offset, INT64_MAX)
        if max_bytes is not None:
            max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        if end_offset == start_offset:
            return []
        entries = self.index().blocks(stream_id, start_offset, end_offset)
        result: list[PlacedBatch] = []
        total = 0
        for _, batches in self._fetch(entries, max_bytes):
            for batch in batches:
                base = batch.base_offset
                if base + batch.count <= start_offset:
                    continue
                if end_offset is not None and base >= end_offset:
                    return result
                if max_bytes is not None and result and total + batch.size > max_bytes:
                    return result
                result.append(batch)
                total += batch.size
        return result

    def read_blocks(self, entries: Iterable[IndexEntry]) -> list[list[PlacedBatch]]:
        """The batches of each of these blocks of this object (entries of :meth:`index`), in the
        order given. Blocks at most ``merge_gap`` bytes apart are fetched with one GET (the shape
        of a block cache's miss list)."""
        index = self.index()
        wanted = list(entries)
        for entry in wanted:
            if not isinstance(entry, IndexEntry):
                raise TypeError(f"entries must be IndexEntry, not {type(entry).__name__}")
            i = bisect.bisect_left(index.entries, entry.position, key=lambda e: e.position)
            if i == len(index.entries) or index.entries[i] != entry:
                raise ValueError(f"not a block of this object: key=`{self.key}` "
                                 f"entry=`{entry}`")
        unique = sorted(set(wanted), key=lambda e: e.position)
        found = dict(self._fetch(unique, None))
        return [found[entry] for entry in wanted]

    def read_stored(self, entries: Sequence[IndexEntry]
                    ) -> list[tuple[IndexEntry, memoryview]]:
        """The stored bytes of each of these blocks (entries of :meth:`index`, sorted by
        position, no repeats), as they are in the object, not yet checked: fetched as
        :meth:`read_blocks` does, one GET a run. :meth:`check_stored` checks one without
        decompressing it; :meth:`decode_stored` decodes it (what compaction does with the
        blocks it copies as they are, and with those it cuts anew)."""
        found: list[tuple[IndexEntry, memoryview]] = []
        for run in plan_runs(entries, self.merge_gap, None):
            start = run[0].position
            data = memoryview(self._get(start, run[-1].end))
            found.extend((entry, data[entry.position - start:entry.end - start])
                         for entry in run)
        return found

    def check_stored(self, block: memoryview, entry: IndexEntry) -> BlockInfo:
        """The header of a stored block, its checksum over the stored bytes verified and its
        fields compared with its index entry (CorruptDataError naming the object and where),
        without decompressing it."""
        scan = codec.scan_blocks(block, source=self.key)
        if len(scan.entries) != 1 or scan.entries[0].length != len(block):
            raise CorruptDataError(f"not one data block at `{entry.position}` (its index entry "
                                   f"says `{entry.size}` bytes)", position=entry.position,
                                   source=self.key)
        info = scan.entries[0]
        problem = _header_problem(info, entry)
        if problem or (entry.raw_size is not None and info.raw_length != entry.raw_size):
            raise CorruptDataError(f"data block of stream `{entry.stream_id}` disagrees with its "
                                   f"index entry: {problem or f'raw_size={info.raw_length}'}",
                                   position=entry.position, source=self.key)
        return info

    def decode_stored(self, block: memoryview, entry: IndexEntry) -> list[PlacedBatch]:
        """The batches of a stored block from :meth:`read_stored`, checked as a read checks
        them."""
        return self._decode(block, entry)

    def _fetch(self, entries: Sequence[IndexEntry],
               limit: int | None) -> Iterator[tuple[IndexEntry, list[PlacedBatch]]]:
        """Each block's batches, fetching a run at a time, only when the caller gets that far."""
        for run in plan_runs(entries, self.merge_gap, limit):
            start = run[0].position
            data = memoryview(self._get(start, run[-1].end))
            for entry in run:
                yield entry, self._decode(data[entry.position - start:entry.end - start], entry)

    def _decode(self, block: memoryview, entry: IndexEntry) -> list[PlacedBatch]:
        where = f"data block of stream `{entry.stream_id}` at offsets " \
                f"`[{entry.start_offset}, {entry.end_offset})`"
        # What the block decodes to, from its header, before anything is decompressed (the
        # header is checked whole by the decoder; a wrong value here is refused either way).
        raw = _RAW_LENGTH.unpack_from(block, _RAW_LENGTH_AT)[0] \
            if len(block) >= codec.BLOCK_HEADER_SIZE else 0
        claimed = max(raw, entry.raw_size or 0)
        if claimed > self.max_block_bytes:
            raise CorruptDataError(
                f"{where} decodes to `{claimed}` bytes, more than max_block_bytes "
                f"`{self.max_block_bytes}` (a larger limit reads it if it is genuine)",
                position=entry.position, source=self.key)
        if entry.raw_size is not None and raw != entry.raw_size:
            raise CorruptDataError(f"{where} disagrees with its index entry: raw_size=`{raw}` "
                                   f"(index `{entry.raw_size}`)",
                                   position=entry.position, source=self.key)
        try:
            info, batches = codec.decode_block(block, source=self.key)
        except CorruptDataError as error:
            if error.source == self.key and error.position is not None:
                position = entry.position + error.position  # a position in the stored block
                problem = f"{error.problem} in the {where}"
            else:  # found in the decompressed bytes: the block is the place to name
                position = entry.position
                problem = (f"{error.problem} in the {where} (at `{error.position}` of its "
                           f"decompressed bytes)")
            raise CorruptDataError(problem, position=position, source=self.key,
                                   status=error.status) from error
        problem = _header_problem(info, entry)
        if problem:
            raise CorruptDataError(f"{where} disagrees with its index entry: {problem}",
                                   position=entry.position, source=self.key)
        return batches
