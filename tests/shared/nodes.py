"""What the shared-store tests have in common: nodes on one local bucket (with a
fault-injecting metadata store when a test steers them), reading a stream whole, waiting for a
condition, a node paused, or dying as if killed."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from waits import wait_for

import streamlib
from streamlib.errors import FencedError, StreamNotFound
from streamlib.io import ObjectStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing import FaultyFileSystem, FaultyMetadataStore
from streamlib.testing.faults import MetadataRule, access_denied

HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB"}
"""Uploads only by flush, at a hand-over's release or at close."""


def node(tmp_path: Path, name: str, **extra: Any) -> streamlib.StreamStore:
    """Node ``name`` on the manifest of the bucket ``tmp_path / "bucket"``."""
    bucket = tmp_path / "bucket"
    bucket.mkdir(exist_ok=True)
    return streamlib.open(tmp_path / f"node-{name}", node_id=name, metadata="manifest",
                          objects_url=f"file://{bucket}", **extra)


def faulty_node(tmp_path: Path, name: str,
                **extra: Any) -> tuple[streamlib.StreamStore, FaultyMetadataStore]:
    """Node ``name`` as :func:`node`, its manifest wrapped by a FaultyMetadataStore (returned
    too) through which a test steers the node's looks, opens and releases."""
    bucket = tmp_path / "bucket"
    bucket.mkdir(exist_ok=True)
    faulty = FaultyMetadataStore(ManifestMetadataStore(ObjectStore.from_url(f"file://{bucket}"),
                                                       node_id=name))
    store = streamlib.open(tmp_path / f"node-{name}", node_id=name, metadata="manifest",
                           objects_url=f"file://{bucket}", metadata_store=faulty, **extra)
    return store, faulty


def looks(faulty: FaultyMetadataStore, thread: str = "streamlib-fences") -> MetadataRule:
    """A rule that only counts the looks at the metadata (refreshes) that ``thread`` makes
    from now on (``rule.hits``). After a change, two more looks of the fence thread mean that
    the first of them, and its scan of the change, are done."""
    return faulty.inject("refresh", thread=thread, times=None)


def durable(stream: streamlib.Stream, count: int) -> bool:
    """Whether the first ``count`` appends of ``stream`` in flight have completed their WAL
    write (white-box: what no public call shows, and what the acknowledgement gate's tests
    must know before they let a look end)."""
    state = stream._state
    with state.lock:
        flight = list(state.inflight)
    return len(flight) >= count and all(item.wal.done for item in flight[:count])


def lines_in(path: Path) -> int:
    """Lines a child process has written to ``path`` so far (0 before it exists)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def gone(stream: streamlib.Stream) -> bool:
    """Whether the handle's store dropped the stream (destroyed, here or by another node)."""
    try:
        stream.info()
    except StreamNotFound:
        return True
    return False


def values(stream: streamlib.Stream, start: int | None = None) -> list[bytes]:
    """Every record value from ``start`` (default: the stream's start) to its end."""
    found, offset = [], stream.start_offset if start is None else start
    while offset < stream.next_offset:
        result = stream.fetch(offset, max_bytes=1 << 20)
        for batch in result:
            found += [r.value for r in batch.records()]
        offset = result.next_fetch_offset
    return found


def eventually_read(store: streamlib.StreamStore, name: str, count: int) -> list[bytes]:
    """The stream's values once ``store`` sees at least ``count`` records in it."""
    wait_for(lambda: store.get(name).next_offset >= count, what=f"{name} to reach {count}")
    return values(store.open_stream(name, read_only=True))


def flush_outcome(store: streamlib.StreamStore) -> object:
    """``"ok"`` if ``store.flush()`` works, else the exception it raised (for an assertion
    that shows it)."""
    try:
        store.flush()
    except Exception as error:
        return error
    return "ok"


def pause(meta: FaultyMetadataStore, filesystem: FaultyFileSystem,
          node_id: str) -> Callable[[], None]:
    """Stop a node as if its process were paused (SIGSTOP, a long collection, a frozen VM), as
    far as the other nodes can tell: its own threads' looks at the metadata, commits and
    releases wait at gates, and so do its object WAL's PUTs of records (an append made
    meanwhile is not durable). Its node's ``meta`` and ``filesystem`` are the wrappers it was
    opened with. The calling thread (the test's) is not held. Returns what wakes the node."""
    caller = threading.current_thread().name

    def own(thread: str) -> bool:
        return thread != caller

    for op in ("refresh", "commit", "release_streams"):
        meta.pause(op, times=None, thread=own)
    puts = threading.Event()
    filesystem.inject("put", gate=puts, times=None,
                      match=lambda path: f"/wal/{node_id}/" in path and path.endswith(".wal"))

    def wake() -> None:
        puts.set()
        filesystem.clear()
        meta.clear()

    return wake


def crash(store: streamlib.StreamStore) -> None:
    """As if the process were killed: nothing more is uploaded, committed or released."""
    store._uploader.stop()
    store._release()


def faulty_pair(tmp_path: Path, faulty: Any) -> tuple[streamlib.StreamStore,
                                                      streamlib.StreamStore, dict[str, Any]]:
    """Nodes A (its object WAL and objects through ``faulty``, a FaultyFileSystem over the
    memory filesystem) and B on one memory bucket; also A's options, to open it again."""
    bucket = f"memory://review-{tmp_path.name}"
    options = {"node_id": "a", "metadata": "manifest", "wal": "object", "objects_url": bucket,
               **HELD}
    a = streamlib.open(tmp_path / "node-a", filesystem=faulty, **options)
    b = streamlib.open(tmp_path / "node-b", **{**options, "node_id": "b"})
    return a, b, options


def hand_over_during_an_append(a: streamlib.StreamStore, b: streamlib.StreamStore,
                               faulty: Any, keep: Callable[[str], bool],
                               before: Sequence[bytes] = (), upload_before: bool = True,
                               ) -> tuple[streamlib.Stream, streamlib.Stream,
                                          Future[streamlib.AppendResult]]:
    """A new stream of A (with ``before`` appended, and uploaded if ``upload_before``); A's
    PUTs of paths
    ``keep`` matches fail from here on (so that A's WAL keeps what it has, or nothing uploads);
    B opens the stream for write while A appends X. Tried on new streams until X reaches A's
    WAL before A's fence thread sees the hand-over. Returns A's handle, B's, X's future.
    X is refused only when its acknowledgement waits for a look: tests that expect
    FencedError run ``without_lease`` (within A's lease X would be acknowledged, and land
    before B's records — whether A's first look came before X is a race)."""
    for attempt in range(20):
        stream = a.create_stream(f"s{attempt}")
        if before:
            stream.append(list(before))
            if upload_before:
                a.flush()
        faulty.inject("put", access_denied, times=None, match=keep)
        taken = b.open_stream(stream.id)
        try:
            return stream, taken, stream.append_future([b"X"])
        except FencedError:  # A saw the hand-over first: again
            faulty.clear()
    raise AssertionError("A saw every hand-over before its append reached the WAL")


def reap(child: subprocess.Popen[str]) -> None:
    """A child process of a test is gone and its pipes closed: killed if it still runs (and
    woken first, should it be stopped)."""
    if child.poll() is None:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait()
    for pipe in (child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()
