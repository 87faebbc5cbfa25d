"""The garbage-collecting sweep: what no metadata references is found by listing the stores and
deleted (docs/lifecycle.md, "Garbage collection").

- **orphans**: objects under the data prefix (uploads and compaction outputs) that no live or
  doomed entry names, last modified more than ``delete_grace_ms`` ago by the store's own clock
  (:meth:`~streamlib.io.ObjectStore.server_time`, so that this machine's clock does not
  matter): the objects of upload rounds and compactions that crashed or lost a race. The
  listing comes first and the metadata after it (refreshed), so that an object committed
  meanwhile is seen as referenced; an object whose time the store does not give is kept;
- **object-WAL leftovers**: record objects at or below their node's ``TRIM`` position
  (:func:`~streamlib.wal.object.trimmed_objects`), left by a node that crashed between
  writing its trim position and deleting them.
- **the metadata's own old objects** (:meth:`~streamlib.meta.MetadataStore.collect_garbage`):
  a shared manifest's deltas and checkpoints no reader needs, by the rule of
  docs/shared-stores.md ("Old deltas and checkpoints").

Lock order: no lock; calls the metadata and the object stores (leaves).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from streamlib.io import ObjectStore
from streamlib.meta import MetadataStore, ObjectMeta
from streamlib.uploader import DATA_PREFIX
from streamlib.wal.object import trimmed_objects

log = logging.getLogger(__name__)

DELETE_KEYS = 1000
"""Keys one delete request takes (S3's limit)."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """One object the sweep deleted (or, in a dry run, would delete)."""

    url: str
    """The object store's URL (the key is relative to it)."""
    key: str
    size: int
    reason: str
    """``"orphan"``, ``"wal"`` (an object-WAL leftover) or ``"manifest"`` (an old delta or
    checkpoint of the manifest)."""


@dataclass(slots=True)
class GarbageReport:
    """What a sweep found: ``store.collect_garbage()`` returns one."""

    dry_run: bool
    garbage: list[Garbage] = field(default_factory=list)
    young: int = 0
    """Unreferenced objects left because they are younger than the grace period (an upload
    or a compaction may still be about to commit them)."""
    seconds: float = 0.0

    @property
    def objects(self) -> int:
        return len(self.garbage)

    @property
    def bytes(self) -> int:
        return sum(g.size for g in self.garbage)


class Sweeper:
    """Sweeps ``stores`` (by tier) and, for object-WAL leftovers, ``wal_stores``."""

    def __init__(self, *, meta: MetadataStore, stores: Mapping[str, ObjectStore],
                 wal_stores: Sequence[ObjectStore], grace_ms: int) -> None:
        self._meta = meta
        self._stores = dict(stores)
        self._wal_stores = list(wal_stores)
        self._grace_ms = grace_ms

    def sweep(self, *, dry_run: bool = False) -> GarbageReport:
        report = GarbageReport(dry_run)
        started = time.monotonic()
        for store in self._stores.values():
            now = store.server_time()
            listed = store.list(f"{DATA_PREFIX}/")
            referenced = self._referenced()  # after the listing: see the module docstring
            for info in listed:
                if info.key in referenced:
                    continue
                if info.modified is None or info.modified * 1000 > now * 1000 - self._grace_ms:
                    report.young += 1
                    continue
                report.garbage.append(Garbage(store.url, info.key, info.size, "orphan"))
            if not dry_run:
                self._delete(store, [g for g in report.garbage if g.url == store.url])
        for store in self._wal_stores:
            found = [Garbage(store.url, info.key, info.size, "wal")
                     for info in trimmed_objects(store)]
            report.garbage.extend(found)
            if not dry_run:
                self._delete(store, found)
        report.garbage.extend(Garbage(*found) for found in self._meta.collect_garbage(
            self._grace_ms, dry_run=dry_run))
        report.seconds = time.monotonic() - started
        return report

    def _referenced(self) -> set[str]:
        self._meta.refresh()
        keys = {d.key for d in self._meta.doomed()}
        keys.update(obj.key for obj in _live(self._meta))
        return keys

    @staticmethod
    def _delete(store: ObjectStore, garbage: Sequence[Garbage]) -> None:
        keys = [g.key for g in garbage]
        for i in range(0, len(keys), DELETE_KEYS):
            store.delete(keys[i:i + DELETE_KEYS])


def _live(meta: MetadataStore) -> Iterator[ObjectMeta]:
    after: str | None = None
    while True:
        page = meta.live_objects(after=after, limit=1000)
        yield from page
        if len(page) < 1000:
            return
        after = page[-1].key


__all__ = ["Garbage", "GarbageReport", "Sweeper"]
