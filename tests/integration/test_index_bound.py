"""The in-memory index of a stream's objects is bounded (docs/lifecycle.md, "The in-memory
index of objects"): at most two windows of INDEX_SLICES slices, whatever the stream's length;
a catch-up read, a tailing read and a time lookup over a stream of many more objects than that
read every record, loading windows from the metadata as they go."""

from __future__ import annotations

from pathlib import Path

import pytest

import streamlib
from streamlib import Record
from streamlib.state import INDEX_SLICES, INDEX_WINDOWS

# The index's windows: the codec plays no part (the C pass runs it).
pytestmark = pytest.mark.once

ROUNDS = 2 * INDEX_SLICES + INDEX_SLICES // 2


def test_a_long_streams_index_stays_within_its_windows(tmp_path: Path) -> None:
    settings = {"upload_interval_ms": 3_600_000, "compaction_interval_ms": 0,
                "cache_bytes": "1MiB"}
    with streamlib.open(tmp_path / "data", **settings) as store:
        stream = store.create_stream("long")
        for n in range(ROUNDS):  # one object a round
            stream.append([Record(f"{n}".encode() * 50, timestamp=1_000_000 + n)])
            store.flush()
    bound = INDEX_WINDOWS * INDEX_SLICES
    with streamlib.open(tmp_path / "data", **settings) as store:
        stream = store.open_stream("long")
        state = stream._state  # white-box: the index is what this test is about
        offset = 0
        values = []
        while offset < stream.next_offset:
            result = stream.fetch(offset, max_bytes=4096)
            values += [r.value for b in result for r in b.records()]
            offset = result.next_fetch_offset
            assert len(state.index) <= bound
        assert values == [f"{n}".encode() * 50 for n in range(ROUNDS)]
        # Time lookups anywhere, each within the bound.
        for n in (0, 7, INDEX_SLICES + 3, ROUNDS - 1):
            assert stream.offset_for_timestamp(1_000_000 + n) == n
            assert len(state.index) <= bound
        assert stream.offset_for_timestamp(2_000_000) is None
        # Appends go on: the tail's window takes the new objects and lets its oldest go.
        for n in range(ROUNDS, ROUNDS + INDEX_SLICES + 10):
            stream.append([Record(b"t%d" % n, timestamp=1_000_000 + n)])
            store.flush()
            assert len(state.index) <= bound
        assert [r.value for b in stream.fetch(ROUNDS + INDEX_SLICES + 9) for r in
                b.records()] == [b"t%d" % (ROUNDS + INDEX_SLICES + 9)]
        assert [r.value for b in stream.fetch(3, max_bytes=1) for r in b.records()] == [
            b"3" * 50]
