"""The local metadata store: one SQLite file, one transaction an operation (docs/store.md).

The file is in WAL journal mode with ``synchronous=FULL``: a committed transaction is fsynced
before the call returns, and a crash at any moment leaves either all of a transaction or none
of it. Every operation is one transaction; writes take the write lock up front
(``BEGIN IMMEDIATE``) so that their checks and their changes see the same state, even when
another process on this machine has the same file open.

Lock order: one lock, ``_lock``, a leaf below the node's order (:mod:`streamlib.node`): held
for a whole transaction (which may wait up to ``timeout`` for another process's write lock),
calling nothing but SQLite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from streamlib.disk import DURABLE, Syncing
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
    StreamExists,
    StreamNotFound,
    describe,
)
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
    wall_clock_ms,
)
from streamlib.meta._swap import Span, check_keys, check_page, key_problem, swap_problem
from streamlib.records import INT64_MAX, check_int

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""The schema this code reads and writes; a file of any other version is refused."""

# Version 1 as it first shipped (new files get the additions below too).
_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    # The next stream id, kept apart from the rows so that no deletion can ever make it go back.
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE streams (id INTEGER PRIMARY KEY, name TEXT, epoch INTEGER NOT NULL, "
    "start_offset INTEGER NOT NULL, end_offset INTEGER NOT NULL, "
    "state TEXT NOT NULL CHECK (state IN ('open', 'destroyed')), "
    "CHECK (0 <= start_offset AND start_offset <= end_offset))",
    # Names are unique among live streams only: destroying a stream frees its name.
    "CREATE UNIQUE INDEX streams_live_names ON streams (name) WHERE state = 'open'",
    "CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID",
    # Keyed by (stream, start): a reader finds the object holding an offset in O(log n).
    "CREATE TABLE ranges (stream_id INTEGER NOT NULL, start_offset INTEGER NOT NULL, "
    "end_offset INTEGER NOT NULL, size INTEGER NOT NULL, "
    "object_key TEXT NOT NULL REFERENCES objects (key) ON DELETE CASCADE, "
    "PRIMARY KEY (stream_id, start_offset)) WITHOUT ROWID",
    "CREATE INDEX ranges_by_object ON ranges (object_key)",
    "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, node_epoch INTEGER NOT NULL, "
    "wal_position INTEGER NOT NULL) WITHOUT ROWID",
)

# Added after version 1 shipped, each where it is missing at open, to new files too (so that
# every file has one schema): tables, then columns as (table, column, its definition). Older
# code reading such a file ignores them: it reads no retention, no tier and no creation time
# (the streams it creates have none), and drops the objects a commit removes where this code
# dooms them.
_ADDED_TABLES = (
    "CREATE TABLE IF NOT EXISTS kv (namespace TEXT NOT NULL, key TEXT NOT NULL, "
    "value BLOB NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID",
    # Objects no stream's ranges name any more, until they are deleted (docs/lifecycle.md).
    "CREATE TABLE IF NOT EXISTS doomed (key TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "marked_at_ms INTEGER NOT NULL, tier TEXT NOT NULL DEFAULT '') WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS doomed_by_time ON doomed (marked_at_ms, key)",
)
_ADDED_COLUMNS = (
    ("objects", "tier", "TEXT NOT NULL DEFAULT ''"),
    ("streams", "retain_ms", "INTEGER"),  # Retention.max_age_ms; NULL: no limit
    ("streams", "retain_bytes", "INTEGER"),
    ("streams", "created_ms", "INTEGER"),  # StreamMeta.created_ms; NULL: not recorded
)
_READ_AS_NULL = {("streams", "created_ms")}
"""Added columns that a read-only open of a file without them reads as NULL (it may not add
them; the others it needs, and refuses the file without)."""

_STREAM_FIELDS = ("id", "name", "epoch", "start_offset", "end_offset", "state", "retain_ms",
                  "retain_bytes", "created_ms")
_STREAM_COLUMNS = ", ".join(_STREAM_FIELDS)
_IN_ONE_QUERY = 500  # keys or ids bound in one `IN (...)`, far below SQLite's limit

# The ranges `r` of stream ?1 holding offsets at or above ?2. A stream's ranges are disjoint: the
# one holding ?2 is the last that starts at or below it, so the primary key finds the first row
# in O(log n).
_STREAM_RANGES_FROM = (
    "WHERE r.stream_id = ?1 AND r.end_offset > ?2 AND r.start_offset >= COALESCE("
    "(SELECT MAX(start_offset) FROM ranges WHERE stream_id = ?1 AND start_offset <= ?2), 0) ")

