"""The message cache's budget holds for data that compresses well (docs/cache.md, "Memory a
store uses"): a store of zstd data at about 100 to 1 is read back in a fresh process with a small
``cache_bytes``, by default-sized fetches and by a ``read()`` iterator (readahead on), and the
process's peak resident memory grows by at most ``cache_bytes`` plus a stated constant.

Before the read path counted decoded bytes, a 1 MiB fetch loaded (and decompressed) 1 MiB of
*stored* blocks: here about 100 MiB at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import streamlib
from streamlib import Record

pytestmark = [pytest.mark.slow, pytest.mark.once]  # a process of its own: the C pass runs it

MiB = 1024 * 1024
CACHE_BYTES = 8 * MiB
BEYOND_BUDGET = 24 * MiB
"""What a reading store may hold beyond ``cache_bytes`` here (docs/cache.md): the fetch's own
result (1 MiB) and the records made from it, one block loaded past a full budget, the GET
buffers, the object index cache, and the allocator's slack."""
RECORD = (b"streamlib keeps streams in object storage. " * 1600)[:64 * 1024]
BATCHES = 160  # of 16 records of 64 KiB: 160 MiB decoded, about 1.5 MiB stored
CHILD = Path(__file__).with_name("memory_child.py")


@pytest.fixture(scope="module")
def compressible_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compressible")
    # One object of 160 blocks (one upload at the flush): a read may take many blocks at once.
    with streamlib.open(path, compression="zstd", upload_bytes="1GiB",
                        upload_interval_ms=3_600_000, wal_bytes="512MiB",
                        cache_bytes="512MiB") as store:
        stream = store.create_stream("compressible")
        for _ in range(BATCHES):
            stream.append([Record(RECORD)] * 16)
        store.flush()
        stats = store.stats()
    assert stats["bytes_uploaded"] < BATCHES * MiB // 50, stats  # it does compress: > 50 to 1
    assert stats["objects_uploaded"] == 1, stats
    return path


@pytest.mark.parametrize("mode", ["fetch", "read"])
def test_reading_compressible_data_stays_within_the_budget(compressible_store: Path,
                                                           mode: str) -> None:
    done = subprocess.run([sys.executable, str(CHILD), str(compressible_store),
                           str(CACHE_BYTES), mode], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["records"] == BATCHES * 16 and found["bytes"] == BATCHES * MiB
    growth = found["peak"] - found["baseline"]
    assert growth <= CACHE_BYTES + BEYOND_BUDGET, (growth // MiB, found)
    cache = found["cache"]
    assert cache["bytes"] <= cache["max_bytes"], cache
