"""The SQLite metadata store: the contract suite, plus what only a SQLite file has (its schema
version, its durability settings, a transaction cut by SIGKILL)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from streamlib.errors import CorruptDataError, FencedError
from streamlib.meta import Commit, MetadataStore, NodeMeta
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
