"""What a store asks of its object stores, by purpose (streamlib.cost, store.stats()["cost"]):
each attempt is a request of its kind, bytes sent and received are counted, and a store's
parts count under their own purposes — the same counts the cache and the uploader keep."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest

import streamlib
from streamlib.cost import Meter
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.testing import faults
from streamlib.testing.faults import FaultyFileSystem

# Counting requests does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


def test_each_attempt_is_a_request_of_its_kind() -> None:
    fs = FaultyFileSystem(fsspec.filesystem("memory"))
    meter = Meter()
    store = ObjectStore(fs, f"/cost-{uuid.uuid4().hex}",
                        retry=RetryPolicy(initial=0.001, cap=0.002)).metered(meter, "upload")
    fs.inject("put", faults.internal_error)  # the first PUT fails: retried, two requests
    store.put("a/k", b"12345")
    store.create("a/c", b"123")
    assert store.get("a/k", 1) == b"2345"
    store.list("a/")
    assert store.exists("a/k")
    store.delete(["a/k", "a/c"])
    counts = meter.snapshot()
    assert counts["upload"] == {"puts": 3, "gets": 1, "heads": 1, "lists": 1, "deletes": 1,
                                "bytes_sent": 5 + 5 + 3, "bytes_received": 4}
    assert counts["total"] == counts["upload"] and counts["read"]["gets"] == 0
    store.put("b", b"xy")
    reader = store.purposed("read")  # another view: the same filesystem, other counts
    assert reader.get("b") == b"xy"
    counts = meter.snapshot()
    assert (counts["read"]["gets"], counts["read"]["bytes_received"]) == (1, 2)
    assert (counts["upload"]["puts"], counts["upload"]["gets"]) == (4, 1)


def test_a_store_counts_its_parts_under_their_purposes(tmp_path: Path) -> None:
    options: dict[str, Any] = {"wal": "object", "metadata": "manifest",
                               "upload_interval_ms": 3_600_000}
    with streamlib.open(tmp_path / "s", **options) as store:
        stream = store.create_stream("a")
        for n in range(20):
            stream.append([n.to_bytes(4, "big") * 256] * 10)
        store.flush()
        cost: Any = store.stats()["cost"]
        uploaded: Any = store.stats()
        listed = {info.key: info.size for info in store.objects.list("data/")}
    assert cost["wal"]["puts"] >= 20  # one at least per append waited for, one at a time
    assert cost["upload"]["puts"] == uploaded["objects_uploaded"] == len(listed)
    assert cost["upload"]["bytes_sent"] == sum(listed.values())
    assert cost["manifest"]["puts"] >= 3  # the stream's creation, its open, the commit
    assert cost["read"]["gets"] == 0 and cost["compaction"]["puts"] == 0
    with streamlib.open(tmp_path / "s", **options) as store:
        reader = store.open_stream("a", read_only=True)
        offset = 0
        while offset < reader.next_offset:
            offset = reader.fetch(offset).next_fetch_offset
        stats: Any = store.stats()
    assert stats["cost"]["read"]["gets"] == stats["cache"]["gets"] > 0
    assert stats["cost"]["read"]["bytes_received"] == stats["cache"]["get_bytes"]
    total = stats["cost"]["total"]
    assert total["gets"] == sum(stats["cost"][p]["gets"] for p in stats["cost"] if p != "total")
