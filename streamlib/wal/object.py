"""The ``object`` WAL: one object per flush in any fsspec store, PUTs pipelined (docs/wal.md).

Keys, under the store's root::

    PREFIX/NODE/TRIM                                   the trim position (decimal text)
    PREFIX/NODE/EPOCH/OPEN                             written when an open claims EPOCH,
                                                       then again with the epoch's start
    PREFIX/NODE/EPOCH/START-END-ACKED.wal              the records of one flush

``EPOCH``, ``START``, ``END`` and ``ACKED`` are 20-digit numbers below 2^63, so a listing sorts
by epoch, then position; recovery ignores (and logs) any other key under the node's prefix.
``ACKED`` is the position up to which the epoch's records had been acknowledged when the
flush's PUT was issued. The ``OPEN`` marker exists so that an open that has written nothing yet
still holds its epoch: the next open (a restart) takes a higher one, and can never write a key
that a predecessor still running might write too.

The write path::

    append ─► the gathering object ─(flush_bytes or linger)─► ready ─► up to max_inflight PUTs
                                                                            │
       futures completed strictly in object order ◄── release ◄─────────────┘

Appends take their position at once and join the gathering object; a dispatcher thread seals
it when it holds ``flush_bytes``, at once when no PUT is running (an idle node pays one PUT,
not the linger too), or when ``linger`` has passed since its first record and a PUT slot is
free (with every slot busy it keeps gathering, so a slow store gets larger objects, not a
longer queue). A PUT that finishes releases its futures only once every earlier object is
released. Memory is bounded: an append waits while the bytes not yet released would exceed
``max_pending_bytes``, and is woken by the release that frees room.

A PUT that fails after the store's retries (io.py) fails its appends and every later one, in
order, and the WAL accepts no more appends: what comes after a lost object is never
acknowledged. Objects of later appends whose PUTs did land are deleted (best effort), so that
recovery does not find records nobody was told about behind a gap.

A crash leaves the same picture with no one to clean up: several PUTs were in flight, and a
later one may have landed while an earlier one did not. None of their records was acknowledged
(releases are in order). Recovery recognises this **in-flight tail** by ``ACKED``: a gap inside
an epoch (the ``OPEN`` marker says where the epoch starts, so a missing first object is a gap
too) that no later object of the epoch claims as acknowledged. Such a tail is reported as
dropped and never returned. A gap that a later object claims as acknowledged is damage (an
acknowledged object went missing): reported, and the records after it are returned.

Lock order: ``_release_lock`` → ``_lock`` (with its conditions ``_room`` and ``_work``), and
``_trim_lock`` → ``_lock``; ``_release_lock`` and ``_trim_lock`` are never held together.
``_lock`` is held briefly, never across a PUT, a GET or a future's completion. Recovery runs
before the dispatcher starts and before any append or trim can touch what it fills, so it fills
its fields without the lock. ``_release_lock`` is held while futures complete (they complete in
order), so their done-callbacks — the store's acknowledgement, which takes node locks
(:mod:`streamlib.node`), and the append futures' own callbacks — run under it: it is the one
lock of this WAL taken *above* node locks. Only PUT workers take it, never a thread holding a
node lock, which is why a done-callback must not wait on this WAL.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from streamlib.errors import CorruptDataError, StorageUnavailable, StreamClosed, describe
from streamlib.io import ObjectInfo, ObjectStore
from streamlib.wal import Capabilities, Recovery, Wal, WalEntry, WalRecord
from streamlib.wal._admission import Admission
from streamlib.wal._format import record_parts, record_size, scan_run

log = logging.getLogger(__name__)

MiB = 1 << 20
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_OBJECT = re.compile(r"([0-9]{20})/([0-9]{20})-([0-9]{20})-([0-9]{20})\.wal")
_MARKER = re.compile(r"([0-9]{20})/OPEN")
KEY_LIMIT = 1 << 63
"""Every epoch and position in a key is below this: what the WAL writes (epochs count opens,
positions count bytes), and what its 20-digit numbers sort by. A key with a number at or above
it was not written by this WAL; recovery ignores it, so that it can never push the next epoch
(one above the highest) past the 20 digits that recovery lists."""



def trimmed_objects(store: ObjectStore, prefix: str = "wal") -> list[ObjectInfo]:
    """The record objects of every node's object WAL under ``prefix`` of ``store`` that end at
    or before that node's ``TRIM`` position: what the node deletes itself when it trims or
    recovers, left behind by a node that crashed in between and never came back (the garbage
    collector's sweep deletes them). Markers and anything not of this WAL's shape are left
    alone."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    listed = store.list(base)
    nodes = {info.key[len(base):].split("/", 1)[0] for info in listed
             if info.key[len(base):].endswith("/TRIM")}
    found = []
    for node in sorted(nodes):
        if not _NODE.fullmatch(node):
            continue
        try:
            trim = int(store.get(f"{base}{node}/TRIM").decode().strip() or 0)
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            continue  # gone meanwhile, or unreadable: recovery will say
        for info in listed:
            name = info.key[len(base) + len(node) + 1:]
            match = _OBJECT.fullmatch(name) if info.key.startswith(f"{base}{node}/") else None
            if match and int(match.group(3)) <= trim < KEY_LIMIT:
                found.append(info)
    return found

@dataclass(frozen=True, slots=True)
class EpochMarker:
    """An ``OPEN`` marker's verdict once its epoch has recovered: its positions start at
    ``start``, and the data of earlier epochs it accepted ends at ``accepted``. Whatever an
    earlier epoch holds at or past ``accepted`` is superseded, even if it lands later (a dead
    writer's last PUT can finish after its successor recovered)."""

    start: int
    accepted: int

    def encode(self) -> bytes:
        return f"start={self.start}\naccepted={self.accepted}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> EpochMarker | None:
        """None for a claim-only marker (the process stopped before it recovered) or an
        unreadable one."""
        fields = dict(line.partition("=")[::2] for line in data.decode(errors="replace").split())
        try:
            start, accepted = int(fields["start"]), int(fields["accepted"])
        except (KeyError, ValueError):
            return None
        if not (0 <= start < KEY_LIMIT and 0 <= accepted < KEY_LIMIT):
            return None
        return cls(start, accepted)


def superseded_from(epochs: list[int], markers: Mapping[int, EpochMarker | None]
                    ) -> dict[int, int]:
    """For each epoch, the position from which its data is superseded: the lowest ``accepted``
    of any later epoch's marker (absent when no later epoch has one)."""
    cut: dict[int, int] = {}
    lowest: int | None = None
    for epoch in sorted(set(epochs) | set(markers), reverse=True):
        if lowest is not None:
            cut[epoch] = lowest
        marker = markers.get(epoch)
        if marker is not None:
            lowest = marker.accepted if lowest is None else min(lowest, marker.accepted)
    return cut


def in_flight_tails(objects: list[WalObject], markers: Mapping[int, EpochMarker | None],
                    trim: int) -> dict[int, tuple[int, int, set[str]]]:
    """For each epoch whose objects end in an in-flight tail (module docstring): the tail's
    positions ``[start, end)`` and its objects' keys. ``objects`` in key order, superseded
    ones left out; ``markers`` the epochs' verdicts."""
    tails: dict[int, tuple[int, int, set[str]]] = {}
    by_epoch: dict[int, list[WalObject]] = {}
    for item in objects:
        by_epoch.setdefault(item.epoch, []).append(item)
    for epoch, items in by_epoch.items():
        marker = markers.get(epoch)
        expected = max(items[0].start if marker is None else marker.start, trim)
        for i, item in enumerate(items):
            if item.start > expected:
                tail = items[i:]
                # Acknowledged past the gap's start by some later flush? Then it is damage.
                if max(o.acked for o in tail) <= expected:
                    tails[epoch] = (expected, tail[-1].end, {o.key for o in tail})
                break
            expected = max(expected, item.end)
    return tails


@dataclass(frozen=True, slots=True)
class WalObject:
    """One flush's object: records at positions ``[start, end)`` written in ``epoch``, whose PUT
    was issued when the epoch's records up to ``acked`` had been acknowledged."""

    epoch: int
    start: int
    end: int
    key: str
    acked: int = 0


class _Flush:
    """The records of one object, from gathering until release. ``start`` is fixed; ``size``,
    ``parts``, ``futures`` and ``first_at`` grow under ``ObjectWal._lock`` while it gathers, and
    once sealed nothing changes them but its PUT worker, which reads ``parts`` and drops them
    alone, and the release, which completes ``futures`` under ``_release_lock``. ``done``,
    ``error`` and ``settled``: GUARDED_BY(ObjectWal._lock). ``key``: set under it before the PUT
    is submitted, fixed after."""

    __slots__ = ("done", "error", "first_at", "futures", "key", "parts", "settled", "size",
                 "start")

    def __init__(self, start: int, now: float) -> None:
        self.start = start
        self.size = 0
        self.first_at = now
        self.parts: list[bytes] = []
        self.futures: list[tuple[Future[int], int]] = []
        self.done = False  # its PUT has returned
        self.error: BaseException | None = None
        self.settled = False  # its futures have been given their outcome
        self.key = ""  # set when its PUT starts

    @property
    def end(self) -> int:
        return self.start + self.size


class ObjectWal(Wal):
    """A WAL of objects in an :class:`~streamlib.io.ObjectStore` (or a URL and its storage
    options), for node ``node_id``, under ``prefix``.

    - ``flush_bytes`` (default 1 MiB): an object is sealed once it holds this many bytes;
    - ``linger`` (seconds, default 0.002): or once this long has passed since its first record;
    - ``max_inflight`` (default 8): PUTs running at once (also the recovery's read-ahead);
    - ``max_pending_bytes`` (default 64 MiB): appended bytes not yet released (gathering,
      waiting or in flight) beyond which an append waits — the memory bound;
    - ``full_timeout`` (seconds, default 30): how long an append waits for room by default;
    - ``retry_timeout`` (seconds): the retry budget of each store call; default: the store's
      own (60 s unless it was built otherwise).

    ``capacity`` is None: an object store does not fill up.

    ``ignored_keys``: how many keys under the node's prefix recovery ignored — a number beyond
    :data:`KEY_LIMIT`, or no shape of the WAL's keys — each logged at WARNING with its key.

    Futures complete on a PUT worker thread, in order; a done-callback must not block on this
    WAL (an append there that waits for room would wait for itself). One process writes a node's
    log at a time: two opening the same node at once could claim the same epoch (claiming it
    with a create-only PUT needs the store's conditional writes, not used yet)."""

    capabilities = Capabilities(shared_storage=True)

    def __init__(self, store: ObjectStore | str, node_id: str | int, *, prefix: str = "wal",
                 storage_options: Mapping[str, Any] | None = None,
                 flush_bytes: int = 1 * MiB, linger: float = 0.002, max_inflight: int = 8,
                 max_pending_bytes: int = 64 * MiB, full_timeout: float = 30.0,
                 retry_timeout: float | None = None) -> None:
        if isinstance(store, str):
            store = ObjectStore.from_url(store, storage_options)
        elif not isinstance(store, ObjectStore):
            raise TypeError(f"store must be an ObjectStore or a URL, not {type(store).__name__}")
        elif storage_options:
            raise ValueError("storage_options go with a URL, not with an ObjectStore")
        if retry_timeout is not None:
            store = store.with_retry(timeout=retry_timeout)
        node = str(node_id)
        if isinstance(node_id, bool) or not _NODE.fullmatch(node):
            raise ValueError(f"node_id must be letters, digits, '.', '_' or '-': "
                             f"node_id=`{node_id}`")
        if prefix and any(part in ("", ".", "..") for part in prefix.strip("/").split("/")):
            raise ValueError(f"invalid prefix: prefix=`{prefix}`")
        for name, value in (("flush_bytes", flush_bytes), ("max_inflight", max_inflight),
                            ("max_pending_bytes", max_pending_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int: {name}=`{value}`")
        if linger < 0 or full_timeout < 0:
            raise ValueError(f"linger and full_timeout must be non-negative: "
                             f"linger=`{linger}` full_timeout=`{full_timeout}`")
        self.store = store
        # Taking back an orphan is worth one try, not a minute of retries in close().
        self._cleanup_store = store.with_retry(timeout=0)
        self.node_id = node
        self.prefix = f"{prefix.strip('/')}/{node}/" if prefix.strip("/") else f"{node}/"
        self._flush_bytes = flush_bytes
        self._linger = linger
        self._max_inflight = max_inflight
        self._max_pending = max_pending_bytes
        self._full_timeout = full_timeout
        # One lock; appenders wait on `_room`, the dispatcher on `_work`.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        self._release_lock = threading.Lock()  # completions are handed out one object at a time
        self._trim_lock = threading.Lock()  # one TRIM write and sweep at a time
        self._admission = Admission(self._room)  # GUARDED_BY(_lock): first come, first served
        self._gathering: _Flush | None = None  # GUARDED_BY(_lock)
        self._ready: deque[_Flush] = deque()  # GUARDED_BY(_lock): sealed, waiting for a slot
        # Submitted, not yet released, in order. GUARDED_BY(_lock)
        self._inflight: deque[_Flush] = deque()
        self._running = 0  # GUARDED_BY(_lock): PUTs running
        self._pending_bytes = 0  # GUARDED_BY(_lock)
        # GUARDED_BY(_lock); read alone by ``trim_position`` and by a trim under _trim_lock (it
        # only grows: the newest trim asked for, or an older one)
        self._trim = 0
        # GUARDED_BY(_lock); read alone by ``end_position``: a stale value is lower
        self._end = 0
        self._acked = 0  # GUARDED_BY(_lock): the end of the last released (acknowledged) object
        self.epoch = 0  # set by recovery, fixed after
        self.ignored_keys = 0  # set by recovery, fixed after
        # Durable objects, for trim. Filled by recovery alone, then GUARDED_BY(_lock)
        self._objects: deque[WalObject] = deque()
        # OPEN markers of earlier epochs. Filled and read by recovery alone, then GUARDED_BY(_lock)
        self._markers: dict[int, str] = {}
        self._recovered = False  # recover()'s caller's alone: it is called once, first
        self._ready_to_append = False  # GUARDED_BY(_lock)
        self._closed = False  # GUARDED_BY(_lock)
        self._failure: BaseException | None = None  # GUARDED_BY(_lock)
        self._pool = ThreadPoolExecutor(max_inflight, thread_name_prefix="streamlib-ObjectWal")
        # GUARDED_BY(_lock); close reads it alone after setting ``_closed`` under the lock: no
        # dispatcher starts after that
        self._dispatcher: threading.Thread | None = None

    # ---- keys ----

    def _key(self, epoch: int, start: int, end: int, acked: int) -> str:
        return f"{self.prefix}{epoch:020d}/{start:020d}-{end:020d}-{acked:020d}.wal"

    # ---- recovery ----

    def recover(self) -> Recovery:
        """List the node's objects, read the trim position, claim a new epoch; the returned
        :class:`Recovery` then reads the objects from the trim position on, a few at a time
        in parallel, as it is iterated."""
        if self._recovered:
            raise RuntimeError("recover() may be called only once")
        with self._lock:
            if self._closed:
                raise StreamClosed("the WAL is closed")
        self._recovered = True
        objects: list[WalObject] = []
        epochs = [0]
        trim_found = False
        for info in self.store.list(self.prefix):
            name = info.key[len(self.prefix):]
            if name == "TRIM":
                trim_found = True
                continue
            match = _OBJECT.fullmatch(name) or _MARKER.fullmatch(name)
            numbers = [int(g) for g in match.groups()] if match else []
            if not numbers or max(numbers) >= KEY_LIMIT:
                # Not written by this WAL: it must neither move the epoch nor hide objects.
                self.ignored_keys += 1
                log.warning("not a key this WAL writes (a number beyond 2^63 - 1, or not a WAL "
                            "key's shape), ignored: key=`%s`", info.key)
                continue
            epoch = numbers[0]
            epochs.append(epoch)
            if len(numbers) == 1:  # the epoch's OPEN marker
                self._markers[epoch] = info.key
            elif numbers[1] < numbers[2]:
                _, start, end, acked = numbers
                objects.append(WalObject(epoch, start, end, info.key, acked))
            else:
                log.warning("WAL object with an empty or backwards range ignored: key=`%s`",
                            info.key)
        self._trim = self._read_trim() if trim_found else 0
        self.epoch = max(epochs) + 1
        if self.epoch >= KEY_LIMIT:
            raise CorruptDataError(f"no epoch left below 2^63 for this node: prefix="
                                   f"`{self.prefix}` highest=`{self.epoch - 1}`")
        self.store.put(f"{self.prefix}{self.epoch:020d}/OPEN", b"")
        objects.sort(key=lambda o: (o.epoch, o.start))  # the order of the keys
        live = [o for o in objects if o.end > self._trim]
        self._objects.extend(o for o in objects if o.end <= self._trim)  # deletes to finish
        return Recovery(lambda recovery: self._scan(recovery, live), self._trim)

    def _read_trim(self) -> int:
        text = self.store.get(f"{self.prefix}TRIM")
        try:
            trim = int(text.decode().strip() or 0)
        except ValueError:
            trim = -1
        if not 0 <= trim < KEY_LIMIT:  # beyond it, every object would count as trimmed
            log.error("WAL TRIM object unreadable, recovering from the first object: "
                      "key=`%sTRIM`", self.prefix)
            return 0
        return trim

    def _epoch_markers(self, since: int) -> dict[int, EpochMarker | None]:
        """The verdicts of every earlier epoch from ``since`` on."""
        markers: dict[int, EpochMarker | None] = {}
        for epoch, key in sorted(self._markers.items()):
            if epoch < since:
                continue
            try:
                markers[epoch] = EpochMarker.decode(self.store.get(key))
            except FileNotFoundError:
                markers[epoch] = None
        return markers

    def _scan(self, recovery: Recovery, objects: list[WalObject]) -> Iterator[WalEntry]:
        cursor = self._trim  # every position before it is returned, trimmed or reported
        markers = self._epoch_markers(min((o.epoch for o in objects), default=self.epoch))
        cut = superseded_from([o.epoch for o in objects], markers)
        late = self._drop_superseded(recovery, objects, cut)
        objects = [o for o in objects if o.start < cut.get(o.epoch, KEY_LIMIT)]
        tails = in_flight_tails(objects, markers, self._trim)
        torn = set().union(*(keys for _, _, keys in tails.values()))
        regions = deque(sorted((start, end, epoch) for epoch, (start, end, _) in tails.items()))
        self._objects.extend(o for o in objects if o.key in torn)  # for trim to delete
        objects = [o for o in objects if o.key not in torn]

        def pass_tails(before: int) -> None:
            """Report the in-flight tails that start before ``before``; move the cursor."""
            nonlocal cursor
            while regions and regions[0][0] < before:
                start, end, epoch = regions.popleft()
                recovery.drop(max(start, cursor), end, f"torn tail: flushes in flight when the "
                              f"writer of epoch {epoch} stopped (never acknowledged)")
                cursor = max(cursor, end)

        reads: deque[tuple[WalObject, int, Future[bytes]]] = deque()
        upcoming = iter(objects)

        def read_ahead() -> None:
            while len(reads) < self._max_inflight:
                item = next(upcoming, None)
                if item is None:
                    return
                begin = max(item.start, self._trim)
                reads.append((item, begin, self._pool.submit(
                    self.store.get, item.key, begin - item.start, item.end - item.start)))

        read_ahead()
        while reads:
            item, begin, future = reads.popleft()
            read_ahead()
            try:
                data = future.result()
            except FileNotFoundError:
                data = None  # deleted since the listing: as missing as if never listed
            pass_tails(item.start + 1)
            marker = markers.get(item.epoch)
            if marker is not None and marker.accepted <= cursor < marker.start <= item.start:
                cursor = marker.start  # settled by that epoch's own recovery: not missing
            if item.start > cursor:
                recovery.drop(cursor, item.start, "missing WAL object")
            if data is None:
                recovery.drop(max(begin, cursor), item.end, "missing WAL object")
                cursor = max(cursor, item.end)
                continue
            if begin < cursor:
                recovery.drop(begin, min(cursor, item.end), "overlapping WAL objects")
            entries, valid = scan_run(data, begin, recovery, groups_from=item.start)
            limit = cut.get(item.epoch, KEY_LIMIT)
            if limit < item.end:  # a late PUT past the verdict of a later epoch
                recovery.drop(limit, item.end, f"superseded: epoch {item.epoch} wrote it after "
                              f"a later epoch had recovered past `{limit}`")
            for entry in entries:
                if cursor <= entry.position < limit:
                    yield entry
            if valid < len(data):
                recovery.drop(begin + valid, begin + len(data), "damaged end of a WAL object")
            if begin + len(data) < item.end:
                recovery.drop(begin + len(data), item.end, "WAL object shorter than its key")
            # Never past a cut: what a later epoch wrote from there on is still to be read.
            cursor = max(cursor, min(item.end, limit))
            self._objects.append(item)
        accepted = cursor  # what this recovery accepts ends here; trailing tails do not count
        pass_tails(KEY_LIMIT)
        # Appends continue after the last object even if its end was damaged or it was part of
        # an in-flight tail: a position is never used twice. A late PUT of an earlier epoch
        # that lands after this may still be listed later: the marker's verdict supersedes it.
        self._open_epoch(recovery, max([cursor, *(o.end for o in late)]), accepted)

    def _drop_superseded(self, recovery: Recovery, objects: list[WalObject],
                         cut: dict[int, int]) -> list[WalObject]:
        """Report and delete the objects an epoch wrote past a later epoch's verdict (late
        PUTs); returns them."""
        late = [o for o in objects if o.start >= cut.get(o.epoch, KEY_LIMIT)]
        for item in late:  # reported once, then deleted: no verdict will ever accept them
            recovery.drop(item.start, item.end, f"superseded: epoch {item.epoch} wrote it "
                          f"after a later epoch had recovered past `{cut[item.epoch]}`")
        if late:
            try:
                self.store.delete([o.key for o in late])
            except Exception as e:
                log.warning("could not delete superseded WAL objects; trim will: error=%r", e)
                self._objects.extend(late)
        return late

    def _open_epoch(self, recovery: Recovery, end: int, accepted: int) -> None:
        """Recovery ends at ``end``: write this epoch's marker (its verdict: ``accepted``) and
        start appending after it."""
        recovery.end = end
        self.store.put(f"{self.prefix}{self.epoch:020d}/OPEN",
                       EpochMarker(end, accepted).encode())
        with self._lock:
            self._acked = end
            self._end = end
            self._ready_to_append = not self._closed
            if self._ready_to_append:
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                    name=f"streamlib-ObjectWal-{self.node_id}")
                self._dispatcher.start()

    # ---- appending ----

    def append(self, record: WalRecord, timeout: float | None = None) -> Future[int]:
        if not isinstance(record, WalRecord):
            raise TypeError(f"record must be a WalRecord, not {type(record).__name__}")
        size = record_size(record)
        if size > self.capabilities.max_record_bytes:
            raise ValueError(f"WAL record too large: size=`{size}` "
                             f"max=`{self.capabilities.max_record_bytes}`")
        deadline = time.monotonic() + (self._full_timeout if timeout is None else timeout)
        future: Future[int] = Future()
        with self._lock:
            self._check_open()
            # A record larger than the bound alone goes when nothing else is pending.
            self._admission.wait(
                lambda: (not self._pending_bytes
                         or self._pending_bytes + size <= self._max_pending),
                deadline,
                lambda: (f"WAL full: append waited for pending PUTs: "
                         f"pending=`{self._pending_bytes}` size=`{size}` "
                         f"max_pending_bytes=`{self._max_pending}`"),
                self._check_open)
            position = self._end
            self._end += size
            self._pending_bytes += size
            flush = self._gathering
            if flush is None:
                flush = self._gathering = _Flush(position, time.monotonic())
                self._work.notify()  # the dispatcher starts the linger clock
            flush.parts.extend(record_parts(position, record, flush.start))
            flush.futures.append((future, position))
            flush.size += size
            if flush.size >= self._flush_bytes:
                self._ready.append(flush)
                self._gathering = None
                self._work.notify()
        return future

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the WAL is closed")
        if self._failure is not None:
            raise StorageUnavailable(f"the WAL failed and accepts no appends: {self._failure}")
        if not self._ready_to_append:
            raise RuntimeError("call recover() and iterate it before appending")

    def _dispatch(self) -> None:
        """Seal objects and start their PUTs, oldest first, at most ``max_inflight`` at once."""
        while True:
            with self._lock:
                while True:
                    slot = self._running < self._max_inflight
                    now = time.monotonic()
                    flush = None
                    if slot and self._ready:
                        flush = self._ready.popleft()
                    elif slot and self._gathering is not None and (
                            self._closed or self._running == 0
                            or now >= self._gathering.first_at + self._linger):
                        flush, self._gathering = self._gathering, None
                    if flush is not None:
                        break
                    if self._closed and not self._ready and self._gathering is None:
                        return
                    wait = None
                    if slot and self._gathering is not None:
                        wait = self._gathering.first_at + self._linger - now
                    self._work.wait(wait)
                self._running += 1
                flush.key = self._key(self.epoch, flush.start, flush.end, self._acked)
                self._inflight.append(flush)
            self._pool.submit(self._put, flush)

    def _put(self, flush: _Flush) -> None:
        error: BaseException | None = None
        try:
            self.store.put(flush.key, b"".join(flush.parts))  # sealed: no append changes them
        except Exception as e:
            error = e
        flush.parts = []  # the bytes are not needed any more, whatever the outcome
        self._release(flush, error)

    def _release(self, flush: _Flush, error: BaseException | None) -> None:
        """Note a finished PUT, then hand out, in object order, every outcome now known."""
        settle: list[tuple[_Flush, BaseException | None]] = []
        orphans: list[str] = []
        with self._release_lock:  # outcomes go out in order even across worker threads
            with self._lock:
                self._running -= 1
                flush.done, flush.error = True, error
                if flush.settled and error is None:  # failed with an earlier object
                    orphans.append(flush.key)
                while self._inflight and self._inflight[0].done:
                    head = self._inflight.popleft()
                    head.settled = True
                    self._pending_bytes -= head.size
                    if head.error is not None:
                        settle += self._fail_from(head, orphans)
                        break
                    self._objects.append(WalObject(self.epoch, head.start, head.end, head.key,
                                                   self._acked))
                    self._acked = head.end
                    settle.append((head, None))
                self._work.notify()
                self._room.notify_all()
            for item, outcome in settle:
                for future, position in item.futures:
                    if outcome is None:
                        future.set_result(position)
                    else:
                        future.set_exception(outcome)
        for key in orphans:
            self._delete_quietly(key)

    def _fail_from(self, failed: _Flush, orphans: list[str]) -> list[tuple[_Flush, BaseException]]:
        """(Under the lock.) ``failed`` could not be stored: it fails, every later append fails,
        and the WAL takes no more. Returns the outcomes in order; adds to ``orphans`` the keys
        to take back (later objects that landed, and the failed one, which may have landed)."""
        cause = failed.error
        assert cause is not None
        self._failure = cause
        log.error("WAL flush failed; the WAL accepts no more appends: key=`%s` error=%r",
                  failed.key, cause)

        def error(what: str) -> BaseException:
            wrapped = StorageUnavailable(describe(what, key=failed.key, error=repr(cause)))
            wrapped.__cause__ = cause
            return wrapped

        outcomes = [(failed, error("WAL flush failed"))]
        orphans.append(failed.key)
        later = [*self._inflight, *self._ready]
        if self._gathering is not None:
            later.append(self._gathering)
        for item in later:
            item.settled = True
            self._pending_bytes -= item.size
            outcomes.append((item, error("an earlier WAL flush failed")))
            if item.done and item.error is None:
                orphans.append(item.key)
        self._inflight.clear()
        self._ready.clear()
        self._gathering = None
        return outcomes

    def _delete_quietly(self, key: str) -> None:
        try:
            self._cleanup_store.delete([key])
        except Exception as e:
            log.warning("could not delete an unacknowledged WAL object; recovery will report "
                        "it after a gap: key=`%s` error=%r", key, e)

    # ---- trim ----

    def trim(self, position: int) -> None:
        """Forget the records before ``position``: write ``TRIM``, then delete every object that
        ends at or before it (a failed delete is retried at the next trim)."""
        with self._lock:
            if position <= self._trim:
                return
            if position > self._end:
                raise ValueError(f"trim beyond the end: position=`{position}` end=`{self._end}`")
            self._trim = position
        with self._trim_lock:
            position = self._trim  # read alone: a later trim may have overtaken this one
            self.store.put(f"{self.prefix}TRIM", str(position).encode())
            with self._lock:
                doomed = [o for o in self._objects if o.end <= position]
                self._objects = deque(o for o in self._objects if o.end > position)
                # A marker goes only when no object of its epoch or an earlier one is left:
                # later markers' verdicts are what supersede an earlier epoch's late PUTs.
                oldest = min([o.epoch for o in self._objects] + [self.epoch])
                markers = {e: k for e, k in self._markers.items() if e < oldest}
            try:
                self.store.delete([o.key for o in doomed] + list(markers.values()))
            except Exception as e:
                log.warning("WAL trim could not delete objects; will try again at the next "
                            "trim: position=`%s` error=%r", position, e)
                with self._lock:
                    self._objects.extend(doomed)
                return
            with self._lock:
                for epoch in markers:
                    self._markers.pop(epoch, None)

    # ---- state ----

    @property
    def waiting_appends(self) -> int:
        with self._room:
            return self._admission.waiting

    @property
    def capacity(self) -> int | None:
        return None

    @property
    def trim_position(self) -> int:
        return self._trim

    @property
    def end_position(self) -> int:
        return self._end

    def objects(self) -> list[WalObject]:
        """The durable objects the WAL knows of (after recovery), in position order."""
        with self._lock:
            return sorted(self._objects, key=lambda o: o.start)

    def close(self) -> None:
        """Flush what is gathered, wait for every PUT (each within the retry budget), settle
        every future, stop the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._work.notify_all()
            self._room.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join()
        self._pool.shutdown(wait=True)
