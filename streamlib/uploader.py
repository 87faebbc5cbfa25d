"""The uploader: WAL data → objects → one metadata commit → WAL trim (docs/store.md).

One round (the uploader keeps its own bookkeeping: what a round takes, the commit, the WAL trim
position) takes every acknowledged batch up to a WAL position *P* (a prefix of the WAL), writes
a stream object for each stream with at least ``stream_object_bytes`` of it and one multi-stream
object for the rest, PUTs them, commits them with *P* in one metadata step, and trims the WAL to
*P*. A crash between any two steps loses nothing and duplicates nothing visible: objects not
committed are orphans nobody reads; committed data still in the WAL is skipped at recovery.

Rounds run on the uploader's thread when ``upload_bytes`` wait or ``upload_interval_ms`` has
passed since the first of them, and in the caller's thread for ``flush()``, one at a time.

Lock order: as :mod:`streamlib.node`; ``_round_lock`` is taken first of all (a round holds it
across its I/O and takes ``Node.changes`` for the commit).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamlib.config import (
    UPLOAD_BACKOFF_FIRST,
    UPLOAD_BACKOFF_MAX,
    UPLOAD_DESTROYED_RETRIES,
    Config,
)
from streamlib.errors import FencedError, StreamNotFound, describe
from streamlib.meta import Commit, ObjectMeta, StreamRange
from streamlib.metrics import Event
from streamlib.objects import ObjectWriter
from streamlib.outage import Outage
from streamlib.records import PlacedBatch, RecordBatch
from streamlib.state import ObjectSlice, StreamState

if TYPE_CHECKING:
    from streamlib.io import ObjectStore
    from streamlib.node import Node
    from streamlib.shared.coordination import Coordination
    from streamlib.wal import Wal
    from streamlib.write import WritePath

log = logging.getLogger(__name__)

DATA_PREFIX = "data"
"""Objects live under this key prefix of the object store (the object WAL under ``wal``)."""


@dataclass(slots=True)
class Work:
    """What one round uploads: each stream's batches (contiguous, starting at its committed
    end) and the WAL position everything before which is in them or committed already;
    ``frontier``: the WAL position up to which every acknowledged append is in them."""

    streams: dict[int, list[PlacedBatch]]
    position: int
    bytes: int = 0
    frontier: int = -1


@dataclass(slots=True)
class Built:
    """One object ready to PUT."""

    meta: ObjectMeta
    data: bytes
    stream_object: bool = False


@dataclass(slots=True)
class UploadStats:
    """Counters of the uploader (a snapshot: ``store.stats()``)."""

    rounds: int = 0
    objects: int = 0
    stream_objects: int = 0
    bytes: int = 0
    failures: int = 0
    last_error: str | None = None


class Uploader:
    """Runs upload rounds for a node: on its own thread when the backlog's triggers say so
    (``upload_bytes`` waiting, or ``upload_interval_ms`` after the first of them, or a
    :meth:`~streamlib.node.Backlog.request`), and in the caller's thread for ``flush()``; one
    round at a time."""

    def __init__(self, *, node: Node, wal: Wal, objects: ObjectStore, write: WritePath,
                 coordination: Coordination, position_floor: int = 0) -> None:
        self._node = node
        self._wal = wal
        self._objects = objects
        self._write = write
        self._coordination = coordination
        self._config = node.config
        self._prefix = f"{DATA_PREFIX}/{node.id}/{node.epoch}"
        # Commits never move the node's WAL position below this (a WAL replaced by a new one
        # that starts lower: docs/store.md).
        self._position_floor = position_floor
        self._sequence = 0  # GUARDED_BY(_round_lock)
        self._round_lock = threading.Lock()  # one round at a time (thread or flush)
        self._stopping = False  # GUARDED_BY(backlog lock)
        self._thread: threading.Thread | None = None
        self.stats = UploadStats()  # GUARDED_BY(_round_lock); read alone for a snapshot
        self._outage = Outage(log, "uploads", "the data stays in the WAL, appends go on until "
                              "it is full, and uploads are retried", node=node.id)

    # ---- the background thread ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="streamlib-uploader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        backlog = self._node.backlog
        with backlog.wake:
            self._stopping = True
            backlog.wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        backlog = self._node.backlog
        backoff = 0.0
        while True:
            with backlog.wake:
                if backoff and not self._stopping:
                    backlog.wake.wait(backoff)  # after a failure (a notify may end it early)
                while not self._stopping and (due := backlog.due()) != 0.0:
                    backlog.wake.wait(due)  # None: until data arrives
                if self._stopping:
                    return
                backlog.requested = False
            try:
                uploaded = self.upload()
                # A round that found nothing to take waits for more rather than spinning.
                backoff = 0.0 if uploaded else self._config.upload_interval_ms / 1000
            except Exception as error:  # logged as an outage by upload()
                backoff = min(max(backoff * 2, UPLOAD_BACKOFF_FIRST), UPLOAD_BACKOFF_MAX)
                log.debug("upload failed, retrying in %.1fs: %r", backoff, error)

    # ---- one round ----

    def upload(self) -> int:
        """Run one round now; returns the bytes uploaded. Raises what failed (the data stays in
        the WAL and the next round tries again)."""
        with self._round_lock:
            attempts = 0
            while True:
                attempts += 1
                try:
                    uploaded = self._round()
                except StreamNotFound as error:
                    # A stream was destroyed during the round: the next leaves it out (this
                    # round's objects are orphans). Only a store in a destroying spree fails.
                    if attempts < UPLOAD_DESTROYED_RETRIES:
                        continue
                    self._failed(error)
                    raise
                except Exception as error:
                    self._failed(error)
                    raise
                self._outage.worked()
                return uploaded

    def _failed(self, error: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = repr(error)
        self._outage.failed(error)

    def _round(self) -> int:
        work = self._take()
        if work is None:
            return 0
        built = self.build(work.streams)
        started = time.monotonic()
        not_after = commit_deadline(self._config)  # before the first PUT: see the function
        for item in built:
            self._objects.put(item.meta.key, item.data, part_bytes=self._config.part_bytes)
        # Counted once stored, before the commit frees the backlog: a snapshot of stats()
        # never shows the bytes gone from "pending" and not yet among the uploaded.
        self.stats.objects += len(built)
        self.stats.stream_objects += sum(item.stream_object for item in built)
        self.stats.bytes += sum(item.meta.size for item in built)
        self._commit([item.meta for item in built], work.position, not_after)
        self._wal.trim(work.position)
        self.stats.rounds += 1
        metrics = self._node.metrics
        metrics.uploaded(work.frontier)
        metrics.round_done(time.monotonic() - started, sum(item.meta.size for item in built))
        return work.bytes

    def build(self, streams: Mapping[int, Sequence[RecordBatch]]) -> list[Built]:
        """Stream objects for the streams with ``stream_object_bytes`` or more, one
        multi-stream object for the rest."""
        built = build_objects(streams, self._config, self._prefix, self._sequence)
        self._sequence += len(built)
        return built

    def _take(self) -> Work | None:
        """The batches of the next round and the WAL position it may trim to.

        Every acknowledged batch at a WAL position up to the **frontier** (the position of the
        last acknowledged append) is taken: the WAL completes appends in order, so all records
        before it are durable, and once acknowledged they are in the log cache. The trim
        position is the frontier, lowered to the lowest possible position of an append still
        inside its WAL call (its stream may not know of it yet), and to the first record kept
        back by damage. With nothing in flight (so at open and at close, unless appends durable
        on a shared store still wait for a look), it is the WAL's end: the round takes
        everything and the WAL is emptied."""
        node = self._node
        with node.backlog.wake:
            frontier = node.backlog.frontier
        entering, end = node.backlog.entering(lambda: self._wal.end_position)
        # Listed after the WAL's end was read: a stream created meanwhile, whose append may be
        # below that end and not acknowledged yet, is among them (and keeps the round from
        # counting as quiet).
        states = node.streams.all()
        # Acknowledge what the WAL completed but no callback has yet (after one look at a
        # shared store's metadata for them all).
        self._write.acknowledge_all(states)
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
        work = Work({}, position, frontier=frontier)
        for state in states:
            batches = state.take(frontier)
            if batches:
                work.streams[state.id] = batches
                work.bytes += sum(b.size for b in batches)
        if not work.streams and position <= self._wal.trim_position:
            return None  # nothing new to upload and nothing to trim
        return work

    def _commit(self, objects: Sequence[ObjectMeta], position: int,
                not_after: int | None) -> None:
        """Commit a round's objects with the WAL position everything before which is in them
        or committed already; then the batches move to the log cache's uploaded part."""
        node = self._node
        meta = node.meta
        slices: dict[int, list[ObjectSlice]] = {}
        stored: dict[int, int] = {}
        for obj in objects:
            for r in obj.ranges:
                slices.setdefault(r.stream_id, []).append(
                    ObjectSlice(r.start_offset, r.end_offset, obj.key, obj.size))
                stored[r.stream_id] = stored.get(r.stream_id, 0) + r.size
        with node.changes:
            states = {sid: node.streams.get(sid) for sid in slices}
            gone = [sid for sid, state in states.items() if state is None]
            if gone:  # destroyed since the round began: the next round leaves it out
                raise StreamNotFound(describe("stream destroyed during an upload",
                                              stream=gone[0]))
            found = {sid: state for sid, state in states.items() if state is not None}
            commit = Commit(node_id=node.id, wal_position=max(position, self._position_floor),
                            objects=objects, epochs={sid: s.epoch for sid, s in found.items()},
                            node_epoch=node.epoch, not_after_ms=not_after)
            try:
                meta.commit(commit)
            except FencedError as error:
                if node.fenced_by_metadata() and node.fail(error):  # another took this node
                    node.metrics.event(Event.NODE_FENCED)
                raise
            except Exception:
                # Applied or not? A remote store can fail after applying: learn the committed
                # ends again, so that the next round starts from them instead of failing for good.
                self._reload_ends(found.values())
                raise
            freed = 0
            for stream_id, parts in slices.items():
                state = found[stream_id]
                freed += self._keep(state, state.committed(parts[-1].end, parts,
                                                           stored=stored[stream_id]))
        node.backlog.committed(freed)
        self._coordination.committed(found.values())

    def _reload_ends(self, states: Iterable[StreamState]) -> None:
        """After a commit of unknown outcome: take each stream's committed end from the
        metadata, drop what it covers from the log cache, reload the object index on the next
        read (caller holds ``node.changes``)."""
        freed = 0
        for state in states:
            try:
                end = self._node.meta.get_stream(state.id).end_offset
            except Exception as error:
                log.warning("could not reload stream %d after a failed commit: %r", state.id,
                            error)
                continue
            # The index is loaded again on the next read: objects of unknown commits.
            freed += self._keep(state, state.committed(end, (), reset_index=True))
        self._node.backlog.dropped(freed)

    def _keep(self, state: StreamState, moved: list[PlacedBatch]) -> int:
        """Committed batches stay in the log cache as a chunk the cache may evict. Returns
        their payload bytes (no longer pending upload)."""
        node = self._node
        node.cache.retain(node.scope, node.stream_key(state), moved, state.release_kept)
        return sum(b.size for b in moved)


