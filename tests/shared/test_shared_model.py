"""Three nodes on one bucket against a plain model: random appends (one at a time and pipelined)
on whichever node owns a stream, hand-overs to another node (opening the stream for write
there), uploads, reads from any node, restarts of a node, and a node dying and being taken over.

The model: per stream, the records acknowledged, in offset order. Invariants after every step:
every node reads exactly the model's records (once it has looked at the manifest), offsets are
dense, and no append answered with ``FencedError`` is ever visible."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from nodes import crash, wait_for

import streamlib
from streamlib import AppendResult, FencedError, StreamStore

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


class SharedMachine(RuleBasedStateMachine):
    base: ClassVar[Path]
    lease_ms: ClassVar[int] = 0
    runs: ClassVar[Iterator[int]] = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.dir = self.base / f"run{next(self.runs)}"
        (self.dir / "bucket").mkdir(parents=True)
        self.stores: dict[str, StreamStore] = {}
        self.generation = dict.fromkeys(NODES, 0)
        self.owner: dict[str, str] = {}  # stream -> node holding its write handle
        self.handles: dict[str, streamlib.Stream] = {}
        self.model: dict[str, list[bytes]] = {name: [] for name in STREAMS}
        self.refused: set[bytes] = set()
        self.values = itertools.count()

    def open_node(self, node: str) -> StreamStore:
        self.generation[node] += 1
        store = streamlib.open(self.dir / f"{node}-{self.generation[node]}", node_id=node,
                               metadata="manifest", wal="object",
                               objects_url=f"file://{self.dir / 'bucket'}",
                               upload_bytes="2KiB", upload_interval_ms=50,
                               append_timeout_ms=20_000, lease_ms=self.lease_ms)
        self.stores[node] = store
        return store

    @initialize()
    def start(self) -> None:
        for node in NODES:
            self.open_node(node)
        for name, node in zip(STREAMS, NODES, strict=False):
            self.handles[name] = self.stores[node].create_stream(name)
            self.owner[name] = node

    def value(self) -> bytes:
        return f"v{next(self.values)}".encode()

    @rule(name=st.sampled_from(STREAMS), count=st.integers(1, 4))
    def append(self, name: str, count: int) -> None:
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

    @rule(node=st.sampled_from(NODES), taker=st.sampled_from(NODES))
    def die_and_be_taken_over(self, node: str, taker: str) -> None:
        """The node dies without closing (its object WAL keeps its acknowledged appends);
        another takes it over; the dead node's streams move to the taker."""
        if taker == node:
            return
        crash(self.stores[node])  # as if killed: nothing more is uploaded or released
        result = self.stores[taker].take_over(node)
        assert not result.damaged, result
        self.open_node(node)  # it comes back (a new process, a new WAL epoch)
        for name, owner in self.owner.items():
            if owner == node:
                self.handles[name] = self.stores[taker].open_stream(name)
                self.owner[name] = taker

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
        for store in self.stores.values():
            store.close()


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

