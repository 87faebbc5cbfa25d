"""The owner's lease as the shared metadata records it (docs/shared-stores.md, "Acknowledging
without a look"): how long a process of a node may still acknowledge appends without looking
at the metadata, so that whoever fences it knows how long to wait before reading its WAL.

The record is a key-value entry, ``streamlib.leases`` / the node id, holding
``{"lease_ms": N}``. A process writes it right after registering its node (fenced by its node
epoch: a process already fenced again writes nothing) and before it acknowledges anything, and
writes ``0`` once a clean close has answered its last append. Whoever fences a process — a
later process of the same node, a take-over — registers first and reads the record after: the
lease of the newest process that could still acknowledge, or 0 if it closed cleanly. A process
that registered but died before writing its record acknowledged nothing; the record it left is
its predecessor's, which is the lease still to wait out.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from streamlib.config import LEASE_DRIFT
from streamlib.errors import FencedError

if TYPE_CHECKING:
    from streamlib.meta import MetadataStore

log = logging.getLogger(__name__)

NAMESPACE = "streamlib.leases"
"""The key-value namespace of the lease records (namespaces ``streamlib.*`` are the library's)."""


def record(meta: MetadataStore, node_id: str, node_epoch: int, lease_ms: int) -> None:
    """Record that the process of ``node_id`` at ``node_epoch`` acknowledges under a lease of
    ``lease_ms`` (0: nothing more, after a clean close). Raises
    :class:`~streamlib.errors.FencedError` if another process registered the node since."""
    meta.kv_write(NAMESPACE, node_id, json.dumps({"lease_ms": lease_ms}).encode(),
                  node_id=node_id, node_epoch=node_epoch)


def end(meta: MetadataStore, node_id: str, node_epoch: int) -> None:
    """A clean close answered its last append: the next process of the node, or a take-over,
    need not wait for this one. Best effort: without the record they wait out its lease."""
    try:
        record(meta, node_id, node_epoch, 0)
    except FencedError:
        pass  # another process registered the node since: it waits out the lease recorded
    except Exception as error:
        log.warning("close: could not record that node %s's lease ended (the next open or "
                    "take-over of the node waits it out): %r", node_id, error)


def recorded(meta: MetadataStore, node_id: str, unknown_ms: int) -> int:
    """The lease (ms) the newest process of ``node_id`` recorded; ``unknown_ms`` if it recorded
    none (a node first opened by a version without records) or the record is unreadable."""
    found = meta.kv_get(NAMESPACE, node_id)
    if found is None:
        return unknown_ms
    try:
        lease_ms = json.loads(found)["lease_ms"]
        if isinstance(lease_ms, int) and not isinstance(lease_ms, bool) and lease_ms >= 0:
            return lease_ms
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("node %s's lease record is unreadable (%r): waiting out %d ms instead",
                node_id, found[:100], unknown_ms)
    return unknown_ms


def wait_out(lease_ms: int, why: str) -> float:
    """Wait until a process fenced just now can no longer acknowledge an append it has not yet
    made durable: ``lease_ms × (1 + LEASE_DRIFT)`` on this process's clock (nothing for 0).
    Returns the seconds waited."""
    seconds = lease_ms / 1000 * (1 + LEASE_DRIFT)
    if seconds > 0:
        log.info("waiting %.2f s for the lease of a fenced process to end (%s)", seconds, why)
        threading.Event().wait(seconds)
    return seconds


__all__ = ["NAMESPACE", "end", "record", "recorded", "wait_out"]
