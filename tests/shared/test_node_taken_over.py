"""A node taken over by another while it is still alive (docs/shared-stores.md, "Take-over"):
it learns it at its next look, refuses appends and opens at once, and can no longer take any
stream from its owner."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import HELD, faulty_node, looks, node, values, wait_for

from streamlib.errors import FencedError

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


def test_a_node_taken_over_while_alive_refuses_to_open_its_streams_again(
        tmp_path: Path) -> None:
    """C takes A over while A runs: once A has looked, its open for write of the stream it
    wrote fails with FencedError at once (not after the append timeout, waiting for a release
    A can never write), and C has A's records."""
    a, faulty = faulty_node(tmp_path, "a", wal="object", append_timeout_ms=30_000, **HELD)
    c = node(tmp_path, "c", wal="object", **HELD)
    try:
        a.create_stream("s").append([b"1"])
        c.take_over("a", wal="object")
        counted = looks(faulty)
        wait_for(lambda: counted.hits >= 2, what="A to look after the take-over")
        with pytest.raises(FencedError, match="took over"):
            a.open_stream("s")
        assert values(c.open_stream("s", read_only=True)) == [b"1"]
    finally:
        faulty.clear()
        a.close()
        c.close()


def test_a_node_taken_over_cannot_take_another_nodes_stream(tmp_path: Path) -> None:
    """B takes A over while A runs; A then opens y, a stream B owns and A never wrote: the
    open is refused (the metadata checks A's node epoch), and B goes on appending to y."""
    a = node(tmp_path, "a", wal="object", **HELD)
    b = node(tmp_path, "b", wal="object", append_timeout_ms=10_000, **HELD)
    try:
        a.create_stream("s").append([b"1"])  # A's WAL exists
        y = b.create_stream("y")
        y.append([b"y1"])
        b.flush()
        b.take_over("a", wal="object")
        with pytest.raises(FencedError):
            a.open_stream("y")
        b.open_stream("y").append([b"y2"])
        b.flush()
        assert values(b.open_stream("y", read_only=True)) == [b"y1", b"y2"]
    finally:
        a.close()
        b.close()