def commit_deadline(config: Config) -> int | None:
    """The time (milliseconds since the epoch) after which objects whose first PUT starts now
    may no longer be committed: half of ``delete_grace_ms`` from now, so that the garbage
    collector, which takes unreferenced objects older than ``delete_grace_ms`` for orphans of
    a crashed round, never deletes an object a late commit then names (the metadata checks it
    in the commit's own step; a round refused so uploads its data again under new keys).
    None with no grace period (then nothing may upload while a sweep runs)."""
    grace = config.delete_grace_ms
    return int(time.time() * 1000) + grace // 2 if grace else None


def build_objects(streams: Mapping[int, Sequence[RecordBatch]], config: Config, prefix: str,
                  sequence: int) -> list[Built]:
    """The objects of one round: a stream object for each stream with ``stream_object_bytes``
    or more, one multi-stream object for the rest; keys ``prefix/<sequence + n>-<random>``."""
    alone: list[tuple[int, Sequence[RecordBatch]]] = []
    shared: list[tuple[int, Sequence[RecordBatch]]] = []
    for stream_id, batches in sorted(streams.items()):
        if not batches:
            continue
        size = sum(b.size for b in batches)
        (alone if size >= config.stream_object_bytes else shared).append(
            (stream_id, batches))
    groups = [[item] for item in alone] + ([shared] if shared else [])
    built = []
    for group in groups:
        writer = ObjectWriter(block_bytes=config.block_bytes,
                              compression=config.compression,  # type: ignore[arg-type]
                              zstd_level=config.zstd_level)
        for stream_id, batches in group:
            writer.add(stream_id, batches)
        data, index = writer.finish()
        kind = "s" if len(group) == 1 and group is not shared else "m"
        sequence += 1
        key = f"{prefix}/{sequence:012d}-{uuid.uuid4().hex[:12]}.{kind}obj"
        ranges = [StreamRange(r.stream_id, r.start_offset, r.end_offset, r.size)
                  for r in index.ranges]
        built.append(Built(ObjectMeta(key, len(data), tuple(ranges)), data, kind == "s"))
    return built


__all__ = ["DATA_PREFIX", "Built", "UploadStats", "Uploader", "Work", "build_objects",
           "commit_deadline"]
