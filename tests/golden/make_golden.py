"""Write the golden files from cases.py. Run only for a deliberate, versioned format change:
python tests/golden/make_golden.py"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from cases import BASE_OFFSET, STREAM_ID, block_batches, opaque_batch, records_batch  # noqa: E402

from streamlib import codec  # noqa: E402


def files() -> dict[str, bytes]:
    return {
        "batch_records.bin": codec.encode_batch(STREAM_ID, BASE_OFFSET, records_batch()),
        "batch_opaque.bin": codec.encode_batch(STREAM_ID, 5, opaque_batch()),
        "block_none.bin": codec.encode_block(STREAM_ID, block_batches(), compression="none"),
        "block_lz4.bin": codec.encode_block(STREAM_ID, block_batches(), compression="lz4"),
        "block_zstd.bin": codec.encode_block(STREAM_ID, block_batches(), compression="zstd"),
    }


if __name__ == "__main__":
    for name, data in files().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
