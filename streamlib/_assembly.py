"""From a :class:`~streamlib.Config` to the parts of a store: the object store, the metadata
(with the node lock of a local one) and the WAL, each backend chosen by name from a registry,
and the coordination with other nodes, chosen by the metadata's capabilities (docs/store.md,
"Modules and the data flow").

A backend is registered under the name its config field takes (``wal="block"``,
``metadata="manifest"``); its module is imported when first used.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamlib.config import ALLOW_UNSAFE_NO_FSYNC, Config
from streamlib.disk import DURABLE, UNSAFE_NO_FSYNC, Syncing
from streamlib.errors import (
    ConfigError,
    ConfigWarning,
    NodeLockedError,
    StorageUnavailable,
    describe,
)
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.shared.coordination import Coordination, LocalCoordination
from streamlib.shared.fencing import SharedCoordination

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from streamlib.meta import MetadataStore
    from streamlib.node import Node
    from streamlib.wal import Wal


log = logging.getLogger(__name__)

def under(config: Config, field: str, value: str, default: str) -> str:
    """``value``, or ``default`` under the store's path (ConfigError if it has none)."""
    if value:
        return value
    if not config.path:
        raise ConfigError(field, "must be set when the store has no path")
    return os.path.join(config.path, default)


def check_places(config: Config) -> None:
    """The store's path is a local directory and the ``*_url`` fields are URLs: a URL given as
    the path, or a path as a URL, would silently make a local directory of that name."""
    if "://" in config.path:
        raise ConfigError("path", "is the store's local directory (its WAL and metadata); to keep "
                          "objects elsewhere give objects_url (s3://bucket/prefix), and to keep "
                          "nothing locally also wal='object' and metadata='manifest' "
                          "(docs/guide.md)", config.path)
    for field in ("objects_url", "wal_url", "metadata_url"):
        value = getattr(config, field)
        if value and "://" not in value:
            raise ConfigError(field, "must be a URL with its scheme (file:///path, "
                              "s3://bucket/prefix, memory://name)", value)


def syncing(config: Config) -> Syncing:
    """How the store's local writers sync (``durability``). ``unsafe-no-fsync`` is for tests:
    refused unless pytest is running a test or the environment allows it by name."""
    if config.durability == "fsync":
        return DURABLE
    if "PYTEST_CURRENT_TEST" in os.environ:
        return UNSAFE_NO_FSYNC
    if os.environ.get(ALLOW_UNSAFE_NO_FSYNC) == "1":
        warnings.warn(f"durability=unsafe-no-fsync: nothing is fsynced; a machine crash or "
                      f"power loss loses acknowledged appends (allowed by "
                      f"{ALLOW_UNSAFE_NO_FSYNC}=1)", ConfigWarning, stacklevel=2)
        return UNSAFE_NO_FSYNC
    raise ConfigError("durability", f"unsafe-no-fsync loses acknowledged appends in a machine "
                      f"crash or power loss, so it is for tests: it is accepted while pytest "
                      f"runs a test, or with the environment variable "
                      f"{ALLOW_UNSAFE_NO_FSYNC}=1", config.durability)


def make_directory(config: Config) -> None:
    """The store's directory, made if missing (ConfigError naming the path otherwise)."""
    if not config.path:
        return
    try:
        os.makedirs(config.path, exist_ok=True)
    except FileExistsError:
        raise ConfigError("path", "exists and is not a directory", config.path) from None
    except OSError as e:
        raise ConfigError("path", f"cannot be made a directory ({e.strerror})",
                          config.path) from None


# ---- the object store ----

def open_objects(config: Config, storage_options: Mapping[str, Any] | None,
                 filesystem: AbstractFileSystem | None) -> ObjectStore:
    """Where objects go: ``objects_url`` (default ``objects/`` under the path), or a root within
    ``filesystem`` when one is given."""
    url = config.objects_url
    if not url:
        path = under(config, "objects_url", "", "objects")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ConfigError("path", f"cannot make the objects' directory in it "
                              f"({e.strerror})", config.path) from None
        url = "file://" + os.path.abspath(path)
    return _writable_store(config, "objects_url", url, storage_options, filesystem)


def open_archive(config: Config, storage_options: Mapping[str, Any] | None,
                 filesystem: AbstractFileSystem | None) -> ObjectStore | None:
    """The archive tier (``archive_url``), or None when it is not set. With ``filesystem``,
    the URL's path is a root within it, as for the objects."""
    if not config.archive_url:
        return None
    return _writable_store(config, "archive_url", config.archive_url, storage_options,
                           filesystem)


def _writable_store(config: Config, setting: str, url: str,
                    storage_options: Mapping[str, Any] | None,
                    filesystem: AbstractFileSystem | None) -> ObjectStore:
    retry = RetryPolicy(timeout=config.retry_timeout_ms / 1000)
    sync = syncing(config)
    try:
        if filesystem is not None:
            store = ObjectStore(filesystem, url.split("://", 1)[-1], retry=retry, syncing=sync)
        else:
            store = ObjectStore.from_url(url, storage_options, retry=retry, syncing=sync)
    except ValueError as e:
        raise ConfigError(setting, str(e), url) from None
    _check_objects(store, url, setting)
    return store


