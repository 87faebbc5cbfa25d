"""Deletion: committed objects that hold nothing readable any more are marked doomed, and doomed
objects are deleted once the grace period has passed, then forgotten by the metadata
(docs/lifecycle.md, "Deletion").

Both steps are idempotent, so any node may run them at any time and a crash anywhere leaves
nothing the next pass does not finish: a key deleted twice is fine (a missing object is a
success), a key forgotten twice is fine, an object marked by another node meanwhile makes the
mark refused (``CompactionConflict``) and the next pass marks what is left.

Lock order: no lock; calls the metadata and the object stores (leaves).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from streamlib.errors import CompactionConflict
from streamlib.io import ObjectStore
from streamlib.lifecycle.compaction import readable
from streamlib.meta import MetadataStore, ObjectMeta, Replacement, StreamMeta

log = logging.getLogger(__name__)

BATCH_KEYS = 1000
"""Keys one mark, delete or forget handles at once (S3 deletes at most 1000 a request)."""


@dataclass(slots=True)
class DeletionReport:
    marked: int = 0
    deleted: int = 0
    deleted_bytes: int = 0


def unreadable(objects: Iterable[ObjectMeta], streams: Mapping[int, StreamMeta]
               ) -> list[ObjectMeta]:
    """The objects none of whose ranges holds a readable record: every range below its
    stream's start offset or of a destroyed stream (``streams``: the live ones)."""
    return [obj for obj in objects if not readable(obj, streams)]


class Deleter:
    """Marks and deletes for one store. ``stores`` maps each tier to its object store;
    ``clock`` gives POSIX seconds (the metadata marks by its writer's wall clock)."""

    def __init__(self, *, meta: MetadataStore, stores: Mapping[str, ObjectStore],
                 grace_ms: int, clock: Callable[[], float] = time.time) -> None:
        self._meta = meta
        self._stores = dict(stores)
        self._grace_ms = grace_ms
        self._clock = clock

    def mark(self, objects: Iterable[ObjectMeta], streams: Mapping[int, StreamMeta],
             report: DeletionReport) -> None:
        """Mark doomed the objects of ``objects`` that hold nothing readable."""
        found = unreadable(objects, streams)
        for i in range(0, len(found), BATCH_KEYS):
            keys = [obj.key for obj in found[i:i + BATCH_KEYS]]
            try:
                self._meta.replace(Replacement(inputs=keys))
            except CompactionConflict as error:  # changed meanwhile: the next pass sees
                log.info("marking %d objects refused: %s", len(keys), error)
                continue
            report.marked += len(keys)

    def delete_due(self, report: DeletionReport) -> None:
        """Delete the doomed objects marked at least the grace period ago, then forget them.
        A failed delete leaves its keys doomed: the next pass tries again."""
        now_ms = int(self._clock() * 1000)
        due = [d for d in self._meta.doomed() if d.marked_at_ms + self._grace_ms <= now_ms]
        for i in range(0, len(due), BATCH_KEYS):
            chunk = due[i:i + BATCH_KEYS]
            by_tier: dict[str, list[str]] = {}
            for doomed in chunk:
                by_tier.setdefault(doomed.tier, []).append(doomed.key)
            for tier, keys in by_tier.items():
                store = self._stores.get(tier)
                if store is None:
                    log.warning("doomed objects of tier %r, which this store does not have "
                                "(archive_url unset?): left for a store that has it", tier)
                    continue
                store.delete(keys)
                forgotten = self._meta.forget(keys)
                report.deleted += forgotten
                report.deleted_bytes += sum(d.size for d in chunk if d.tier == tier)


__all__ = ["BATCH_KEYS", "Deleter", "DeletionReport", "unreadable"]
