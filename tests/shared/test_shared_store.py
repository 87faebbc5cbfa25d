"""Several nodes on one bucket through the object-store manifest: real processes writing at the
same time on moto's S3 server, nodes in one process reading each other's streams, a node id
opened twice fencing the older process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nodes import lines_in, reap, values, wait_for

import streamlib
from streamlib.errors import FencedError
from streamlib.testing.s3 import S3Endpoint

# Nodes, processes and the manifest: the codec plays no part of its own (the C pass runs it).
pytestmark = pytest.mark.once

CHILD = Path(__file__).with_name("shared_child.py")


def shared_config(bucket: str, tmp_path: Path, node: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(tmp_path / f"node-{node}"), "node_id": node, "metadata": "manifest",
            "objects_url": f"s3://{bucket}/shared", "upload_interval_ms": 200, **extra}


@pytest.mark.parametrize("server", ["moto_s3", "seaweedfs_s3"])
def test_three_processes_write_their_streams_at_once(server: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    """Three processes (three nodes) create and fill a stream each at the same time on one
    bucket: every create and commit goes through, ids are handed out once, and a fourth node
    reads all of it."""
    endpoint: S3Endpoint = request.getfixturevalue(server)
    bucket = endpoint.create_bucket()
    env = {**os.environ, "S3_STORAGE_OPTIONS": json.dumps(endpoint.storage_options())}
    children = [subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(shared_config(bucket, tmp_path, f"n{i}")),
         f"s{i}", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        for i in range(3)]
    outputs = [child.communicate(timeout=180) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err[-3000:]
        assert out.split() == ["done", "400"]
    with streamlib.open(shared_config(bucket, tmp_path, "reader"),
                        storage_options=endpoint.storage_options()) as store:
        assert sorted(s.name for s in store.streams()) == ["s0", "s1", "s2"]  # type: ignore[type-var]
        assert sorted(s.id for s in store.streams()) == [1, 2, 3]  # ids handed out once each
        for i in range(3):
            stream = store.open_stream(f"s{i}", read_only=True)
            assert values(stream) == [f"s{i}:{n}:{r}".encode() for n in range(40)
                                       for r in range(10)]
    endpoint.delete_bucket(bucket)


def test_a_node_reads_what_another_commits_and_follows_it(moto_s3: S3Endpoint,
                                                          tmp_path: Path) -> None:
    bucket = moto_s3.create_bucket()
    options = moto_s3.storage_options()
    with streamlib.open(shared_config(bucket, tmp_path, "w"), storage_options=options) as writer, \
            streamlib.open(shared_config(bucket, tmp_path, "r"), storage_options=options) as reader:
        stream = writer.create_stream("events")
        stream.append([b"a", b"b"])
        writer.flush()
        remote = reader.open_stream("events", read_only=True)  # created on the other node
        assert values(remote) == [b"a", b"b"]
        follow = remote.read(remote.next_offset, idle_timeout=20)
        stream.append([b"c"])
        started = time.monotonic()
        writer.flush()
        assert [r.value for r in next(follow).records()] == [b"c"]
        assert time.monotonic() - started < 5
        follow.close()
        # A long poll on the other node's stream wakes when the commit is seen.
        end = remote.next_offset
        stream.append([b"d"])
        writer.flush()
        assert [r.value for b in remote.fetch(end, timeout=10) for r in b.records()] == [b"d"]
    moto_s3.delete_bucket(bucket)


def test_opening_a_node_id_again_fences_the_older_process(moto_s3: S3Endpoint,
                                                          tmp_path: Path) -> None:
    """Two processes with one node id (a restart while the old one still runs): the newer
    registration fences the older one's commits; nothing it had committed is lost."""
    bucket = moto_s3.create_bucket()
    options = moto_s3.storage_options()
    old = streamlib.open(shared_config(bucket, tmp_path, "a", upload_interval_ms=3_600_000),
                         storage_options=options)
    stream = old.create_stream("s")
    stream.append([b"committed"])
    old.flush()
    stream.append([b"late"])
    config = shared_config(bucket, tmp_path, "a")
    config["path"] = str(tmp_path / "node-a-again")  # another machine: another WAL
    with streamlib.open(config, storage_options=options) as new:
        with pytest.raises(FencedError):
            old.flush()
        with pytest.raises(FencedError):  # and it stops appending
            stream.append([b"later"])
        again = new.open_stream("s", read_only=True)
        assert values(again) == [b"committed"]
    old.close()
    moto_s3.delete_bucket(bucket)


