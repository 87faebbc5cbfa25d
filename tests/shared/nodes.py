"""What the shared-store tests have in common: nodes on one local bucket, reading a stream
whole, waiting for a condition, a node dying as if killed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlib

HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB"}
"""Uploads only by flush, at a hand-over's release or at close."""


def node(tmp_path: Path, name: str, **extra: Any) -> streamlib.StreamStore:
    """Node ``name`` on the manifest of the bucket ``tmp_path / "bucket"``."""
    bucket = tmp_path / "bucket"
    bucket.mkdir(exist_ok=True)
    return streamlib.open(tmp_path / f"node-{name}", node_id=name, metadata="manifest",
                          objects_url=f"file://{bucket}", **extra)


def values(stream: streamlib.Stream, start: int | None = None) -> list[bytes]:
    """Every record value from ``start`` (default: the stream's start) to its end."""
    found, offset = [], stream.start_offset if start is None else start
    while offset < stream.next_offset:
        result = stream.fetch(offset, max_bytes=1 << 20)
        for batch in result:
            found += [r.value for r in batch.records()]
        offset = result.next_fetch_offset
    return found


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def eventually_read(store: streamlib.StreamStore, name: str, count: int) -> list[bytes]:
    """The stream's values once ``store`` sees at least ``count`` records in it."""
    wait_for(lambda: store.get(name).next_offset >= count, what=f"{name} to reach {count}")
    return values(store.open_stream(name, read_only=True))


def crash(store: streamlib.StreamStore) -> None:
    """As if the process were killed: nothing more is uploaded, committed or released."""
    store._uploader.stop()
    store._release()
