"""Write the golden files from cases.py. Run only for a deliberate, versioned format change:
python tests/golden/make_golden.py"""

from __future__ import annotations

import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from cases import BASE_OFFSET, STREAM_ID, block_batches, opaque_batch, records_batch  # noqa: E402

from streamlib import codec  # noqa: E402
from streamlib.wal import WalRecord  # noqa: E402
from streamlib.wal._format import HEADER_SIZE, record_size  # noqa: E402
from streamlib.wal.file import FileWal  # noqa: E402

WAL_SEGMENT_BYTES = 4096
WAL_EPOCH = 3


def wal_records() -> list[WalRecord]:
    """The records of the golden WAL segment: the block's batches, one group each."""
    return [WalRecord(STREAM_ID, WAL_EPOCH, batch) for batch in block_batches()]


def wal_segment() -> bytes:
    """A file WAL's first segment (docs/wal.md) after ``wal_records`` were appended one at a
    time: three records and the end marker (the zeros the WAL writes ahead of small groups are
    checked to be zeros and left out)."""
    with tempfile.TemporaryDirectory() as directory:
        wal = FileWal(directory, segment_bytes=WAL_SEGMENT_BYTES)
        for _ in wal.recover():
            pass
        for record in wal_records():
            wal.append(record).result(timeout=30)
        wal.close()
        data = (pathlib.Path(directory) / f"{0:020d}.wal").read_bytes()
    end = sum(record_size(record) for record in wal_records()) + HEADER_SIZE
    assert data[end:] == bytes(len(data) - end), "not zeros after the end marker"
    return data[:end]


def files() -> dict[str, bytes]:
    return {
        "batch_records.bin": codec.encode_batch(STREAM_ID, BASE_OFFSET, records_batch()),
        "batch_opaque.bin": codec.encode_batch(STREAM_ID, 5, opaque_batch()),
        "block_none.bin": codec.encode_block(STREAM_ID, block_batches(), compression="none"),
        "block_lz4.bin": codec.encode_block(STREAM_ID, block_batches(), compression="lz4"),
        "block_zstd.bin": codec.encode_block(STREAM_ID, block_batches(), compression="zstd"),
        "wal_segment.bin": wal_segment(),
    }


if __name__ == "__main__":
    for name, data in files().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
