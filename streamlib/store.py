"""The store: opens the WAL, the object store and the metadata, recovers, and hands out streams
(docs/store.md).

``streamlib.open("./data")`` needs nothing else: a file WAL in ``data/wal``, objects in
``data/objects`` (``file://``), metadata in ``data/meta.sqlite``. Every part can be moved by
:class:`~streamlib.Config`: another WAL backend, any fsspec URL for the objects.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamlib.cache import BATCH_OVERHEAD, MessageCache, Reader, StreamKey, Uncached, weight
from streamlib.config import Config
from streamlib.errors import (
    CacheMiss,
    ConfigError,
    CorruptDataError,
    FencedError,
    HandOverPending,
    OffsetMismatchError,
    OffsetOutOfRange,
    OutcomeUnknown,
    StorageUnavailable,
    StreamClosed,
    StreamNotFound,
    WalFullError,
    WalLockedError,
    describe,
)
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.kv import KeyValue
from streamlib.meta import (
    Commit,
    MetadataStore,
    ObjectMeta,
    StreamMeta,
    check_id,
    check_node_id,
    check_text,
)
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.objects import IndexCache, ObjectReader
from streamlib.records import AppendResult, FetchResult, RecordBatch
from streamlib.stream import (
    ObjectSlice,
    Stream,
    StreamInfo,
    StreamState,
    _Inflight,
    _Producer,
    new_object_index,
)
from streamlib.uploader import DATA_PREFIX, Uploader, UploadStats, Work, build_objects
from streamlib.wal import Wal, WalRecord

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger("streamlib.store")

INDEX_CACHE_BYTES = 16 * 1024 * 1024


def open(path_or_config: str | os.PathLike[str] | Config | Mapping[str, object] | None = None,
         *, storage_options: Mapping[str, Any] | None = None,
         filesystem: AbstractFileSystem | None = None, cache: MessageCache | None = None,
         **overrides: object) -> StreamStore:
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
    ``cache_bytes`` for this store alone.

    Opening recovers: what the WAL holds beyond the committed objects is uploaded before this
    returns (or, if the object store is down, kept and uploaded in the background).
    """
    if isinstance(path_or_config, str | os.PathLike):
        config = Config.load(path=os.fspath(path_or_config), **overrides)
    elif isinstance(path_or_config, Config | Mapping) or path_or_config is None:
        config = Config.load(path_or_config, **overrides)
    else:
        raise TypeError(f"open takes a path, a Config or a mapping, "
                        f"not {type(path_or_config).__name__}")
    return StreamStore(config, storage_options=storage_options, filesystem=filesystem,
                       cache=cache)


def _under(config: Config, field: str, value: str, default: str) -> str:
    if value:
        return value
    if not config.path:
        raise ConfigError(field, "must be set when the store has no path")
    return os.path.join(config.path, default)


def _lock_node(meta_path: str, node_id: str) -> int:
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
        raise WalLockedError(describe("another process has this store's node open: close it "
                                      "there, or give this one another node_id",
                                      node=node_id, lock=path)) from None
    return fd


@dataclass(frozen=True, slots=True)
class TakeOver:
    """What :meth:`StreamStore.take_over` recovered: the node's new ``node_epoch``, each
    stream's recovered offsets ``{stream id: (start, end)}``, the records, bytes and objects,
    and ``damaged`` streams (``{stream id: why}``) whose records in the WAL did not follow
    their committed end (left in the WAL's place, not committed)."""

    node_id: str
    node_epoch: int
    streams: dict[int, tuple[int, int]]
    records: int
    bytes: int
    objects: int
    damaged: dict[int, str]


