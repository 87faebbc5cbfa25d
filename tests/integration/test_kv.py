"""The key-value API of a store (``store.kv(namespace)``), on the local metadata and on a shared
manifest: what a broker keeps in it, conditions, fencing of a node taken over, two nodes
updating one counter."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib.errors import FencedError, StreamClosed

# Key-value entries: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


@pytest.fixture(params=["sqlite", "manifest"])
def options(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"metadata": request.param}


def test_a_broker_keeps_its_bookkeeping(tmp_path: Path, options: dict[str, Any]) -> None:
    with streamlib.open(tmp_path / "data", **options) as store:
        partitions = store.kv("partitions")
        stream = store.create_stream("orders-0")
        assert partitions.put_if_absent("orders-0", str(stream.id).encode())
        assert not partitions.put_if_absent("orders-0", b"999")
        offsets = store.kv("offsets")
        offsets.put("group-a/orders-0", b"0")
        assert offsets.compare_and_set("group-a/orders-0", b"0", b"10")
        assert not offsets.compare_and_set("group-a/orders-0", b"0", b"20")
        assert offsets.update("group-a/orders-0", lambda v: str(int(v or b"0") + 5).encode()) \
            == b"15"
        offsets.put("group-b/orders-0", b"3")
        assert offsets.items("group-a/") == {"group-a/orders-0": b"15"}
        assert offsets.delete("group-b/orders-0") and not offsets.delete("group-b/orders-0")
        assert not offsets.delete("group-a/orders-0", expected=b"1")
        assert offsets.get("missing", b"default") == b"default"
    with streamlib.open(tmp_path / "data", **options) as store:  # durable
        assert store.kv("partitions").get("orders-0") == b"1"
        assert store.kv("offsets").items() == {"group-a/orders-0": b"15"}


def test_bad_keys_and_values_are_named(tmp_path: Path, options: dict[str, Any]) -> None:
    with streamlib.open(tmp_path / "data", **options) as store:
        kv = store.kv("ns")
        with pytest.raises(TypeError, match="bytes"):
            kv.put("k", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="bytes"):
            kv.put("k", None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="key"):
            kv.put("", b"v")
        with pytest.raises(ValueError, match="at most"):
            kv.put("k", bytes((1 << 20) + 1))
        with pytest.raises(ValueError, match="namespace"):
            store.kv("")
        assert kv.items() == {}
    with pytest.raises(StreamClosed):
        kv.get("k")


def test_a_node_taken_over_can_no_longer_write(tmp_path: Path) -> None:
    """Two processes with one node id on one shared manifest: the newer fences the older's
    key-value writes, as its commits."""
    objects = f"file://{tmp_path / 'bucket'}"
    (tmp_path / "bucket").mkdir()
    old = streamlib.open(tmp_path / "a1", node_id="a", metadata="manifest", objects_url=objects)
    old.kv("ns").put("k", b"old")
    with streamlib.open(tmp_path / "a2", node_id="a", metadata="manifest",
                        objects_url=objects) as new:
        with pytest.raises(FencedError):
            old.kv("ns").put("k", b"stale")
        with pytest.raises(FencedError):  # even with nothing to delete
            old.kv("ns").delete("absent")
        assert new.kv("ns").get("k") == b"old"
        new.kv("ns").put("k", b"new")
        assert old.kv("ns").get("k") == b"new"  # reads still see the truth
    old.close()


def test_two_nodes_count_together(tmp_path: Path) -> None:
    objects = f"file://{tmp_path / 'bucket'}"
    (tmp_path / "bucket").mkdir()
    stores = [streamlib.open(tmp_path / f"n{i}", node_id=f"n{i}", metadata="manifest",
                             objects_url=objects) for i in range(2)]
    try:
        def add(store: streamlib.StreamStore) -> None:
            for _ in range(20):
                store.kv("c").update("n", lambda v: str(int(v or b"0") + 1).encode())

        threads = [threading.Thread(target=add, args=(s,)) for s in stores for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert stores[0].kv("c").get("n") == stores[1].kv("c").get("n") == b"80"
    finally:
        for store in stores:
            store.close()
