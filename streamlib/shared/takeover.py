"""Taking over a dead node (docs/shared-stores.md, "Take-over"): fence it, replay its WAL by
the rules of :mod:`streamlib.recovery`, upload and commit what it holds beyond the committed
ends, release its streams, empty its WAL.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamlib import _assembly
from streamlib.errors import ConfigError, describe
from streamlib.meta import Commit, check_node_id
from streamlib.metrics import Event
from streamlib.recovery import replay
from streamlib.shared import lease
from streamlib.uploader import DATA_PREFIX, build_objects

if TYPE_CHECKING:
    from streamlib.io import ObjectStore
    from streamlib.node import Node
    from streamlib.shared.coordination import Coordination

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TakeOver:
    """What :meth:`StreamStore.take_over <streamlib.store.StreamStore.take_over>` recovered:
    the node's new ``node_epoch``, each stream's recovered offsets ``{stream id: (start,
    end)}``, the records, bytes and objects, and ``damaged`` streams (``{stream id: why}``)
    whose records in the WAL did not follow their committed end (left in the WAL's place, not
    committed)."""

    node_id: str
    node_epoch: int
    streams: dict[int, tuple[int, int]]
    records: int
    bytes: int
    objects: int
    damaged: dict[int, str]


def take_over(node: Node, objects: ObjectStore, coordination: Coordination,
              storage_options: Mapping[str, Any] | None, node_id: str | int, *,
              wal: str | None, wal_path: str, wal_url: str) -> TakeOver:
    """Take over ``node_id`` from ``node`` (the arguments as :meth:`StreamStore.take_over
    <streamlib.store.StreamStore.take_over>`)."""
    dead = check_node_id(node_id)
    if dead == node.id:
        raise ValueError(f"a store cannot take over its own node: node_id=`{dead}`")
    config = node.config
    backend = config.wal if wal is None else wal
    place = _assembly.wal_place(config, backend, wal_path, wal_url, objects.purposed("wal"),
                                storage_options)
    if backend != "object" and not wal_path:
        raise ValueError(f"wal_path: where the {backend} WAL of node {dead} is")
    node.check_open()
    meta = node.meta
    if place.store is not None and not place.store.list(f"wal/{dead}/"):
        raise ConfigError("wal", f"no object WAL of node {dead} in {place.store.url}: give "
                          f"its backend (wal=, wal_path=, wal_url=)", backend)
    fenced = meta.register_node(dead)
    log.info(describe("taking over a node: fenced it; its WAL is replayed once its lease "
                      "has run out", node=node.id, taken=dead, node_epoch=fenced.node_epoch))
    # A process of the dead node may still run (paused): from now on its looks find it
    # fenced, and after the lease it recorded it acknowledges nothing more
    # (docs/shared-stores.md). Read after the fence: a record written later is refused.
    lease.wait_out(lease.recorded(meta, dead, config.lease_ms), f"take-over of node {dead}")
    old = _assembly.open_wal(config, dead, fenced.node_epoch, place, create=False)
    try:
        found = replay(old.recover(), meta, lambda m: coordination.held_epochs(m, dead), dead)
        damaged = {sid: r.damage for sid, r in found.streams.items() if r.damage is not None}
        kept = {sid: r for sid, r in found.streams.items() if r.damage is None}
        built = build_objects({sid: r.batches for sid, r in kept.items()}, config,
                              f"{DATA_PREFIX}/{dead}/{fenced.node_epoch}", 0)
        for item in built:
            objects.put(item.meta.key, item.data, part_bytes=config.part_bytes)
        meta.commit(Commit(node_id=dead, wal_position=max(found.end, fenced.wal_position),
                           objects=[item.meta for item in built],
                           epochs={sid: r.meta.epoch_of(dead) for sid, r in kept.items()},
                           node_epoch=fenced.node_epoch))
        held = [s.id for s in meta.streams() if dead in (s.owner, s.handover_from)]
        meta.release_streams(dead, fenced.node_epoch, held)
        if not damaged:
            old.trim(found.end)
    finally:
        old.close()
    batches = {sid: r.batches for sid, r in sorted(kept.items())}
    result = TakeOver(dead, fenced.node_epoch,
                      {sid: (r.meta.end_offset, r.end) for sid, r in sorted(kept.items())},
                      sum(b.count for run in batches.values() for b in run),
                      sum(b.size for run in batches.values() for b in run),
                      len(built), damaged)
    coordination.taken_over(result.streams)
    log.log(logging.WARNING if damaged else logging.INFO, describe(
        "took over a node: what its WAL held is committed and its streams are released"
        + (" (damaged streams stay read-only, their records left in its WAL)" if damaged
           else ""), node=node.id, taken=dead, streams=sorted(result.streams),
        records=result.records, bytes=result.bytes, damaged=sorted(damaged)))
    node.metrics.event(Event.TAKE_OVER)
    return result


__all__ = ["TakeOver", "take_over"]
