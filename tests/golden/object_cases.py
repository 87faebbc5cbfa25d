"""The inputs behind the golden object files (one per format version). Changing one changes the
bytes: that is a format change (docs/format.md, "Object"), to be made with a new version, never
by regenerating a file."""

from __future__ import annotations

from cases import STREAM_ID, block_batches

from streamlib import RecordBatch
from streamlib.objects import ObjectIndex, encode_object

UINT64_MAX = (1 << 64) - 1
BLOCK_BYTES = 1024  # cuts stream 7 into three blocks: its second batch alone exceeds it


def object_streams() -> dict[int, list[RecordBatch]]:
    """Three streams, given out of order (the object holds them by ascending id): the codec's
    golden batches, two small opaque batches, and the largest stream id at a large offset."""
    small = [RecordBatch(b"first", 2, base_timestamp=5, max_timestamp=6, base_offset=0),
             RecordBatch(b"second", 1, base_timestamp=4, max_timestamp=4, base_offset=2)]
    last = [RecordBatch(b"\xff" * 16, 3, base_timestamp=-1, max_timestamp=0,
                        base_offset=(1 << 62) + 1)]
    return {STREAM_ID: block_batches(), UINT64_MAX: last, 3: small}


def object_none(version: int = 1) -> tuple[bytes, ObjectIndex]:
    """The golden object of format ``version`` (``object_none.bin`` is version 1)."""
    return encode_object(object_streams(), block_bytes=BLOCK_BYTES, compression="none",
                         version=version)
