"""The uploader: WAL data → objects → one metadata commit → WAL trim (docs/store.md).

One round takes every acknowledged batch up to a WAL position *P* (a prefix of the WAL), writes
a stream object for each stream with at least ``stream_object_bytes`` of it and one multi-stream
object for the rest, PUTs them, commits them with *P* in one metadata step, and trims the WAL to
*P*. A crash between any two steps loses nothing and duplicates nothing visible: objects not
committed are orphans nobody reads; committed data still in the WAL is skipped at recovery.

Rounds run on the uploader's thread when ``upload_bytes`` wait or ``upload_interval_ms`` has
passed since the first of them, and in the caller's thread for ``flush()``, one at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from streamlib.config import Config
from streamlib.errors import StreamNotFound
from streamlib.io import ObjectStore
from streamlib.meta import ObjectMeta, StreamRange
from streamlib.objects import ObjectWriter
from streamlib.records import RecordBatch

log = logging.getLogger("streamlib.uploader")

DATA_PREFIX = "data"
"""Objects live under this key prefix of the object store (the object WAL under ``wal``)."""


@dataclass(slots=True)
class Work:
    """What one round uploads: each stream's batches (contiguous, starting at its committed
    end) and the WAL position everything before which is in them or committed already."""

    streams: dict[int, list[RecordBatch]]
    position: int
    bytes: int = 0


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
    """Runs upload rounds for a store. ``take()`` gives a round's :class:`Work` (or None);
    ``commit(objects, position)`` commits them; ``trim(position)`` trims the WAL; ``pending()``
    says how many bytes wait and since when (``time.monotonic()``), for the triggers: a round
    starts once ``threshold`` bytes wait (default ``upload_bytes``) or ``upload_interval_ms``
    after the first of them."""

    def __init__(self, *, objects: ObjectStore, config: Config, node_id: str, node_epoch: int,
                 take: Callable[[], Work | None],
                 commit: Callable[[Sequence[ObjectMeta], int], None],
                 trim: Callable[[int], None],
                 pending: Callable[[], tuple[int, float | None]],
                 threshold: int | None = None) -> None:
        self._objects = objects
        self._config = config
        self._prefix = f"{DATA_PREFIX}/{node_id}/{node_epoch}"
        self._take = take
        self._commit = commit
        self._trim = trim
        self._pending = pending
        self._threshold = config.upload_bytes if threshold is None else threshold
        self._sequence = 0
        self._round_lock = threading.Lock()  # one round at a time (thread or flush)
        self._wake = threading.Condition()
        self._stopping = False
        self._requested = False  # a round is wanted now, whatever the triggers say
        self._thread: threading.Thread | None = None
        self.stats = UploadStats()

    # ---- the background thread ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="streamlib-uploader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def notify(self) -> None:
        """New data arrived: check the size trigger."""
        with self._wake:
            self._wake.notify_all()

    def request(self) -> None:
        """Run a round as soon as anything waits, whatever the triggers say (appends are
        waiting for the room that uploads free)."""
        with self._wake:
            self._requested = True
            self._wake.notify_all()

    def _due(self) -> float | None:
        """Seconds until the next round is due (0: now), or None if nothing waits."""
        size, since = self._pending()
        if since is None or size == 0:
            return None
        if size >= self._threshold or self._requested:
            return 0.0
        return max(0.0, since + self._config.upload_interval_ms / 1000 - time.monotonic())

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._wake:
                if backoff and not self._stopping:
                    self._wake.wait(backoff)  # after a failure (a notify may end it early)
                while not self._stopping and (due := self._due()) != 0.0:
                    self._wake.wait(due)  # None: until data arrives
                if self._stopping:
                    return
                self._requested = False
            try:
                uploaded = self.upload()
                # A round that found nothing to take waits for more rather than spinning.
                backoff = 0.0 if uploaded else self._config.upload_interval_ms / 1000
            except Exception as error:
                backoff = min(max(backoff * 2, 0.1), 5.0)
                log.warning("upload failed, retrying in %.1fs: %r", backoff, error)

    # ---- one round ----

    def upload(self) -> int:
        """Run one round now; returns the bytes uploaded. Raises what failed (the data stays in
        the WAL and the next round tries again)."""
        with self._round_lock:
            attempts = 0
            while True:
                attempts += 1
                try:
                    return self._round()
                except StreamNotFound as error:
                    # A stream was destroyed during the round: the next leaves it out (this
                    # round's objects are orphans). Only a store in a destroying spree fails.
                    if attempts < 3:
                        continue
                    self._failed(error)
                    raise
                except Exception as error:
                    self._failed(error)
                    raise

    def _failed(self, error: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = repr(error)

    def _round(self) -> int:
        work = self._take()
        if work is None:
            return 0
        built = self.build(work.streams)
        for item in built:
            self._objects.put(item.meta.key, item.data, part_bytes=self._config.part_bytes)
        self._commit([item.meta for item in built], work.position)
        self._trim(work.position)
        self.stats.rounds += 1
        self.stats.objects += len(built)
        self.stats.stream_objects += sum(item.stream_object for item in built)
        self.stats.bytes += sum(item.meta.size for item in built)
        return work.bytes

    def build(self, streams: Mapping[int, Sequence[RecordBatch]]) -> list[Built]:
        """Stream objects for the streams with ``stream_object_bytes`` or more, one
        multi-stream object for the rest."""
        built = build_objects(streams, self._config, self._prefix, self._sequence)
        self._sequence += len(built)
        return built


def build_objects(streams: Mapping[int, Sequence[RecordBatch]], config: Config, prefix: str,
                  sequence: int) -> list[Built]:
    """The objects of one round: a stream object for each stream with ``stream_object_bytes``
    or more, one multi-stream object for the rest; keys ``prefix/<sequence + n>-<random>``."""
    alone, shared = [], []
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


__all__ = ["DATA_PREFIX", "Built", "UploadStats", "Uploader", "Work", "build_objects"]