class StreamStore:
    """Streams on one node: create, open, list, destroy; ``flush()`` and ``close()``.

    Built by :func:`streamlib.open`. Thread-safe. Use it as a context manager, or call
    :meth:`close`, which waits for appends in flight, uploads what is left and releases the
    WAL (another process may then open the store)."""

    def __init__(self, config: Config, *, storage_options: Mapping[str, Any] | None = None,
                 filesystem: AbstractFileSystem | None = None,
                 cache: MessageCache | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {type(config).__name__}")
        self.config = config
        self._storage_options = storage_options
        try:
            self.node_id = check_node_id(config.node_id)
        except ValueError as e:
            raise ConfigError("node_id", str(e), config.node_id) from None
        if config.path:
            os.makedirs(config.path, exist_ok=True)
        self._lock = threading.Lock()  # the stream table, the frontier, the counters
        self._meta_lock = threading.Lock()  # epochs and commits, one at a time
        self._states: dict[int, StreamState] = {}
        self._frontier = -1  # the WAL position of the last acknowledged append
        self._pending_bytes = 0  # acknowledged, not yet committed
        self._pending_since: float | None = None
        self._failure: BaseException | None = None  # the WAL failed, or fenced: no appends
        self._room = threading.Condition(self._lock)  # pending bytes went down
        self._appending_lock = threading.Lock()
        self._appending: dict[int, int] = {}  # appends inside their WAL call: lowest position
        self._tokens = itertools.count()
        self._node_position = 0
        self._position_floor = 0  # commits never move the node's WAL position back
        self._closed = False
        self._closing = False
        self._sync_lock = threading.Lock()
        self._synced = 0.0  # when the shared manifest was last read
        self._synced_version = -1  # the manifest version the streams were brought up to
        self._check_done = threading.Condition()  # fence checks (a shared manifest)
        self._ack_ready = threading.Condition()  # appends durable, to be acknowledged
        self._ack_pending: set[StreamState] = set()
        self._checking = False
        self._check_started = -1.0
        self._fences_scanned = -1  # the manifest version the last fence scan saw
        self._index_cache = IndexCache(INDEX_CACHE_BYTES)
        if cache is not None and not isinstance(cache, MessageCache):
            raise TypeError(f"cache must be a streamlib.MessageCache, not {type(cache).__name__}")
        self._cache = MessageCache(config.cache_bytes) if cache is None else cache
        self._scope = f"store-{next(_SCOPES)}"  # this store's reservations in the cache
        self._prefetcher = ThreadPoolExecutor(2, thread_name_prefix="streamlib-readahead")
        # Upload before the WAL or the cache is half full, whatever upload_bytes says: appends
        # must not wait for the time trigger.
        self._upload_threshold = min(config.upload_bytes, config.wal_bytes // 2,
                                     self._cache.max_bytes // 2)
        self._meta: MetadataStore | None = None
        self._node_lock = -1
        self._wal: Wal | None = None
        try:
            self._objects = self._open_objects(storage_options, filesystem)
            self._meta = self._open_metadata(storage_options)
            self._checks_fences = isinstance(self._meta, ManifestMetadataStore)
            node = self._meta.register_node(self.node_id)
            self.node_epoch = node.node_epoch
            self._node_position = node.wal_position
            for meta in self._meta.streams():
                state = self._states[meta.id] = StreamState(meta)
                if meta.handover_from == self.node_id:  # restarted while handing it over
                    state.epoch = meta.epoch_of(self.node_id)
                    state.written_here = True
                    state.fenced = self._fence_error(state, meta.owner)
                elif meta.owner == self.node_id:  # restarted after a crash: still this node's
                    state.written_here = True  # (to hand over when opened elsewhere)
                    state.handover_from = meta.handover_from  # a release it was waiting for
            self._wal = self._open_wal(storage_options)
            self._uploader = Uploader(objects=self._objects, config=config, node_id=self.node_id,
                                      node_epoch=self.node_epoch, take=self._take,
                                      commit=self._commit, trim=self._wal.trim,
                                      pending=self._pending,
                                      threshold=self._upload_threshold)
            self._cache.register(self._scope, self._uploader.request)
            self._recover()
        except BaseException:
            self._release()
            raise
        self._uploader.start()
        self._watcher: threading.Thread | None = None
        if self._checks_fences:  # an idle node must hand its streams over too
            self._watcher = threading.Thread(target=self._watch_fences, daemon=True,
                                             name="streamlib-fences")
            self._watcher.start()

    # ---- opening the parts ----

    def _open_objects(self, storage_options: Mapping[str, Any] | None,
                      filesystem: AbstractFileSystem | None) -> ObjectStore:
        url = self.config.objects_url
        if not url:
            path = _under(self.config, "objects_url", "", "objects")
            os.makedirs(path, exist_ok=True)
            url = "file://" + os.path.abspath(path)
        retry = RetryPolicy(timeout=self.config.retry_timeout_ms / 1000)
        try:
            if filesystem is not None:
                return ObjectStore(filesystem, url.split("://", 1)[-1], retry=retry)
            return ObjectStore.from_url(url, storage_options, retry=retry)
        except ValueError as e:
            raise ConfigError("objects_url", str(e), url) from None

    def _open_metadata(self, storage_options: Mapping[str, Any] | None) -> MetadataStore:
        config = self.config
        if config.metadata == "manifest":
            # Shared: no lock file, which other machines would not see. Opening registers
            # the node (a new node epoch), which fences any process still using its id.
            store = (ObjectStore.from_url(config.metadata_url, storage_options,
                                          retry=self._objects.retry)
                     if config.metadata_url else self._objects)
            return ManifestMetadataStore(store, node_id=self.node_id)
        meta_path = _under(config, "metadata_path", config.metadata_path, "meta.sqlite")
        self._node_lock = _lock_node(meta_path, self.node_id)
        return SQLiteMetadataStore(meta_path)

    def _open_wal(self, storage_options: Mapping[str, Any] | None) -> Wal:
        config = self.config
        path = config.wal_path
        if config.wal != "object":
            path = _under(config, "wal_path", path, "wal" if config.wal == "file" else "wal.ring")
        return self._wal_of(self.node_id, self.node_epoch, config.wal, path, config.wal_url,
                            storage_options, create=True)

    def _wal_of(self, node: str, node_epoch: int, backend: str, path: str, url: str,
                storage_options: Mapping[str, Any] | None, *, create: bool) -> Wal:
        """The WAL of ``node``: this store's own, or (``create`` False: it must exist) one a
        take-over recovers."""
        config = self.config
        timeout = config.append_timeout_ms / 1000
        if backend != "object" and not create and not os.path.exists(path):
            raise ConfigError("wal_path", f"no {backend} WAL of node {node} there", path)
        if backend == "file":
            from streamlib.wal.file import FileWal

            return FileWal(path, capacity=config.wal_bytes, full_timeout=timeout)
        if backend == "block":
            from streamlib.wal.block import BlockWal

            size = None if os.path.exists(path) else config.wal_bytes // 4096 * 4096
            return BlockWal(path, size=size, full_timeout=timeout, epoch=node_epoch)
        from streamlib.wal.object import ObjectWal

        store = (ObjectStore.from_url(url, storage_options, retry=self._objects.retry)
                 if url else self._objects)
        return ObjectWal(store, node, prefix="wal", full_timeout=timeout,
                         max_pending_bytes=max(config.wal_bytes, 4 * 1024 * 1024))

    def _recover(self) -> None:
        """Replay the WAL beyond what is committed into the log cache, then upload it."""
        assert self._wal is not None
        recovery = self._wal.recover()
        skipped = 0
        held: dict[int, tuple[int, int] | None] = {}
        for entry in recovery:
            record = entry.record
            state = self._states.get(record.stream_id)
            batch = record.batch
            if state is not None and state.id not in held:
                held[state.id] = self._held_epochs(self._metadata().get_stream(state.id))
            epochs = held.get(record.stream_id)
            if (state is None or batch.next_offset <= state.committed_end or epochs is None
                    or not epochs[0] <= record.epoch <= epochs[1]):
                # Committed already, of a destroyed stream, or not this node's to commit: of
                # a stream another node owns now, or appends refused at a hand-over.
                skipped += 1
                continue
            if state.damage is not None:
                continue
            if batch.base_offset != state.acked_end:
                # Acknowledged records after the gap stay in the WAL (the uploader never trims
                # past them), so the stream stays read-only at every open until it is repaired
                # or destroyed, and no offset is handed out twice.
                state.damage = describe(
                    "the WAL lost records of this stream (a gap at recovery); it is read-only "
                    "and the WAL is kept from here", stream=state.id,
                    expected=state.acked_end, found=batch.base_offset, position=entry.position)
                state.kept = entry.position
                log.error(state.damage)
                continue
            state.add_to_log(batch, entry.position)
            state.written_here = True
            self._cache.pin(self._scope, batch.size + BATCH_OVERHEAD)
            self._pending_bytes += batch.size
            self._frontier = entry.position  # for the background rounds, if the first fails
        for damage in recovery.dropped:
            log.warning("WAL recovery dropped damaged bytes [%d, %d): %s", damage.start,
                        damage.end, damage.reason)
        for state in self._states.values():
            state.assigned_end = state.acked_end
        if self._pending_bytes:
            self._pending_since = time.monotonic()
        if recovery.end < self._node_position:
            # Not the WAL the metadata knew (replaced, another backend, a fresh ring): commits
            # keep the node's position from going back until this WAL passes it.
            log.warning("the WAL ends at %d, below the node's committed position %d: a new or "
                        "replaced WAL", recovery.end, self._node_position)
            self._position_floor = self._node_position
        log.info("recovered %d WAL records (%d committed already), %d bytes to upload",
                 recovery.records, skipped, self._pending_bytes)
        try:
            self._uploader.upload()
        except (StorageUnavailable, OSError) as error:
            log.warning("could not upload recovered data at open; retrying in the background: "
                        "%s", error)

    # ---- streams ----

    def create_stream(self, name: str | None = None) -> Stream:
        """A new stream, opened for write. ``name`` is optional and unique among live
        streams (:class:`~streamlib.errors.StreamExists`)."""
        if name is not None:
            check_text(name, "name")
        meta = self._metadata().create_stream(name)
        with self._lock:  # a sync may have added it already
            state = self._states.setdefault(meta.id, StreamState(meta))
        return self._open_state(state, read_only=False)

    def open_stream(self, stream: int | str, *, read_only: bool = False) -> Stream:
        """A handle on the stream with this id (int) or name (str). For write (the default),
        the stream's epoch goes up: earlier write handles are fenced."""
        return self._open_state(self._state(stream), read_only=read_only)

    def _open_state(self, state: StreamState, *, read_only: bool) -> Stream:
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be a bool, not {type(read_only).__name__}")
        if read_only:
            return Stream(self, state, None)
        deadline = time.monotonic() + self.config.append_timeout_ms / 1000
        while True:
            self._await_own_release(state, deadline)
            # After every append of earlier handles, and never in the middle of a commit or
            # of a fence scan of this stream (``opening``: a scan that read the manifest before
            # this open must not fence it).
            with state.order, self._meta_lock, state.opening:
                if state.fenced is not None and not state.released:
                    continue  # fenced meanwhile: the release comes first
                self._check_open()
                meta = self._metadata().open_stream(state.id, node_id=self.node_id,
                                                    node_epoch=self.node_epoch)
                with state.lock:
                    handed_away = state.fenced is not None  # and released: others may write
                    state.fenced, state.released = None, False
                    state.epoch = meta.epoch
                    state.handover_from = (meta.handover_from
                                           if meta.handover_from != self.node_id else None)
                    idle = not state.log and not state.inflight  # nothing of its own to commit
                    if not state.written_here or handed_away or (
                            idle and meta.end_offset > state.committed_end):
                        # Others wrote it (or committed what they held): theirs is the end.
                        state.committed_end = state.acked_end = state.assigned_end = max(
                            state.committed_end, meta.end_offset)
                        state.objects = None
                        state.commits += 1
                    state.written_here = True
                return Stream(self, state, meta.epoch)

    def _await_own_release(self, state: StreamState, deadline: float) -> None:
        """This node handed the stream over before: that must be complete (released) before
        it opens the stream again."""
        while state.fenced is not None and not state.released:
            if isinstance(self._failure, FencedError):
                raise FencedError(describe("another process took over this store's node",
                                           node=self.node_id, stream=state.id))
            if time.monotonic() > deadline or self._closing:
                raise HandOverPending(describe("this node is still handing the stream over "
                                               "to another: retry", stream=state.id))
            time.sleep(0.02)

    def get(self, stream: int | str) -> StreamInfo:
        """The stream with this id or name, as it is now (on a shared store: as of the last
        look at the manifest, at most ``SYNC_INTERVAL`` ago)."""
        self._sync()
        return self._state(stream).info()

    def streams(self) -> list[StreamInfo]:
        """Every live stream, by id."""
        self._check_open()
        self._sync()
        with self._lock:
            states = sorted(self._states.values(), key=lambda s: s.id)
        return [s.info() for s in states if not s.destroyed]

    def kv(self, namespace: str) -> KeyValue:
        """The key-value entries of ``namespace`` (:class:`~streamlib.kv.KeyValue`), kept in
        this store's metadata, durable and fenced like a commit."""
        self._check_open()
        return KeyValue(self, namespace)

    def destroy_stream(self, stream: int | str) -> None:
        """Delete the stream: its handles stop working, its name is free again, its data is
        reclaimed later. Its id is never reused."""
        state = self._state(stream)
        with state.order, self._meta_lock:
            self._metadata().destroy_stream(state.id)
            self._forget_stream(state)

    def _forget_stream(self, state: StreamState) -> None:
        """The stream was destroyed (here or by another node): drop what this node holds of
        it; appends still in the WAL complete but nothing uploads them."""
        with state.lock:
            if state.destroyed and state.id not in self._states:
                return
            state.destroyed = True
            state.wake_readers()
            freed = state.log_bytes
            unpinned = weight(state.log)
            state.log.clear()
            state.log_positions.clear()
            state.log_bytes = 0
            state.kept_log.clear()
        self._cache.unpin(self._scope, unpinned)
        self._cache.drop_log(self._scope, state.id)
        with self._lock:
            self._states.pop(state.id, None)
            self._pending_bytes -= freed
            self._room.notify_all()

    def _held_epochs(self, meta: StreamMeta) -> tuple[int, int] | None:
        """The epochs of this node's WAL records of the stream that are its to commit: on a
        shared manifest, those of its time as owner (:meth:`StreamMeta.held_epochs`); on a
        store of one node, all."""
        if not isinstance(self._meta, ManifestMetadataStore):
            return 0, sys.maxsize
        return meta.held_epochs(self.node_id)

    def _state(self, stream: object) -> StreamState:
        self._check_open()
        if not isinstance(stream, str):
            check_id(stream, "stream")
        for attempt in range(2):
            try:
                if isinstance(stream, str):
                    stream_id = self._metadata().get_stream_by_name(stream).id
                else:
                    stream_id = stream  # type: ignore[assignment]
                with self._lock:
                    state = self._states.get(stream_id)
                if state is not None and not state.destroyed:
                    return state
            except StreamNotFound:
                pass
            if attempt == 0 and not self._sync(force=True):
                break  # nothing new in a shared manifest, or not shared at all
        raise StreamNotFound(describe("no such stream", stream=stream))

    # ---- other nodes' changes (a shared manifest) ----

    def _remote(self, state: StreamState) -> bool:
        """Whether another node may be writing ``state`` (a shared manifest, not opened for
        write here)."""
        return ((not state.written_here or state.handover_from is not None)
                and isinstance(self._meta, ManifestMetadataStore))

    def _sync(self, force: bool = False) -> bool:
        """On a shared manifest: read other nodes' changes (at most every
        :data:`SYNC_INTERVAL` seconds unless ``force``) and bring the streams this node does
        not write up to date: new streams, their committed ends, trims, destroys. Returns
        whether anything changed."""
        meta = self._meta
        if not isinstance(meta, ManifestMetadataStore) or self._closed:
            return False
        with self._sync_lock:
            now = time.monotonic()
            if not force and now - self._synced < SYNC_INTERVAL:
                return False
            self._synced = now
            meta.refresh()
            # Other threads read the manifest too (the fence thread): compare versions, not
            # what this refresh found.
            if meta.version == self._synced_version and not force:
                return False
            self._synced_version = meta.version
            live = {m.id: m for m in meta.streams()}
            with self._lock:
                for stream_id, m in live.items():
                    if stream_id not in self._states:
                        self._states[stream_id] = StreamState(m)
                states = list(self._states.values())
            for state in states:
                m = live.get(state.id)
                if m is None:
                    if not state.destroyed:
                        self._forget_stream(state)  # destroyed by another node
                    continue
                if state.handover_from is not None and state.fenced is None:
                    self._follow_handover(state, m)  # opened here, the old owner commits
                    continue
                with state.lock:
                    state.start_offset = max(state.start_offset, m.start_offset)
                    if state.written_here or m.end_offset <= state.committed_end:
                        continue
                    state.committed_end = state.acked_end = state.assigned_end = m.end_offset
                    state.epoch = m.epoch
                    state.objects = None  # loaded again with the new objects
                    state.commits += 1
                    state.wake_readers()
            return True

    # ---- the write path ----

    def _submit(self, handle: Stream, batch: RecordBatch, expected_offset: int | None,
                producer_id: object, sequence: int | None,
                timeout: float | None) -> Future[AppendResult]:
        state = handle._state
        assert self._wal is not None
        # One deadline for every wait of this append: room in memory, room in the WAL.
        deadline = time.monotonic() + (self.config.append_timeout_ms / 1000 if timeout is None
                                       else timeout)

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        with state.order:
            handle._check_writer()
            if self._closing:
                raise StreamClosed("the store is closing")
            if isinstance(self._failure, FencedError):
                raise FencedError(describe("another process took over this store's node",
                                           node=self.node_id, error=str(self._failure)))
            if self._failure is not None:
                raise StorageUnavailable(describe("the WAL failed; reopen the store",
                                                  error=repr(self._failure)))
            if state.damage is not None:
                raise CorruptDataError(state.damage)
            if state.fenced is not None:
                raise FencedError(str(state.fenced))
            if state.handover_from is not None:
                self._await_release(state, left())
            producer = None
            if producer_id is not None:
                producer = state.producers.setdefault(producer_id, _Producer())
                earlier = producer.known(state.id, producer_id, sequence,  # type: ignore[arg-type]
                                         batch.count)
                if earlier is not None:
                    return earlier
            if expected_offset is not None and expected_offset != state.assigned_end:
                raise OffsetMismatchError(state.id, expected_offset, state.assigned_end)
            placed = batch.with_offset(state.assigned_end)
            if self._wal.capacity is None:  # the WAL does not fill up: bound the memory here
                self._wait_for_room(placed.size, left())
            self._reserve(placed.size + BATCH_OVERHEAD, left())
            # While the WAL call runs, its record may become durable before this stream knows
            # of it: the uploader must not trim past it. Any position it gets is at or above
            # the WAL's end as it is now.
            token = next(self._tokens)
            with self._appending_lock:
                self._appending[token] = self._wal.end_position
            try:
                wal_future = self._wal.append(WalRecord(state.id, handle._epoch, placed),  # type: ignore[arg-type]
                                              left())
                item = _Inflight(placed, wal_future)
                with state.lock:
                    state.inflight.append(item)
            except BaseException:
                self._cache.unpin(self._scope, placed.size + BATCH_OVERHEAD)
                raise
            finally:
                with self._appending_lock:
                    del self._appending[token]
            state.assigned_end = placed.next_offset
            if producer is not None:
                producer.remember(sequence, batch.count, item.future)  # type: ignore[arg-type]
        wal_future.add_done_callback(lambda _: self._durable(state, item))
        return item.future

    def _await_release(self, state: StreamState, timeout: float) -> None:
        """This node just took the stream from another that may still commit what it
        acknowledged: wait until it releases the stream, then append after its end (caller
        holds ``state.order``)."""
        meta = self._metadata()
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(meta, ManifestMetadataStore):
                meta.refresh()
            m = meta.get_stream(state.id)
            if m.epoch != state.epoch:  # opened again elsewhere meanwhile
                raise FencedError(describe("the stream was opened for write again",
                                           stream=state.id, epoch=state.epoch, current=m.epoch))
            if m.handover_from is None:
                self._adopt(state, m)
                return
            if time.monotonic() >= deadline or self._closing:
                raise HandOverPending(describe(
                    "the node that wrote this stream before has not released it (if it is "
                    "dead: take it over)", stream=state.id, node=m.handover_from))
            time.sleep(0.02)

    def _follow_handover(self, state: StreamState, m: StreamMeta) -> None:
        """A stream this node opened for write while its old owner commits what it
        acknowledged: readers here see those commits; once released, appends go after them."""
        if m.epoch != state.epoch:
            return  # opened again elsewhere: the next append learns it
        self._adopt(state, m, released=m.handover_from is None)

    def _adopt(self, state: StreamState, m: StreamMeta, released: bool = True) -> None:
        """The node this one took the stream from committed up to ``m.end_offset`` (and
        released it, if ``released``): append after its end."""
        with state.lock:
            state.start_offset = max(state.start_offset, m.start_offset)
            if m.end_offset > state.committed_end:
                state.committed_end = state.acked_end = state.assigned_end = m.end_offset
                state.objects = None
                state.commits += 1
                state.wake_readers()
            if released:  # last: an append that sees it cleared sees the end above
                state.handover_from = None

    def _wait_for_room(self, size: int, timeout: float) -> None:
        """Back-pressure for a WAL without a capacity (the object WAL): data acknowledged and
        not yet committed, which the log cache holds, stays within ``wal_bytes``."""
        limit = self.config.wal_bytes
        with self._room:
            room = self._room.wait_for(lambda: self._pending_bytes + size <= limit
                                       or self._pending_bytes == 0 or self._closing, timeout)
            if self._closing:
                raise StreamClosed("the store is closing")
            if not room:
                raise WalFullError(describe(
                    "data waiting for upload stayed above wal_bytes: uploads are not keeping up",
                    pending=self._pending_bytes, size=size, wal_bytes=limit))

    def _reserve(self, size: int, timeout: float) -> None:
        """Room in the message cache for a batch until it is uploaded (back-pressure when
        uploads fall behind: the log cache shares the cache's budget)."""
        if not self._cache.reserve(self._scope, size, timeout, abort=self._closing_or_closed):
            if self._closing_or_closed():
                raise StreamClosed("the store is closing")
            raise WalFullError(describe(
                "data waiting for upload filled the message cache (cache_bytes): uploads are "
                "not keeping up", size=size, cache_bytes=self._cache.max_bytes,
                pinned=self._cache.pinned_bytes))

    def _durable(self, state: StreamState, item: _Inflight | None = None) -> None:
        """A WAL write of ``state`` (``item``) completed (on the WAL's thread). On a shared
        manifest the acknowledgement waits for a look at the manifest that starts after this
        moment (stamped on the item): the fence thread does it, so that the WAL goes on
        completing writes meanwhile (one look serves all that completed before)."""
        if not self._checks_fences:
            self._acknowledge(state)
            return
        if item is not None:
            item.durable_at = time.monotonic()
        with self._ack_ready:
            self._ack_pending.add(state)
            self._ack_ready.notify()

    def _acknowledge(self, state: StreamState, looked: float | None = None) -> None:
        """A WAL append of ``state`` completed: acknowledge what is durable, in order. On a
        shared manifest only what was durable when a look at the manifest started (``looked``,
        its start; without it, this call looks if anything is durable): a later look takes the
        rest."""
        notify = False

        def publish(position: int, added: int) -> None:
            nonlocal notify
            with self._lock:
                self._frontier = max(self._frontier, position)
                before = self._pending_bytes
                self._pending_bytes += added
                if before == 0 and added:
                    self._pending_since = time.monotonic()
                    notify = True
                elif before < self._upload_threshold <= self._pending_bytes:
                    notify = True
                if self._failure is None:  # a failed WAL write fails the WAL for good
                    for _, _, error in state.unsettled:
                        if error is not None and not isinstance(error, StreamClosed):
                            self._failure = error
                            break

        if self._checks_fences and looked is None:
            looked = -math.inf  # nothing is acknowledged without a look
            if state.fenced is None and _completed(state):
                looked = self._fence_check()  # started after these appends became durable
        dropped = state.drain(publish, looked)
        if looked is not None and state.fenced is None and _completed(state):
            self._durable(state)  # durable after that look started: the next one takes it
        if dropped:
            self._cache.unpin(self._scope, weight(dropped))
        if notify:
            self._uploader.notify()
        if state.fenced is not None:
            self._maybe_release(state)

    # ---- hand-over on a shared manifest: the old owner's side ----

    def _fence_check(self) -> float:
        """Before appends are acknowledged: has another node opened their stream for write
        (or taken this node over) since? One look at the manifest serves every append that
        became durable before it started. Returns when the look it relied on started (after
        this call began); raises if the look failed."""
        asked = time.monotonic()
        with self._check_done:
            while True:
                if self._check_started >= asked and not self._checking:
                    return self._check_started  # a look that started after this call
                if not self._checking:
                    self._checking = True
                    break
                self._check_done.wait()
        started = time.monotonic()
        done = False
        try:
            meta = self._meta
            assert isinstance(meta, ManifestMetadataStore)
            meta.refresh()
            # Other threads read the manifest too (syncs, commits, waits for a release): scan
            # whenever the version moved since the last scan, whoever moved it.
            if meta.version != self._fences_scanned:
                self._scan_fences(meta)
            done = True
        finally:
            with self._check_done:
                if done:  # a look that failed is no look
                    self._check_started = started
                self._checking = False
                self._check_done.notify_all()
        return started

    def _look_for(self, states: Iterable[StreamState]) -> float | None:
        """On a shared manifest, one look for acknowledging the durable appends of all these
        streams (:meth:`_acknowledge`); -inf when none waits for one, None when not shared."""
        if not self._checks_fences:
            return None
        if any(state.fenced is None and _completed(state) for state in states):
            return self._fence_check()
        return -math.inf

    def _watch_fences(self) -> None:
        """The fence thread of a shared manifest: acknowledges durable appends after a look at
        the manifest that started after they were durable (:meth:`_durable`), and looks every
        :data:`FENCE_POLL` seconds anyway, so that an idle node too learns of hand-overs (and
        of being taken over) and releases its streams."""
        pause = 0.0
        while True:
            with self._ack_ready:
                if not self._ack_pending and not self._closed:
                    self._ack_ready.wait(FENCE_POLL)
                if pause:
                    self._ack_ready.wait(pause)  # the manifest did not answer: not at once
                pending, self._ack_pending = self._ack_pending, set()
                stop = self._closed
            try:
                if stop:
                    return
                looked = self._fence_check()
                for state in pending:
                    self._acknowledge(state, looked)
                with self._lock:
                    fenced = [s for s in self._states.values()
                              if s.fenced is not None and not s.released]
                for state in fenced:
                    self._maybe_release(state)
                pause = 0.0
            except Exception as error:  # acknowledged at the next look that works
                with self._ack_ready:
                    self._ack_pending |= pending
                pause = min(max(pause * 2, 0.05), 1.0)
                log.warning("could not look at the manifest before acknowledging: %r", error)

    def _scan_fences(self, meta: ManifestMetadataStore) -> None:
        version = meta.version  # what follows sees this version or a newer one
        if meta.node(self.node_id).node_epoch != self.node_epoch:
            error = FencedError(describe("another process took over this store's node",
                                         node=self.node_id))
            self._failure = self._failure or error
        with self._lock:
            states = [s for s in self._states.values() if s.written_here]
        for state in states:
            try:
                m = meta.get_stream(state.id)
            except StreamNotFound:
                self._forget_stream(state)  # destroyed by another node (fenced or not)
                continue
            # Opened for write by another node (an open here shows as this node's ownership
            # before this node's state has its new epoch: not a fence).
            if m.owner == self.node_id and self._failure is None:
                continue
            with state.opening, state.lock:  # not while this node opens it again
                if state.fenced is not None or state.epoch > m.epoch:
                    continue  # known, or reopened here after the version this scan reads
                state.fenced = self._fence_error(state, m.owner)
            log.info("stream %d was opened for write on node %s: handing it over",
                     state.id, m.owner)
            self._uploader.request()  # commit what was acknowledged, then release
        self._fences_scanned = version

    def _fence_error(self, state: StreamState, owner: str | None) -> FencedError:
        return FencedError(describe("the stream was opened for write on another node: this "
                                    "node handed it over", stream=state.id, node=owner))

    def _maybe_release(self, state: StreamState) -> None:
        """A fenced stream whose acknowledged appends are all committed: release it to its
        new owner, then answer the appends parked since the fence."""
        if isinstance(self._failure, FencedError):  # taken over: nothing to release any more
            self._answer_parked(state, OutcomeUnknown(describe(
                "this node was taken over by another: the append may or may not be in the "
                "stream (the node taking over may have kept it)", stream=state.id)))
            return
        with state.lock:
            if (state.released or state.releasing or state.inflight or state.log
                    or state.fenced is None
                    or not isinstance(self._meta, ManifestMetadataStore)):
                return
            state.releasing = True  # one release at a time; an open here waits for it
        try:
            self._meta.release_streams(self.node_id, self.node_epoch, [state.id])
        except Exception as error:
            with state.lock:
                state.releasing = False
            log.warning("could not release stream %d (tried again after the next upload): "
                        "%r", state.id, error)
            return
        with state.lock:
            # Another node's stream now: read like one (its end moves with that node's
            # commits), and the batches kept from this node's uploads would not join them.
            state.written_here = False
            state.kept_log.clear()
            state.released, state.releasing = True, False
            state.wake_readers()  # tailing readers here now look at the manifest
        self._synced_version = -1  # the next sync reads its end (a release may write nothing)
        self._cache.drop_log(self._scope, state.id)
        self._answer_parked(state, FencedError(str(state.fenced)))

    def _answer_parked(self, state: StreamState, error: BaseException) -> None:
        with state.lock:
            parked, state.parked = state.parked, []
        for future in parked:
            if not future.done():
                future.set_exception(error)

    # ---- the uploader's side ----

    def _pending(self) -> tuple[int, float | None]:
        with self._lock:
            return self._pending_bytes, self._pending_since

    def _take(self) -> Work | None:
        """The batches of the next round and the WAL position it may trim to.

        Every acknowledged batch at a WAL position up to the **frontier** (the position of the
        last acknowledged append) is taken: the WAL completes appends in order, so all records
        before it are durable, and once acknowledged they are in the log cache. The trim
        position is the frontier, lowered to the lowest possible position of an append still
        inside its WAL call (its stream may not know of it yet), and to the first record kept
        back by damage. With nothing in flight (so at open and at close, unless appends durable
        on a shared manifest still wait for a look), it is the WAL's end: the round takes
        everything and the WAL is emptied."""
        assert self._wal is not None
        with self._lock:
            frontier = self._frontier
            states = list(self._states.values())
        with self._appending_lock:
            entering = min(self._appending.values(), default=None)
            end = self._wal.end_position
        # Acknowledge what the WAL completed but no callback has yet (after one look at a
        # shared manifest for them all).
        looked = self._look_for(states)
        for state in states:
            self._acknowledge(state, looked)
        # Nothing in any stream's flight: every record below an entering append's lowest
        # position comes from a finished WAL call and is acknowledged by now.
        quiet = not any(s.inflight for s in states)
        if quiet:
            frontier = end  # everything before the end is acknowledged: take it all
        position = frontier if entering is None else min(frontier, entering)
        for state in states:
            if state.kept is not None:
                position = min(position, state.kept)
        if frontier < 0 or position < self._wal.trim_position:
            return None
        work = Work({}, position)
        for state in states:
            batches = state.take(frontier)
            if batches:
                work.streams[state.id] = batches
                work.bytes += sum(b.size for b in batches)
        if not work.streams and position <= self._wal.trim_position:
            return None  # nothing new to upload and nothing to trim
        return work

    def _commit(self, objects: Sequence[ObjectMeta], position: int) -> None:
        meta = self._metadata()
        slices: dict[int, list[ObjectSlice]] = {}
        for obj in objects:
            for r in obj.ranges:
                slices.setdefault(r.stream_id, []).append(
                    ObjectSlice(r.start_offset, r.end_offset, obj.key, obj.size))
        with self._meta_lock:
            with self._lock:
                states = {sid: self._states.get(sid) for sid in slices}
            gone = [sid for sid, state in states.items() if state is None]
            if gone:  # destroyed since the round began: the next round leaves it out
                raise StreamNotFound(describe("stream destroyed during an upload",
                                              stream=gone[0]))
            epochs = {sid: state.epoch for sid, state in states.items()}  # type: ignore[union-attr]
            commit = Commit(node_id=self.node_id, wal_position=max(position, self._position_floor),
                            objects=objects, epochs=epochs, node_epoch=self.node_epoch)
            try:
                meta.commit(commit)
            except FencedError as error:
                if self._node_fenced():  # another process took this node: stop appending
                    self._failure = self._failure or error
                raise
            except Exception:
                # Applied or not? A remote store can fail after applying: learn the committed
                # ends again, so that the next round starts from them instead of failing for good.
                self._reload_ends(states.values())  # type: ignore[arg-type]
                raise
            freed = 0
            for stream_id, parts in slices.items():
                state = states[stream_id]
                assert state is not None
                freed += self._keep(state, state.committed(parts[-1].end, parts))
        with self._lock:
            self._pending_bytes -= freed
            self._pending_since = time.monotonic() if self._pending_bytes > 0 else None
            self._room.notify_all()
        for state in states.values():
            if state is not None and state.fenced is not None:
                self._maybe_release(state)

    def _node_fenced(self) -> bool:
        """Whether another process registered this node id since this store opened (a commit
        refused as fenced may be one stream's: that stops this stream, not the node)."""
        try:
            return self._metadata().node(self.node_id).node_epoch != self.node_epoch
        except Exception:  # cannot tell: assume the worst, as before
            return True

    def _reload_ends(self, states: Iterable[StreamState]) -> None:
        """After a commit of unknown outcome: take each stream's committed end from the
        metadata, drop what it covers from the log cache, reload the object index on the next
        read (caller holds ``_meta_lock``)."""
        freed = 0
        for state in states:
            try:
                end = self._metadata().get_stream(state.id).end_offset
            except Exception as error:
                log.warning("could not reload stream %d after a failed commit: %r", state.id,
                            error)
                continue
            # The index is loaded again on the next read: objects of unknown commits.
            freed += self._keep(state, state.committed(end, (), reset_index=True))
        with self._lock:
            self._pending_bytes -= freed
            self._room.notify_all()

    def _keep(self, state: StreamState, moved: list[RecordBatch]) -> int:
        """Committed batches stay in the log cache as a chunk the cache may evict. Returns
        their payload bytes (no longer pending upload)."""
        self._cache.retain(self._scope, self._stream_key(state), moved, state.release_kept)
        return sum(b.size for b in moved)

    def _stream_key(self, state: StreamState) -> StreamKey:
        return (self._objects.url, state.id)

    def _new_reader(self, state: StreamState, offset: int) -> Reader:
        """A reader of its own for a ``read()`` iterator starting at ``offset``."""
        return self._cache.reader_at(self._stream_key(state), offset, None)

    def _forget_reader(self, reader: Reader) -> None:
        """A ``read()`` iterator ended: the cache stops keeping blocks for it."""
        self._cache.forget(reader)

    def flush(self) -> None:
        """Upload every acknowledged append now, and commit it (a round of the uploader in this
        thread). Raises :class:`~streamlib.errors.StorageUnavailable` if the object store
        stays down; the data stays in the WAL either way."""
        self._check_open()
        if self._closing:
            raise StreamClosed("the store is closing (close() uploads what is left)")
        self._uploader.upload()

    # ---- the read path ----

    def _object_index(self, state: StreamState) -> None:
        """Load the stream's object index if it is not (caller reads ``state.objects`` under
        ``state.lock`` afterwards, and calls again if it was reset meanwhile)."""
        while True:
            with state.lock:
                if state.objects is not None:
                    return
                commits = state.commits
            objects = self._metadata().stream_objects(state.id, 0)
            with state.lock:
                if state.commits == commits and state.objects is None:
                    state.objects = new_object_index(objects)
                    return

    def _fetch(self, state: StreamState, start: int, end: int | None, max_bytes: int,
               cache_only: bool = False, mine: Reader | None = None) -> FetchResult:
        """``mine``: the reader of a ``read()`` iterator (else the cache finds or makes one)."""
        if start >= state.acked_end and self._remote(state):
            self._sync()  # at the end of another node's stream: has it moved?
        while True:
            self._object_index(state)
            with state.lock:  # one consistent picture: the index, the log cache, the range
                index = state.objects
                if index is None:
                    continue  # reset by a commit of unknown outcome: load it again
                low, high = state.start_offset, state.acked_end
                if not low <= start <= high:
                    raise OffsetOutOfRange(state.id, start, low, high)
                end = high if end is None else min(end, high)
                memory = state.memory_start  # below: read from objects; from here: memory
                slices = _slices(index, start, min(end, memory))
                logged = state.log_slice(max(start, memory), end) if end > max(start,
                                                                                memory) else []
                committed = state.committed_end
                break
        reader = self._cache.reader_at(self._stream_key(state), start, mine)
        try:
            return self._read(state, reader, start, end, max_bytes, cache_only, low, high,
                              memory, slices, logged, committed)
        except BaseException:
            self._cache.advance(reader, start)  # a retry of this fetch continues this reader
            raise

    def _read(self, state: StreamState, reader: Reader, start: int, end: int, max_bytes: int,
              cache_only: bool, low: int, high: int, memory: int, slices: list[ObjectSlice],
              logged: list[RecordBatch], committed: int) -> FetchResult:
        batches: list[RecordBatch] = []
        total = 0

        def room(size: int) -> bool:
            return not batches or total + size <= max_bytes

        def budget() -> int:  # what this fetch may still return, as it goes
            return max_bytes - total

        cursor = start
        full = False
        for piece in slices:
            if batches and total >= max_bytes:
                full = True
                break
            for block in self._blocks_of(state.id, piece, cursor, min(end, piece.end),
                                         budget, cache_only):
                for batch in block:
                    if batch.next_offset <= cursor:
                        continue
                    _check_dense(state, batch, cursor)
                    if batch.base_offset >= end or not room(batch.size):  # type: ignore[operator]
                        full = True
                        break
                    batches.append(batch)
                    total += batch.size
                    cursor = batch.next_offset
                if full:
                    break
            if full:
                break
            if cursor < min(end, piece.end):  # stopped inside this object: no gap after
                full = True
                break
        if not full and logged:
            from_log = 0
            for batch in logged:
                if batch.next_offset <= cursor:
                    continue
                _check_dense(state, batch, cursor)
                if not room(batch.size):
                    break
                batches.append(batch)
                total += batch.size
                cursor = batch.next_offset
                from_log += 1
            if from_log:
                self._cache.count_log_read(logged[0].base_offset < committed)  # type: ignore[operator]
        next_fetch = batches[-1].next_offset if batches else start
        self._cache.advance(reader, next_fetch)
        if slices and not cache_only and next_fetch < memory:
            self._schedule_readahead(state, reader)
        return FetchResult(tuple(batches), next_fetch, low, high)

    def _schedule_readahead(self, state: StreamState, reader: Reader) -> None:
        todo = self._cache.start_readahead(reader)
        if todo is None:
            return
        try:
            self._prefetcher.submit(self._readahead, state, reader, *todo)
        except RuntimeError:  # shut down: the store is closing
            self._cache.readahead_done(reader)

    def _readahead(self, state: StreamState, reader: Reader, start: int, want: int) -> None:
        """Load about ``want`` stored bytes of the stream's blocks from ``start`` into the cache,
        in the background, for ``reader``."""
        try:
            self._object_index(state)
            with state.lock:
                index = state.objects
                slices = [] if index is None else _slices(index, start, state.memory_start)
            for piece in slices:
                if want <= 0 or self._closing:
                    return
                objects = self._reader(piece, state.id, start, False)
                chosen = []
                for entry in objects.index().blocks(state.id, max(start, piece.start), piece.end):
                    if want <= 0:
                        break
                    if self._cache.holds(objects, entry):
                        continue  # loaded by a fetch's own run, or loading: not ours to count
                    chosen.append(entry)
                    want -= entry.size
                if chosen:
                    self._cache.load(objects, chosen, ahead_of=reader)
                    self._cache.prefetched(reader, chosen)
        except Exception as error:  # a readahead is a guess: the read itself will report
            log.debug("readahead of stream %d failed: %r", state.id, error)
        finally:
            self._cache.readahead_done(reader)

    def _reader(self, piece: ObjectSlice, stream_id: int, offset: int,
                cache_only: bool) -> ObjectReader:
        reader = ObjectReader(self._objects, piece.key, piece.size, cache=self._index_cache)
        if (self._objects.url, piece.key) not in self._index_cache:
            if cache_only:
                raise CacheMiss(stream_id, offset, f"the index of object `{piece.key}`")
            gets, fetched = reader.gets, reader.fetched_bytes
            reader.index()
            self._cache.count_index_gets(reader, gets, fetched)
        return reader

    def _blocks_of(self, stream_id: int, piece: ObjectSlice, start: int, end: int,
                   budget: Callable[[], int], cache_only: bool) -> Iterator[list[RecordBatch]]:
        """The batches of each block of ``piece`` holding ``[start, end)``, loaded through the
        block cache a run at a time: as many blocks as the fetch's remaining ``budget()`` of
        bytes may use (stored sizes; at least one), so that a fetch bounded by max_bytes does
        not load far beyond it, and what it loads is kept for the next fetch."""
        reader = self._reader(piece, stream_id, start, cache_only)
        entries = reader.index().blocks(stream_id, start, end)
        i = 0
        while i < len(entries):
            left = budget()
            j = i
            stored = 0
            while j < len(entries) and (j == i or stored < left):
                stored += entries[j].size
                j += 1
            try:
                loaded = self._cache.load(reader, entries[i:j], cache_only=cache_only)
            except Uncached:
                raise CacheMiss(stream_id, max(start, entries[i].start_offset),
                                f"blocks of object `{piece.key}`") from None
            yield from loaded
            i = j

    def _offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        while True:
            self._object_index(state)
            with state.lock:
                index = state.objects
                if index is None:
                    continue  # reset meanwhile: load it again
                start, memory = state.start_offset, state.memory_start
                slices = _slices(index, start, memory)
                logged = state.log_slice(max(start, memory), state.acked_end)
                break
        for piece in slices:
            reader = self._reader(piece, state.id, start, False)
            for entry in reader.index().blocks(state.id, max(start, piece.start), piece.end):
                if entry.max_timestamp >= timestamp:
                    found = _first_at(self._cache.load(reader, [entry], lookup=True)[0],
                                      timestamp, start)
                    if found is not None:
                        return found
        for batch in logged:
            found = _first_at([batch], timestamp, start)
            if found is not None:
                return found
        return None

    def _trim(self, handle: Stream, offset: int) -> None:
        state = handle._state
        with state.lock:
            low, high = state.start_offset, state.acked_end
            committed = state.committed_end
        if offset > high:
            raise OffsetOutOfRange(state.id, offset, low, high)
        if offset <= low:
            return
        if offset > committed:
            self.flush()  # the metadata trims committed data only
        if self._checks_fences:
            self._fence_check()  # a handle fenced by another node's open trims nothing
        with self._meta_lock:
            handle._check_writer()
            if state.fenced is not None:
                raise FencedError(str(state.fenced))
            meta = self._metadata().trim_stream(state.id, offset)
            with state.lock:
                state.start_offset = max(state.start_offset, meta.start_offset)
        state.release_kept(offset)
        self._cache.drop_log(self._scope, state.id, below=offset)

    # ---- life ----

    # ---- taking over a dead node ----

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
        node = check_node_id(node_id)
        if node == self.node_id:
            raise ValueError(f"a store cannot take over its own node: node_id=`{node}`")
        backend = self.config.wal if wal is None else wal
        if backend not in ("file", "block", "object"):
            raise ValueError(f"wal must be file, block or object: wal=`{backend}`")
        if backend != "object" and not wal_path:
            raise ValueError(f"wal_path: where the {backend} WAL of node {node} is")
        self._check_open()
        meta = self._metadata()
        if backend == "object":
            wal_store = (ObjectStore.from_url(wal_url, self._storage_options,
                                              retry=self._objects.retry)
                         if wal_url else self._objects)
            if not wal_store.list(f"wal/{node}/"):
                raise ConfigError("wal", f"no object WAL of node {node} in {wal_store.url}: "
                                  f"give its backend (wal=, wal_path=, wal_url=)", backend)
        fenced = meta.register_node(node)
        log.warning("taking over node %s (node epoch %d now)", node, fenced.node_epoch)
        old = self._wal_of(node, fenced.node_epoch, backend, wal_path, wal_url,
                           self._storage_options, create=False)
        try:
            recovery = old.recover()
            ends: dict[int, int | None] = {}
            epochs: dict[int, int] = {}
            held: dict[int, tuple[int, int]] = {}
            streams: dict[int, list[RecordBatch]] = {}
            damaged: dict[int, str] = {}
            for entry in recovery:
                stream_id, batch = entry.record.stream_id, entry.record.batch
                if stream_id not in ends:
                    try:
                        m = meta.get_stream(stream_id)
                    except StreamNotFound:
                        ends[stream_id] = None  # destroyed: nothing to keep
                        continue
                    # Only records of the node's time as owner are its to give: those of a
                    # stream it released (or never held) are appends it refused.
                    found = m.held_epochs(node)
                    ends[stream_id] = None if found is None else m.end_offset
                    if found is not None:
                        held[stream_id] = found
                    epochs[stream_id] = m.epoch_of(node)
                end = ends[stream_id]
                if end is None or stream_id in damaged or batch.next_offset <= end:
                    continue
                low, high = held[stream_id]
                if not low <= entry.record.epoch <= high:
                    continue
                if batch.base_offset != end:
                    damaged[stream_id] = describe(
                        "the WAL does not follow the stream's committed end", stream=stream_id,
                        expected=end, found=batch.base_offset, position=entry.position)
                    log.error("take-over of node %s: %s", node, damaged[stream_id])
                    continue
                streams.setdefault(stream_id, []).append(batch)
                ends[stream_id] = batch.next_offset
            for stream_id in damaged:
                streams.pop(stream_id, None)
            built = build_objects(streams, self.config,
                                  f"{DATA_PREFIX}/{node}/{fenced.node_epoch}", 0)
            for item in built:
                self._objects.put(item.meta.key, item.data, part_bytes=self.config.part_bytes)
            meta.commit(Commit(node_id=node, wal_position=max(recovery.end, fenced.wal_position),
                               objects=[item.meta for item in built],
                               epochs={sid: epochs[sid] for sid in streams},
                               node_epoch=fenced.node_epoch))
            held = [s.id for s in meta.streams() if node in (s.owner, s.handover_from)]
            meta.release_streams(node, fenced.node_epoch, held)
            if not damaged:
                old.trim(recovery.end)
        finally:
            old.close()
        result = TakeOver(node, fenced.node_epoch,
                          {sid: (batches[0].base_offset, batches[-1].next_offset)  # type: ignore[misc]
                           for sid, batches in sorted(streams.items())},
                          sum(b.count for batches in streams.values() for b in batches),
                          sum(b.size for batches in streams.values() for b in batches),
                          len(built), damaged)
        self._catch_up_streams(result.streams)
        return result

    def _catch_up_streams(self, recovered: Mapping[int, tuple[int, int]]) -> None:
        """Streams another node's data was committed for: this node's view of those it does
        not write moves to their new ends."""
        if isinstance(self._meta, ManifestMetadataStore):
            self._sync(force=True)
            for stream_id in recovered:  # streams this node opened, waiting for the dead one
                with self._lock:
                    state = self._states.get(stream_id)
                if state is not None and state.handover_from is not None:
                    m = self._meta.get_stream(stream_id)
                    if m.handover_from is None:
                        self._adopt(state, m)
            return
        for stream_id, (_, end) in recovered.items():
            with self._lock:
                state = self._states.get(stream_id)
            if state is None:
                continue
            with state.lock:
                if not state.written_here and end > state.committed_end:
                    state.committed_end = state.acked_end = state.assigned_end = end
                    state.objects = None
                    state.commits += 1
                    state.wake_readers()

    def stats(self) -> dict[str, object]:
        """A snapshot of counters: streams, bytes waiting for upload, the uploader's rounds,
        and the read path's (``"cache"``: block hits and misses, GETs and their bytes,
        evictions, bytes held)."""
        with self._lock:
            streams = sum(1 for s in self._states.values() if not s.destroyed)
            pending = self._pending_bytes
        up: UploadStats = self._uploader.stats
        return {"streams": streams, "pending_upload_bytes": pending,
                "upload_rounds": up.rounds, "objects_uploaded": up.objects,
                "stream_objects_uploaded": up.stream_objects, "bytes_uploaded": up.bytes,
                "upload_failures": up.failures, "last_upload_error": up.last_error,
                "wal_usage_bytes": self._wal.usage if self._wal is not None else 0,
                "cache": {**self._cache.stats.snapshot(), **self._cache.usage()}}

    def _metadata(self) -> MetadataStore:
        if self._meta is None or self._closed:
            raise StreamClosed("the store is closed")
        return self._meta

    def _closing_or_closed(self) -> bool:
        return self._closing or self._closed

    def _wake_readers(self) -> None:
        with self._lock:
            states = list(self._states.values())
        for state in states:
            with state.lock:
                state.wake_readers()

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the store is closed")

    def close(self) -> None:
        """Wait for appends in flight, upload what is not uploaded yet, stop the uploader and
        release the WAL and the metadata. If the upload fails, the data stays in the WAL and the
        next open uploads it. Closing twice is fine."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
            self._room.notify_all()  # appends waiting for room give up
        self._cache.wake()  # and those waiting for room in the cache
        self._wake_readers()  # tailing readers end
        with self._lock:
            states = list(self._states.values())
        for state in states:
            with state.order:  # no append is between its offset and its WAL submission
                pass
            with state.lock:
                waiting = [item.wal_future for item in state.inflight]
            for future in waiting:
                with contextlib.suppress(Exception):  # reported to its appender
                    future.result()
        self._acknowledge_at_close(states)
        self._uploader.stop()
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        released: set[int] = set()
        if self._failure is None:
            try:
                self._uploader.upload()
                released = self._release_all()
            except Exception as error:
                log.warning("close: the last upload failed; the data stays in the WAL for the "
                            "next open: %r", error)
        for state in states:  # no future hangs
            self._settle_at_close(state, state.released or state.id in released)
        self._release()

    def _acknowledge_at_close(self, states: list[StreamState]) -> None:
        """Every append has finished its WAL write: acknowledge them (on a shared manifest
        after a look, or two if the first started before some write was seen complete)."""
        for _ in range(3):
            try:
                looked = self._look_for(states)
            except Exception as error:  # answered by _settle_at_close: outcome unknown
                log.warning("close: could not look at the manifest to acknowledge the last "
                            "appends: %r", error)
                return
            for state in states:
                self._acknowledge(state, looked)
            if not any(_completed(state) and state.fenced is None for state in states):
                return

    def _settle_at_close(self, state: StreamState, released: bool) -> None:
        """Answer what the store could not settle before closing: parked appends of a stream
        handed over (refused if the stream was released, else of unknown outcome: the next
        open may commit them), appends durable but never acknowledged (a look at the manifest
        failed)."""
        with state.lock:
            unsettled = [item.future for item in state.inflight]
            state.inflight.clear()
        unknown = OutcomeUnknown(describe(
            "the store closed before the append could be settled (a look at the shared "
            "manifest failed, or the stream's release): it may or may not be in the stream",
            stream=state.id))
        for future in unsettled:
            if not future.done():
                future.set_exception(unknown)
        if state.parked:
            self._answer_parked(state, FencedError(str(state.fenced)) if released else unknown)

    def _release_all(self) -> set[int]:
        """A clean close on a shared manifest: this node's streams have no owner any more (the
        next node to open one need not wait for a hand-over). Returns the streams released."""
        if not isinstance(self._meta, ManifestMetadataStore):
            return set()
        with self._lock:
            held = [s.id for s in self._states.values()
                    if s.written_here and not s.destroyed and not s.log and not s.inflight
                    and not s.damage]
        if held:
            self._meta.release_streams(self.node_id, self.node_epoch, held)
        return set(held)

    def _release(self) -> None:
        self._closed = True
        watcher = getattr(self, "_watcher", None)
        if watcher is not None and watcher is not threading.current_thread():
            with self._ack_ready:
                self._ack_ready.notify_all()
            watcher.join()
        self._cache.close_scope(self._scope)
        for part in (self._wal, self._meta):
            if part is not None:
                try:
                    part.close()
                except Exception as error:
                    log.warning("close: %r", error)
        if self._node_lock >= 0:
            os.close(self._node_lock)  # releases the flock
            self._node_lock = -1

    def __enter__(self) -> StreamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<StreamStore path={self.config.path!r} wal={self.config.wal} "
                f"objects={self._objects.url!r}>")


_SCOPES = itertools.count(1)

FENCE_POLL = 0.1
"""Seconds between an idle node's looks at a shared manifest for hand-overs of its streams."""
SYNC_INTERVAL = 0.05
"""Seconds between two looks at a shared manifest for other nodes' changes (each is one GET)."""


def _completed(state: StreamState) -> bool:
    """Whether the stream's first append in flight has finished its WAL write."""
    with state.lock:
        return bool(state.inflight) and state.inflight[0].wal_future.done()


def _check_dense(state: StreamState, batch: RecordBatch, cursor: int) -> None:
    """A batch that starts past the offset the read has reached would skip records: never
    return that silently."""
    if batch.base_offset > cursor:  # type: ignore[operator]
        raise CorruptDataError(describe("a gap in the stream's data as read", stream=state.id,
                                        expected=cursor, found=batch.base_offset))


def _slices(index: Any, start: int, end: int) -> list[ObjectSlice]:
    """The object slices of a stream's index holding offsets of ``[start, end)``."""
    if start >= end:
        return []
    found = []
    for piece in index.islice(max(index.bisect_key_right(start) - 1, 0)):
        if piece.start >= end:
            break
        if piece.end > start:
            found.append(piece)
    return found


def _first_at(batches: Sequence[RecordBatch], timestamp: int, start: int) -> int | None:
    """The first offset at or above ``start`` in ``batches`` with a timestamp of at least
    ``timestamp``."""
    for batch in batches:
        base = batch.base_offset
        assert base is not None
        if batch.next_offset <= start or batch.max_timestamp < timestamp:
            continue
        if batch.encoding != "records":
            return max(base, start)
        for offset, record in enumerate(batch.records(), base):
            if offset >= start and record.timestamp is not None and record.timestamp >= timestamp:
                return offset
    return None


__all__ = ["StreamStore", "TakeOver", "open"]
