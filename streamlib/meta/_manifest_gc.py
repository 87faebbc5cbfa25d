"""Deleting a manifest's old deltas and checkpoints, and the writer's check that keeps a paused
writer from bringing a deleted version back (docs/shared-stores.md, "Old deltas and
checkpoints"; the manifest itself: :mod:`streamlib.meta.manifest`).

**What is deleted.** By the store's clock (:meth:`~streamlib.io.ObjectStore.server_time`,
read before the listings, and the listed ``modified`` times), let *P* be the newest checkpoint,
other than the newest of all, written more than the grace period ago. Deleted: every checkpoint
below *P* and every delta at or below *P* older than the grace period. Kept: the newest
checkpoint, *P* and every delta after *P* — always the two newest checkpoints and the deltas
after the older of them. So:

- a deleted version stays covered: once ``log/u`` is deleted, a checkpoint at or above *u*
  exists at every later moment (the newest checkpoint is never deleted);
- young deltas stay: a delta is deleted only once it, and a checkpoint at or above it (written
  after it), are older than the grace period — so a delta written after some moment, or above
  the newest checkpoint listed at that moment, lives at least the grace period past it.

No lock: the calls here are object-store calls and touch no handle's state.
"""

from __future__ import annotations

import enum
import logging

from streamlib.io import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

DELETE_KEYS = 1000
"""Keys one delete request takes (S3's limit)."""


class Landing(enum.Enum):
    """What a create of ``log/<v>`` that came back late turns out to be (:func:`judge_create`)."""

    NEW = "new"
    """The version's first delta: the change applied."""
    COPY = "copy"
    """A deleted version created again: the change did not apply."""
    UNKNOWN = "unknown"
    """Either: the store no longer shows which."""


def listed(objects: ObjectStore, prefix: str) -> list[tuple[int, ObjectInfo]]:
    """The versions under ``prefix`` (``<root>/log/`` or ``<root>/checkpoint/``), ascending,
    with their listing: only names a writer gives (20 decimal digits)."""
    found = []
    for info in objects.list(prefix):
        name = info.key.rpartition("/")[2]
        if len(name) == 20 and name.isascii() and name.isdigit():
            found.append((int(name), info))
    return sorted(found, key=lambda entry: entry[0])


def _before(info: ObjectInfo, cutoff_ms: float) -> bool:
    """Whether the object was last written before ``cutoff_ms`` (False if the store does not
    say when)."""
    return info.modified is not None and info.modified * 1000 < cutoff_ms


def collect(objects: ObjectStore, root: str, grace_ms: int, *,
            dry_run: bool = False) -> list[ObjectInfo]:
    """Delete (unless ``dry_run``) the old deltas and checkpoints of the manifest under
    ``root`` (see the module docstring) and return them, deltas first."""
    cutoff = objects.server_time() * 1000 - grace_ms  # before the listings: see sweep.py
    checkpoints = listed(objects, f"{root}/checkpoint/")
    old = [version for version, info in checkpoints[:-1] if _before(info, cutoff)]
    if not old:
        return []
    kept = old[-1]
    garbage = [info for version, info in listed(objects, f"{root}/log/")
               if version <= kept and _before(info, cutoff)]
    garbage += [info for version, info in checkpoints if version < kept]
    if not dry_run:
        keys = [info.key for info in garbage]
        for i in range(0, len(keys), DELETE_KEYS):
            objects.delete(keys[i:i + DELETE_KEYS])
    return garbage


def judge_create(objects: ObjectStore, root: str, version: int) -> Landing:
    """After a create of ``log/<version>`` that came back more than half the grace period after
    its writer's anchor (when it could have landed on a deleted version): no checkpoint at or
    above ``version`` means none was ever deleted there (:data:`Landing.NEW`); a checkpoint at
    or above it written before the delta was means the delta is a copy — a new delta is older
    than every checkpoint that holds it —, which is deleted here (:data:`Landing.COPY`);
    anything else cannot be told apart: another node built on the new delta while its writer
    was slow, or the evidence went with a later deletion, or shares the delta's second on S3
    (:data:`Landing.UNKNOWN`)."""
    above = [info for found, info in listed(objects, f"{root}/checkpoint/") if found >= version]
    if not above:
        return Landing.NEW
    key = f"{root}/log/{version:020d}"
    ours = objects.list(key)
    made = ours[0].modified if ours else None
    if made is None or not any(info.modified is not None and info.modified < made
                               for info in above):
        return Landing.UNKNOWN
    log.warning("manifest create of %s came back late and made a copy of a deleted version: "
                "deleting it", key)
    try:
        objects.delete([key])
    except OSError as error:  # StorageUnavailable too: no reader takes it; collect deletes it
        log.warning("could not delete the copy %s: %r", key, error)
    return Landing.COPY


__all__ = ["DELETE_KEYS", "Landing", "collect", "judge_create", "listed"]
