"""The store: opens the WAL, the object store and the metadata, recovers, and hands out streams
(docs/store.md).

``streamlib.open("./data")`` needs nothing else: a file WAL in ``data/wal``, objects in
``data/objects`` (``file://``), metadata in ``data/meta.sqlite``. Every part can be moved by
:class:`~streamlib.Config`: another WAL backend, any fsspec URL for the objects.

This module is the facade and the wiring; the data flow lives in the modules it wires
together: :mod:`streamlib.write`, :mod:`streamlib.uploader`, :mod:`streamlib.read`,
:mod:`streamlib.recovery`, and :mod:`streamlib.shared` for nodes sharing a bucket.
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from streamlib import _assembly, aio
from streamlib._paths import StorePaths
from streamlib.cache import MessageCache
from streamlib.config import Config
from streamlib.cost import Meter, Prices
from streamlib.errors import (
    ConfigError,
    StorageUnavailable,
    StreamClosed,
    StreamNotFound,
    describe,
)
from streamlib.kv import KeyValue
from streamlib.lifecycle import Lifecycle
from streamlib.lifecycle.compaction import CompactionReport
from streamlib.lifecycle.sweep import GarbageReport
from streamlib.meta import (
    MetadataStore,
    Retention,
    check_id,
    check_name,
    check_node_id,
    check_retention,
)
from streamlib.metrics import Metrics, collect
from streamlib.node import Backlog, Node
from streamlib.read import ReadPath
from streamlib.recovery import recover
from streamlib.shared import lease
from streamlib.shared.coordination import Coordination
from streamlib.shared.takeover import TakeOver, take_over
from streamlib.state import StreamInfo, StreamState
from streamlib.stats import Sources, Stats, gather
from streamlib.stream import Stream
from streamlib.uploader import Uploader
from streamlib.write import WritePath

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from streamlib.io import ObjectStore
    from streamlib.wal import Wal

log = logging.getLogger(__name__)

_SCOPES = itertools.count(1)


def open(path_or_config: str | os.PathLike[str] | Config | Mapping[str, object] | None = None,
         *, storage_options: Mapping[str, Any] | None = None,
         filesystem: AbstractFileSystem | None = None, cache: MessageCache | None = None,
         metadata_store: MetadataStore | None = None, **overrides: object) -> StreamStore:
    """Open (or create) a store.

    ``path_or_config`` is the store's directory, a :class:`~streamlib.Config`, or a mapping of
    config fields; ``overrides`` are config fields too (``streamlib.open("./data",
    compression="zstd")``); ``STREAMLIB_*`` environment variables apply below both.
    ``storage_options`` go to the fsspec filesystem of ``objects_url`` (for S3: ``key``,
    ``secret``, ``client_kwargs={"endpoint_url": …}``), and to ``wal_url``'s. ``filesystem``
    is an fsspec filesystem to use for the objects instead of one built from the URL (a
    component: a wrapped or instrumented filesystem, a test's fault injector); ``objects_url``
    then names the root within it. ``cache`` is a :class:`~streamlib.cache.MessageCache` to
    share with other stores of this process (one memory budget), instead of one of
    ``cache_bytes`` for this store alone. ``metadata_store`` is a
    :class:`~streamlib.meta.MetadataStore` to use instead of the one ``metadata`` names (a
    component: another backend, a wrapped one such as
    :class:`~streamlib.testing.FaultyMetadataStore`); the store closes it when it closes.

    Opening recovers: what the WAL holds beyond the committed objects is uploaded before this
    returns (or, if the object store is down, kept and uploaded in the background).
    """
    if isinstance(path_or_config, str | os.PathLike):
        config = Config.load({"path": os.fspath(path_or_config)})
    elif isinstance(path_or_config, Config | Mapping) or path_or_config is None:
        config = Config.load(path_or_config)
    else:
        raise TypeError(f"open takes a path, a Config or a mapping, "
                        f"not {type(path_or_config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    return StreamStore(config, storage_options=storage_options, filesystem=filesystem,
                       cache=cache, metadata_store=metadata_store)


class StreamStore(aio.AsyncStore):
    """Streams on one node: create, open, list, destroy; ``flush()`` and ``close()``.

    Built by :func:`streamlib.open`. Thread-safe. Use it as a context manager, or call
    :meth:`close`, which waits for appends in flight, uploads what is left and releases the
    WAL (another process may then open the store)."""

    def __init__(self, config: Config, *, storage_options: Mapping[str, Any] | None = None,
                 filesystem: AbstractFileSystem | None = None,
                 cache: MessageCache | None = None,
                 metadata_store: MetadataStore | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {type(config).__name__}")
        if cache is not None and not isinstance(cache, MessageCache):
            raise TypeError(f"cache must be a streamlib.MessageCache, not {type(cache).__name__}")
        if metadata_store is not None and not isinstance(metadata_store, MetadataStore):
            raise TypeError(f"metadata_store must be a streamlib.meta.MetadataStore, "
                            f"not {type(metadata_store).__name__}")
        self.config = config
        self._storage_options = storage_options
        try:
            self.node_id = check_node_id(config.node_id)
        except ValueError as e:
            raise ConfigError("node_id", str(e), config.node_id) from None
        _assembly.check_places(config)
        _assembly.make_directory(config)
        self._cache = (MessageCache(config.cache_bytes, readahead_bytes=config.readahead_bytes,
                                    readahead_gets=config.readahead_gets)
                       if cache is None else cache)
        self._metadata: _assembly.Metadata | None = None
        self._wal: Wal | None = None
        self._node: Node | None = None
        self._uploader: Uploader | None = None
        self._coordination: Coordination | None = None
        self._lifecycle: Lifecycle | None = None
        self._meter = Meter()  # what the object stores are asked, by purpose
        self._memory_claim: Callable[[], None] | None = None  # released by _release
        try:
            self._objects = _assembly.open_objects(config, storage_options,
                                                   filesystem).metered(self._meter, "upload")
            if metadata_store is None:
                self._memory_claim = _assembly.claim_memory_node(config, self._objects,
                                                                 self.node_id)
            archive = _assembly.open_archive(config, storage_options, filesystem)
            self._archive = archive.metered(self._meter, "read") if archive else None
            self._metadata = _assembly.open_metadata(config, self.node_id,
                                                     self._objects.purposed("manifest"),
                                                     storage_options, metadata_store)
            self._wire(self._metadata)
        except BaseException:
            self._release()
            raise
        assert self._coordination is not None and self._uploader is not None
        assert self._lifecycle is not None
        self._coordination.start(self._write)
        self._uploader.start()
        self._lifecycle.start()

    def _wire(self, metadata: _assembly.Metadata) -> None:
        """Register the node, build the data flow's parts, recover the WAL."""
        config, meta = self.config, metadata.store
        registered = meta.register_node(self.node_id)
        self.node_epoch = registered.node_epoch
        if meta.capabilities.shared:
            # An earlier process of this node may still run (nothing else fences an object
            # WAL): its lease ends before this one reads the WAL (docs/shared-stores.md). A
            # file or block WAL's lock proves it gone; at epoch 1 there was none.
            waits = config.wal == "object" and registered.node_epoch > 1
            earlier = lease.recorded(meta, self.node_id, config.lease_ms) if waits else 0
            lease.record(meta, self.node_id, self.node_epoch, config.lease_ms)
            lease.wait_out(earlier, f"open of node {self.node_id}")
        # Upload before the WAL or the cache is half full, whatever upload_bytes says: appends
        # must not wait for the time trigger.
        threshold = min(config.upload_bytes, config.wal_bytes // 2, self._cache.max_bytes // 2)
        node = self._node = Node(node_id=self.node_id, node_epoch=self.node_epoch,
                                 config=config, meta=meta, cache=self._cache,
                                 scope=f"store-{next(_SCOPES)}", objects_url=self._objects.url,
                                 backlog=Backlog(threshold, config.upload_interval_ms / 1000))
        coordination = self._coordination = _assembly.coordination_for(node)
        for stream in meta.streams():
            node.streams.add(coordination.restore(stream))
        place = _assembly.own_wal_place(config, self._objects.purposed("wal"),
                                        self._storage_options)
        self._wal = _assembly.open_wal(config, self.node_id, self.node_epoch, place,
                                       create=True)
        self._write = WritePath(node, self._wal, coordination)
        self._read = ReadPath(node, self._objects.purposed("read"), coordination, self._archive)
        floor = recover(node, self._wal, coordination, registered.wal_position)
        self._uploader = Uploader(node=node, wal=self._wal, objects=self._objects,
                                  write=self._write, coordination=coordination,
                                  position_floor=floor)
        self._cache.register(node.scope, node.backlog.request)
        paths = self._paths = StorePaths(node, self._write, self._read, self._uploader,
                                         coordination)
        stores = {"": self._objects.purposed("compaction")}
        if self._archive is not None:
            stores["archive"] = self._archive.purposed("compaction")
        wal_stores = [self._objects.purposed("gc")]
        if config.wal == "object" and config.wal_url:
            wal_stores.append(_assembly.store_at(config.wal_url, wal_stores[0],
                                                 self._storage_options))
        # Its callbacks hold the parts, not the store: an unclosed store can still be collected.
        self._lifecycle = Lifecycle(node=node, stores=stores, wal_stores=wal_stores,
                                    owns=lambda state: not coordination.remote(state),
                                    trim=paths.trim_as_owner)
        try:
            self._uploader.upload()
        except (StorageUnavailable, OSError) as error:  # the uploader logged the outage
            log.debug("could not upload recovered data at open; retrying in the background: "
                      "%s", error)

    # ---- streams ----

    def create_stream(self, name: str | None = None, *,
                      retention: Retention | None = None) -> Stream:
        """A new stream, opened for write. ``name`` is optional and unique among live
        streams (:class:`~streamlib.errors.StreamExists`); ``retention``: what of it to keep
        (:meth:`Stream.set_retention <streamlib.Stream.set_retention>`)."""
        if name is not None:
            check_name(name)
        retention = check_retention(retention)
        self._live()
        assert self._coordination is not None
        state, epoch = self._coordination.create_for_write(name, retention)
        return Stream(self._paths, state, epoch)

    def open_stream(self, stream: int | str, *, read_only: bool = False) -> Stream:
        """A handle on the stream with this id (int) or name (str). For write (the default),
        the stream's epoch goes up: earlier write handles are fenced."""
        return self._open_state(self._state(stream), read_only=read_only)

    def _open_state(self, state: StreamState, *, read_only: bool) -> Stream:
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be a bool, not {type(read_only).__name__}")
        if read_only:
            return Stream(self._paths, state, None)
        assert self._coordination is not None
        return Stream(self._paths, state, self._coordination.open_for_write(state))

    def get(self, stream: int | str) -> StreamInfo:
        """The stream with this id or name, as it is now (on a shared store: as of the last
        look at the metadata, at most ``sync_interval_ms`` ago)."""
        self._sync()
        return self._state(stream).info()

    def streams(self) -> list[StreamInfo]:
        """Every live stream, by id."""
        node = self._live()
        self._sync()
        states = sorted(node.streams.all(), key=lambda s: s.id)
        return [s.info() for s in states if not s.destroyed]

    def kv(self, namespace: str) -> KeyValue:
        """The key-value entries of ``namespace`` (:class:`~streamlib.kv.KeyValue`), kept in
        this store's metadata, durable and fenced like a commit."""
        return KeyValue(self._live(), namespace)

    def destroy_stream(self, stream: int | str) -> None:
        """Delete the stream: its handles stop working, its name is free again, its data is
        reclaimed later. Its id is never reused."""
        state = self._state(stream)
        node = self._live()
        with state.order, node.changes:
            node.meta.destroy_stream(state.id)
            node.forget(state)

    def _state(self, stream: object) -> StreamState:
        node = self._live()
        if not isinstance(stream, str):
            check_id(stream, "stream")
        for attempt in range(2):
            try:
                stream_id = (node.meta.get_stream_by_name(stream).id if isinstance(stream, str)
                             else stream)
                state = node.streams.get(stream_id)  # type: ignore[arg-type]  # checked above
                if state is not None and not state.destroyed:
                    return state
            except StreamNotFound:
                pass
            if attempt == 0 and not self._sync(force=True):
                break  # nothing new in a shared store, or not shared at all
        raise StreamNotFound(describe("no such stream", stream=stream))

    # ---- the object lifecycle ----

    def compact(self, *, bytes_per_s: int = 0) -> CompactionReport:
        """Run a lifecycle pass now: retention of the streams this node writes, objects that
        hold nothing readable marked for deletion, small objects merged (docs/lifecycle.md),
        doomed objects past their grace period deleted. ``bytes_per_s``: the most its
        compaction reads plus writes a second (0, the default: as fast as it can; the
        background pass keeps to ``compaction_bytes_per_s``). Returns what it did: objects
        read, written and doomed, bytes, GETs, seconds, and swaps refused because another
        node changed their inputs first."""
        self._live()
        if isinstance(bytes_per_s, bool) or not isinstance(bytes_per_s, int) or bytes_per_s < 0:
            raise ValueError(f"bytes_per_s must be a non-negative int: bytes_per_s=`{bytes_per_s}`")
        assert self._lifecycle is not None
        return self._lifecycle.run_pass(bytes_per_s=bytes_per_s)

    def collect_garbage(self, *, dry_run: bool = False) -> GarbageReport:
        """List the object stores and delete what no metadata references: objects of upload
        rounds and compactions that crashed (older than ``delete_grace_ms``) and object-WAL
        objects below their node's trim position. Returns what it deleted, or with
        ``dry_run`` what it would delete (keys, sizes, reasons), deleting nothing."""
        self._live()
        assert self._lifecycle is not None
        return self._lifecycle.collect_garbage(dry_run=bool(dry_run))

    def _sync(self, force: bool = False) -> bool:
        return self._coordination is not None and self._coordination.sync(force)

    def take_over(self, node_id: str | int, *, wal: str | None = None, wal_path: str = "",
                  wal_url: str = "") -> TakeOver:
        """Take over a dead node: fence it, recover what its WAL holds beyond its committed
        objects, upload and commit it, and empty its WAL. Readers on every node then see it.

        Fencing comes first: a new node epoch in the metadata (the old process, if it still
        runs, fails its next commit with :class:`~streamlib.errors.FencedError` and stops
        appending) and, for the object WAL, a new WAL epoch whose marker supersedes whatever
        PUT of the old process lands later. ``wal`` is the node's WAL backend (default: this
        store's); ``wal_path`` the file WAL's directory or the block WAL's ring — a file or
        block WAL can be taken over where its path is reachable (a volume attached here);
        ``wal_url`` the object WAL's store (default: this store's objects). Take a node over
        before its streams are opened for write elsewhere (docs/shared-stores.md)."""
        node = self._live()
        assert self._coordination is not None
        return take_over(node, self._objects, self._coordination, self._storage_options,
                         node_id, wal=wal, wal_path=wal_path, wal_url=wal_url)

    # ---- life ----

    @property
    def metadata(self) -> MetadataStore:
        """The store's metadata, to inspect (streams, committed objects, nodes). Changing it
        behind the store's back is not supported: use the store's own methods."""
        return self._live().meta

    @property
    def objects(self) -> ObjectStore:
        """Where the store's objects are (to inspect or count requests; see
        :class:`~streamlib.io.ObjectStore`)."""
        return self._objects

    def _live(self) -> Node:
        node = self._node
        if node is None or node.closed:
            raise StreamClosed("the store is closed")
        return node

    def stats(self) -> Stats:
        """A snapshot of counters (:class:`streamlib.stats.Stats`): streams, bytes waiting for
        upload, the uploader's, the cache's, the lifecycle's, and the requests made of the
        object stores by purpose (``"cost"``: :mod:`streamlib.cost`)."""
        return gather(self._sources())

    def metrics(self, *, per_stream: bool | int = False,
                prices: Prices | None = None) -> Metrics:
        """The store's metrics now, by name (docs/metrics.md). ``per_stream``: also each
        stream's (True), or the ``n`` streams with the most bytes appended since open (an
        int); ``prices``: of the request-cost estimate (S3 Standard's by default)."""
        self._live()
        return collect(self._sources(), per_stream=per_stream, prices=prices)

    def _sources(self) -> Sources:
        assert self._node is not None and self._wal is not None
        assert self._uploader is not None and self._lifecycle is not None
        return Sources(self._node, self._wal, self._objects, self._cache, self._uploader,
                       self._read, self._lifecycle, self._meter)

    def flush(self) -> None:
        """Upload every acknowledged append now, and commit it (a round of the uploader in this
        thread). Raises :class:`~streamlib.errors.StorageUnavailable` if the object store
        stays down; the data stays in the WAL either way."""
        self._paths.flush()

    def close(self) -> None:
        """Wait for appends in flight, upload what is not uploaded yet, stop the uploader and
        release the WAL and the metadata. If the upload fails, the data stays in the WAL and the
        next open uploads it. Closing twice is fine."""
        node = self._node
        if node is None or not node.begin_closing():
            return  # closed, or closing in another thread
        assert self._uploader is not None and self._coordination is not None
        node.backlog.notify()  # appends waiting for room give up
        self._cache.wake()  # and those waiting for room in the cache
        node.streams.wake_all()  # tailing readers end
        states = node.streams.all()
        if self._lifecycle is not None:
            self._lifecycle.stop()
        self._write.finish(states)
        self._uploader.stop()
        self._read.stop()
        released: set[int] = set()
        if node.failure is None:
            try:
                self._uploader.upload()
                released = self._coordination.release_all()
            except Exception as error:
                log.warning("close: the last upload failed; the data stays in the WAL for the "
                            "next open: %r", error)
        for state in states:  # no future hangs
            self._write.settle_at_close(state, state.id in released)
        if node.meta.capabilities.shared and node.failure is None:
            lease.end(node.meta, node.id, node.epoch)  # every append is answered
        self._release()

    def _release(self) -> None:
        if self._node is not None:
            self._node.close()
        if self._coordination is not None:
            self._coordination.stop()
        if self._node is not None:
            self._cache.close_scope(self._node.scope)
        metadata = self._metadata
        for part in (self._wal, metadata.store if metadata is not None else None):
            if part is not None:
                try:
                    part.close()
                except Exception as error:
                    log.warning("close: %r", error)
        if metadata is not None and metadata.lock >= 0:
            os.close(metadata.lock)  # releases the flock
            metadata.lock = -1
        if self._memory_claim is not None:
            self._memory_claim()
            self._memory_claim = None

    def __del__(self) -> None:
        node = getattr(self, "_node", None)
        if node is not None and not node.closed:  # its threads and its node lock live on
            warnings.warn(f"unclosed {self!r}: close() it (or use it in a with block)",
                          ResourceWarning, source=self, stacklevel=2)

    def __enter__(self) -> StreamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<StreamStore path={self.config.path!r} wal={self.config.wal} "
                f"objects={self._objects.url!r}>")


__all__ = ["StreamStore", "TakeOver", "open"]