def _check_objects(store: ObjectStore, url: str, setting: str) -> None:
    """The store must take writes (``ObjectStore.check_writable``: a local directory is checked,
    a store across the network written once): a missing bucket, a read-only store or a refusal
    is a ConfigError now rather than a failure at the first upload. A store that does not
    answer is only logged: the node opens and its uploads are tried again in the background."""
    try:
        store.check_writable()
    except FileNotFoundError:
        raise ConfigError(setting, "the bucket does not exist (create it first)",
                          url) from None
    except PermissionError as e:
        raise ConfigError(setting, f"cannot write objects there ({e.strerror or e})",
                          url) from None
    except StorageUnavailable as e:
        log.warning("the object store does not answer at open; uploads will be retried in "
                    "the background: %s", e)


def store_at(url: str, objects: ObjectStore, storage_options: Mapping[str, Any] | None
             ) -> ObjectStore:
    """The object store at ``url`` (the objects' own when empty), retried like it."""
    if not url:
        return objects
    return ObjectStore.from_url(url, storage_options, retry=objects.retry,
                                syncing=objects.syncing).metered(objects.meter, objects.purpose)


# ---- the metadata ----

_memory_lock = threading.Lock()  # a leaf: held for no call
_memory_nodes: set[tuple[str, str]] = set()  # GUARDED_BY(_memory_lock): (manifest URL, node)


def claim_memory_node(config: Config, objects: ObjectStore, node_id: str
                      ) -> Callable[[], None] | None:
    """For a manifest in ``memory://``: refuse a second open of the node in this process (the
    memory filesystem lives in the process, and a second open would silently fence the
    first), and return what releases the claim at close. None for other stores: a node on
    local files has its lock file, and a shared store is meant for several processes."""
    if config.metadata != "manifest":
        return None
    url = (config.metadata_url or objects.url).rstrip("/")
    if not url.startswith("memory://"):
        return None
    key = (url, node_id)
    with _memory_lock:
        if key in _memory_nodes:
            raise NodeLockedError(
                f"this node is already open on these in-memory objects in this process (a "
                f"second open would fence the first: close it, or give another node_id): "
                f"url=`{url}` node_id=`{node_id}`")
        _memory_nodes.add(key)

    def release() -> None:
        with _memory_lock:
            _memory_nodes.discard(key)

    return release

@dataclass(slots=True)
class Metadata:
    """An opened metadata store, and the node lock held for it (-1: none)."""

    store: MetadataStore
    lock: int = -1


MetadataOpener = Callable[[Config, str, ObjectStore, "Mapping[str, Any] | None"], Metadata]


def _sqlite(config: Config, node_id: str, objects: ObjectStore,
            storage_options: Mapping[str, Any] | None) -> Metadata:
    from streamlib.meta.local import SQLiteMetadataStore

    path = under(config, "metadata_path", config.metadata_path, "meta.sqlite")
    lock = lock_node(path, node_id)
    try:
        return Metadata(SQLiteMetadataStore(path, syncing=syncing(config)), lock)
    except BaseException:
        os.close(lock)
        raise


def _manifest(config: Config, node_id: str, objects: ObjectStore,
              storage_options: Mapping[str, Any] | None) -> Metadata:
    from streamlib.meta.manifest import ManifestMetadataStore

    # Shared: no lock file, which other machines would not see. Opening registers the node
    # (a new node epoch), which fences any process still using its id.
    store = store_at(config.metadata_url, objects, storage_options)
    # Its old deltas go after the store's grace period, but never within a minute: a smaller
    # grace would make every look at the manifest list its checkpoints (docs/shared-stores.md).
    grace = max(config.delete_grace_ms, MANIFEST_GRACE_FLOOR_MS)
    return Metadata(ManifestMetadataStore(store, node_id=node_id,
                                          checkpoint_every=config.checkpoint_every,
                                          delete_grace_ms=grace))


MANIFEST_GRACE_FLOOR_MS = 60_000
"""The least time a shared manifest keeps a delta past its checkpoint (the manifest's own grace
period is the store's ``delete_grace_ms``, or this if that is smaller)."""

METADATA: dict[str, MetadataOpener] = {"sqlite": _sqlite, "manifest": _manifest}
"""Metadata backends by the name ``Config.metadata`` takes."""


def open_metadata(config: Config, node_id: str, objects: ObjectStore,
                  storage_options: Mapping[str, Any] | None,
                  given: MetadataStore | None = None) -> Metadata:
    """The metadata ``config.metadata`` names, or ``given`` (a component passed to open). A
    given store that is not shared gets the node lock beside ``metadata_path`` (or the store's
    path) when there is one."""
    if given is None:
        return METADATA[config.metadata](config, node_id, objects, storage_options)
    if given.capabilities.shared or not (config.metadata_path or config.path):
        return Metadata(given)
    return Metadata(given, lock_node(under(config, "metadata_path", config.metadata_path,
                                           "meta.sqlite"), node_id))


