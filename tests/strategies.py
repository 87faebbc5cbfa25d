"""Hypothesis strategies for records and batches, shared by the codec tests."""

from __future__ import annotations

import os
import struct

import xxhash
from hypothesis import strategies as st

from streamlib import Record

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

timestamps = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1, 1_700_000_000_000]),
)
# Large values are drawn from a few fixed buffers: generating 1 MiB byte by byte is slow.
_BIG = [b"\x00" * (1 << 20), os.urandom(1 << 20), b"x" * 70_000]
values = st.one_of(st.binary(max_size=300), st.just(b""), st.sampled_from(_BIG))
small_values = st.binary(max_size=200)
keys = st.one_of(st.none(), st.just(b""), st.binary(max_size=40))
header_names = st.text(max_size=16)  # any Unicode but surrogates, which UTF-8 cannot carry
headers = st.lists(st.tuples(header_names, st.binary(max_size=24)), max_size=12)


def records(value_strategy: st.SearchStrategy[bytes] = values) -> st.SearchStrategy[Record]:
    return st.builds(Record, value=value_strategy, key=keys, headers=headers,
                     timestamp=st.none() | timestamps)


record_lists = st.lists(records(), min_size=1, max_size=30)
small_record_lists = st.lists(records(small_values), min_size=1, max_size=20)


def reseal(buf: bytearray, at: int = 0, end: int | None = None) -> bytes:
    """Recompute the checksum of the batch or block at ``buf[at:]`` (covering ``[at + 12, end)``)
    so that damage behind it is judged by the deeper checks instead of the checksum."""
    end = len(buf) if end is None else min(end, len(buf))
    buf[at + 4:at + 12] = struct.pack("<Q", xxhash.xxh64_intdigest(bytes(buf[at + 12:end])))
    return bytes(buf)
