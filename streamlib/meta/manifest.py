"""The object-store manifest: the metadata as numbered deltas and checkpoints in an object
store, changed only by create-only writes, so that several processes and machines can share
it (docs/shared-stores.md).

Every change is written in a **delta** at the next version, ``log/<version>``, with a
create-only PUT after it was checked against the state at the version before: only one writer
can create a version, so every reader applies the same deltas in the same order and applying
never checks. The changes this process makes at the same time share one delta, a **group**
(:mod:`streamlib.meta._group`: one thread writes, the others wait for their answers), each
checked after the ones before it and answered on its own. A writer that loses a version to
another applies the winner's delta and checks its changes again. Each delta carries a random
**put id**: a create that comes back "exists" after a lost answer is recognised as the
writer's own. A **checkpoint** (``checkpoint/<version>``, the whole state,
zstd-compressed) is written every ``checkpoint_every`` versions; opening reads the newest one and
the deltas after it. Old ones are deleted (:meth:`collect_garbage`, the rule in
:mod:`streamlib.meta._manifest_gc`): a handle takes a delta only while it can vouch that its
version was never deleted (:meth:`_catch_up`), and a writer whose create came back late checks
that it did not create a deleted version again (:meth:`_landed`). What a reader accepts of
either — bounded sizes and nesting, every field checked — is decided in
:mod:`streamlib.meta._manifest_state` and :mod:`streamlib.meta._manifest_checkpoint`; anything
else is ``CorruptDataError`` naming the object,
and changes nothing here. Opening fails only with streamlib's errors: ``StorageUnavailable``,
``ConfigError`` or ``CorruptDataError``.

Lock order: ``_lock`` (re-entrant), below the node's order (:mod:`streamlib.node`), then the
group queue's condition (:mod:`streamlib.meta._group`, a leaf). The writer of a group holds
``_lock`` across its object-store calls (the create, the catch-up's reads), so that this
process writes one delta at a time on the newest state it knows; the catch-up's pool threads
only read objects and take no lock. Nothing called under it calls back up, and no thread
holding it queues a change.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from streamlib.errors import (
    CommitConflict,
    CompactionConflict,
    ConfigError,
    CorruptDataError,
    FencedError,
    OffsetOutOfRange,
    ReadOnlyError,
    StorageUnavailable,
    StreamClosed,
    StreamLibError,
    StreamNotFound,
    describe,
)
from streamlib.io import ObjectStore
from streamlib.meta import (
    ANY,
    AnyValue,
    Capabilities,
    Commit,
    DoomedObject,
    MetadataStore,
    NodeMeta,
    ObjectMeta,
    Replacement,
    Retention,
    StreamMeta,
    StreamObject,
    StreamRange,
    StreamState,
    check_id,
    check_kv,
    check_kv_write,
    check_limit,
    check_node_id,
    check_retention,
    check_text,
)
from streamlib.meta._group import Change, GroupCommit, Unmet, plan_group
from streamlib.meta._manifest_checkpoint import (
    MAX_CHECKPOINT_BYTES,
    read_checkpoint,
    write_checkpoint,
)
from streamlib.meta._manifest_gc import Landing, collect, judge_create, listed
from streamlib.meta._manifest_plans import create_plan, open_plan
from streamlib.meta._manifest_probe import probe_create
from streamlib.meta._manifest_state import (
    FORMAT,
    MAX_DELTA_BYTES,
    Malformed,
    ManifestState,
    delta_format,
    encode_delta,
    encode_object,
    group_delta,
    read_delta,
    retention_args,
)
from streamlib.meta._swap import check_keys, check_page
from streamlib.records import INT64_MAX, check_int

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 512
PROBE = 16
"""Deltas read at once (concurrent GETs) when catching up."""
CREATE_TRIES = 3
"""Creates of one version whose outcome stayed unknown before a change gives up."""
DELETE_GRACE_MS = 600_000
"""The default grace period of deletions (``Config.delete_grace_ms``'s default)."""

T = TypeVar("T")


class ManifestMetadataStore(MetadataStore):
    """The metadata as a manifest under ``prefix`` of ``store`` (any :class:`ObjectStore` that
    can create an object only if absent: S3, a local directory, memory).

    ``node_id`` names the writer in each delta (for people reading the manifest). Reads answer
    from this process's copy; :meth:`refresh` reads what other processes changed since (every
    change refreshes first when it finds it is behind). ``delete_grace_ms`` is the grace period
    of the deletion of old deltas, the same on every node of the bucket: a handle whose view is
    older than half of it reads from the newest checkpoint again. ``clock`` (monotonic
    seconds) measures that age.

    ``read_only``: only read (the tools of :mod:`streamlib.tools`, beside nodes that may be
    running): no probe of create-only writes at open, and every change raises
    :class:`~streamlib.errors.ReadOnlyError` (as does a collection that is not a dry run)."""

    capabilities = Capabilities(shared=True)

    def __init__(self, store: ObjectStore, *, prefix: str = "manifest",
                 node_id: str | int | None = None,
                 checkpoint_every: int = CHECKPOINT_EVERY,
                 delete_grace_ms: int = DELETE_GRACE_MS,
                 clock: Callable[[], float] = time.monotonic,
                 read_only: bool = False) -> None:
        if not isinstance(store, ObjectStore):
            raise TypeError(f"store must be an ObjectStore, not {type(store).__name__}")
        check_text(prefix, "prefix")
        self._writer = None if node_id is None else check_node_id(node_id)
        self._checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1, 1 << 30)
        self._grace_ms = check_int(delete_grace_ms, "delete_grace_ms", 0, 1 << 40)
        self._half = self._grace_ms / 2000  # seconds
        self._clock = clock
        self.read_only = read_only  # fixed
        if not store.can_create and not read_only:
            raise ConfigError("metadata", "a manifest needs a store that can create an object "
                              "only if absent (S3, a local directory, memory)", store.url)
        self._objects = store
        self._prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in self._prefix.split("/")):
            raise ValueError(f"prefix must be a key path without empty parts, '.' or '..': "
                             f"prefix=`{prefix}`")
        self._lock = threading.RLock()
        self._closed = False  # GUARDED_BY(_lock)
        # Shut down by close once ``_closed`` is set: no catch-up (which holds the lock) runs then.
        self._pool = ThreadPoolExecutor(PROBE, thread_name_prefix="streamlib-manifest")
        # ``_state``: GUARDED_BY(_lock), replaced whole by a newer checkpoint; ``version``
        # reads its version alone. ``_checkpointed`` (the newest checkpoint known) and
        # ``_anchor`` (see _catch_up: -inf, the view vouches for nothing): GUARDED_BY(_lock).
        self._state, self._checkpointed, self._anchor = ManifestState(), 0, -math.inf
        # When (``clock``) the view was last known to be the newest: the next version was read
        # as absent, or this handle created the current one. GUARDED_BY(_lock).
        self._current_at = -math.inf
        self._group = GroupCommit(self._lock, self._write)
        try:
            if store.create_trusts_the_server and not read_only:
                probe_create(store, self._prefix)
            self._catch_up()
        except BaseException as error:
            self._pool.shutdown(wait=False)
            if isinstance(error, OSError) and not isinstance(error, StreamLibError):
                # What the object store refuses for good (access denied, no such bucket): the
                # store's settings are wrong.
                raise ConfigError("metadata", f"the object store refuses the manifest's "
                                  f"requests ({error})", store.url) from error
            raise
        self.opened_version = self._state.version

    def __repr__(self) -> str:
        return f"ManifestMetadataStore({self._objects.url!r}, prefix={self._prefix!r})"

    @property
    def version(self) -> int:
        """The version this process has applied."""
        # Read without the lock: one int, which _apply sets once the delta's changes are in, so
        # a reader may see an older version than the state holds, never a newer one.
        return self._state.version

    # ---- reading the manifest ----

    def _key(self, kind: str, version: int) -> str:
        return f"{self._prefix}/{kind}/{version:020d}"

    def _relist(self) -> int:
        """List the checkpoints and load the newest if it is past this state (one listed but
        deleted before it is read: list again). Returns the newest version listed; the anchor
        moves to the listing's start."""
        missing = None
        while True:
            listed_at = self._clock()
            found = listed(self._objects, f"{self._prefix}/checkpoint/")
            newest = found[-1][0] if found else 0
            self._checkpointed = max(self._checkpointed, newest)
            if newest <= self._state.version:
                break
            key = self._key("checkpoint", newest)
            try:
                raw = self._objects.get(key, 0, MAX_CHECKPOINT_BYTES + 1)
                self._state = read_checkpoint(raw, newest)
                break
            except FileNotFoundError as error:
                if newest == missing:  # the newest is never deleted: not the collector's doing
                    raise CorruptDataError("manifest checkpoint listed but not there",
                                           source=key) from error
                missing = newest
            except Malformed as error:
                raise CorruptDataError(f"unreadable manifest checkpoint ({error})",
                                       source=key) from error
        self._anchor = max(self._anchor, listed_at)
        return newest

    def _read_delta(self, version: int) -> dict[str, Any] | None:
        key = self._key("log", version)
        try:
            raw = self._objects.get(key, 0, MAX_DELTA_BYTES + 1)
        except FileNotFoundError:
            return None
        try:
            return read_delta(raw, version)
        except Malformed as error:
            raise CorruptDataError(f"unreadable manifest delta ({error})", source=key) from error

    def _catch_up(self, *, relist: bool = False) -> int:
        """Apply every delta after the current version (caller holds the lock or owns the
        store); returns how many versions it moved. Nothing new costs one GET; a run of deltas
        is read :data:`PROBE` at a time.

        A delta read is taken only while the handle can vouch that its version was never
        deleted (a paused writer may create a deleted version again). The **anchor** is a time
        (this handle's clock) such that no delta above this version is deleted before the grace
        period has passed since: the handle read the next version as absent, listed the
        checkpoints (none above this version) or created this version after it. Reads that come
        back more than half the grace period after it are checked by listing the checkpoints:
        none at or above them, they stand (no version there was ever deleted); else the newest
        checkpoint is loaded and they are dropped. ``relist``: list the checkpoints first."""
        before = self._state.version
        if relist or self._clock() - self._anchor > self._half:
            self._relist()
        count = 1
        while True:
            issued = self._clock()
            first = self._state.version + 1
            found = ([self._read_delta(first)] if count == 1 else
                     list(self._pool.map(self._read_delta, range(first, first + count))))
            if self._clock() - self._anchor > self._half and self._relist() >= first:
                continue  # read from the checkpoint on: what was read may be a deleted version
            for delta in found:
                if delta is None:
                    self._anchor = max(self._anchor, issued)
                    self._current_at = max(self._current_at, issued)
                    return self._state.version - before
                self._apply(delta)
            count = PROBE

    def _apply(self, delta: dict[str, Any]) -> None:
        try:
            self._state.apply(delta["op"], delta["args"], delta["time"], delta["format"])
        except Malformed as error:
            raise CorruptDataError(f"manifest delta does not apply ({error})",
                                   source=self._key("log", delta["version"])) from error
        self._state.version = delta["version"]

    def refresh(self) -> int:
        """Read the changes other processes made since this one last looked; returns how many
        versions it moved."""
        with self._lock:
            self._check_open()
            return self._catch_up()

    # ---- changing it ----

    def _change(self, op: str, plan: Callable[[ManifestState], tuple[dict[str, Any] | None, T]],
                not_after: tuple[int | None, type[Exception]] = (None, CommitConflict), *,
                fresh: bool = False) -> T:
        """Check a change against the state (``plan``: its delta's arguments — None: nothing to
        write — and the caller's answer, or an exception), write it at the next version (with
        the other changes of this process waiting then: one group), apply it. A lost version,
        or a check that fails on a state that may be old, means: catch up and plan again.
        ``not_after``: a time (ms) the delta's own time must not be past, and the error to
        raise if it is (checked as the delta is stamped, and again right before its create).
        ``fresh``: plan it on the newest state (read first)."""
        if self.read_only:
            raise ReadOnlyError(describe("manifest was opened read-only", op=op))
        result: T = self._group.submit(Change(op, plan, not_after[0], not_after[1], fresh))
        return result

    def _write(self, batch: list[Change]) -> None:
        """Write ``batch`` (the group queue's leader, holding the lock), oldest first, in one
        delta — more only if one is too large — and answer each change."""
        self._check_open()
        if self._clock() - self._anchor > self._half / 2:  # a quarter: see _landed
            self._catch_up(relist=True)
        caught_up = any(change.fresh for change in batch)
        if caught_up:
            self._catch_up()
        while batch:
            batch, caught_up = self._write_delta(batch, caught_up)

    def _write_delta(self, changes: list[Change], caught_up: bool) -> tuple[list[Change], bool]:
        """Plan ``changes`` and write them as one delta; returns those left for the next (a
        group too large for a delta is halved) and whether the state was caught up since a
        check last failed."""
        put = uuid.uuid4().hex  # kept across the tries of this delta
        later: list[Change] = []
        while True:
            stamp = int(time.time() * 1000)
            planned = plan_group(self._state, changes, stamp, caught_up)
            if planned is None:  # a check failed on a state that may be old
                self._catch_up()
                caught_up = True
                continue
            if planned.late(int(time.time() * 1000)):
                self._state.rollback()  # planned again: the late ones are answered so
                continue
            if not planned.writes:
                self._state.keep()
                planned.settle()
                return later, caught_up
            op, args = group_delta([(change.op, args) for change, args, _ in planned.writes])
            version = self._state.version + 1
            delta = {"format": delta_format(op, args), "version": version, "put": put,
                     "node": self._writer, "time": stamp, "op": op, "args": args}
            try:
                body = encode_delta(delta)
            except ValueError as error:  # larger than a delta may be
                self._state.rollback()
                if len(planned.writes) > 1:
                    half = len(changes) // 2
                    changes, later = changes[:half], changes[half:] + later
                    continue
                planned.writes[0][0].answer(error=error)
                changes = [change for change in changes if not change.answered]
                continue
            anchor, sent = self._anchor, self._clock()
            try:
                created = self._create(version, body, put)
            except BaseException:
                self._state.rollback()
                raise
            if created and self._clock() - anchor <= self._half:
                self._state.keep()
                self._state.version = version
            else:  # another writer's version; or ours, late: did it land? (on the old state)
                self._state.rollback()
                if not created:
                    caught_up = self._catch_up() > 0 or caught_up
                    continue
                if not self._landed(version):
                    caught_up = True  # a copy of a deleted version: planned again on the newest
                    continue
                self._apply(delta)
            self._anchor = self._current_at = sent
            self._maybe_checkpoint()
            planned.settle()
            return later, caught_up

    def _landed(self, version: int) -> bool:
        """Whether a create of ``version`` that came back more than half the grace period after
        the anchor made the version (True) or a copy of a deleted one (False: the copy is
        deleted by ``judge_create``, the newest checkpoint loaded). A change re-reads from a
        checkpoint when its view is older than a quarter of the grace period: a create answered
        within ``retry_timeout_ms`` (a quarter of the grace or less, Config) needs no check."""
        landing = judge_create(self._objects, self._prefix, version)
        if landing is Landing.NEW:
            return True
        key = self._key("log", version)
        self._anchor = -math.inf  # never read this version again: from the newest checkpoint
        if landing is Landing.UNKNOWN:
            raise StorageUnavailable(describe(
                "manifest change of unknown outcome: its create came back late, after a "
                "checkpoint past it; the next change finds out whether it applied", key=key))
        self._catch_up()  # the copy is deleted: plan again
        return False

    def _create(self, version: int, body: bytes, put: str) -> bool:
        """Create the delta ``body`` (put id ``put``) at ``version``: True if it is there now as
        ours (created by this call, or by an earlier try of it whose answer was lost), False if
        another writer's delta is there."""
        key = self._key("log", version)
        for tries in range(1, CREATE_TRIES + 1):
            try:
                self._objects.create(key, body)
                return True
            except FileExistsError:
                pass
            except StorageUnavailable as error:  # did it land? Read it to know
                if tries == CREATE_TRIES:
                    raise StorageUnavailable(describe(
                        "manifest change of unknown outcome: the store is not answering; the "
                        "next change finds out whether it applied", key=key,
                        error=str(error))) from error
                log.warning("manifest create of %s: outcome unknown, checking: %s", key, error)
            found = self._read_delta(version)
            if found is not None:
                return bool(found.get("put") == put)
        raise StorageUnavailable(describe("manifest version exists but cannot be read (a store "
                                          "without read-after-write?)", key=key))

    def _maybe_checkpoint(self) -> None:
        state = self._state
        if (state.version - self._checkpointed >= self._checkpoint_every
                and write_checkpoint(self._objects, self._key("checkpoint", state.version),
                                     state)):
            self._checkpointed = state.version

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed(describe("metadata store is closed", manifest=self._objects.url))

    def _read(self, answer: Callable[[ManifestState], T]) -> T:
        with self._lock:
            self._check_open()
            return answer(self._state)

    # ---- streams ----

    def create_stream(self, name: str | None = None, *,
                      retention: Retention | None = None) -> StreamMeta:
        plan, _ = create_plan(name, retention)
        meta: StreamMeta = self._change("create", plan)
        return meta

    def create_and_open(self, name: str | None = None, *, retention: Retention | None = None,
                        node_id: str | int, node_epoch: int | None = None) -> StreamMeta:
        """The create and the open as two changes queued together: one delta (a group too
        large for a delta may still split them; then the open follows in the next)."""
        node = check_node_id(node_id)
        if node_epoch is not None:
            check_id(node_epoch, "node_epoch")
        # A fenced node creates nothing: the create checks the node first too.
        create, created = create_plan(name, retention, node, node_epoch)

        def which() -> int:
            if not created:  # the create was refused: its error is the answer
                raise Unmet("nothing was created to open")
            return created[0]

        meta: StreamMeta = self._group.submit(
            Change("create", create), Change("open", open_plan(which, None, node,
                                                                      node_epoch)))
        return meta

    def set_retention(self, stream_id: int, retention: Retention | None) -> StreamMeta:
        check_id(stream_id)
        kept = retention_args(check_retention(retention))

        def plan(state: ManifestState) -> tuple[dict[str, Any], StreamMeta]:
            stream = state.live(stream_id)
            return {"id": stream_id, **kept}, dataclasses.replace(
                stream.meta(), retention=Retention.from_ms(kept["max_age_ms"],
                                                           kept["max_bytes"]))

        return self._change("retention", plan)

    def get_stream(self, stream_id: int, *, include_destroyed: bool = False) -> StreamMeta:
        check_id(stream_id)
        if not isinstance(include_destroyed, bool):
            raise TypeError(f"include_destroyed must be a bool, "
                            f"not {type(include_destroyed).__name__}")

        def answer(state: ManifestState) -> StreamMeta:
            stream = state.streams.get(stream_id)
            if stream is not None and include_destroyed:
                return stream.meta()
            return state.live(stream_id).meta()

        return self._read(answer)

    def get_stream_by_name(self, name: str) -> StreamMeta:
        check_text(name, "name")

        def answer(state: ManifestState) -> StreamMeta:
            found = state.names.get(name)
            if found is None:
                raise StreamNotFound(describe("no live stream has this name", name=repr(name)))
            return state.streams[found].meta()

        return self._read(answer)

    def streams(self) -> list[StreamMeta]:
        return self._read(lambda state: [s.meta() for _, s in sorted(state.streams.items())
                                         if s.live])

    def open_stream(self, stream_id: int, *, expected_epoch: int | None = None,
                    node_id: str | int | None = None,
                    node_epoch: int | None = None) -> StreamMeta:
        check_id(stream_id)
        meta: StreamMeta = self._change("open", open_plan(lambda: stream_id, expected_epoch,
                                                                node_id, node_epoch))
        return meta

    def trim_stream(self, stream_id: int, offset: int) -> StreamMeta:
        check_id(stream_id)
        check_id(offset, "offset")

        def plan(state: ManifestState) -> tuple[dict[str, Any] | None, StreamMeta]:
            stream = state.live(stream_id)
            if offset <= stream.start:
                return None, stream.meta()  # moves nothing: writes nothing (on the newest state)
            if offset > stream.end:
                raise OffsetOutOfRange(stream_id, offset, stream.start, stream.end + 1)
            return {"id": stream_id, "offset": offset}, dataclasses.replace(
                stream.meta(), start_offset=offset)

        return self._change("trim", plan, fresh=True)

    def destroy_stream(self, stream_id: int) -> StreamMeta:
        check_id(stream_id)

        def plan(state: ManifestState) -> tuple[dict[str, Any], StreamMeta]:
            stream = state.live(stream_id)
            return {"id": stream_id}, dataclasses.replace(stream.meta(),
                                                          state=StreamState.DESTROYED)

        return self._change("destroy", plan)

    # ---- objects and nodes ----

    def commit(self, commit: Commit) -> None:
        if not isinstance(commit, Commit):
            raise TypeError(f"commit must be a Commit, not {type(commit).__name__}")

        def plan(state: ManifestState) -> tuple[dict[str, Any], None]:
            streams = {stream_id: state.live(stream_id) for stream_id in commit.epochs}
            for stream_id, epoch in commit.epochs.items():
                stream = streams[stream_id]
                if stream.handover_from == commit.node_id and epoch == stream.handover_epoch:
                    continue  # the old owner commits what it acknowledged before the hand-over
                if stream.epoch != epoch:
                    raise FencedError(describe("commit by a fenced writer", stream=stream_id,
                                               epoch=epoch, current=stream.epoch))
                if stream.handover_from is not None and stream_id in commit.extents():
                    raise CommitConflict(describe(
                        "stream is being handed over: its new owner commits after the release",
                        stream=stream_id, handover_from=stream.handover_from))
            node = state.node(commit.node_id)
            if commit.node_epoch is not None and commit.node_epoch != node.node_epoch:
                raise FencedError(describe("commit by a fenced node", node=node.node_id,
                                           node_epoch=commit.node_epoch,
                                           current=node.node_epoch))
            for stream_id, (start, _) in commit.extents().items():
                if start != streams[stream_id].end:
                    raise CommitConflict(describe(
                        "range does not start at the stream's committed end", stream=stream_id,
                        start=start, end_offset=streams[stream_id].end))
            for obj in commit.objects:
                known = state.known(obj.key)
                if known is not None:
                    raise CommitConflict(describe(f"object already committed ({known})",
                                                  key=obj.key))
            for key in commit.remove:
                state.check_removable(key)
            if commit.wal_position < node.wal_position:
                raise CommitConflict(describe("WAL position would go back", node=node.node_id,
                                              wal_position=commit.wal_position,
                                              current=node.wal_position))
            return {"node": commit.node_id, "wal_position": commit.wal_position,
                    "objects": [encode_object(o) for o in commit.objects],
                    "remove": list(commit.remove)}, None

        self._change("commit", plan, (commit.not_after_ms, CommitConflict))

    def objects(self, stream_id: int, from_offset: int = 0) -> list[ObjectMeta]:
        check_id(stream_id)
        check_id(from_offset, "from_offset")

        def answer(state: ManifestState) -> list[ObjectMeta]:
            return [state.object_meta(key)
                    for _, _, key in state.ranges_from(stream_id, from_offset)]

        return self._read(answer)

    def stream_objects(self, stream_id: int, from_offset: int = 0, *,
                       limit: int | None = None) -> list[StreamObject]:
        check_id(stream_id)
        check_id(from_offset, "from_offset")
        most = None if limit is None else check_limit(limit)

        def answer(state: ManifestState) -> list[StreamObject]:
            result = []
            for start, end, key in state.ranges_from(stream_id, from_offset, most):
                size, ranges = state.objects[key]
                used = next(r[3] for r in ranges if r[0] == stream_id)
                result.append(StreamObject(key, size, StreamRange(stream_id, start, end, used),
                                           state.tiers.get(key, "")))
            return result

        return self._read(answer)

    def live_objects(self, after: str | None = None, limit: int = 1000) -> list[ObjectMeta]:
        after, limit = check_page(after, limit)
        return self._read(lambda state: [state.object_meta(key)
                                         for key in state.keys_after(after, limit)])

    def replace(self, replacement: Replacement) -> None:
        if not isinstance(replacement, Replacement):
            raise TypeError(f"replacement must be a Replacement, "
                            f"not {type(replacement).__name__}")
        outputs = [encode_object(o) for o in replacement.outputs]
        as_state = [(o.key, o.size, tuple((r.stream_id, r.start_offset, r.end_offset, r.size)
                                          for r in o.ranges), o.tier)
                    for o in replacement.outputs]

        def plan(state: ManifestState) -> tuple[dict[str, Any], None]:
            problem = state.replace_problem(replacement.inputs, as_state)
            if problem is not None:
                raise CompactionConflict(problem)
            return {"inputs": list(replacement.inputs), "outputs": outputs}, None

        self._change("replace", plan, (replacement.not_after_ms, CompactionConflict))

    def doomed(self) -> list[DoomedObject]:
        return self._read(lambda state: sorted(
            (DoomedObject(key, size, marked, tier)
             for key, (size, marked, tier) in state.doomed.items()),
            key=lambda d: (d.marked_at_ms, d.key)))

    def forget(self, keys: Sequence[str]) -> int:
        wanted = list(dict.fromkeys(check_keys(keys)))  # each once, in order

        def plan(state: ManifestState) -> tuple[dict[str, Any], int]:
            found = [key for key in wanted if key in state.doomed]
            if not found:
                raise Unmet  # nothing to drop: nothing to write
            return {"keys": found}, len(found)

        try:
            return self._change("forget", plan)
        except Unmet:
            return 0

    def node(self, node_id: str | int) -> NodeMeta:
        node = check_node_id(node_id)
        return self._read(lambda state: state.node(node))

    def release_streams(self, node_id: str | int, node_epoch: int,
                        stream_ids: Sequence[int]) -> None:
        node = check_node_id(node_id)
        check_id(node_epoch, "node_epoch")
        ids = [check_id(s) for s in stream_ids]

        def plan(state: ManifestState) -> tuple[dict[str, Any] | None, None]:
            current = state.node(node).node_epoch
            if current != node_epoch:  # a fenced node is told so, held streams or not
                raise FencedError(describe("release by a fenced node", node=node,
                                           node_epoch=node_epoch, current=current))
            held = [s for s in ids if s in state.streams and (
                state.streams[s].owner == node or state.streams[s].handover_from == node)]
            # Nothing held: nothing to write (on the newest state).
            return ({"node": node, "streams": held} if held else None), None

        self._change("release", plan, fresh=True)

    def register_node(self, node_id: str | int) -> NodeMeta:
        node = check_node_id(node_id)

        def plan(state: ManifestState) -> tuple[dict[str, Any], NodeMeta]:
            meta = state.node(node)
            return ({"node": node, "epoch": meta.node_epoch + 1},
                    NodeMeta(node, meta.node_epoch + 1, meta.wal_position))

        # Always on the newest state: a register based on an old one would be caught anyway
        # (its version is taken), but reading first saves the lost round trip.
        return self._change("register", plan, fresh=True)

    # ---- key-value entries (read fresh: another node may have written them) ----

    def kv_get(self, namespace: str, key: str, *,
               max_staleness_ms: int | None = None) -> bytes | None:
        """The value under ``(namespace, key)``: from this handle's view if it was known to be
        the newest at most ``max_staleness_ms`` ago (read from the store, or written here),
        else — and always with None — after reading what changed since."""
        check_kv(namespace, key)
        bound = (None if max_staleness_ms is None
                 else check_int(max_staleness_ms, "max_staleness_ms", 0, INT64_MAX) / 1000)
        with self._lock:
            self._check_open()
            if bound is None or self._clock() - self._current_at > bound:
                self._catch_up()
            return self._state.kv.get(namespace, {}).get(key)

    def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        check_text(namespace, "namespace")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        with self._lock:
            self._check_open()
            self._catch_up()
            entries = self._state.kv.get(namespace, {})
            return sorted((k, v) for k, v in entries.items() if k.startswith(prefix))

    def kv_write(self, namespace: str, key: str, value: bytes | None, *,
                 expected: bytes | AnyValue | None = ANY, node_id: str | int | None = None,
                 node_epoch: int | None = None) -> bool:
        value, condition, node = check_kv_write(namespace, key, value, expected, node_id,
                                                node_epoch)

        def plan(state: ManifestState) -> tuple[dict[str, Any], bool]:
            if node is not None and node_epoch is not None:
                current = state.node(node).node_epoch
                if current != node_epoch:
                    raise FencedError(describe("key-value write by a fenced node", node=node,
                                               node_epoch=node_epoch, current=current))
            if not isinstance(condition, AnyValue) and state.kv.get(namespace, {}).get(
                    key) != condition:
                raise Unmet
            return {"namespace": namespace, "key": key,
                    "value": None if value is None else base64.b64encode(value).decode()}, True

        try:  # a condition is checked against the newest state, not a stale copy
            return self._change("kv", plan, fresh=True)
        except Unmet:
            return False

    def collect_garbage(self, grace_ms: int, *,
                        dry_run: bool = False) -> list[tuple[str, str, int, str]]:
        """Delete the deltas and checkpoints no reader needs (:mod:`~._manifest_gc`), with the
        larger of ``grace_ms`` and this handle's ``delete_grace_ms`` (what its reads assume)."""
        grace = max(check_int(grace_ms, "grace_ms", 0, 1 << 40), self._grace_ms)
        if self.read_only and not dry_run:
            raise ReadOnlyError("manifest was opened read-only: only a dry run collects")
        with self._lock:
            self._check_open()
        return [(self._objects.url, info.key, info.size, "manifest")
                for info in collect(self._objects, self._prefix, grace, dry_run=dry_run)]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)


__all__ = ["CHECKPOINT_EVERY", "FORMAT", "ManifestMetadataStore"]
