"""Several nodes on one bucket through the object-store manifest: real processes writing at the
same time on moto's S3 server, nodes in one process reading each other's streams, a node id
opened twice fencing the older process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib.errors import FencedError
from streamlib.testing.s3 import S3Endpoint

CHILD = Path(__file__).with_name("shared_child.py")


def shared_config(bucket: str, tmp_path: Path, node: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(tmp_path / f"node-{node}"), "node_id": node, "metadata": "manifest",
            "objects_url": f"s3://{bucket}/shared", "upload_interval_ms": 200, **extra}


def records(stream: streamlib.Stream) -> list[bytes]:
    found, offset = [], stream.start_offset
    while offset < stream.next_offset:
        result = stream.fetch(offset, max_bytes=1 << 20)
        for batch in result:
            found += [r.value for r in batch.records()]
        offset = result.next_fetch_offset
    return found


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
            assert records(stream) == [f"s{i}:{n}:{r}".encode() for n in range(40)
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
        assert records(remote) == [b"a", b"b"]
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
        assert records(again) == [b"committed"]
    old.close()
    moto_s3.delete_bucket(bucket)
