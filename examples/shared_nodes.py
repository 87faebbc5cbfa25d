"""Two nodes on one bucket: a partition moves from node A to node B, then A dies and B takes
it over — what a broker built on streamlib does when it rebalances and when a machine fails.

    python examples/shared_nodes.py [OBJECTS_URL]

The bucket defaults to a local directory (``file://``, fine for several processes of one
machine); pass ``s3://bucket/prefix`` (with credentials in the environment) for machines.
Each node has its own WAL, here the object WAL in the bucket, so that a dead node's
acknowledged appends can be recovered by any other.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import streamlib


def node(name: str, home: Path, objects_url: str, **options: Any) -> streamlib.StreamStore:
    return streamlib.open(home / name, node_id=name, metadata="manifest", wal="object",
                          objects_url=objects_url, **options)


def node_b(objects_url: str, home: str, storage_options: dict[str, Any] | None) -> None:
    """Node B, in a process of its own: takes the partition over, appends, and dies without
    closing anything (``os._exit``: as a machine that loses power)."""
    b = node("b", Path(home), objects_url, storage_options=storage_options,
             upload_interval_ms=3_600_000)
    moved = b.open_stream(int(b.kv("partitions").get("orders-0") or b"0"))
    for n in range(5, 9):
        moved.append([f"order {n} (from b)".encode()])  # acknowledged: durable in B's WAL
    os._exit(0)


def run(objects_url: str, home: Path, storage_options: dict[str, Any] | None = None) -> dict:
    """Returns what the example saw, for its test."""
    seen: dict[str, Any] = {}
    # Node A serves partition orders-0: its stream, and the mapping in the key-value entries.
    a = node("a", home, objects_url, storage_options=storage_options)
    orders = a.create_stream("orders-0")
    a.kv("partitions").put_if_absent("orders-0", str(orders.id).encode())
    for n in range(5):
        orders.append([f"order {n}".encode()])

    # Rebalance: node B opens the stream for write. A hands it over (it commits what it
    # acknowledged, then releases it); B's appends follow A's; B then dies.
    child = multiprocessing.get_context("spawn").Process(
        target=node_b, args=(objects_url, str(home), storage_options))
    child.start()
    child.join()
    try:
        orders.append([b"late"])
    except streamlib.FencedError as error:
        seen["a after the move"] = type(error).__name__
    a.close()

    # Node C takes B over: B's acknowledged appends come back from its WAL in the bucket.
    c = node("c", home, objects_url, storage_options=storage_options)
    result = c.take_over("b")
    seen["taken over"] = {stream: list(offsets) for stream, offsets in result.streams.items()}
    stream = c.open_stream("orders-0", read_only=True)
    seen["orders"] = [r.value.decode() for _, r in stream.fetch(0, max_bytes=1 << 20).records()]
    c.close()
    return seen


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        url = sys.argv[1] if len(sys.argv) > 1 else f"file://{home}/bucket"
        if url.startswith("file://"):
            Path(url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        seen = run(url, Path(home))
    print(f"node a, after the move: {seen['a after the move']}")
    print(f"node c took over node b: offsets {seen['taken over']}")
    for line in seen["orders"]:
        print(" ", line)


if __name__ == "__main__":
    main()
