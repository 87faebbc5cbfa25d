"""Four processes on one bucket through the shared manifest (docs/lifecycle.md, "Tests it must
pass"): two nodes compact and collect garbage in loops at once, a third appends and uploads
small rounds, a fourth tails the stream and reads it again from the start now and then. On
moto's S3 server and on SeaweedFS. Afterwards: every acknowledged append is in the stream, at
its offset, with its value, once; the reader met no gap, no wrong value and no error; and once
the grace period has passed, later passes and one sweep leave exactly the objects the manifest
references in the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from lifecycle_child import batch_values, expected_values
from nodes import lines_in, values
from waits import wait_for

import streamlib
from streamlib import StreamStore
from streamlib.errors import StorageUnavailable
from streamlib.testing.s3 import S3Bucket

# Processes on real S3 servers: the codec plays no part of its own (the C pass runs it).
pytestmark = pytest.mark.once

CHILD = Path(__file__).with_name("lifecycle_child.py")
KiB = 1024
APPENDS = 80
"""The writer's appends (a fixed amount of work: 30 upload rounds of 4 appends)."""
ORPHANS = [f"data/9/1/{n:012d}-orphan.mobj" for n in range(3)]
"""Objects of upload rounds that never committed (a node that crashed), there from the start."""
LATE_ORPHAN = "data/9/2/000000000001-orphan.mobj"
"""One more, put once the nodes have stopped: younger than the grace period at first."""
SETTINGS: dict[str, Any] = {
    "metadata": "manifest", "upload_interval_ms": 3_600_000, "upload_bytes": "1GiB",
    "retry_timeout_ms": 500, "delete_grace_ms": 2000, "compaction_interval_ms": 0,
    "gc_interval_ms": 0, "block_bytes": 4 * KiB, "stream_object_bytes": 16 * KiB,
    "compaction_object_bytes": "1MiB", "compaction_max_objects": 6}
"""Every node's: uploads only by the writer's flush, passes only when a node asks for one,
small merges (many swaps to race on), a short grace period."""
READER = {"retry_timeout_ms": 10_000, "delete_grace_ms": 40_000}
"""The reader's own budget for a call: a loaded machine's slow answer is not what it checks
(its grace period is its own lifecycle's, which does not run; the others' is what counts)."""


