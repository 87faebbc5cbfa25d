"""The manifest's check at open that the object store honours create-only writes (the manifest
itself: :mod:`streamlib.meta.manifest`; docs/shared-stores.md, "Stores that can hold a
manifest"). No lock: object-store calls only."""

from __future__ import annotations

import logging
import uuid

from streamlib.errors import ConfigError, StorageUnavailable, describe
from streamlib.io import ObjectStore

log = logging.getLogger(__name__)


def probe_create(objects: ObjectStore, root: str) -> None:
    """Refuse a server that ignores create-only conditions (some S3-compatible stores do): on
    it, two writers could both win a version. Creates one object under ``root`` twice, then
    deletes it: three requests at open. Each create writes its own put id, read back when a
    create says "exists", so that a create whose answer was lost (it landed; its retry heard
    "exists") is known for the probe's own, as a change's is."""
    key = f"{root}/probe/{uuid.uuid4().hex}"
    first, second = (f"probe {uuid.uuid4().hex}".encode() for _ in range(2))
    try:
        found = create_or_read(objects, key, first)
        if found == first:
            found = create_or_read(objects, key, second)
    finally:
        try:
            objects.delete([key])
        except OSError as error:  # StorageUnavailable too; a probe object left is harmless
            log.warning("could not delete the manifest's probe object %s: %r", key, error)
    if found == first:
        return  # the second create was refused: conditions are honoured
    if found == second:
        raise ConfigError("metadata", "the object store ignores create-only writes "
                          "(If-None-Match): a shared manifest would not be safe there; see "
                          "`streamlib check-store`", objects.url)
    raise ConfigError("metadata", f"the object store gave back other bytes than the "
                      f"manifest's probe wrote at {key}", objects.url)


def create_or_read(objects: ObjectStore, key: str, body: bytes) -> bytes:
    """Create ``key`` holding ``body``: ``body`` if it did (or an earlier try of it whose answer
    was lost did), else what the object there holds."""
    try:
        objects.create(key, body)
        return body
    except FileExistsError:
        pass
    try:
        return objects.get(key)
    except FileNotFoundError as error:
        raise StorageUnavailable(describe(
            "an object said to exist cannot be read (a store without read-after-write?)",
            key=key)) from error


__all__ = ["create_or_read", "probe_create"]
