"""A child of test_memory_budget.py: reads a whole stream of highly compressible data back with
a small message cache, as a user would (default fetch sizes, readahead on), and prints its
memory: the resident set after opening the store, and the peak while reading.

Usage: memory_child.py STORE_DIR CACHE_BYTES MODE  (MODE: fetch or read)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import streamlib


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def main() -> None:
    path, cache_bytes, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with streamlib.open(path, cache_bytes=cache_bytes, compression="zstd") as store:
        stream = store.open_stream("compressible", read_only=True)
        end = stream.next_offset
        stream.fetch(0, max_bytes=1)  # the object index is read: part of the baseline
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
        baseline = _status("VmRSS")
        records = size = 0
        if mode == "fetch":
            offset = 0
            while offset < end:
                result = stream.fetch(offset)
                for batch in result:
                    for record in batch.records():
                        records += 1
                        size += len(record.value or b"")
                offset = result.next_fetch_offset
        else:
            for batch in stream.read(0):
                for record in batch.records():
                    records += 1
                    size += len(record.value or b"")
                if records >= end:
                    break
        usage = store.stats()["cache"]
        print(json.dumps({"baseline": baseline, "peak": _status("VmHWM"), "records": records,
                          "bytes": size, "cache": usage}))


if __name__ == "__main__":
    main()
