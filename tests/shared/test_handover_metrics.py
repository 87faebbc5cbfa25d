"""The metrics of a hand-over on a shared bucket: the old owner counts the fence and the
stream it released, the new owner its open for write and the stream it received."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import HELD, node, values
from waits import wait_for

from streamlib.metrics import Metrics

# The hand-over does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


def counted(found: Metrics, name: str, **labels: str) -> float:
    value = found[name].value(**labels)
    assert isinstance(value, int | float)
    return value


def test_a_hand_over_is_counted_on_both_nodes(tmp_path: Path) -> None:
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        stream = a.create_stream("s")
        for n in range(3):
            stream.append([bytes([n]) * 10])
        before = a.metrics()
        assert counted(before, "streamlib_write_opens") == 1
        assert counted(before, "streamlib_fences", cause="opened_elsewhere") == 0
        moved = b.open_stream("s")
        moved.append([b"b" * 10])  # lands after A's release
        wait_for(lambda: counted(a.metrics(), "streamlib_handovers", direction="out") == 1,
                 what="A to count its release")
        found = a.metrics()
        assert counted(found, "streamlib_fences", cause="opened_elsewhere") == 1
        assert counted(found, "streamlib_fences", cause="node_taken_over") == 0
        assert counted(found, "streamlib_node_fenced") == 0
        assert counted(found, "streamlib_handovers", direction="in") == 0
        taken = b.metrics()
        assert counted(taken, "streamlib_write_opens") == 1
        assert counted(taken, "streamlib_handovers", direction="in") == 1
        assert counted(taken, "streamlib_handovers", direction="out") == 0
        assert counted(taken, "streamlib_append_records") == 1
        b.flush()
        assert values(b.open_stream("s", read_only=True)) == [
            bytes([n]) * 10 for n in range(3)] + [b"b" * 10]
    finally:
        a.close()
        b.close()
