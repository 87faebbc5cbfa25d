"""Three nodes on one bucket against a plain model: random appends (one at a time and pipelined)
on whichever node owns a stream, hand-overs to another node (opening the stream for write
there), uploads, reads from any node, restarts of a node, a node dying and being taken over (the
answer of the fencing write sometimes lost, and the take-over tried again), and a node paused
with appends in flight while another node opens its stream or takes it over, or a new process of
it opens, then woken. With the owner's lease (docs/shared-stores.md), each node's lease clock
runs at a rate of its own within ``LEASE_DRIFT`` of the clock others wait on, and jumps forward
as a suspended machine's does.

The model: per stream, the records acknowledged, in offset order. Invariants after every step:
every node reads exactly the model's records (once it has looked at the manifest), offsets are
dense, and no append answered with ``FencedError`` (or left unknown where it cannot have been
kept) is ever visible."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from fsspec.implementations.local import LocalFileSystem
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nodes import crash, pause, wait_for

import streamlib
from streamlib import AppendResult, FencedError, OutcomeUnknown, StorageUnavailable, StreamStore
from streamlib.config import LEASE_DRIFT
from streamlib.disk import UNSAFE_NO_FSYNC
from streamlib.io import ObjectStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing import FaultyFileSystem, FaultyMetadataStore
from streamlib.testing.clocks import DriftingClock, use_lease_clock

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

NODES = ("n0", "n1", "n2")
STREAMS = ("s0", "s1")


def read_all(store: StreamStore, name: str) -> list[bytes]:
    stream = store.open_stream(name, read_only=True)
    found, offset = [], stream.start_offset
    while offset < stream.next_offset:
        result = stream.fetch(offset, max_bytes=1 << 20)
        for _, record in result.records():
            found.append(record.value)
        offset = result.next_fetch_offset
    return found


@dataclass(frozen=True)
class Process:
    """One open process of a node, with the wrappers a rule steers it by: its metadata and
    filesystem (pausing it) and its lease clock (drifting, jumping)."""

    store: StreamStore
    meta: FaultyMetadataStore
    filesystem: FaultyFileSystem
    clock: DriftingClock


class SharedMachine(RuleBasedStateMachine):
    base: ClassVar[Path]
    lease_ms: ClassVar[int] = 0
    runs: ClassVar[Iterator[int]] = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.dir = self.base / f"run{next(self.runs)}"
        (self.dir / "bucket").mkdir(parents=True)
        self.processes: dict[str, Process] = {}
        self.generation = dict.fromkeys(NODES, 0)
        self.rate = dict.fromkeys(NODES, 1.0)  # each node's lease clock against real time
        self.owner: dict[str, str] = {}  # stream -> node holding its write handle
        self.handles: dict[str, streamlib.Stream] = {}
        self.model: dict[str, list[bytes]] = {name: [] for name in STREAMS}
        self.refused: set[bytes] = set()
        self.values = itertools.count()

    @property
    def stores(self) -> dict[str, StreamStore]:
        return {node: process.store for node, process in self.processes.items()}

    def open_node(self, node: str) -> StreamStore:
        self.generation[node] += 1
        bucket = self.dir / "bucket"
        # Nothing fsynced (UNSAFE_NO_FSYNC): a crash here is a process's, never the machine's.
        meta = FaultyMetadataStore(ManifestMetadataStore(
            ObjectStore.from_url(f"file://{bucket}", syncing=UNSAFE_NO_FSYNC), node_id=node))
        filesystem = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))  # objects and WAL
        # Short upload and sync intervals: the other nodes see each step's appends within a
        # few ms (the invariant waits until they do).
        store = streamlib.open(self.dir / f"{node}-{self.generation[node]}", node_id=node,
                               metadata="manifest", wal="object", objects_url=f"file://{bucket}",
                               metadata_store=meta, filesystem=filesystem,
                               upload_bytes="2KiB", upload_interval_ms=20, sync_interval_ms=10,
                               durability="unsafe-no-fsync", append_timeout_ms=20_000,
                               lease_ms=self.lease_ms)
        clock = DriftingClock(self.rate[node])
        use_lease_clock(store, clock)
        self.processes[node] = Process(store, meta, filesystem, clock)
        return store

    @initialize(rates=st.lists(st.floats(1 / (1 + LEASE_DRIFT), 1 + LEASE_DRIFT),
                               min_size=len(NODES), max_size=len(NODES)))
    def start(self, rates: list[float]) -> None:
        """Each node's lease clock runs at a rate of its own: at most ``LEASE_DRIFT`` slower
        than the clock a take-over waits on (a faster one only ends its lease sooner)."""
        self.rate.update(zip(NODES, rates, strict=True))
        for node in NODES:
            self.open_node(node)
        for name, node in zip(STREAMS, NODES, strict=False):
            self.handles[name] = self.stores[node].create_stream(name)
            self.owner[name] = node

    def value(self) -> bytes:
        return f"v{next(self.values)}".encode()

    @rule(name=st.sampled_from(STREAMS), count=st.integers(1, 4))
    def append(self, name: str, count: int) -> None:
        self.append_now(name, count)

    def append_now(self, name: str, count: int) -> None:
        batch = [self.value() for _ in range(count)]
        self.handles[name].append(batch)
        self.model[name] += batch

    @rule(name=st.sampled_from(STREAMS), batches=st.integers(2, 8))
    def pipelined(self, name: str, batches: int) -> None:
        futures: list[tuple[list[bytes], Future[AppendResult]]] = []
        for _ in range(batches):
            batch = [self.value()]
            futures.append((batch, self.handles[name].append_future(batch)))
        for batch, future in futures:
            future.result(timeout=30)
            self.model[name] += batch

    @rule(name=st.sampled_from(STREAMS), to=st.sampled_from(NODES), data=st.data())
    def hand_over(self, name: str, to: str, data: st.DataObject) -> None:
        """Another node opens the stream for write while the owner may be appending: the old
        handle is fenced; appends in flight on it are acknowledged (before) or refused (with a
        lease, the old handle's next append too: it may not have looked yet)."""
        old = self.handles[name]
        in_flight = data.draw(st.integers(0, 4), label="in flight on the old owner")
        futures = []
        for _ in range(in_flight):
            batch = [self.value()]
            futures.append((batch, old.append_future(batch)))
        self.handles[name] = self.stores[to].open_stream(name)
        self.owner[name] = to
        for batch, future in futures:
            try:
                future.result(timeout=30)
            except FencedError:
                self.refused.update(batch)
            else:
                self.model[name] += batch
        late = [self.value()]
        if self.lease_ms:
            # Within its lease the old owner acknowledges until its next look shows the
            # hand-over; what it acknowledges lands before the new owner's first record (the
            # new owner waits for its release).
            try:
                old.append_future(late).result(timeout=30)  # answered, whatever the answer
            except FencedError:
                self.refused.update(late)
            else:
                self.model[name] += late
            return
        self.refused.update(late)
        with pytest.raises(FencedError):  # the old handle's next append, on any node
            old.append(late)

    @rule(node=st.sampled_from(NODES))
    def flush(self, node: str) -> None:
        self.stores[node].flush()

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: str) -> None:
        """A clean restart: close uploads and releases; the streams it owned are reopened."""
        self.stores[node].close()
        store = self.open_node(node)
        for name, owner in self.owner.items():
            if owner == node:
                self.handles[name] = store.open_stream(name)

    @rule(node=st.sampled_from(NODES), taker=st.sampled_from(NODES), lost=st.booleans())
    def die_and_be_taken_over(self, node: str, taker: str, lost: bool) -> None:
        """The node dies without closing (its object WAL keeps its acknowledged appends);
        another takes it over (the fence's answer ``lost`` or not); the dead node's streams
        move to the taker."""
        if taker == node:
            return
        crash(self.stores[node])  # as if killed: nothing more is uploaded or released
        self.take_over(node, taker, lost)
        self.open_node(node)  # it comes back (a new process, a new WAL epoch)
        self.move_streams(node, taker)

    def take_over(self, node: str, taker: str, lost: bool) -> None:
        """``taker`` takes ``node`` over; with ``lost``, the fencing write lands but its answer
        is lost, and the take-over is tried again, as a user would."""
        if lost:
            self.processes[taker].meta.inject(
                "register_node", StorageUnavailable, after=True,
                match=lambda call: call.args["node_id"] == node)
            with pytest.raises(StorageUnavailable):
                self.stores[taker].take_over(node)
        result = self.stores[taker].take_over(node)
        assert not result.damaged, result

    def move_streams(self, node: str, taker: str) -> None:
        """The streams ``node`` wrote are opened for write on ``taker`` (after a take-over; on
        the node's new process if ``taker`` is ``node``)."""
        for name, owner in self.owner.items():
            if owner == node:
                self.handles[name] = self.stores[taker].open_stream(name)
                self.owner[name] = taker

    @rule(node=st.sampled_from(NODES), other=st.sampled_from(NODES), data=st.data())
    def pause_and_wake(self, node: str, other: str, data: st.DataObject) -> None:
        """The node stops as a paused process does (its threads look at the manifest, commit
        and release nothing, its WAL's PUTs do not complete) with appends in flight on one of
        its streams. Meanwhile ``other`` opens that stream for write; or takes the node over
        (the fence's answer maybe lost); or a new process of the node opens (it fences the
        paused one). Then the paused process wakes, its lease clock maybe having counted the
        pause. What it acknowledged is in the stream; what it refused is not, nor what it left
        unknown when fenced as a node (its WAL's PUTs landed after the new process or the
        taker had read the WAL, in a WAL epoch that theirs supersedes)."""
        names = sorted(name for name, owner in self.owner.items() if owner == node)
        if other == node or not names:
            return
        name = data.draw(st.sampled_from(names), label="stream")
        meanwhile = data.draw(st.sampled_from(["handed over", "taken over", "restarted"]))
        self.append_now(name, 1)  # written here now: not waiting for a release
        old, process = self.handles[name], self.processes[node]
        if self.lease_ms:  # paused as a look begins: the lease ahead at its longest
            looked = process.meta.inject("refresh", thread="streamlib-fences", times=None)
            wait_for(lambda: looked.hits >= 1, timeout=30, what=f"a look of {node}")
            process.meta.clear()
        wake = pause(process.meta, process.filesystem, node)
        try:
            futures = []
            for _ in range(data.draw(st.integers(1, 3), label="in flight")):
                batch = [self.value()]
                futures.append((batch, old.append_future(batch)))
            if meanwhile == "handed over":
                self.handles[name] = self.stores[other].open_stream(name)
                self.owner[name] = other
            elif meanwhile == "taken over":
                self.take_over(node, other, data.draw(st.booleans(), label="answer lost"))
                self.move_streams(node, other)
            else:
                self.open_node(node)  # waits out the paused process's lease, reads the WAL
                self.move_streams(node, node)
            if self.lease_ms and data.draw(st.booleans(), label="its clock counted the pause"):
                process.clock.jump(self.lease_ms / 1000)
        finally:
            wake()
        for batch, future in futures:
            try:
                future.result(timeout=30)
            except FencedError:
                self.refused.update(batch)
            except OutcomeUnknown:
                assert meanwhile != "handed over", "an append left unknown by a live owner"
                self.refused.update(batch)
            else:
                self.model[name] += batch
        if meanwhile != "handed over":
            process.store.close()  # fenced as a node: it closes (the test's last look at it)
        if meanwhile == "taken over":
            self.open_node(node)  # it comes back (a new process, a new WAL epoch)

    @precondition(lambda self: self.lease_ms > 0)
    @rule(node=st.sampled_from(NODES), seconds=st.sampled_from([0.05, 1.0, 3600.0]))
    def suspend(self, node: str, seconds: float) -> None:
        """The node's machine slept: its lease clock (``CLOCK_BOOTTIME``) jumped forward, so
        by it the lease is over and its next appends wait for a look."""
        self.processes[node].clock.jump(seconds)

    @invariant()
    def every_node_reads_the_model(self) -> None:
        for name in STREAMS:
            for node, store in self.stores.items():
                try:
                    wait_for(lambda s=store, n=name: s.get(n).next_offset >= len(self.model[n]),
                             timeout=30)
                except AssertionError:
                    raise AssertionError(self.explain(node, name)) from None
                got = read_all(store, name)
                assert got == self.model[name], (node, name)
                assert not self.refused & set(got), (node, name, self.refused & set(got))

    def explain(self, node: str, name: str) -> str:
        """What every node thinks of the stream (for a failure's message)."""
        lines = [f"{node} lags on {name}: the model has {len(self.model[name])} records, "
                 f"owner {self.owner[name]}"]
        for other, store in self.stores.items():
            state = store._state(name)
            lines.append(f"{other}: manifest {store.metadata.get_stream(state.id)}; state "
                         f"{state!r} log={len(state.log)} inflight={len(state.inflight)} "
                         f"parked={len(state.handover.parked)}; "
                         f"stats {store.stats()['upload_rounds']} rounds, "
                         f"{store.stats()['upload_failures']} failures")
        return "\n".join(lines)

    def teardown(self) -> None:
        for process in self.processes.values():
            process.filesystem.clear()  # a rule that failed may have left gates
            process.meta.clear()
            process.store.close()


EXAMPLES = int(os.environ.get("SHARED_MODEL_EXAMPLES", "20"))
STEPS = int(os.environ.get("SHARED_MODEL_STEPS", "30"))
"""The suite's size; by hand, e.g. ``SHARED_MODEL_EXAMPLES=300 SHARED_MODEL_STEPS=30``."""


def test_nodes_sharing_a_bucket_match_the_model(tmp_path: Path) -> None:
    class Machine(SharedMachine):
        pass

    Machine.base = tmp_path
    run_state_machine_as_test(Machine, settings=settings(max_examples=EXAMPLES,
                                                         stateful_step_count=STEPS,
                                                         deadline=None))


def test_nodes_with_a_lease_match_the_model(tmp_path: Path) -> None:
    """The same with the owner's lease (docs/shared-stores.md): appends acknowledged without
    a look while it lasts; every take-over and reopen of an object-WAL node waits it out."""
    class Machine(SharedMachine):
        lease_ms = 100

    Machine.base = tmp_path
    run_state_machine_as_test(Machine, settings=settings(max_examples=max(EXAMPLES // 2, 1),
                                                         stateful_step_count=STEPS,
                                                         deadline=None))

