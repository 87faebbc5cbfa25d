"""What the lifecycle tests check of a store: the metadata's coverage of every stream, and the
keys in the bucket against those the metadata references."""

from __future__ import annotations

import itertools

from streamlib import StreamStore
from streamlib.meta import MetadataStore


def check_coverage(meta: MetadataStore) -> None:
    """Every live stream's readable offsets lie in exactly one range of one live object."""
    for s in meta.streams():
        spans = sorted((o.range.start_offset, o.range.end_offset)
                       for o in meta.stream_objects(s.id, 0))
        readable = [span for span in spans if span[1] > s.start_offset]
        if s.end_offset > s.start_offset:
            assert readable and readable[0][0] <= s.start_offset, (s, spans)
            assert readable[-1][1] == s.end_offset, (s, spans)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(readable)), spans


def bucket(store: StreamStore) -> set[str]:
    """The keys of the store's data objects (uploads and compaction outputs)."""
    return {info.key for info in store.objects.list("data/")}


def live(meta: MetadataStore) -> set[str]:
    return {o.key for o in meta.live_objects(limit=1_000_000)}


def doomed(meta: MetadataStore) -> set[str]:
    return {d.key for d in meta.doomed()}


def referenced(meta: MetadataStore) -> set[str]:
    """The keys the metadata names: live and doomed."""
    return live(meta) | doomed(meta)
