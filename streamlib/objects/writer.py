"""Building an object: data blocks of one or many streams, then the index block and the footer
(docs/format.md, "Object")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamlib import codec
from streamlib.codec import BlockInfo, Compression
from streamlib.objects._format import (
    MAX_ENTRIES,
    VERSION,
    VERSIONS,
    IndexEntry,
    ObjectIndex,
    encode_footer,
    encode_index,
)
from streamlib.records import UINT64_MAX, RecordBatch, check_int

MiB = 1024 * 1024
MAX_BLOCK_BYTES = 64 * MiB
_MAX_BLOCK_RECORDS = 0xFFFFFFFF  # a block header's and an index entry's record_count is a u32


def _check_batches(stream_id: int, batches: object, expected: int | None) -> list[RecordBatch]:
    """``batches`` as a list, each placed (``base_offset`` set) right after the one before it,
    the first at ``expected`` when that is given."""
    if not isinstance(batches, Sequence) or isinstance(batches, str | bytes | bytearray):
        raise TypeError(f"batches must be a sequence of RecordBatch, not {type(batches).__name__}")
    if not batches:
        raise ValueError(f"no batches to add: stream=`{stream_id}`")
    result = list(batches)
    for i, batch in enumerate(result):
        if not isinstance(batch, RecordBatch):
            raise TypeError(f"batches[{i}] must be a RecordBatch, not {type(batch).__name__}")
        if batch.base_offset is None:
            raise ValueError(f"batches[{i}] has no base_offset (only appended batches go into "
                             f"objects): stream=`{stream_id}`")
        if expected is not None and batch.base_offset != expected:
            raise ValueError(f"batches of a stream must be contiguous in offset: "
                             f"stream=`{stream_id}` batches[{i}].base_offset="
                             f"`{batch.base_offset}` expected=`{expected}`")
        expected = batch.base_offset + batch.count
    return result


def cut_blocks(batches: Sequence[RecordBatch], block_bytes: int) -> list[list[RecordBatch]]:
    """Group a stream's batches into blocks of at most ``block_bytes`` framed bytes before
    compression. A batch is never split: one larger than ``block_bytes`` is a block alone."""
    blocks: list[list[RecordBatch]] = []
    current: list[RecordBatch] = []
    size = records = 0
    for batch in batches:
        framed = codec.BATCH_HEADER_SIZE + len(batch.payload)
        if current and (size + framed > block_bytes or records + batch.count > _MAX_BLOCK_RECORDS):
            blocks.append(current)
            current, size, records = [], 0, 0
        current.append(batch)
        size += framed
        records += batch.count
    if current:
        blocks.append(current)
    return blocks


class ObjectWriter:
    """Builds one object from the data of one or many streams.

    ``add`` each stream's batches (appended batches: ``base_offset`` set, contiguous; a stream may
    be added in several calls, each continuing where the last ended), then ``finish`` for the
    bytes and their :class:`ObjectIndex` (the per-stream ranges a metadata commit records and the
    block entries a reader uses). Streams go into the object in ascending id, whatever the order
    of the calls; each is cut into blocks of about ``block_bytes`` (before compression) and each
    block is compressed with ``compression``. The whole object is built in memory: an object too
    large for that is written with :class:`ObjectStreamWriter`, which gives the same bytes.
    Defaults are those of :class:`streamlib.Config`. ``version``: the object format to write (1
    only to make objects as older releases did, for tests and tools).
    """

    def __init__(self, *, block_bytes: int = 1 * MiB, compression: Compression = "lz4",
                 zstd_level: int = 3, version: int = VERSION) -> None:
        self._options = _check_options(block_bytes, compression, zstd_level, version)
        self._streams: dict[int, list[RecordBatch]] = {}
        self._raw_size = 0

    @property
    def raw_size(self) -> int:
        """Framed bytes added so far (blocks before compression, headers excluded): what an
        uploader compares with its object size target."""
        return self._raw_size

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def add(self, stream_id: int, batches: Sequence[RecordBatch]) -> None:
        """Add batches of ``stream_id``: contiguous in offset, and continuing the stream's
        earlier batches in this object if there are any. Nothing is added if they are refused."""
        stream_id = check_int(stream_id, "stream_id", 0, UINT64_MAX)
        held = self._streams.get(stream_id)
        checked = _check_batches(stream_id, batches, None if held is None else held[-1].next_offset)
        if held is None:
            self._streams[stream_id] = checked
        else:
            held.extend(checked)
        self._raw_size += sum(codec.BATCH_HEADER_SIZE + len(b.payload) for b in checked)

    def finish(self) -> tuple[bytes, ObjectIndex]:
        """The object's bytes and its index. The writer is left as it was: calling again gives
        the same object."""
        if not self._streams:
            raise ValueError("an object needs at least one stream's batches")
        writer = ObjectStreamWriter(**self._options)
        parts: list[bytes] = []
        for stream_id in sorted(self._streams):
            writer.add(stream_id, self._streams[stream_id])
            parts.append(writer.take())
        tail, index = writer.finish()
        parts.append(tail)
        return b"".join(parts), index


class ObjectStreamWriter:
    """Builds one object a piece at a time, for objects too large to hold in memory (compaction
    writes them as multipart uploads): the same bytes as :class:`ObjectWriter` gives for the
    same batches.

    ``add`` batches in ascending stream id (a stream may take several calls, each continuing
    where the last ended; a lower id than the last one added is refused); a block is encoded as
    soon as it is full, and :meth:`take` hands out the bytes encoded so far. :meth:`finish`
    encodes the last block and returns the rest of the object (last blocks, index, footer) and
    the :class:`ObjectIndex`. What it holds between calls: the batches of one block not yet
    full, the bytes not yet taken, and 64 bytes of index per block."""

    def __init__(self, *, block_bytes: int = 1 * MiB, compression: Compression = "lz4",
                 zstd_level: int = 3, version: int = VERSION) -> None:
        options = _check_options(block_bytes, compression, zstd_level, version)
        self.block_bytes: int = options["block_bytes"]
        self.compression: Compression = options["compression"]
        self.zstd_level: int = options["zstd_level"]
        self.version: int = options["version"]
        self._stream: int | None = None  # the stream being added
        self._next: int | None = None  # the offset its next batch must start at
        self._block: list[RecordBatch] = []  # of the stream, not yet encoded
        self._block_size = self._block_records = 0
        self._ready: list[bytes] = []  # encoded, not yet taken
        self._entries: list[IndexEntry] = []
        self._position = 0  # bytes encoded so far: where the next block goes
        self._raw_size = 0
        self._finished = False

    @property
    def raw_size(self) -> int:
        """Framed bytes added so far (before compression)."""
        return self._raw_size

    @property
    def position(self) -> int:
        """Bytes of data blocks encoded so far (taken or not)."""
        return self._position

    def add(self, stream_id: int, batches: Sequence[RecordBatch]) -> None:
        """Add batches of ``stream_id`` (see the class docstring). Nothing is added if they are
        refused."""
        if self._finished:
            raise ValueError("the object is finished")
        stream_id = check_int(stream_id, "stream_id", 0, UINT64_MAX)
        if self._stream is not None and stream_id < self._stream:
            raise ValueError(f"streams must be added in ascending id: stream=`{stream_id}` "
                             f"after=`{self._stream}`")
        same = stream_id == self._stream
        checked = _check_batches(stream_id, batches, self._next if same else None)
        if not same:
            self._flush()
            self._stream = stream_id
        for batch in checked:
            framed = codec.BATCH_HEADER_SIZE + len(batch.payload)
            if self._block and (self._block_size + framed > self.block_bytes
                                or self._block_records + batch.count > _MAX_BLOCK_RECORDS):
                self._flush()
            self._block.append(batch)
            self._block_size += framed
            self._block_records += batch.count
            self._raw_size += framed
        self._next = checked[-1].next_offset

    def add_block(self, block: bytes | memoryview, info: BlockInfo) -> None:
        """Add a data block as another object stores it (its header ``info``, as
        :func:`~streamlib.codec.scan_blocks` gives it once it is checked): copied whole, not
        decoded nor compressed again, after the stream's batches added before it. The same
        rules as :meth:`add`: ascending stream id, a stream's records contiguous."""
        if self._finished:
            raise ValueError("the object is finished")
        if len(block) != info.length:
            raise ValueError(f"the block is not the one described: length=`{len(block)}` "
                             f"header=`{info.length}`")
        stream_id = info.stream_id
        if self._stream is not None and stream_id < self._stream:
            raise ValueError(f"streams must be added in ascending id: stream=`{stream_id}` "
                             f"after=`{self._stream}`")
        if stream_id == self._stream and info.base_offset != self._next:
            raise ValueError(f"blocks of a stream must be contiguous in offset: "
                             f"stream=`{stream_id}` base_offset=`{info.base_offset}` "
                             f"expected=`{self._next}`")
        self._flush()
        self._stream = stream_id
        self._entries.append(IndexEntry(
            stream_id, info.base_offset, info.next_offset, self._position, info.length,
            info.record_count, info.first_timestamp, info.max_timestamp,
            info.raw_length if self.version >= 2 else None))
        self._ready.append(bytes(block))
        self._position += info.length
        self._raw_size += info.raw_length
        self._next = info.next_offset

    def take(self) -> bytes:
        """The bytes encoded since the last call (may be empty)."""
        ready, self._ready = self._ready, []
        return b"".join(ready)

    def finish(self) -> tuple[bytes, ObjectIndex]:
        """The rest of the object (what :meth:`take` has not handed out, the index block and
        the footer) and the object's index."""
        if self._finished:
            raise ValueError("the object is finished")
        self._flush()
        if not self._entries:
            raise ValueError("an object needs at least one stream's batches")
        if len(self._entries) > MAX_ENTRIES:
            raise ValueError(f"an object holds at most {MAX_ENTRIES} blocks: "
                             f"blocks=`{len(self._entries)}` (raise block_bytes or split the "
                             f"object)")
        self._finished = True
        index = encode_index(self._entries, version=self.version)
        footer = encode_footer(self._position, len(index), version=self.version)
        tail = self.take() + index + footer
        size = self._position + len(index) + len(footer)
        return tail, ObjectIndex(size, self._position, tuple(self._entries))

    def _flush(self) -> None:
        """Encode the block being filled, if any."""
        group = self._block
        if not group:
            return
        assert self._stream is not None
        block = codec.encode_block(self._stream, group, compression=self.compression,
                                   zstd_level=self.zstd_level)
        first, last = group[0], group[-1]
        start = first.base_offset
        assert start is not None  # checked by add
        self._entries.append(IndexEntry(
            self._stream, start, last.next_offset, self._position, len(block),
            last.next_offset - start, first.base_timestamp,
            max(b.max_timestamp for b in group),
            self._block_size if self.version >= 2 else None))
        self._ready.append(block)
        self._position += len(block)
        self._block = []
        self._block_size = self._block_records = 0


def _check_options(block_bytes: int, compression: Compression, zstd_level: int,
                   version: int) -> dict[str, Any]:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}: version=`{version}`")
    if compression not in codec.COMPRESSIONS:
        raise ValueError(f"compression must be one of none, lz4, zstd: "
                         f"compression=`{compression}`")
    return {"block_bytes": check_int(block_bytes, "block_bytes", 1, MAX_BLOCK_BYTES),
            "compression": compression, "zstd_level": check_int(zstd_level, "zstd_level", 1, 22),
            "version": version}


def encode_object(streams: Mapping[int, Sequence[RecordBatch]], *, block_bytes: int = 1 * MiB,
                  compression: Compression = "lz4", zstd_level: int = 3,
                  version: int = VERSION) -> tuple[bytes, ObjectIndex]:
    """One object from ``{stream_id: batches}`` in one call (see :class:`ObjectWriter`)."""
    if not isinstance(streams, Mapping):
        raise TypeError(f"streams must be a mapping of stream id to batches, "
                        f"not {type(streams).__name__}")
    writer = ObjectWriter(block_bytes=block_bytes, compression=compression,
                          zstd_level=zstd_level, version=version)
    for stream_id, batches in streams.items():
        writer.add(stream_id, batches)
    return writer.finish()
