"""Where a store's parts are, from a directory or a URL, and opening them read-only for the
tools (docs/guide.md, "Operating"): the metadata without its node lock (SQLite with
``mode=ro``, the manifest without registering a node), the object stores, where the WAL is.
Nothing here writes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamlib.config import Config
from streamlib.errors import ConfigError
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.meta import MetadataStore

MANIFEST_PREFIX = "manifest"
"""Where a manifest keeps its deltas and checkpoints in its store (``ManifestMetadataStore``'s
default prefix, as a store opens it)."""
OBJECT_WAL_PREFIX = "wal"
"""Where the object WAL writes in its store (as a store opens it)."""
RETRY = RetryPolicy(timeout=10)
"""The tools' patience with an object store that does not answer."""

PLACE_FIELDS = ("objects_url", "metadata", "metadata_path", "metadata_url", "wal", "wal_path",
                "wal_url", "archive_url")
"""The settings a store's parts are found by: given to :func:`find_places`, or taken from the
``STREAMLIB_*`` variables a store reads."""


@dataclass(frozen=True, slots=True)
class Places:
    """Where one store's parts are."""

    store: str
    """The store as given (a directory or a URL)."""
    metadata: str
    """``sqlite`` or ``manifest``."""
    metadata_where: str
    """The SQLite file, or the URL of the store holding the manifest."""
    objects_url: str
    archive_url: str
    wal: str
    """``file``, ``block``, ``object``, or empty: no WAL found (a store that never had one
    here, or whose WAL is elsewhere and was not named)."""
    wal_where: str
    """The file WAL's directory, the ring's file, or the URL of the object WAL's store."""


def find_places(target: str, settings: Mapping[str, str] | None = None, *,
                environ: Mapping[str, str] | None = None) -> Places:
    """The places of the store at ``target`` (a store's directory, or the objects' URL of a
    store without one), with ``settings`` (fields of :data:`PLACE_FIELDS`; empty values are
    not given) over the ``STREAMLIB_*`` environment. ConfigError if ``target`` is not a
    store."""
    given = {k: v for k, v in Config.env_values(environ).items() if k in PLACE_FIELDS}
    given.update({k: v for k, v in (settings or {}).items() if v})
    unknown = set(given) - set(PLACE_FIELDS)
    if unknown:
        raise ValueError(f"not a setting of where a store's parts are: {sorted(unknown)}")
    metadata = given.get("metadata", "").strip().lower()
    if metadata not in ("", "sqlite", "manifest"):
        raise ConfigError("metadata", "must be sqlite or manifest", metadata)
    directory = _directory(target)
    if directory is not None:
        return _directory_places(target, directory, given, metadata or "sqlite")
    return _url_places(target, given, metadata or "manifest")


def _directory(target: str) -> str | None:
    """The local directory ``target`` names (a path, or a ``file://`` URL of a store's
    directory), or None for the URL of a store without one."""
    if "://" not in target:
        if not os.path.isdir(target):
            raise ConfigError("path", "not a store: no such directory (a store without a "
                              "local directory is given by its objects' URL)", target)
        return os.path.abspath(target)
    if target.startswith("file://"):
        local = target.removeprefix("file://")
        if os.path.isfile(os.path.join(local, "meta.sqlite")):
            return os.path.abspath(local)
    return None


def _directory_places(target: str, path: str, given: dict[str, str], metadata: str) -> Places:
    objects_url = given.get("objects_url") or "file://" + os.path.join(path, "objects")
    if metadata == "sqlite":
        where = given.get("metadata_path") or os.path.join(path, "meta.sqlite")
        if not os.path.isfile(where):
            raise ConfigError("path", "not a store: no metadata database (meta.sqlite) in it; "
                              "give --metadata-path, or --metadata manifest for a store whose "
                              "metadata is a manifest", target if "metadata_path" not in given
                              else where)
    else:
        where = given.get("metadata_url") or objects_url
    wal = given.get("wal", "").strip().lower()
    if not wal:  # what the directory holds, as streamlib.open(path) places it
        wal = next((kind for kind, name in (("file", "wal"), ("block", "wal.ring"))
                    if os.path.exists(os.path.join(path, name))), "object")
    if wal == "object":
        wal_where = given.get("wal_url") or objects_url
    else:
        wal_where = given.get("wal_path") or os.path.join(
            path, "wal" if wal == "file" else "wal.ring")
    return Places(target, metadata, where, objects_url, given.get("archive_url", ""), wal,
                  wal_where)