class Child:
    """One node in a process of its own; its stderr goes to a file (no pipe to fill up)."""

    def __init__(self, role: str, config: dict[str, Any], out: Path, env: dict[str, str],
                 logs: Path) -> None:
        self.name = config["node_id"]
        self._err: IO[bytes] = open(logs / f"{self.name}.err", "wb")  # noqa: SIM115
        self.err_path = logs / f"{self.name}.err"
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), role, json.dumps(config), str(APPENDS), str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env,
            text=True)
        # Written by tell(), closed by finish(): not communicate()'s to flush.
        self._stdin, self.process.stdin = self.process.stdin, None

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")[-4000:]

    def expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == word, f"{self.name} said {line!r}, not {word!r}:\n{self.stderr()}"

    def tell(self, line: str) -> None:
        assert self._stdin is not None
        self._stdin.write(line + "\n")
        self._stdin.flush()

    def finish(self, *, stop: bool = True, timeout: float = 120) -> dict[str, Any]:
        """Tell it to stop (``stop``: close its stdin) or let it end by itself, wait for it to
        exit, and return its JSON summary."""
        if stop and self._stdin is not None:
            self._stdin.close()
        out, _ = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, f"{self.name} exited {self.process.returncode}:" \
                                             f"\n{self.stderr()}"
        lines = out.strip().splitlines()
        assert lines, f"{self.name} printed no summary:\n{self.stderr()}"
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pipe in (self._stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        self._err.close()


@contextmanager
def children() -> Iterator[list[Child]]:
    """The started children; any still running at the end (a failed test) are killed."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


def acknowledged(acklog: Path) -> dict[int, int]:
    """{append number: base offset} of every acknowledged append (a torn last line is none)."""
    found: dict[int, int] = {}
    for line in acklog.read_text().split("\n")[:-1]:
        base, i = line.split()
        assert int(i) not in found, f"append {i} acknowledged twice"
        found[int(i)] = int(base)
    return found


def bucket_keys(store: StreamStore) -> set[str]:
    return {info.key for info in store.objects.list("data/")}


def referenced(store: StreamStore) -> tuple[set[str], set[str]]:
    """The keys of the live and of the doomed objects, as the manifest says now."""
    meta = store.metadata
    meta.refresh()
    return ({o.key for o in meta.live_objects(limit=100_000)}, {d.key for d in meta.doomed()})


def settled(store: StreamStore) -> bool:
    """One more pass and sweep: True once nothing is doomed and no unreferenced object is
    younger than the grace period (the sweep then leaves nothing it would delete later). A
    call that ran out of its retry budget on a loaded machine is one more try."""
    try:
        store.compact()
        report = store.collect_garbage()
    except StorageUnavailable:
        return False
    return report.young == 0 and not store.metadata.doomed()


def transient(error: str) -> bool:
    """Whether an error a compactor met is a call that ran out of its retry budget (a slow
    answer on a loaded machine): the pass or its task is tried again next round."""
    return "StorageUnavailable" in error


@pytest.mark.once
@pytest.mark.parametrize("server", ["moto_bucket", "seaweedfs_bucket"])
def test_two_nodes_compact_and_collect_while_one_appends_and_one_reads(
        server: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bucket: S3Bucket = request.getfixturevalue(server)
    options = bucket.endpoint.storage_options()
    env = {**os.environ, "S3_STORAGE_OPTIONS": json.dumps(options)}

    def config(node: str) -> dict[str, Any]:
        return {**SETTINGS, "path": str(tmp_path / f"node-{node}"), "node_id": node,
                "objects_url": f"{bucket.url}/shared"}

    acklog = tmp_path / "acks"
    objects = bucket.store("shared")
    for key in ORPHANS:
        objects.put(key, b"left by a round that never committed")
    rounds = {name: tmp_path / f"{name}.rounds" for name in ("c1", "c2")}
    with children() as started:
        compactors = [Child("compactor", config(name), rounds[name], env, tmp_path)
                      for name in ("c1", "c2")]
        writer = Child("writer", config("w"), acklog, env, tmp_path)
        started += [*compactors, writer]
        for compactor in compactors:
            compactor.expect("ready")
        writer.expect("created")  # the stream exists: the reader can open it
        reader = Child("reader", {**config("r"), **READER}, tmp_path / "unused", env, tmp_path)
        started.append(reader)
        reader.expect("ready")
        writer.tell("go")
        wrote = writer.finish(stop=False)  # it ends after its appends
        # The compactors go on until each has made two more rounds after the last upload:
        # those rounds saw every object the writer made.
        after = {name: lines_in(path) for name, path in rounds.items()}
        wait_for(lambda: all(lines_in(path) >= after[name] + 2
                             for name, path in rounds.items()),
                 timeout=120, what="two more rounds of each compactor")
        compacted = [compactor.finish() for compactor in compactors]
        reader.tell(f"target {wrote['next_offset']}")
        read = reader.finish(stop=False)  # it ends at the target

    # What the writer was told is what the stream holds, each append once, at its offset.
    expected = expected_values(APPENDS)
    assert wrote["next_offset"] == len(expected)
    acks = acknowledged(acklog)
    assert sorted(acks) == list(range(APPENDS))
    offset = 0
    for i in range(APPENDS):
        assert acks[i] == offset, f"append {i} at {acks[i]}, not {offset}"
        offset += len(batch_values(i))
    # The reader met no gap, no wrong value and no error, and read it all, tailing and again
    # from the start.
    assert read["errors"] == [], read
    assert read["offset"] == len(expected) and read["final_catch_up"] == len(expected)
    assert read["catch_ups"] >= 1, read
    # The compactors did compact, at once, and nothing stopped them.
    for summary in compacted:
        assert all(transient(e) for e in summary["errors"]), summary["errors"]
    totals = {name: sum(s["totals"][name] for s in compacted) for name in compacted[0]["totals"]}
    assert totals["objects_written"] >= 1 and totals["objects_read"] >= 2, totals
    # (Their deletions depend on the grace period passing while they run: the checker below
    # runs passes until it has, and then nothing may be left doomed.)
    assert sum(s["lifecycle"]["gc_deleted"] for s in compacted) >= len(ORPHANS), compacted

    with streamlib.open(config("checker"), storage_options=options) as checker:
        live, doomed = referenced(checker)
        assert live <= bucket_keys(checker), "dangling references"
        stream = checker.open_stream("main", read_only=True)
        got = values(stream)
        assert got == expected  # every acknowledged value at its offset, none twice
        assert len(set(got)) == len(got)
        # After the grace period, more passes and one sweep: what is in the bucket is exactly
        # what the manifest references, and nothing waits for deletion.
        assert not set(ORPHANS) & bucket_keys(checker)  # the compactors' sweeps took them
        objects.put(LATE_ORPHAN, b"left by a round that never committed")
        wait_for(lambda: settled(checker), timeout=60, what="the grace period to pass")
        checker.collect_garbage()
        live, doomed = referenced(checker)
        assert doomed == set()
        assert bucket_keys(checker) == live
        # An object holding only the destroyed stream's records is not live (one also holding
        # main's may stay, until a merge leaves the destroyed stream's records out).
        for obj in checker.metadata.live_objects(limit=100_000):
            assert any(r.stream_id == stream.id for r in obj.ranges), obj
        assert values(stream) == expected


@pytest.mark.once
def test_the_child_checks_what_it_reads(tmp_path: Path) -> None:
    """The reader child reports a wrong value as an error (so its empty error list means
    something): a stream holding other values than the writer's is read and refused."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    config = {**SETTINGS, "path": str(tmp_path / "node-w"), "node_id": "w",
              "objects_url": f"file://{bucket}"}
    with streamlib.open(config) as store:
        stream = store.create_stream("main")
        stream.append(batch_values(0))
        stream.append([b"not what append 1 holds"])
        store.flush()
    with ExitStack() as stack:
        reader = Child("reader", {**config, "path": str(tmp_path / "node-r"), "node_id": "r"},
                       tmp_path / "unused", dict(os.environ), tmp_path)
        stack.callback(reader.kill)
        reader.expect("ready")
        reader.tell("target 2")
        read = reader.finish(stop=False)  # it ends at the target
    assert any("wrong value at 1" in e for e in read["errors"]), read