def lock_node(meta_path: str, node_id: str) -> int:
    """One process at a time runs a node of a store (its WAL, its commits): an exclusive
    ``flock`` beside the metadata, held until close. The file WAL locks itself too; the object
    WAL has nothing else that would stop a second process on this machine."""
    directory = os.path.dirname(os.path.abspath(meta_path))
    os.makedirs(directory, exist_ok=True)
    path = f"{os.path.abspath(meta_path)}.node-{node_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NodeLockedError(describe("another process, or another open store of this "
                                       "process, has this store's node open: close it there, "
                                       "or give this one another node_id",
                                       node=node_id, lock=path)) from None
    return fd


# ---- the coordination with other nodes ----

def coordination_for(node: Node) -> Coordination:
    """The coordination the node's metadata asks for: shared when its ``capabilities`` say
    other nodes may use it at once, else that of a store of one node."""
    if node.meta.capabilities.shared:
        return SharedCoordination(node)
    return LocalCoordination(node)


# ---- the WAL ----

@dataclass(frozen=True, slots=True)
class WalPlace:
    """Where a node's WAL is: its backend, the path of a file or block WAL, the object
    store of an object WAL."""

    backend: str
    path: str
    store: ObjectStore | None


WalOpener = Callable[[Config, str, int, WalPlace, bool], "Wal"]


def _file_wal(config: Config, node: str, node_epoch: int, place: WalPlace,
              create: bool) -> Wal:
    from streamlib.wal.file import FileWal

    return FileWal(place.path, capacity=config.wal_bytes,
                   full_timeout=config.append_timeout_ms / 1000, syncing=syncing(config))


def _block_wal(config: Config, node: str, node_epoch: int, place: WalPlace,
               create: bool) -> Wal:
    from streamlib.wal.block import BlockWal

    path = place.path
    device = os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode)
    if os.path.realpath(path).startswith("/dev/") and not device:
        # A typo in a device's name would otherwise make a "durable" ring in /dev (RAM).
        raise ConfigError("wal_path", "under /dev a block WAL must be an existing block device "
                          "(a ring file is made only outside /dev)", path)
    size = None if os.path.exists(path) else config.wal_bytes // 4096 * 4096
    log.info("block WAL: %s %s", "device" if device else "ring file" if size is None
             else "new ring file", path)
    return BlockWal(path, size=size, full_timeout=config.append_timeout_ms / 1000,
                    epoch=node_epoch)


def _object_wal(config: Config, node: str, node_epoch: int, place: WalPlace,
                create: bool) -> Wal:
    from streamlib.wal.object import ObjectWal

    assert place.store is not None
    return ObjectWal(place.store, node, prefix="wal",
                     full_timeout=config.append_timeout_ms / 1000,
                     max_pending_bytes=max(config.wal_bytes, 4 * 1024 * 1024),
                     flush_bytes=config.object_wal_flush_bytes,
                     linger=config.object_wal_linger_us / 1_000_000,
                     max_inflight=config.object_wal_in_flight)


WALS: dict[str, WalOpener] = {"file": _file_wal, "block": _block_wal, "object": _object_wal}
"""WAL backends by the name ``Config.wal`` takes."""


def wal_place(config: Config, backend: str, path: str, url: str, objects: ObjectStore,
              storage_options: Mapping[str, Any] | None) -> WalPlace:
    if backend not in WALS:
        raise ValueError(f"wal must be one of {', '.join(WALS)}: wal=`{backend}`")
    if backend == "object":
        return WalPlace(backend, path, store_at(url, objects, storage_options))
    return WalPlace(backend, path, None)


def open_wal(config: Config, node: str, node_epoch: int, place: WalPlace, *,
             create: bool) -> Wal:
    """The WAL of ``node`` at ``place``: this store's own (``create``), or one that must exist
    already (a take-over)."""
    if place.backend != "object" and not create and not os.path.exists(place.path):
        raise ConfigError("wal_path", f"no {place.backend} WAL of node {node} there", place.path)
    return WALS[place.backend](config, node, node_epoch, place, create)


def own_wal_place(config: Config, objects: ObjectStore,
                  storage_options: Mapping[str, Any] | None) -> WalPlace:
    """Where this store's own WAL is (defaults under the store's path)."""
    path = config.wal_path
    if config.wal != "object":
        path = under(config, "wal_path", path, "wal" if config.wal == "file" else "wal.ring")
    return wal_place(config, config.wal, path, config.wal_url, objects, storage_options)


__all__ = ["METADATA", "WALS", "Metadata", "WalPlace", "coordination_for", "lock_node",
           "open_metadata",
           "open_objects", "open_wal", "own_wal_place", "store_at", "under", "wal_place"]
