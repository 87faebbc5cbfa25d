"""The store: opens the WAL, the object store and the metadata, recovers, and hands out streams
(docs/store.md).

``streamlib.open("./data")`` needs nothing else: a file WAL in ``data/wal``, objects in
``data/objects`` (``file://``), metadata in ``data/meta.sqlite``. Every part can be moved by
:class:`~streamlib.Config`: another WAL backend, any fsspec URL for the objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from streamlib.config import Config
from streamlib.errors import (
    ConfigError,
    CorruptDataError,
    OffsetMismatchError,
    OffsetOutOfRange,
    StorageUnavailable,
    StreamClosed,
    StreamNotFound,
    describe,
)
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.meta import Commit, MetadataStore, ObjectMeta, check_node_id, check_text
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.objects import IndexCache, ObjectReader
from streamlib.records import AppendResult, FetchResult, RecordBatch, check_int
from streamlib.stream import (
    ObjectSlice,
    Stream,
    StreamInfo,
    StreamState,
    _Inflight,
    _Producer,
    new_object_index,
)
from streamlib.uploader import Uploader, UploadStats, Work
from streamlib.wal import Wal, WalRecord

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger("streamlib.store")

INDEX_CACHE_BYTES = 16 * 1024 * 1024


def open(path_or_config: str | os.PathLike[str] | Config | Mapping[str, object] | None = None,
         *, storage_options: Mapping[str, Any] | None = None,
         filesystem: AbstractFileSystem | None = None,
         **overrides: object) -> StreamStore:
    """Open (or create) a store.

    ``path_or_config`` is the store's directory, a :class:`~streamlib.Config`, or a mapping of
    config fields; ``overrides`` are config fields too (``streamlib.open("./data",
    compression="zstd")``); ``STREAMLIB_*`` environment variables apply below both.
    ``storage_options`` go to the fsspec filesystem of ``objects_url`` (for S3: ``key``,
    ``secret``, ``client_kwargs={"endpoint_url": …}``), and to ``wal_url``'s. ``filesystem``
    is an fsspec filesystem to use for the objects instead of one built from the URL (a
    component: a wrapped or instrumented filesystem, a test's fault injector); ``objects_url``
    then names the root within it.

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
    return StreamStore(config, storage_options=storage_options, filesystem=filesystem)


def _under(config: Config, field: str, value: str, default: str) -> str:
    if value:
        return value
    if not config.path:
        raise ConfigError(field, "must be set when the store has no path")
    return os.path.join(config.path, default)


class StreamStore:
    """Streams on one node: create, open, list, destroy; ``flush()`` and ``close()``.

    Built by :func:`streamlib.open`. Thread-safe. Use it as a context manager, or call
    :meth:`close`, which waits for appends in flight, uploads what is left and releases the
    WAL (another process may then open the store)."""

    def __init__(self, config: Config, *, storage_options: Mapping[str, Any] | None = None,
                 filesystem: AbstractFileSystem | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {type(config).__name__}")
        self.config = config
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
        self._failure: BaseException | None = None  # the WAL failed: no more appends
        self._closed = False
        self._closing = False
        self._index_cache = IndexCache(INDEX_CACHE_BYTES)
        # Upload before the WAL is half full, whatever upload_bytes says: appends must not
        # wait for the time trigger.
        self._upload_threshold = min(config.upload_bytes, config.wal_bytes // 2)
        self._meta: MetadataStore | None = None
        self._wal: Wal | None = None
        try:
            self._objects = self._open_objects(storage_options, filesystem)
            self._meta = SQLiteMetadataStore(_under(config, "metadata_path",
                                                    config.metadata_path, "meta.sqlite"))
            self.node_epoch = self._meta.register_node(self.node_id).node_epoch
            for meta in self._meta.streams():
                self._states[meta.id] = StreamState(meta)
            self._wal = self._open_wal(storage_options)
            self._uploader = Uploader(objects=self._objects, config=config, node_id=self.node_id,
                                      node_epoch=self.node_epoch, take=self._take,
                                      commit=self._commit, trim=self._wal.trim,
                                      pending=self._pending,
                                      threshold=self._upload_threshold)
            self._recover()
        except BaseException:
            self._release()
            raise
        self._uploader.start()

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

    def _open_wal(self, storage_options: Mapping[str, Any] | None) -> Wal:
        config = self.config
        timeout = config.append_timeout_ms / 1000
        if config.wal == "file":
            from streamlib.wal.file import FileWal

            return FileWal(_under(config, "wal_path", config.wal_path, "wal"),
                           capacity=config.wal_bytes, full_timeout=timeout)
        if config.wal == "block":
            from streamlib.wal.block import BlockWal

            path = _under(config, "wal_path", config.wal_path, "wal.ring")
            size = None if os.path.exists(path) else config.wal_bytes // 4096 * 4096
            return BlockWal(path, size=size, full_timeout=timeout, epoch=self.node_epoch)
        from streamlib.wal.object import ObjectWal

        store = (ObjectStore.from_url(config.wal_url, storage_options,
                                      retry=self._objects.retry)
                 if config.wal_url else self._objects)
        return ObjectWal(store, self.node_id, prefix="wal", full_timeout=timeout,
                         max_pending_bytes=max(config.wal_bytes, 4 * 1024 * 1024))

    def _recover(self) -> None:
        """Replay the WAL beyond what is committed into the log cache, then upload it."""
        assert self._wal is not None
        recovery = self._wal.recover()
        skipped = 0
        for entry in recovery:
            record = entry.record
            state = self._states.get(record.stream_id)
            batch = record.batch
            if state is None or batch.next_offset <= state.committed_end:
                skipped += 1  # committed already, or of a destroyed stream
                continue
            if state.damage is not None:
                continue
            if batch.base_offset != state.acked_end:
                state.damage = describe(
                    "the WAL lost records of this stream (a gap at recovery); it is read-only",
                    stream=state.id, expected=state.acked_end, found=batch.base_offset)
                log.error(state.damage)
                continue
            state.add_to_log(batch, entry.position)
            self._pending_bytes += batch.size
            self._frontier = entry.position  # for the background rounds, if the first fails
        for damage in recovery.dropped:
            log.warning("WAL recovery dropped damaged bytes [%d, %d): %s", damage.start,
                        damage.end, damage.reason)
        for state in self._states.values():
            state.assigned_end = state.acked_end
        if self._pending_bytes:
            self._pending_since = time.monotonic()
        log.info("recovered %d WAL records (%d committed already), %d bytes to upload",
                 recovery.records, skipped, self._pending_bytes)
        try:
            self._uploader.upload(final=True)
        except StorageUnavailable as error:
            log.warning("could not upload recovered data at open; retrying in the background: "
                        "%s", error)

    # ---- streams ----

    def create_stream(self, name: str | None = None) -> Stream:
        """A new stream, opened for write. ``name`` is optional and unique among live
        streams (:class:`~streamlib.errors.StreamExists`)."""
        if name is not None:
            check_text(name, "name")
        meta = self._metadata().create_stream(name)
        state = StreamState(meta)
        with self._lock:
            self._states[meta.id] = state
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
        # After every append of earlier handles, and never in the middle of a commit.
        with state.order, self._meta_lock:
            self._check_open()
            meta = self._metadata().open_stream(state.id)
            with state.lock:
                state.epoch = meta.epoch
        return Stream(self, state, meta.epoch)

    def get(self, stream: int | str) -> StreamInfo:
        """The stream with this id or name, as it is now."""
        return self._state(stream).info()

    def streams(self) -> list[StreamInfo]:
        """Every live stream, by id."""
        self._check_open()
        with self._lock:
            states = sorted(self._states.values(), key=lambda s: s.id)
        return [s.info() for s in states if not s.destroyed]

    def destroy_stream(self, stream: int | str) -> None:
        """Delete the stream: its handles stop working, its name is free again, its data is
        reclaimed later. Its id is never reused."""
        state = self._state(stream)
        with state.order, self._meta_lock:
            self._metadata().destroy_stream(state.id)
            with state.lock:
                state.destroyed = True
                freed = state.log_bytes
                state.log.clear()
                state.log_positions.clear()
                state.log_bytes = 0
        with self._lock:
            self._states.pop(state.id, None)
            self._pending_bytes -= freed

    def _state(self, stream: object) -> StreamState:
        self._check_open()
        if isinstance(stream, str):
            stream_id = self._metadata().get_stream_by_name(stream).id
        else:
            stream_id = check_int(stream, "stream", 0, (1 << 63) - 1)
        with self._lock:
            state = self._states.get(stream_id)
        if state is None or state.destroyed:
            raise StreamNotFound(describe("no such stream", stream=stream))
        return state

    # ---- the write path ----

    def _submit(self, handle: Stream, batch: RecordBatch, expected_offset: int | None,
                producer_id: object, sequence: int | None,
                timeout: float | None) -> Future[AppendResult]:
        state = handle._state
        assert self._wal is not None
        with state.order:
            handle._check_writer()
            if self._closing:
                raise StreamClosed("the store is closing")
            if self._failure is not None:
                raise StorageUnavailable(describe("the WAL failed; reopen the store",
                                                  error=repr(self._failure)))
            if state.damage is not None:
                raise CorruptDataError(state.damage)
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
            wal_future = self._wal.append(WalRecord(state.id, handle._epoch, placed),  # type: ignore[arg-type]
                                          timeout)
            item = _Inflight(placed, wal_future)
            with state.lock:
                state.inflight.append(item)
            state.assigned_end = placed.next_offset
            if producer is not None:
                producer.remember(sequence, batch.count, item.future)  # type: ignore[arg-type]
        wal_future.add_done_callback(lambda _: self._acknowledge(state))
        return item.future

    def _acknowledge(self, state: StreamState) -> None:
        """A WAL append of ``state`` completed: acknowledge what is durable, in order."""
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

        state.drain(publish)
        if notify:
            self._uploader.notify()

    # ---- the uploader's side ----

    def _pending(self) -> tuple[int, float | None]:
        with self._lock:
            return self._pending_bytes, self._pending_since

    def _take(self, final: bool) -> Work | None:
        """The batches of the next round: every acknowledged batch up to the WAL position of
        the last acknowledged append (``final``: the WAL's end, nothing being in flight)."""
        assert self._wal is not None
        # The frontier first: every record before it is durable, and of a stream that
        # exists by now, so the snapshot below holds them all once acknowledged.
        with self._lock:
            frontier = self._wal.end_position if final else self._frontier
            states = list(self._states.values())
        for state in states:  # acknowledge what the WAL completed but no callback has yet
            self._acknowledge(state)
        if frontier < 0 or frontier < self._wal.trim_position:
            return None
        work = Work({}, frontier)
        for state in states:
            batches = state.take(frontier)
            if batches:
                work.streams[state.id] = batches
                work.bytes += sum(b.size for b in batches)
        # The frontier is where the last record starts: at the trim position, that record is
        # new (the first since a final round) or committed already (then nothing is taken).
        if not work.streams and frontier <= self._wal.trim_position:
            return None
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
            meta.commit(Commit(node_id=self.node_id, wal_position=position, objects=objects,
                               epochs=epochs, node_epoch=self.node_epoch))
            freed = 0
            for stream_id, parts in slices.items():
                freed += states[stream_id].committed(parts[-1].end, parts)  # type: ignore[union-attr]
        with self._lock:
            self._pending_bytes -= freed
            self._pending_since = time.monotonic() if self._pending_bytes > 0 else None

    def flush(self) -> None:
        """Upload every acknowledged append now, and commit it (a round of the uploader in this
        thread). Raises :class:`~streamlib.errors.StorageUnavailable` if the object store
        stays down; the data stays in the WAL either way."""
        self._check_open()
        self._uploader.upload()

    # ---- the read path ----

    def _object_index(self, state: StreamState) -> Any:
        while state.objects is None:
            commits = state.commits
            objects = self._metadata().stream_objects(state.id, 0)
            with state.lock:
                if state.commits == commits and state.objects is None:
                    state.objects = new_object_index(objects)
        return state.objects

    def _fetch(self, state: StreamState, start: int, end: int | None,
               max_bytes: int) -> FetchResult:
        index = self._object_index(state)
        with state.lock:
            low, high = state.start_offset, state.acked_end
            if not low <= start <= high:
                raise OffsetOutOfRange(state.id, start, low, high)
            end = high if end is None else min(end, high)
            committed = state.committed_end
            slices = []
            if start < min(end, committed):
                i = max(index.bisect_key_right(start) - 1, 0)
                for piece in index.islice(i):
                    if piece.start >= min(end, committed):
                        break
                    if piece.end > start:
                        slices.append(piece)
            logged = (state.log_slice(max(start, committed), end)
                      if end > max(start, committed) else [])
        batches: list[RecordBatch] = []
        total = 0

        def room(size: int) -> bool:
            return not batches or total + size <= max_bytes

        cursor = start
        full = False
        for piece in slices:
            if batches and total >= max_bytes:
                full = True
                break
            reader = ObjectReader(self._objects, piece.key, piece.size, cache=self._index_cache)
            got = reader.read(state.id, cursor, min(end, piece.end),
                              max_bytes=max_bytes - total if batches else max_bytes)
            for batch in got:
                if not room(batch.size):
                    full = True
                    break
                batches.append(batch)
                total += batch.size
            if full:
                break
            if batches:
                cursor = batches[-1].next_offset
            if cursor < min(end, piece.end):  # the reader stopped at max_bytes: no gap after
                full = True
                break
        if not full:
            for batch in logged:
                if batch.next_offset <= cursor:
                    continue
                if not room(batch.size):
                    break
                batches.append(batch)
                total += batch.size
        next_fetch = batches[-1].next_offset if batches else start
        return FetchResult(tuple(batches), next_fetch, low, high)

    def _offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        index = self._object_index(state)
        with state.lock:
            start, committed = state.start_offset, state.committed_end
            slices = [p for p in index if p.end > start] if start < committed else []
            logged = state.log_slice(max(start, committed), state.acked_end)
        for piece in slices:
            reader = ObjectReader(self._objects, piece.key, piece.size, cache=self._index_cache)
            for entry in reader.index().blocks(state.id, max(start, piece.start), piece.end):
                if entry.max_timestamp >= timestamp:
                    found = _first_at(reader.read_blocks([entry])[0], timestamp, start)
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
        with self._meta_lock:
            handle._check_writer()
            meta = self._metadata().trim_stream(state.id, offset)
            with state.lock:
                state.start_offset = max(state.start_offset, meta.start_offset)

    # ---- life ----

    def stats(self) -> dict[str, object]:
        """A snapshot of counters: streams, bytes waiting for upload, the uploader's rounds."""
        with self._lock:
            streams = sum(1 for s in self._states.values() if not s.destroyed)
            pending = self._pending_bytes
        up: UploadStats = self._uploader.stats
        return {"streams": streams, "pending_upload_bytes": pending,
                "upload_rounds": up.rounds, "objects_uploaded": up.objects,
                "stream_objects_uploaded": up.stream_objects, "bytes_uploaded": up.bytes,
                "upload_failures": up.failures, "last_upload_error": up.last_error,
                "wal_usage_bytes": self._wal.usage if self._wal is not None else 0}

    def _metadata(self) -> MetadataStore:
        if self._meta is None or self._closed:
            raise StreamClosed("the store is closed")
        return self._meta

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
            self._acknowledge(state)
        self._uploader.stop()
        if self._failure is None:
            try:
                self._uploader.upload(final=True)
            except Exception as error:
                log.warning("close: the last upload failed; the data stays in the WAL for the "
                            "next open: %r", error)
        self._release()

    def _release(self) -> None:
        self._closed = True
        for part in (self._wal, self._meta):
            if part is not None:
                try:
                    part.close()
                except Exception as error:
                    log.warning("close: %r", error)

    def __enter__(self) -> StreamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<StreamStore path={self.config.path!r} wal={self.config.wal} "
                f"objects={self._objects.url!r}>")


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


__all__ = ["StreamStore", "open"]
