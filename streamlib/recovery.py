"""Replay of a node's WAL against the metadata: one set of rules for a store opening its own
WAL and for a node taking over a dead one's (docs/store.md, "Recovery").

For each record of the WAL, in WAL order, against the stream's metadata as it is now:

1. a stream that does not exist or was destroyed: skipped;
2. a record that ends at or below the stream's committed end: committed already, skipped;
3. a record whose epoch is not among those the node may commit (``held``: on a shared store,
   its current time as owner; records of an earlier time were committed or refused when that
   time ended): skipped;
4. a stream already found damaged: skipped;
5. a record that does not start exactly where the stream's records so far end: acknowledged
   data was lost by the medium — the stream is **damaged** (the reason names the offsets and
   the WAL position; the WAL is kept from that record on);
6. otherwise it is recovered, and the stream's end moves past it.

Per stream the recovered records are therefore dense, start at the committed end, and hold
nothing twice. :func:`recover` applies them to a store opening its own WAL; a take-over
(:mod:`streamlib.shared.takeover`) uploads them for the dead node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamlib.cache import BATCH_OVERHEAD
from streamlib.errors import StreamNotFound, describe
from streamlib.records import PlacedBatch
from streamlib.shared.handover import Ownership

if TYPE_CHECKING:
    from streamlib.meta import MetadataStore, StreamMeta
    from streamlib.node import Node
    from streamlib.shared.coordination import Coordination
    from streamlib.wal import Damage, Recovery, Wal

log = logging.getLogger(__name__)

Held = Callable[["StreamMeta"], "tuple[int, int] | None"]
"""The epochs (both ends included) of the node's records of a stream that are its to commit."""


@dataclass(slots=True)
class Recovered:
    """One stream's records recovered from the WAL, with their WAL positions."""

    meta: StreamMeta
    batches: list[PlacedBatch] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    damage: str | None = None
    damage_position: int | None = None  # the first record after the gap

    @property
    def end(self) -> int:
        return self.batches[-1].next_offset if self.batches else self.meta.end_offset


@dataclass(slots=True)
class Replay:
    """What a replay found: each stream's records (those with records or damage),
    ``skipped`` records, and the WAL's own account (``records`` scanned, ``end`` position,
    ``dropped`` damaged byte ranges)."""

    streams: dict[int, Recovered]
    skipped: int
    records: int
    end: int
    dropped: list[Damage]

    @property
    def damaged(self) -> dict[int, Recovered]:
        return {sid: r for sid, r in self.streams.items() if r.damage is not None}


def replay(recovery: Recovery, meta: MetadataStore, held: Held, node_id: str) -> Replay:
    """Replay ``recovery`` (the WAL of node ``node_id``, being read) against ``meta`` by the
    rules of the module docstring; ``held`` gives the epochs the node may commit of each
    stream. Damage is logged: a gap in a stream's acknowledged records as an ERROR (the stream
    stays read-only), damaged bytes dropped (a torn tail: records never acknowledged) as a
    WARNING."""
    found: dict[int, Recovered | None] = {}  # None: nothing of it is to be recovered
    epochs: dict[int, tuple[int, int]] = {}
    skipped = 0
    for entry in recovery:
        record = entry.record
        batch = record.batch
        stream_id = record.stream_id
        if stream_id not in found:
            found[stream_id] = _first(meta, stream_id, held, epochs)
        stream = found[stream_id]
        if (stream is None or batch.next_offset <= stream.meta.end_offset
                or not epochs[stream_id][0] <= record.epoch <= epochs[stream_id][1]):
            skipped += 1  # rules 1, 2, 3
            continue
        if stream.damage is not None:
            continue  # rule 4
        if batch.base_offset != stream.end:  # rule 5
            stream.damage = describe(
                "the WAL lost records of this stream (a gap at recovery); it is read-only "
                "and the WAL is kept from here", stream=stream_id, expected=stream.end,
                found=batch.base_offset, position=entry.position, node=node_id)
            stream.damage_position = entry.position
            log.error(stream.damage)
            continue
        stream.batches.append(batch)  # rule 6
        stream.positions.append(entry.position)
    for damage in recovery.dropped:
        log.warning(describe(f"WAL recovery dropped damaged bytes: {damage.reason}",
                             node=node_id, start=damage.start, end=damage.end))
    streams = {sid: r for sid, r in found.items()
               if r is not None and (r.batches or r.damage is not None)}
    return Replay(streams, skipped, recovery.records, recovery.end, list(recovery.dropped))


def recover(node: Node, wal: Wal, coordination: Coordination, committed: int) -> int:
    """A store opening: replay its WAL beyond what is committed into the log cache, pinned in
    the message cache and counted in the backlog (uploaded before ``open`` returns). A stream
    with records of its own becomes this node's (OWNED); a damaged one stays read-only and
    keeps the WAL from its gap. Returns the WAL position commits must not go below
    (``committed``, the node's position in the metadata, if this WAL ends below it)."""
    found = replay(wal.recover(), node.meta, lambda m: coordination.held_epochs(m, node.id),
                   node.id)
    position, pending = -1, 0
    for stream_id, recovered in found.streams.items():
        state = node.streams.get(stream_id)
        assert state is not None, "a live stream of the metadata is in the table"
        with state.lock:
            for batch, at in zip(recovered.batches, recovered.positions, strict=True):
                state.add_to_log(batch, at)
                node.cache.pin(node.scope, batch.size + BATCH_OVERHEAD)
                pending += batch.size
                position = max(position, at)
            if recovered.batches and state.handover.state is Ownership.READER:
                state.handover.move(Ownership.OWNED)
            # Acknowledged records after a gap stay in the WAL (the uploader never trims past
            # them), so the stream stays read-only at every open until it is repaired or
            # destroyed, and no offset is handed out twice.
            state.damage, state.kept = recovered.damage, recovered.damage_position
    for state in node.streams.all():
        state.assigned_end = state.acked_end
    if pending:
        node.backlog.recovered(position, pending)
    log.log(logging.INFO if pending else logging.DEBUG,
            "recovered %d WAL records (%d committed already), %d bytes to upload: node=`%s`",
            found.records, found.skipped, pending, node.id)
    if found.end < committed:
        # Not the WAL the metadata knew (replaced, another backend, a fresh ring): commits
        # keep the node's position from going back until this WAL passes it.
        log.warning(describe("the WAL ends below the node's committed position: a new or "
                             "replaced WAL", node=node.id, end=found.end, committed=committed))
        return committed
    return 0


def _first(meta: MetadataStore, stream_id: int, held: Held,
           epochs: dict[int, tuple[int, int]]) -> Recovered | None:
    """A stream met for the first time in the WAL: what it takes (None: nothing)."""
    try:
        m = meta.get_stream(stream_id)
    except StreamNotFound:
        return None  # destroyed, or never known here
    found = held(m)
    if found is None:
        return None  # another node's to commit, or refused at a hand-over
    epochs[stream_id] = found
    return Recovered(m)


__all__ = ["Recovered", "Replay", "recover", "replay"]
