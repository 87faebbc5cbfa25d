"""What an operator must know is logged once, at INFO or above, under the module's logger
(``streamlib.<module>``), naming the node and the stream (docs/guide.md, "Logging"): the object
store unavailable and back, a full WAL (appends waiting, refused, admitted again), damage found
at recovery, a hand-over of a stream between two nodes (both sides), a take-over (the taker's
side, and the node taken over finding itself fenced). Real stores throughout: a local file WAL,
faults from a fault-injecting filesystem, damage made in the WAL's file after a close, nodes on
one local bucket through a shared manifest."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import wait_for

import streamlib
from streamlib import RecordBatch, StreamStore, WalFullError
from streamlib.testing.faults import FaultyFileSystem, internal_error
from streamlib.wal._format import HEADER_SIZE

HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB"}
"""Uploads only by flush, at a hand-over's release or at close."""


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG, logger="streamlib"):
        yield caplog


def logged(logs: pytest.LogCaptureFixture, logger: str, level: int,
           *words: str) -> list[logging.LogRecord]:
    """The records of ``logger`` at ``level`` whose message holds every one of ``words``."""
    return [r for r in list(logs.records) if r.name == logger and r.levelno == level
            and all(word in r.getMessage() for word in words)]


def the_one(logs: pytest.LogCaptureFixture, logger: str, level: int, *words: str) -> str:
    """The message of the only such record, once it has been logged (by a store's thread)."""
    wait_for(lambda: logged(logs, logger, level, *words), what=f"{logger}: {words}")
    found = logged(logs, logger, level, *words)
    assert len(found) == 1, [r.getMessage() for r in found]
    return found[0].getMessage()


