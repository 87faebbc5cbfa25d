"""Building an object: data blocks of one or many streams, then the index block and the footer
(docs/format.md, "Object")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streamlib import codec
from streamlib.codec import Compression
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
    block is compressed with ``compression``.

    Blocks are encoded at ``finish``; an object written in parts (multipart upload) would encode a
    stream's blocks as soon as the stream is complete, with the same :func:`cut_blocks` and
    entries — hence the two-step shape. Defaults are those of :class:`streamlib.Config`.
    ``version``: the object format to write (1 only to make objects as older releases did, for
    tests and tools).
    """

    def __init__(self, *, block_bytes: int = 1 * MiB, compression: Compression = "lz4",
                 zstd_level: int = 3, version: int = VERSION) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}: version=`{version}`")
        self.version = version
        self.block_bytes = check_int(block_bytes, "block_bytes", 1, MAX_BLOCK_BYTES)
        if compression not in codec.COMPRESSIONS:
            raise ValueError(f"compression must be one of none, lz4, zstd: "
                             f"compression=`{compression}`")
        self.compression: Compression = compression
        self.zstd_level = check_int(zstd_level, "zstd_level", 1, 22)
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
        parts: list[bytes] = []
        entries: list[IndexEntry] = []
        position = 0
        for stream_id in sorted(self._streams):
            for group in cut_blocks(self._streams[stream_id], self.block_bytes):
                block = codec.encode_block(stream_id, group, compression=self.compression,
                                           zstd_level=self.zstd_level)
                first, last = group[0], group[-1]
                start = first.base_offset
                assert start is not None  # checked by add
                raw = sum(codec.BATCH_HEADER_SIZE + len(b.payload) for b in group)
                entries.append(IndexEntry(stream_id, start, last.next_offset, position,
                                          len(block), last.next_offset - start,
                                          first.base_timestamp,
                                          max(b.max_timestamp for b in group),
                                          raw if self.version >= 2 else None))
                parts.append(block)
                position += len(block)
        if len(entries) > MAX_ENTRIES:
            raise ValueError(f"an object holds at most {MAX_ENTRIES} blocks: "
                             f"blocks=`{len(entries)}` (raise block_bytes or split the object)")
        index = encode_index(entries, version=self.version)
        parts.append(index)
        parts.append(encode_footer(position, len(index), version=self.version))
        data = b"".join(parts)
        return data, ObjectIndex(len(data), position, tuple(entries))


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
