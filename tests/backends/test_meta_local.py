"""The SQLite metadata store: the contract suite, plus what only a SQLite file has (its schema
version and the upgrade of older files, its durability settings, a transaction cut by SIGKILL,
one query a page of live objects)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from streamlib.errors import CorruptDataError, FencedError
from streamlib.meta import Commit, MetadataStore, NodeMeta, Replacement, Retention
from streamlib.meta.local import SCHEMA_VERSION, SQLiteMetadataStore
from streamlib.testing.meta import MetadataContract, make_object

# SQLite metadata: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

CHILD = Path(__file__).with_name("meta_crash_child.py")


class TestSQLiteMetadata(MetadataContract):
    def open_store(self, location: Path) -> MetadataStore:
        return SQLiteMetadataStore(location / "meta.sqlite")


def test_durability_settings_are_applied(tmp_path: Path) -> None:
    store = SQLiteMetadataStore(tmp_path / "meta.sqlite")
    conn = store._conn  # the settings belong to the store's own connection
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    store.close()


def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    SQLiteMetadataStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(CorruptDataError, match=r"schema version \[2\].*meta.sqlite"):
        SQLiteMetadataStore(path)


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(CorruptDataError, match="not a streamlib metadata database"):
        SQLiteMetadataStore(other)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptDataError, match=r"garbage\.sqlite"):
        SQLiteMetadataStore(garbage)


def test_a_commit_killed_before_its_end_leaves_nothing(tmp_path: Path) -> None:
    """A child process starts a big commit (big enough to spill pages into the WAL file) and is
    killed with SIGKILL just before COMMIT: after reopening, none of it is visible."""
    path = tmp_path / "meta.sqlite"
    store = SQLiteMetadataStore(path)
    stream = store.open_stream(store.create_stream().id).id
    store.commit(Commit(node_id="n1", wal_position=10, epochs={stream: 1},
                        objects=[make_object("before", (stream, 0, 10))]))
    store.close()
    child = subprocess.Popen([sys.executable, str(CHILD), str(path), str(stream)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "committing", child.stderr.read()  # type: ignore[union-attr]
        assert Path(f"{path}-wal").stat().st_size > 100_000  # the commit's pages were written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL
    store = SQLiteMetadataStore(path)
    try:
        assert store.get_stream(stream).end_offset == 10
        assert [o.key for o in store.objects(stream)] == ["before"]
        assert store.node("n1") == NodeMeta("n1", 0, 10)
        assert store._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)  # type: ignore[union-attr]
        store.commit(Commit(node_id="n1", wal_position=20, epochs={stream: 1},
                            objects=[make_object("after", (stream, 10, 11))]))
        assert store.get_stream(stream).end_offset == 11
    finally:
        store.close()


def test_two_stores_on_one_file_fence_each_other(tmp_path: Path) -> None:
    """Two processes of one machine may open the same file: nothing is cached, so an epoch
    taken through one fences a writer of the other."""
    path = tmp_path / "meta.sqlite"
    first, second = SQLiteMetadataStore(path), SQLiteMetadataStore(path)
    try:
        stream = first.open_stream(first.create_stream("s").id)
        assert second.open_stream(stream.id, expected_epoch=1).epoch == 2
        with pytest.raises(FencedError, match="epoch=`1`"):
            first.commit(Commit(node_id="n1", wal_position=1, epochs={stream.id: 1},
                                objects=[make_object("o1", (stream.id, 0, 1))]))
        second.commit(Commit(node_id="n1", wal_position=1, epochs={stream.id: 2},
                             objects=[make_object("o1", (stream.id, 0, 1))]))
        assert first.get_stream_by_name("s").end_offset == 1
    finally:
        first.close()
        second.close()


# The schema as version 1 first shipped (without kv, doomed, tiers, retention).
FIRST_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE streams (id INTEGER PRIMARY KEY, name TEXT, epoch INTEGER NOT NULL, "
    "start_offset INTEGER NOT NULL, end_offset INTEGER NOT NULL, "
    "state TEXT NOT NULL CHECK (state IN ('open', 'destroyed')), "
    "CHECK (0 <= start_offset AND start_offset <= end_offset))",
    "CREATE UNIQUE INDEX streams_live_names ON streams (name) WHERE state = 'open'",
    "CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE ranges (stream_id INTEGER NOT NULL, start_offset INTEGER NOT NULL, "
    "end_offset INTEGER NOT NULL, size INTEGER NOT NULL, "
    "object_key TEXT NOT NULL REFERENCES objects (key) ON DELETE CASCADE, "
    "PRIMARY KEY (stream_id, start_offset)) WITHOUT ROWID",
    "CREATE INDEX ranges_by_object ON ranges (object_key)",
    "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, node_epoch INTEGER NOT NULL, "
    "wal_position INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO schema_version VALUES (1)",
    "INSERT INTO counters VALUES ('next_stream_id', 3)",
    "INSERT INTO streams VALUES (1, 's', 2, 0, 9, 'open'), (2, NULL, 0, 0, 0, 'destroyed')",
    "INSERT INTO objects VALUES ('o1', 200), ('o2', 100)",
    "INSERT INTO ranges VALUES (1, 0, 5, 50, 'o1'), (1, 5, 9, 40, 'o2')",
    "INSERT INTO nodes VALUES ('n1', 1, 9)",
)


def test_a_file_of_the_first_schema_is_upgraded_at_open(tmp_path: Path) -> None:
    """A version-1 file from before key-value entries and the lifecycle gets their tables and
    columns at open (the version stays 1: older code reads the file still) and keeps its
    data; the upgrade is done once, and twice is harmless."""
    path = tmp_path / "meta.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in FIRST_SCHEMA:
            conn.execute(statement)
    conn.close()
    for _ in range(2):  # upgraded, then opened as it is
        store = SQLiteMetadataStore(path)
        try:
            meta = store.get_stream(1)
            assert (meta.name, meta.epoch, meta.end_offset, meta.retention) == ("s", 2, 9, None)
            assert [(o.key, o.size, o.tier) for o in store.live_objects()] == [
                ("o1", 200, ""), ("o2", 100, "")]
            assert store.node("n1") == NodeMeta("n1", 1, 9) and store.doomed() == []
        finally:
            store.close()
    store = SQLiteMetadataStore(path)
    try:
        assert store.create_stream().id == 3
        assert store.set_retention(1, Retention(max_age=60)).retention == Retention(max_age=60)
        store.replace(Replacement(inputs=["o1", "o2"], outputs=[
            make_object("m", (1, 0, 9), tier="archive")]))
        assert [d.key for d in store.doomed()] == ["o1", "o2"]
        assert store.kv_write("ns", "k", b"v")
        conn = store._conn
        assert conn is not None
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        store.close()
    fresh = SQLiteMetadataStore(tmp_path / "fresh.sqlite")  # a new file: the same schema
    try:
        def schema(store: SQLiteMetadataStore) -> list[tuple[str, str]]:
            assert store._conn is not None
            return sorted(store._conn.execute(
                "SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))

        def columns(store: SQLiteMetadataStore, table: str) -> list[str]:
            assert store._conn is not None
            return [row[1] for row in store._conn.execute(f"PRAGMA table_info({table})")]

        upgraded = SQLiteMetadataStore(path)
        assert schema(upgraded) == schema(fresh)
        for table in ("streams", "objects", "doomed", "kv"):
            assert columns(upgraded, table) == columns(fresh, table)
        upgraded.close()
    finally:
        fresh.close()


# What key-value entries and the lifecycle added to the first schema (a file of the release
# before creation times had these, and streams without a created_ms column).
LIFECYCLE_ADDITIONS = (
    "CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
    "PRIMARY KEY (namespace, key)) WITHOUT ROWID",
    "CREATE TABLE doomed (key TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "marked_at_ms INTEGER NOT NULL, tier TEXT NOT NULL DEFAULT '') WITHOUT ROWID",
    "CREATE INDEX doomed_by_time ON doomed (marked_at_ms, key)",
    "ALTER TABLE objects ADD COLUMN tier TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE streams ADD COLUMN retain_ms INTEGER",
    "ALTER TABLE streams ADD COLUMN retain_bytes INTEGER",
)


def test_a_file_without_creation_times_reads_none_and_records_them_from_then_on(
        tmp_path: Path) -> None:
    """A file written before streams' creation times were kept: opened read-only, its streams
    read None and nothing is written (not even the new column); opened for write, it gets the
    column, its old streams stay None and new ones are recorded."""
    path = tmp_path / "meta.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in (*FIRST_SCHEMA, *LIFECYCLE_ADDITIONS):
            conn.execute(statement)
    conn.close()
    before = path.read_bytes()
    with SQLiteMetadataStore(path, read_only=True) as old:
        assert old.get_stream(1).created_ms is None
        assert old.get_stream(2, include_destroyed=True).created_ms is None
        assert [(m.name, m.created_ms) for m in old.streams()] == [("s", None)]
        assert old.get_stream_by_name("s").created_ms is None
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.sqlite"]
    store = SQLiteMetadataStore(path)
    try:
        assert store.get_stream(1).created_ms is None
        made = store.create_stream("t")
        assert made.created_ms is not None and store.get_stream(made.id) == made
    finally:
        store.close()
    with SQLiteMetadataStore(path, read_only=True) as upgraded:
        assert [m.created_ms for m in upgraded.streams()] == [None, made.created_ms]


def test_live_objects_is_one_query_a_page(tmp_path: Path) -> None:
    """A page of live objects with their ranges is read in one statement, whatever it holds."""
    store = SQLiteMetadataStore(tmp_path / "meta.sqlite")
    try:
        ids = [store.open_stream(store.create_stream().id).id for _ in range(3)]
        for n in range(20):
            store.commit(Commit(node_id="n1", wal_position=n, epochs=dict.fromkeys(ids, 1),
                                objects=[make_object(f"k{n:02d}", *((s, n, n + 1) for s in ids))]))
        assert store._conn is not None
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        page = store.live_objects("k04", 10)
        store._conn.set_trace_callback(None)
        assert [o.key for o in page] == [f"k{n:02d}" for n in range(5, 15)]
        assert all(len(o.ranges) == 3 for o in page)
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    finally:
        store.close()