def faulty_store(path: Path, **overrides: Any) -> tuple[StreamStore, FaultyFileSystem]:
    """A store of node ``n1`` whose objects go to memory through a fault injector."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    store = streamlib.open(path, filesystem=faulty, objects_url=objects_url(path),
                           node_id="n1", **overrides)  # type: ignore[arg-type]
    return store, faulty


def objects_url(path: Path) -> str:
    return f"memory://{path.name}-{abs(hash(str(path)))}"


def node(tmp_path: Path, name: str, **extra: Any) -> StreamStore:
    """Node ``name`` on the manifest of the bucket ``tmp_path / "bucket"``."""
    bucket = tmp_path / "bucket"
    bucket.mkdir(exist_ok=True)
    return streamlib.open(tmp_path / f"node-{name}", node_id=name, metadata="manifest",
                          objects_url=f"file://{bucket}", **extra)


def test_the_object_store_unavailable_and_back_is_logged_once_each(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    store, faulty = faulty_store(tmp_path, upload_interval_ms=20, retry_timeout_ms=50)
    with store:
        stream = store.create_stream()
        faulty.inject("put", internal_error, times=None)  # down until cleared
        stream.append([b"kept in the WAL"])
        wait_for(lambda: store.stats()["upload_failures"] >= 3, what="three failed rounds")
        message = the_one(logs, "streamlib.uploader", logging.WARNING, "uploads failing")
        assert "node=`n1`" in message and "the data stays in the WAL" in message
        faulty.clear()
        wait_for(lambda: store.stats()["pending_upload_bytes"] == 0, what="the upload")
        message = the_one(logs, "streamlib.uploader", logging.INFO, "uploads work again")
        assert "node=`n1`" in message and "failures=`" in message
    # the retries in between: DEBUG only
    assert not logged(logs, "streamlib.uploader", logging.WARNING, "failed again")


def test_a_full_wal_is_logged_when_appends_wait_are_refused_and_find_room(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    store, faulty = faulty_store(tmp_path, wal_bytes="256KiB", upload_interval_ms=20,
                                 retry_timeout_ms=50, append_timeout_ms=200)
    faulty.inject("put", internal_error, times=None)
    with store:
        stream = store.create_stream()
        with pytest.raises(WalFullError):
            for _ in range(10_000):
                stream.append(RecordBatch(bytes(1000), count=1))
        with pytest.raises(WalFullError):
            stream.append(RecordBatch(bytes(1000), count=1))  # counted, not logged
        message = the_one(logs, "streamlib.write", logging.WARNING,
                          "appends wait for room in the WAL")
        assert "node=`n1`" in message
        message = the_one(logs, "streamlib.write", logging.WARNING, "appends are refused")
        assert "node=`n1`" in message and f"stream=`{stream.id}`" in message
        faulty.clear()
        wait_for(lambda: store.stats()["wal_usage_bytes"] == 0, what="the upload and trim")
        stream.append(RecordBatch(bytes(1000), count=1))  # room at once
        message = the_one(logs, "streamlib.write", logging.INFO, "appends find room again")
        assert "node=`n1`" in message and "refused=`2`" in message


def flip_a_byte_of_the_second_record(wal: Path) -> None:
    """Damage in the middle of the WAL's last segment (in the second record's body)."""
    segment = sorted(wal.glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    first = HEADER_SIZE + struct.unpack_from("<I", data, 16)[0]  # body length at byte 16
    second = HEADER_SIZE + struct.unpack_from("<I", data, first + 16)[0]
    data[first + second - 2] ^= 0xFF
    segment.write_bytes(bytes(data))


def test_damage_found_at_recovery_is_logged_with_the_node_and_the_stream(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data"
    store, faulty = faulty_store(path, retry_timeout_ms=50, **HELD)
    faulty.inject("put", internal_error, times=None)  # close cannot upload: all stays in the WAL
    stream = store.create_stream("s")
    for i in range(3):
        stream.append([b"r%d" % i])
    store.close()
    flip_a_byte_of_the_second_record(path / "wal")
    logs.clear()
    with streamlib.open(path, objects_url=objects_url(path), node_id="n1", **HELD):
        pass
    message = the_one(logs, "streamlib.recovery", logging.WARNING,
                      "WAL recovery dropped damaged bytes")
    assert "node=`n1`" in message and "damaged bytes between valid records" in message
    message = the_one(logs, "streamlib.recovery", logging.ERROR, "the WAL lost records")
    assert "node=`n1`" in message and f"stream=`{stream.id}`" in message


def test_a_torn_tail_cut_at_recovery_is_logged(tmp_path: Path,
                                               logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data"
    store, faulty = faulty_store(path, retry_timeout_ms=50, **HELD)
    faulty.inject("put", internal_error, times=None)
    stream = store.create_stream("s")
    stream.append([b"whole"])
    stream.append([b"torn" * 100])
    store.close()
    segment = sorted((path / "wal").glob("*.wal"))[-1]
    data = segment.read_bytes()
    first = HEADER_SIZE + struct.unpack_from("<I", data, 16)[0]
    second = HEADER_SIZE + struct.unpack_from("<I", data, first + 16)[0]
    with open(segment, "r+b") as f:
        f.truncate(first + second - 50)  # the last record loses its end, as in a crash
    logs.clear()
    with streamlib.open(path, objects_url=objects_url(path), node_id="n1", **HELD) as again:
        assert [r.value for _, r in again.open_stream("s").fetch(0).records()] == [b"whole"]
    message = the_one(logs, "streamlib.recovery", logging.WARNING, "torn tail")
    assert "node=`n1`" in message
    assert not logged(logs, "streamlib.recovery", logging.ERROR)  # no acknowledged gap


@pytest.mark.once
def test_a_hand_over_is_logged_by_both_nodes(tmp_path: Path,
                                             logs: pytest.LogCaptureFixture) -> None:
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        stream = a.create_stream("s")
        stream.append([b"from a"])
        taken = b.open_stream("s")
        message = the_one(logs, "streamlib.shared.coordination", logging.INFO,
                          "opened for write while another node holds it")
        assert all(f in message for f in ("node=`b`", "holder=`a`", f"stream=`{stream.id}`"))
        taken.append([b"from b"])  # waits for a's release
        for name, level, words, fields in [
                ("fencing", logging.INFO, "stream fenced", ("node=`a`", "owner=`b`")),
                ("fencing", logging.INFO, "released to the node", ("node=`a`",)),
                ("fencing", logging.INFO, "handed over to this node", ("node=`b`",))]:
            message = the_one(logs, f"streamlib.shared.{name}", level, words)
            assert all(f in message for f in (*fields, f"stream=`{stream.id}`")), message
    finally:
        a.close()
        b.close()


@pytest.mark.once
def test_a_take_over_is_logged_by_the_taker_and_by_the_node_taken_over(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    a = node(tmp_path, "a", wal="object", **HELD)
    c = node(tmp_path, "c", wal="object", **HELD)
    try:
        stream = a.create_stream("s")
        stream.append([b"1"])
        c.take_over("a", wal="object")
        message = the_one(logs, "streamlib.shared.takeover", logging.INFO, "taking over a node")
        assert "node=`c`" in message and "taken=`a`" in message
        message = the_one(logs, "streamlib.shared.takeover", logging.INFO, "took over a node")
        assert all(f in message for f in ("node=`c`", "taken=`a`", f"streams=`[{stream.id}]`"))
        message = the_one(logs, "streamlib.node", logging.WARNING, "this node is fenced")
        assert "node=`a`" in message
        # the node's fence, once: not a line for each of its streams
        assert not logged(logs, "streamlib.shared.fencing", logging.INFO, "stream fenced")
    finally:
        a.close()
        c.close()