def _url_places(target: str, given: dict[str, str], metadata: str) -> Places:
    if metadata == "sqlite":
        where = given.get("metadata_path", "")
        if not where or not os.path.isfile(where):
            raise ConfigError("metadata_path", "a store whose metadata is SQLite needs the "
                              "file's path (--metadata-path)", where)
    else:
        where = given.get("metadata_url") or target
    wal = given.get("wal", "").strip().lower() or "object"
    wal_where = given.get("wal_path", "") if wal != "object" else (
        given.get("wal_url") or target)
    return Places(target, metadata, where, target, given.get("archive_url", ""),
                  wal if wal_where else "", wal_where)


@dataclass(slots=True)
class OpenedStore:
    """A store's parts opened read-only: the metadata, the object stores by tier, the
    manifest's store (None for SQLite) and the object WAL's (None for a local WAL)."""

    places: Places
    meta: MetadataStore
    stores: dict[str, ObjectStore]
    manifest: ObjectStore | None = None
    wal_store: ObjectStore | None = None
    closed: bool = field(default=False)

    def store_for(self, tier: str) -> ObjectStore:
        """The object store of ``tier`` (ConfigError naming the setting if it was not
        given)."""
        store = self.stores.get(tier)
        if store is None:
            raise ConfigError("archive_url", f"the store has objects in the {tier} tier: give "
                              f"its URL (--archive-url)")
        return store

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.meta.close()

    def __enter__(self) -> OpenedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def object_store(url: str, storage_options: Mapping[str, Any] | None,
                 setting: str = "objects_url") -> ObjectStore:
    """The object store at ``url``, with the tools' retry policy (ConfigError for a URL fsspec
    does not take)."""
    try:
        return ObjectStore.from_url(url, storage_options, retry=RETRY)
    except (ValueError, ImportError) as error:
        raise ConfigError(setting, str(error), url) from None


def open_store(places: Places, storage_options: Mapping[str, Any] | None = None
               ) -> OpenedStore:
    """Open the parts ``places`` names, read-only."""
    objects = object_store(places.objects_url, storage_options)
    stores = {"": objects}
    if places.archive_url:
        stores["archive"] = object_store(places.archive_url, storage_options, "archive_url")
    wal_store = None
    if places.wal == "object":
        wal_store = (objects if places.wal_where == places.objects_url
                     else object_store(places.wal_where, storage_options, "wal_url"))
    if places.metadata == "sqlite":
        from streamlib.meta.local import SQLiteMetadataStore

        meta: MetadataStore = SQLiteMetadataStore(places.metadata_where, read_only=True)
        return OpenedStore(places, meta, stores, None, wal_store)
    from streamlib.meta.manifest import ManifestMetadataStore

    manifest = (objects if places.metadata_where == places.objects_url
                else object_store(places.metadata_where, storage_options, "metadata_url"))
    if not manifest.list(MANIFEST_PREFIX + "/"):
        raise ConfigError("path", f"not a store: nothing under {MANIFEST_PREFIX}/ there (a "
                          f"store with a local directory is given by its path)",
                          manifest.url)
    meta = ManifestMetadataStore(manifest, prefix=MANIFEST_PREFIX, read_only=True)
    return OpenedStore(places, meta, stores, manifest, wal_store)


__all__ = ["MANIFEST_PREFIX", "OBJECT_WAL_PREFIX", "PLACE_FIELDS", "OpenedStore", "Places",
           "find_places", "object_store", "open_store"]