# sqlite3 errors by what the caller can do about them (their extended names start with these).
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL",
                "SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_PERM", "SQLITE_NOLFS")
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def _translate(error: sqlite3.Error, path: str) -> Exception:
    """The streamlib kind of a sqlite3 error; others (bugs, in effect) stay as they are."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if name.startswith(_CORRUPT):
        return CorruptDataError(f"metadata database unreadable ({error})", source=path)
    if name.startswith(_UNAVAILABLE):
        return StorageUnavailable(describe(f"metadata database unavailable ({error})",
                                           path=path))
    return error


def _too_late(not_after_ms: int | None) -> str:
    """Why a change given ``not_after_ms`` comes too late now (inside its transaction: the
    check and the change are one step), or nothing."""
    now = _now_ms()
    if not_after_ms is None or now <= not_after_ms:
        return ""
    return describe("too late: its objects were PUT long enough ago that the garbage collector "
                    "may have deleted them as orphans", not_after_ms=not_after_ms, now_ms=now)


def _stream(row: tuple[Any, ...]) -> StreamMeta:
    stream_id, name, epoch, start, end, state, retain_ms, retain_bytes, created_ms = row
    return StreamMeta(stream_id, name, epoch, start, end, StreamState(state),
                      retention=Retention.from_ms(retain_ms, retain_bytes),
                      created_ms=created_ms)


def _kept(retention: Retention | None) -> tuple[int | None, int | None]:
    """A retention as the streams table keeps it: ``(retain_ms, retain_bytes)``."""
    return (None, None) if retention is None else (retention.max_age_ms, retention.max_bytes)


def _objects(rows: Iterable[tuple[Any, ...]]) -> list[ObjectMeta]:
    """Objects from rows of ``key, size, tier, stream_id, start, end, used``, one per range,
    those of one object together."""
    result: list[ObjectMeta] = []
    ranges: list[StreamRange] = []
    rows = list(rows)
    for i, (key, size, tier, *fields) in enumerate(rows):
        ranges.append(StreamRange(*fields))
        if i + 1 == len(rows) or rows[i + 1][0] != key:
            result.append(ObjectMeta(key, size, tuple(ranges), tier))
            ranges = []
    return result


def _now_ms() -> int:
    return int(time.time() * 1000)


class SQLiteMetadataStore(MetadataStore):
    """The metadata in the SQLite file ``path`` (created, with its directory, if missing).

    ``timeout`` (seconds, default 30) is how long an operation waits for another process's
    write transaction on the same file before raising
    :class:`~streamlib.errors.StorageUnavailable`.

    ``read_only``: open an existing file with SQLite's ``mode=ro`` (the tools of
    :mod:`streamlib.tools`, beside a store that may be running): nothing is created, migrated
    or changed, and every change raises :class:`~streamlib.errors.ReadOnlyError`. A missing
    file is :class:`~streamlib.errors.ConfigError`; a file without this version's tables and
    columns (not yet opened by it) is refused as well, except for the streams' creation times
    (read as None).
    """

    capabilities = Capabilities(shared=False)

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0,
                 syncing: Syncing = DURABLE, read_only: bool = False) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or a path, not {type(path).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a non-negative number of seconds: "
                             f"timeout=`{timeout}`")
        self.path = os.path.abspath(os.fspath(path))
        self.read_only = read_only  # fixed
        self._columns = _STREAM_COLUMNS  # fixed: what a read of streams selects
        if read_only:
            self._open_read_only(timeout)
            return
        directory = os.path.dirname(self.path)
        syncing.makedirs(directory)
        existed = os.path.exists(self.path)
        self._sync = syncing  # fixed
        # One connection behind one lock: SQLite runs one write transaction at a time anyway and
        # every operation here is a short one, so connections per thread would buy little but
        # would leave close() unable to close the other threads' connections.
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise _translate(e, self.path) from e
        # GUARDED_BY(_lock): the connection and every use of it (None once closed)
        self._conn: sqlite3.Connection | None = conn
        try:
            self._configure(conn)
            self._check_schema()
        except BaseException:
            conn.close()
            self._conn = None
            raise
        if not existed:  # the new file's name must survive a crash as its contents do
            self._sync.directory(directory)

    def _open_read_only(self, timeout: float) -> None:
        if not os.path.isfile(self.path):
            raise ConfigError("metadata_path", "no metadata database there", self.path)
        self._sync = DURABLE  # never used: nothing is written
        self._lock = threading.Lock()
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise _translate(e, self.path) from e
        self._conn = conn
        try:
            with self._transaction(write=False) as db:
                tables = {row[0] for row in
                          db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                versions = ([row[0] for row in db.execute("SELECT version FROM schema_version")]
                            if "schema_version" in tables else None)
                columns = {(table, row[1]) for table in ("objects", "streams") if table in tables
                           for row in db.execute(f"PRAGMA table_info({table})")}
            if versions != [SCHEMA_VERSION]:
                raise CorruptDataError(f"not a streamlib metadata database of schema version "
                                       f"{SCHEMA_VERSION}: versions=`{versions}`",
                                       source=self.path)
            missing = {c[:2] for c in _ADDED_COLUMNS} - columns
            if not {"kv", "doomed"} <= tables or missing - _READ_AS_NULL:
                raise ConfigError("metadata_path", "written by an older streamlib: open the "
                                  "store once with this version (which adds its new tables) "
                                  "before reading it read-only", self.path)
            self._columns = ", ".join("NULL" if ("streams", name) in missing else name
                                      for name in _STREAM_FIELDS)
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        try:
            # fsync the WAL at every commit (OFF: never, for UNSAFE_NO_FSYNC); set first, so
            # that the switch to WAL mode below syncs as it says too
            conn.execute(f"PRAGMA synchronous={'FULL' if self._sync.durable else 'OFF'}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA foreign_keys=ON")  # ranges go with their object
        except sqlite3.Error as e:
            raise _translate(e, self.path) from e
        if mode != "wal":  # e.g. a filesystem without shared memory: still atomic and durable
            log.warning("metadata database not in WAL journal mode: path=`%s` mode=`%s`",
                        self.path, mode)

    def _check_schema(self) -> None:
        with self._transaction(write=True) as db:
            tables = {row[0] for row in
                      db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                db.execute("INSERT INTO counters VALUES ('next_stream_id', 1)")
            elif "schema_version" not in tables:
                raise CorruptDataError("not a streamlib metadata database (no schema_version "
                                       "table)", source=self.path)
            versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
            if versions != [SCHEMA_VERSION]:
                raise CorruptDataError(f"unsupported metadata schema version {versions} (this "
                                       f"streamlib reads version {SCHEMA_VERSION}; a newer "
                                       f"streamlib may have written it)", source=self.path)
            for statement in _ADDED_TABLES:
                db.execute(statement)
            for table, column, definition in _ADDED_COLUMNS:
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction, under the lock: committed if the body returns, rolled back if it
        raises, sqlite3's errors translated."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StreamClosed(describe("metadata store is closed", path=self.path))
            if write and self.read_only:
                raise ReadOnlyError(describe("metadata store was opened read-only",
                                             path=self.path))
            try:
                # Writes lock up front, so that no other process can change what was checked.
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise _translate(e, self.path) from e
                raise

    def _row(self, db: sqlite3.Connection, stream_id: int) -> StreamMeta | None:
        row = db.execute(f"SELECT {self._columns} FROM streams WHERE id = ?",
                         (stream_id,)).fetchone()
        return None if row is None else _stream(row)

    def _live(self, db: sqlite3.Connection, stream_id: int) -> StreamMeta:
        meta = self._row(db, stream_id)
        if meta is None:
            raise StreamNotFound(describe("no such stream", stream=stream_id))
        if not meta.live:
            raise StreamNotFound(describe("stream was destroyed", stream=stream_id))
        return meta

    @staticmethod
    def _node(db: sqlite3.Connection, node_id: str) -> NodeMeta:
        row = db.execute("SELECT node_epoch, wal_position FROM nodes WHERE node_id = ?",
                         (node_id,)).fetchone()
        return NodeMeta(node_id, *row) if row else NodeMeta(node_id, 0, 0)

    # ---- streams ----

    def create_stream(self, name: str | None = None, *,
                      retention: Retention | None = None) -> StreamMeta:
        if name is not None:
            check_text(name, "name")
        kept = _kept(check_retention(retention))
        with self._transaction(write=True) as db:
            return self._create(db, name, kept)

    def create_and_open(self, name: str | None = None, *, retention: Retention | None = None,
                        node_id: str | int, node_epoch: int | None = None) -> StreamMeta:
        """(One transaction.)"""
        if name is not None:
            check_text(name, "name")
        kept = _kept(check_retention(retention))
        node = check_node_id(node_id)
        if node_epoch is not None:
            check_id(node_epoch, "node_epoch")
        with self._transaction(write=True) as db:
            meta = self._create(db, name, kept)
            return self._open(db, meta.id, None, node, node_epoch)

    @staticmethod
    def _create(db: sqlite3.Connection, name: str | None,
                kept: tuple[int | None, int | None]) -> StreamMeta:
        if name is not None:
            row = db.execute("SELECT id FROM streams WHERE name = ? AND state = 'open'",
                             (name,)).fetchone()
            if row is not None:
                raise StreamExists(describe("a live stream already has this name",
                                            name=repr(name), stream=row[0]))
        (stream_id,) = db.execute(
            "SELECT value FROM counters WHERE name = 'next_stream_id'").fetchone()
        db.execute("UPDATE counters SET value = ? WHERE name = 'next_stream_id'",
                   (stream_id + 1,))
        retain_ms, retain_bytes = kept
        created_ms = wall_clock_ms()
        db.execute(f"INSERT INTO streams ({_STREAM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (stream_id, name, 0, 0, 0, StreamState.OPEN.value, retain_ms, retain_bytes,
                    created_ms))
        return StreamMeta(stream_id, name, 0, 0, 0, StreamState.OPEN,
                          retention=Retention.from_ms(retain_ms, retain_bytes),
                          created_ms=created_ms)

    def set_retention(self, stream_id: int, retention: Retention | None) -> StreamMeta:
        check_id(stream_id)
        retain_ms, retain_bytes = _kept(check_retention(retention))
        with self._transaction(write=True) as db:
            meta = self._live(db, stream_id)
            db.execute("UPDATE streams SET retain_ms = ?, retain_bytes = ? WHERE id = ?",
                       (retain_ms, retain_bytes, stream_id))
            return dataclasses.replace(meta, retention=Retention.from_ms(retain_ms,
                                                                         retain_bytes))

    def get_stream(self, stream_id: int, *, include_destroyed: bool = False) -> StreamMeta:
        check_id(stream_id)
        if not isinstance(include_destroyed, bool):
            raise TypeError(f"include_destroyed must be a bool, "
                            f"not {type(include_destroyed).__name__}")
        with self._transaction(write=False) as db:
            meta = self._row(db, stream_id)
            if meta is not None and include_destroyed:
                return meta
            return self._live(db, stream_id)

    def get_stream_by_name(self, name: str) -> StreamMeta:
        check_text(name, "name")
        with self._transaction(write=False) as db:
            row = db.execute(f"SELECT {self._columns} FROM streams "
                             f"WHERE name = ? AND state = 'open'", (name,)).fetchone()
        if row is None:
            raise StreamNotFound(describe("no live stream has this name", name=repr(name)))
        return _stream(row)

    def streams(self) -> list[StreamMeta]:
        with self._transaction(write=False) as db:
            rows = db.execute(f"SELECT {self._columns} FROM streams WHERE state = 'open' "
                              f"ORDER BY id").fetchall()
        return [_stream(row) for row in rows]

    def open_stream(self, stream_id: int, *, expected_epoch: int | None = None,
                    node_id: str | int | None = None,
                    node_epoch: int | None = None) -> StreamMeta:
        """(No owners here: ``node_id`` is checked, and its epoch if given.)"""
        check_id(stream_id)
        node = None if node_id is None else check_node_id(node_id)
        if expected_epoch is not None:
            check_id(expected_epoch, "expected_epoch")
        if node_epoch is not None:
            check_id(node_epoch, "node_epoch")
        with self._transaction(write=True) as db:
            return self._open(db, stream_id, expected_epoch, node, node_epoch)

    def _open(self, db: sqlite3.Connection, stream_id: int, expected_epoch: int | None,
              node: str | None, node_epoch: int | None) -> StreamMeta:
        if node is not None and node_epoch is not None:
            current = self._node(db, node).node_epoch
            if current != node_epoch:
                raise FencedError(describe("a change by a fenced node", node=node,
                                           node_epoch=node_epoch, current=current))
        meta = self._live(db, stream_id)
        if expected_epoch is not None and meta.epoch != expected_epoch:
            raise FencedError(describe("stream epoch has moved on", stream=stream_id,
                                       expected_epoch=expected_epoch, epoch=meta.epoch))
        db.execute("UPDATE streams SET epoch = ? WHERE id = ?", (meta.epoch + 1, stream_id))
        return dataclasses.replace(meta, epoch=meta.epoch + 1)

    def trim_stream(self, stream_id: int, offset: int) -> StreamMeta:
        check_id(stream_id)
        check_id(offset, "offset")
        with self._transaction(write=True) as db:
            meta = self._live(db, stream_id)
            if offset > meta.end_offset:  # the valid trim points are [start, end]
                raise OffsetOutOfRange(stream_id, offset, meta.start_offset,
                                       meta.end_offset + 1)
            if offset <= meta.start_offset:
                return meta
            db.execute("UPDATE streams SET start_offset = ? WHERE id = ?", (offset, stream_id))
            return dataclasses.replace(meta, start_offset=offset)

    def destroy_stream(self, stream_id: int) -> StreamMeta:
        check_id(stream_id)
        with self._transaction(write=True) as db:
            meta = self._live(db, stream_id)
            db.execute("UPDATE streams SET state = ? WHERE id = ?",
                       (StreamState.DESTROYED.value, stream_id))
            return dataclasses.replace(meta, state=StreamState.DESTROYED)

    # ---- objects and nodes ----

    def commit(self, commit: Commit) -> None:
        if not isinstance(commit, Commit):
            raise TypeError(f"commit must be a Commit, not {type(commit).__name__}")
        with self._transaction(write=True) as db:
            streams = {stream_id: self._live(db, stream_id) for stream_id in commit.epochs}
            for stream_id, epoch in commit.epochs.items():
                if streams[stream_id].epoch != epoch:
                    raise FencedError(describe("commit by a fenced writer", stream=stream_id,
                                               epoch=epoch, current=streams[stream_id].epoch))
            node = self._node(db, commit.node_id)
            if commit.node_epoch is not None and commit.node_epoch != node.node_epoch:
                raise FencedError(describe("commit by a fenced node", node=node.node_id,
                                           node_epoch=commit.node_epoch,
                                           current=node.node_epoch))
            extents = commit.extents()
            for stream_id, (start, _) in extents.items():
                if start != streams[stream_id].end_offset:
                    raise CommitConflict(describe(
                        "range does not start at the stream's committed end", stream=stream_id,
                        start=start, end_offset=streams[stream_id].end_offset))
            for obj in commit.objects:
                known = self._known(db, obj.key)
                if known is not None:
                    raise CommitConflict(describe(f"object already committed ({known})",
                                                  key=obj.key))
            for key in commit.remove:
                self._check_removable(db, key)
            if commit.wal_position < node.wal_position:
                raise CommitConflict(describe("WAL position would go back", node=node.node_id,
                                              wal_position=commit.wal_position,
                                              current=node.wal_position))
            late = _too_late(commit.not_after_ms)
            if late:
                raise CommitConflict(late)
            self._add(db, commit.objects)
            db.executemany("UPDATE streams SET end_offset = ? WHERE id = ?",
                           [(end, stream_id) for stream_id, (_, end) in extents.items()])
            self._doom(db, commit.remove)
            db.execute("INSERT INTO nodes (node_id, node_epoch, wal_position) VALUES (?, 0, ?) "
                       "ON CONFLICT (node_id) DO UPDATE SET wal_position = excluded.wal_position",
                       (commit.node_id, commit.wal_position))

    @staticmethod
    def _known(db: sqlite3.Connection, key: str) -> str | None:
        """Whether ``key`` is taken: "live" or "doomed"; None if not."""
        if db.execute("SELECT 1 FROM objects WHERE key = ?", (key,)).fetchone():
            return "live"
        if db.execute("SELECT 1 FROM doomed WHERE key = ?", (key,)).fetchone():
            return "doomed"
        return None

    @staticmethod
    def _add(db: sqlite3.Connection, objects: Sequence[ObjectMeta]) -> None:
        db.executemany("INSERT INTO objects (key, size, tier) VALUES (?, ?, ?)",
                       [(obj.key, obj.size, obj.tier) for obj in objects])
        db.executemany(
            "INSERT INTO ranges (stream_id, start_offset, end_offset, size, object_key) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r.stream_id, r.start_offset, r.end_offset, r.size, obj.key)
             for obj in objects for r in obj.ranges])

    @staticmethod
    def _doom(db: sqlite3.Connection, keys: Sequence[str]) -> None:
        """Move live objects (their ranges go with them) to the doomed, marked now."""
        marked = _now_ms()
        for part in _parts(keys):
            db.execute(f"INSERT INTO doomed (key, size, marked_at_ms, tier) "
                       f"SELECT key, size, ?, tier FROM objects WHERE key IN ({_marks(part)})",
                       (marked, *part))
            db.execute(f"DELETE FROM objects WHERE key IN ({_marks(part)})", part)

    def _check_removable(self, db: sqlite3.Connection, key: str) -> None:
        known = self._known(db, key)
        if known != "live":
            raise CommitConflict(describe("object to remove is not committed" if known is None
                                          else "object to remove is doomed already", key=key))
        live = db.execute(
            "SELECT r.stream_id FROM ranges r JOIN streams s ON s.id = r.stream_id "
            "WHERE r.object_key = ? AND s.state = 'open' AND r.end_offset > s.start_offset "
            "ORDER BY r.stream_id LIMIT 1", (key,)).fetchone()
        if live is not None:
            raise CommitConflict(describe("object to remove still holds readable records",
                                          key=key, stream=live[0]))

    def objects(self, stream_id: int, from_offset: int = 0) -> list[ObjectMeta]:
        check_id(stream_id)
        check_id(from_offset, "from_offset")
        with self._transaction(write=False) as db:
            self._live(db, stream_id)
            return _objects(db.execute(
                "SELECT r.object_key, o.size, o.tier, a.stream_id, a.start_offset, "
                "a.end_offset, a.size "
                "FROM ranges r JOIN objects o ON o.key = r.object_key "
                "JOIN ranges a ON a.object_key = r.object_key "
                + _STREAM_RANGES_FROM
                + "ORDER BY r.start_offset, a.stream_id", (stream_id, from_offset)))

    def stream_objects(self, stream_id: int, from_offset: int = 0, *,
                       limit: int | None = None) -> list[StreamObject]:
        check_id(stream_id)
        check_id(from_offset, "from_offset")
        rows_limit = -1 if limit is None else check_limit(limit)  # SQLite: -1 is no limit
        with self._transaction(write=False) as db:
            self._live(db, stream_id)
            rows = db.execute(
                "SELECT r.object_key, o.size, r.start_offset, r.end_offset, r.size, o.tier "
                "FROM ranges r JOIN objects o ON o.key = r.object_key "
                + _STREAM_RANGES_FROM
                + "ORDER BY r.start_offset LIMIT ?3", (stream_id, from_offset,
                                                       rows_limit)).fetchall()
        return [StreamObject(key, size, StreamRange(stream_id, start, end, used), tier)
                for key, size, start, end, used, tier in rows]

    def live_objects(self, after: str | None = None, limit: int = 1000) -> list[ObjectMeta]:
        after, limit = check_page(after, limit)
        with self._transaction(write=False) as db:
            return _objects(db.execute(
                "SELECT o.key, o.size, o.tier, r.stream_id, r.start_offset, r.end_offset, "
                "r.size FROM (SELECT key, size, tier FROM objects WHERE key > ? ORDER BY key "
                "LIMIT ?) o JOIN ranges r ON r.object_key = o.key ORDER BY o.key, r.stream_id",
                ("" if after is None else after, limit)))

    def replace(self, replacement: Replacement) -> None:
        if not isinstance(replacement, Replacement):
            raise TypeError(f"replacement must be a Replacement, "
                            f"not {type(replacement).__name__}")
        inputs = replacement.inputs
        with self._transaction(write=True) as db:
            problem = key_problem(inputs, [o.key for o in replacement.outputs],
                                  lambda key: self._known(db, key))
            if problem is not None:
                raise CompactionConflict(problem)
            given: dict[int, list[Span]] = {}
            for part in _parts(inputs):
                for stream_id, start, end in db.execute(
                        f"SELECT stream_id, start_offset, end_offset FROM ranges "
                        f"WHERE object_key IN ({_marks(part)})", part):
                    given.setdefault(stream_id, []).append((start, end))
            taken: dict[int, list[Span]] = {}
            for obj in replacement.outputs:
                for r in obj.ranges:
                    taken.setdefault(r.stream_id, []).append((r.start_offset, r.end_offset))
            streams = {row[0]: (row[1] == StreamState.OPEN.value, row[2])
                       for part in _parts(sorted(given.keys() | taken.keys()))
                       for row in db.execute(f"SELECT id, state, start_offset FROM streams "
                                             f"WHERE id IN ({_marks(part)})", part)}
            problem = swap_problem(given, taken, streams.get) or _too_late(
                replacement.not_after_ms)
            if problem:
                raise CompactionConflict(problem)
            self._doom(db, inputs)  # first: an output may start where an input did
            self._add(db, replacement.outputs)

    def doomed(self) -> list[DoomedObject]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT key, size, marked_at_ms, tier FROM doomed "
                              "ORDER BY marked_at_ms, key").fetchall()
        return [DoomedObject(*row) for row in rows]

    def forget(self, keys: Sequence[str]) -> int:
        keys = check_keys(keys)
        dropped = 0
        with self._transaction(write=True) as db:
            for part in _parts(keys):
                dropped += db.execute(f"DELETE FROM doomed WHERE key IN ({_marks(part)})",
                                      part).rowcount
        return dropped

    def node(self, node_id: str | int) -> NodeMeta:
        node = check_node_id(node_id)
        with self._transaction(write=False) as db:
            return self._node(db, node)

    def register_node(self, node_id: str | int) -> NodeMeta:
        node = check_node_id(node_id)
        with self._transaction(write=True) as db:
            meta = self._node(db, node)
            db.execute("INSERT INTO nodes (node_id, node_epoch, wal_position) VALUES (?, ?, ?) "
                       "ON CONFLICT (node_id) DO UPDATE SET node_epoch = excluded.node_epoch",
                       (node, meta.node_epoch + 1, meta.wal_position))
            return NodeMeta(node, meta.node_epoch + 1, meta.wal_position)

    # ---- key-value entries ----

    def kv_get(self, namespace: str, key: str, *,
               max_staleness_ms: int | None = None) -> bytes | None:
        check_kv(namespace, key)
        if max_staleness_ms is not None:  # every read is of the newest state anyway
            check_int(max_staleness_ms, "max_staleness_ms", 0, INT64_MAX)
        with self._transaction(write=False) as db:
            row = db.execute("SELECT value FROM kv WHERE namespace = ? AND key = ?",
                             (namespace, key)).fetchone()
        return None if row is None else bytes(row[0])

    def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        check_text(namespace, "namespace")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT key, value FROM kv WHERE namespace = ? AND "
                              "substr(key, 1, ?) = ? ORDER BY key",
                              (namespace, len(prefix), prefix)).fetchall()
        return [(key, bytes(value)) for key, value in rows]

    def kv_write(self, namespace: str, key: str, value: bytes | None, *,
                 expected: bytes | AnyValue | None = ANY, node_id: str | int | None = None,
                 node_epoch: int | None = None) -> bool:
        value, condition, node = check_kv_write(namespace, key, value, expected, node_id,
                                                node_epoch)
        with self._transaction(write=True) as db:
            if node is not None and node_epoch is not None:
                current = self._node(db, node).node_epoch
                if current != node_epoch:
                    raise FencedError(describe("key-value write by a fenced node", node=node,
                                               node_epoch=node_epoch, current=current))
            row = db.execute("SELECT value FROM kv WHERE namespace = ? AND key = ?",
                             (namespace, key)).fetchone()
            if not isinstance(condition, AnyValue) and (None if row is None
                                                    else bytes(row[0])) != condition:
                return False
            if value is None:
                db.execute("DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key))
            else:
                db.execute("INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) ON CONFLICT "
                           "(namespace, key) DO UPDATE SET value = excluded.value",
                           (namespace, key, value))
            return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SQLiteMetadataStore({self.path!r})"


def _parts(values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """``values`` in pieces of at most :data:`_IN_ONE_QUERY`, each bound to one ``IN (...)``."""
    return [tuple(values[i:i + _IN_ONE_QUERY]) for i in range(0, len(values), _IN_ONE_QUERY)]


def _marks(part: Sequence[Any]) -> str:
    return ", ".join("?" * len(part))


__all__ = ["SCHEMA_VERSION", "SQLiteMetadataStore"]