def run_until_killed(config: dict[str, Any], env: dict[str, str], acklog: Path,
                     acks: int) -> None:
    """Start a writer child, let it acknowledge ``acks`` appends, then SIGKILL it."""
    child = subprocess.Popen([sys.executable, str(CHILD), json.dumps(config), "s", "0",
                              str(acklog)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", \
            child.stderr.read() if child.stderr else ""
        wait_for(lambda: lines_in(acklog) >= acks or child.poll() is not None, timeout=60,
                 what="the writer process to make progress")
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        reap(child)


def acknowledged(acklog: Path) -> dict[int, int]:
    """{base offset: batch number} of every acknowledged append (a torn last line is not one)."""
    found = {}
    for line in acklog.read_text().split("\n")[:-1]:
        base, batch = line.split() if line != "end" else ("F", "")
        if base not in ("F", "U"):  # refused, outcome unknown; end: the writer stopped
            found[int(base)] = int(batch)
    return found


@pytest.mark.parametrize("server", ["moto_s3", "seaweedfs_s3"])
def test_a_killed_writer_is_taken_over_with_every_acknowledged_record(
        server: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A writer with its WAL in the bucket (the object WAL) is killed with SIGKILL while
    appending, nothing uploaded; another node takes it over: every acknowledged record is in
    the stream, dense and in order, and readers on a third node see it."""
    endpoint: S3Endpoint = request.getfixturevalue(server)
    bucket = endpoint.create_bucket()
    options = endpoint.storage_options()
    env = {**os.environ, "S3_STORAGE_OPTIONS": json.dumps(options)}
    held = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB", "wal": "object"}
    acklog = tmp_path / "acks"
    run_until_killed(shared_config(bucket, tmp_path, "a", **held), env, acklog, 200)
    acked = acknowledged(acklog)
    with streamlib.open(shared_config(bucket, tmp_path, "b", wal="object"),
                        storage_options=options) as taker, \
            streamlib.open(shared_config(bucket, tmp_path, "c"),
                           storage_options=options) as reader:
        stream = reader.open_stream("s", read_only=True)
        assert stream.next_offset == 0  # nothing was uploaded before the kill
        result = taker.take_over("a")
        assert result.node_epoch == 2 and not result.damaged
        start, end = result.streams[stream.id]
        assert start == 0 and end >= 10 * len(acked) and result.records == end
        got = values(taker.open_stream("s", read_only=True))
        assert len(got) == end  # dense: every offset below the end, once
        for base, batch in acked.items():
            assert got[base:base + 10] == [f"s:{batch}:{i}".encode() for i in range(10)]
        wait_for(lambda: reader.get("s").next_offset >= end,  # the third node, at its next look
                 what="the third node to see what was taken over")
        assert values(stream) == got
        again = taker.take_over("a")  # nothing left: the WAL was emptied
        assert again.streams == {} and again.node_epoch == 3
    endpoint.delete_bucket(bucket)


def test_a_file_wal_is_taken_over_where_its_path_is_reachable(tmp_path: Path) -> None:
    """A node with a file WAL on a local disk (think: an EBS volume attached to the machine
    taking over) and a manifest in a local directory: killed, taken over from its path."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    config = {"path": str(tmp_path / "node-a"), "node_id": "a", "metadata": "manifest",
              "objects_url": f"file://{bucket}", "upload_interval_ms": 3_600_000,
              "upload_bytes": "1GiB"}
    acklog = tmp_path / "acks"
    run_until_killed(config, dict(os.environ), acklog, 100)
    acked = acknowledged(acklog)
    with streamlib.open(tmp_path / "node-b", node_id="b", metadata="manifest",
                        objects_url=f"file://{bucket}") as taker:
        with pytest.raises(ValueError, match="wal_path"):
            taker.take_over("a", wal="file")
        with pytest.raises(ValueError, match="own node"):
            taker.take_over("b")
        result = taker.take_over("a", wal="file", wal_path=str(tmp_path / "node-a" / "wal"))
        got = values(taker.open_stream("s", read_only=True))
        assert len(got) == result.streams[1][1] >= 10 * len(acked)
        for base, batch in acked.items():
            assert got[base:base + 10] == [f"s:{batch}:{i}".encode() for i in range(10)]
