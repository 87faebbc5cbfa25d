"""``streamlib inspect``, ``dump`` and ``verify`` on real stores: what they show, the damage
``verify`` finds (a flipped bit in a data block or an index, a truncated or missing object,
metadata pointing past an object's end, damaged WAL records), that a clean store is clean, and
that none of them disturbs a store in use."""

from __future__ import annotations

import base64
import datetime
import fcntl
import json
import os
import pty
import sqlite3
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib.cli import main
from streamlib.objects import decode_object_index
from streamlib.tools.verify import Problem, wal_problems
from streamlib.tools.walscan import WalBatch, WalReport

pytestmark = pytest.mark.once  # files, processes and object stores: the codec plays no part

SETTINGS: dict[str, Any] = {"durability": "unsafe-no-fsync", "compression": "none",
                            "block_bytes": "4KiB", "stream_object_bytes": "1KiB"}
BINARY = bytes(range(256))


def fill(store: streamlib.StreamStore) -> None:
    """Two streams, committed in two uploads, in batches of 5 records (several 4 KiB blocks an
    object): `orders` (offsets 0-39, text values, keys and headers on some) and `events`
    (0-19, binary values)."""
    orders = store.create_stream("orders")
    events = store.create_stream("events")
    for round_ in range(2):
        for first in range(round_ * 20, round_ * 20 + 20, 5):
            orders.append([streamlib.Record(f"order {i} ".encode() * 60,
                                            key=f"k{i}".encode() if i % 2 else None,
                                            headers=[("source", b"web")] if i % 3 == 0 else ())
                           for i in range(first, first + 5)])
        for _ in range(2):
            events.append([BINARY * 4] * 5)
        store.flush()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with streamlib.open(str(path), **SETTINGS) as store:
        fill(store)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def verify_json(capsys: pytest.CaptureFixture[str], store: str,
                *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, "verify", store, "--json", *args)
    return code, json.loads(out)


def object_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "objects").rglob("*obj"))


# ---- verify ----

def test_a_clean_store_is_clean(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, found = verify_json(capsys, str(store_dir))
    assert code == 0 and found["clean"] and found["problems"] == []
    checked = found["checked"]
    assert checked["objects"] == len(object_files(store_dir)) == 4
    assert checked["bytes"] == sum(p.stat().st_size for p in object_files(store_dir))
    assert checked["blocks"] > checked["objects"]  # 4 KiB blocks: several an object
    assert checked["streams"] == 2
    code, out, _ = run(capsys, "verify", str(store_dir), "--deep")
    assert code == 0 and out.rstrip().endswith("clean")


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


def key_of(store_dir: Path, path: Path) -> str:
    return str(path.relative_to(store_dir / "objects"))


def damage_data_block(store_dir: Path, path: Path) -> dict[str, Any]:
    entry = decode_object_index(path.read_bytes()).entries[1]
    flip(path, entry.position + 64 + 10)  # inside the stored bytes of the second block
    return {"kind": "object", "position": entry.position, "stream": entry.stream_id,
            "offsets": [entry.start_offset, entry.end_offset], "words": "checksum"}


def damage_index(store_dir: Path, path: Path) -> dict[str, Any]:
    index = decode_object_index(path.read_bytes())
    flip(path, index.index_position + 16 + 8)  # an entry's start_offset
    return {"kind": "object", "position": index.index_position, "words": "index checksum"}


def truncate(store_dir: Path, path: Path) -> dict[str, Any]:
    os.truncate(path, path.stat().st_size - 100)
    return {"kind": "object", "words": "shorter than its recorded size"}


def delete(store_dir: Path, path: Path) -> dict[str, Any]:
    path.unlink()
    return {"kind": "missing", "words": "the object store has none"}


def size_past_the_end(store_dir: Path, path: Path) -> dict[str, Any]:
    with sqlite3.connect(store_dir / "meta.sqlite") as db:
        changed = db.execute("UPDATE objects SET size = size + 4096 WHERE key = ?",
                             (key_of(store_dir, path),)).rowcount
    assert changed == 1
    return {"kind": "object", "words": "shorter than its recorded size"}


def range_past_the_end(store_dir: Path, path: Path) -> dict[str, Any]:
    key = key_of(store_dir, path)
    with sqlite3.connect(store_dir / "meta.sqlite") as db:
        stream, start, end = db.execute("SELECT stream_id, start_offset, end_offset FROM ranges "
                                        "WHERE object_key = ?", (key,)).fetchone()
        db.execute("UPDATE ranges SET end_offset = end_offset + 5 WHERE object_key = ?", (key,))
    return {"kind": "index", "stream": stream, "offsets": [start, end + 5],
            "words": f"index [{start}, {end})"}


@pytest.mark.parametrize("damage", [damage_data_block, damage_index, truncate, delete,
                                    size_past_the_end, range_past_the_end])
def test_verify_finds_each_damage(store_dir: Path, capsys: pytest.CaptureFixture[str],
                                  damage: Callable[[Path, Path], dict[str, Any]]) -> None:
    path = object_files(store_dir)[0]
    expected = damage(store_dir, path)
    code, found = verify_json(capsys, str(store_dir))
    assert code == 1 and not found["clean"], found
    key = key_of(store_dir, path)
    named = [p for p in found["problems"] if p["key"] == key and p["kind"] == expected["kind"]]
    assert named, found["problems"]
    problem = named[0]
    assert expected["words"] in problem["what"], problem
    for field in ("position", "stream", "offsets"):
        if field in expected:
            assert problem[field] == expected[field], problem
    # the other objects were read and found whole
    assert all(p["key"] == key for p in found["problems"] if p["kind"] != "ranges")
    code, out, _ = run(capsys, "verify", str(store_dir))
    assert code == 1 and f"PROBLEM {expected['kind']}: object {key}" in out
    assert out.rstrip().endswith(f"damaged: {len(found['problems'])} problems")


def test_a_damaged_block_is_named_by_the_deep_check_too(
        store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = object_files(store_dir)[0]
    damage_data_block(store_dir, path)
    code, out, _ = run(capsys, "verify", str(store_dir), "--deep", "--json")
    assert code == 1 and len(json.loads(out)["problems"]) == 1


def test_verify_names_gaps_and_overlaps_in_a_streams_ranges(
        store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(store_dir / "meta.sqlite") as db:
        orders = db.execute("SELECT id FROM streams WHERE name = 'orders'").fetchone()[0]
        keys = [k for (k,) in db.execute("SELECT object_key FROM ranges WHERE stream_id = ? "
                                         "ORDER BY start_offset", (orders,))]
        db.execute("DELETE FROM objects WHERE key = ?", (keys[0],))  # its ranges go with it
    code, found = verify_json(capsys, str(store_dir))
    assert code == 1
    assert [(p["kind"], p["stream"], p["offsets"]) for p in found["problems"]] == [
        ("ranges", orders, [0, 20])]
    assert "no object holds these committed offsets" in found["problems"][0]["what"]


def test_wal_problems_name_missing_and_repeated_records() -> None:
    stream = streamlib.meta.StreamMeta(1, "s", 1, 0, 10)
    report = WalReport("file", "wal", records=[
        WalBatch(0, 100, 1, 1, 5, 5, None),     # committed already
        WalBatch(100, 100, 1, 1, 10, 5, None),  # follows the committed end
        WalBatch(200, 100, 1, 1, 20, 5, None),  # [15, 20) missing
        WalBatch(300, 100, 2, 1, 0, 5, None),   # a stream the metadata does not know
    ], damage=[(400, 450, "damaged bytes between valid records")])
    problems = wal_problems(report, {1: stream})
    assert problems == [
        Problem("wal", "damaged bytes between valid records: positions [400, 450)",
                position=400),
        Problem("wal", "records are missing: the record at this position starts at offset 20, "
                "the stream's records end at 15", stream=1, offsets=(15, 20), position=200)]
    report.records[2] = WalBatch(200, 100, 1, 1, 12, 5, None)
    assert "repeats offsets" in wal_problems(report, {1: stream})[1].what


CHILD = """
import os, sys, streamlib
store = streamlib.open(sys.argv[1], durability="unsafe-no-fsync", upload_interval_ms=3_600_000,
                       upload_bytes="1GiB", compression="none")
stream = store.create_stream("orders")
stream.append([b"committed %d" % i for i in range(10)])
store.flush()
for i in range(10, 20):
    stream.append([b"in the WAL %d" % i])
os._exit(0)  # no close: what was appended since the flush stays in the WAL only
"""


@pytest.fixture
def wal_store(tmp_path: Path) -> Path:
    """A store whose node died with offsets 10-19 of `orders` acknowledged, in its WAL only."""
    path = tmp_path / "store"
    subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True, timeout=60)
    return path


def test_inspect_and_dump_show_what_the_wal_holds(wal_store: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(wal_store), "--json")
    found = json.loads(out)
    assert code == 0
    [orders] = found["streams"]
    assert (orders["end_offset"], orders["wal_records"], orders["wal_end_offset"]) == (10, 10, 20)
    assert found["wal"]["backend"] == "file" and found["wal"]["records"] >= 10
    assert found["wal"]["bytes"] == found["wal"]["end"] - found["wal"]["trim"] > 0
    code, out, _ = run(capsys, "dump", str(wal_store), "orders", "--from", "8", "--count", "4")
    assert [json.loads(line)["value"] for line in out.splitlines()] == [
        "committed 8", "committed 9", "in the WAL 10", "in the WAL 11"]
    assert verify_json(capsys, str(wal_store))[0] == 0


def test_verify_finds_damaged_wal_records(wal_store: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    [segment] = (wal_store / "wal").glob("*.wal")
    data = segment.read_bytes()
    at = data.index(b"in the WAL 14")
    flip(segment, at)
    code, found = verify_json(capsys, str(wal_store))
    assert code == 1
    kinds = [(p["kind"], p["stream"], p["offsets"]) for p in found["problems"]]
    assert kinds[0][0] == "wal" and "damaged bytes" in found["problems"][0]["what"]
    assert ("wal", 1, [14, 15]) in kinds  # the records after it no longer follow
    with streamlib.open(str(wal_store), durability="unsafe-no-fsync") as store:
        stream = store.open_stream("orders", read_only=True)
        assert stream.next_offset == 14  # recovery agrees: what follows the hole is not read


# ---- inspect and dump ----

def test_inspect_shows_streams_objects_and_the_wal(
        store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(store_dir), "--json")
    found = json.loads(out)
    assert code == 0 and found["store"] == str(store_dir)
    assert found["metadata"]["backend"] == "sqlite" and found["metadata"]["manifest"] is None
    streams = {s["name"]: s for s in found["streams"]}
    assert (streams["orders"]["start_offset"], streams["orders"]["end_offset"]) == (0, 40)
    assert (streams["events"]["end_offset"], streams["events"]["objects"]) == (20, 2)
    assert streams["orders"]["epoch"] == 1 and streams["orders"]["wal_records"] == 0
    created = streams["orders"]["created_ms"]
    assert isinstance(created, int) and created <= time.time() * 1000
    files = object_files(store_dir)
    objects = found["objects"]
    assert objects["count"] == len(files) and objects["bytes"] == sum(
        p.stat().st_size for p in files)
    assert objects["kinds"] == {"single": {"count": 4, "bytes": objects["bytes"]}}
    assert sum(b["count"] for b in objects["histogram"]) == 4
    assert sum(s["bytes"] for s in found["streams"]) <= objects["bytes"]
    assert found["wal"]["backend"] == "file" and found["wal"]["bytes"] == 0
    code, text, _ = run(capsys, "inspect", str(store_dir))
    assert code == 0
    assert "streams: 2" in text and "objects: 4" in text and "kind single" in text
    [line] = [line for line in text.splitlines()
              if line.split()[:2] == [str(streams["orders"]["id"]), "orders"]]
    utc = datetime.datetime.fromtimestamp(created / 1000, datetime.UTC)
    assert utc.strftime("%Y-%m-%d %H:%M:%S") in line and "created (UTC)" in text


def test_dump_prints_records_as_json_lines_and_raw_values(
        store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "dump", str(store_dir), "orders")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["offset"] for r in lines] == list(range(40))
    assert lines[3] == {"offset": 3, "timestamp": lines[3]["timestamp"], "key": "k3",
                        "headers": [["source", "web"]], "value": "order 3 " * 60}
    assert lines[4]["key"] is None and lines[4]["headers"] == []
    assert isinstance(lines[0]["timestamp"], int)
    code, out, _ = run(capsys, "dump", str(store_dir), "events", "--from", "18")
    values = [json.loads(line)["value"] for line in out.splitlines()]
    assert values == [{"base64": base64.b64encode(BINARY * 4).decode()}] * 2
    events_id = json.loads(run(capsys, "inspect", str(store_dir), "--json")[1])["streams"][1]["id"]
    done = subprocess.run([sys.executable, "-m", "streamlib", "dump", str(store_dir),
                           str(events_id), "--format", "raw", "--count", "3"],
                          capture_output=True, timeout=60, check=True)
    assert done.stdout == BINARY * 12


def test_bad_input_is_an_error_naming_it(store_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dump", str(store_dir), "nope")
    assert code == 2 and "no live stream" in err and "nope" in err
    with streamlib.open(str(store_dir), **SETTINGS) as store:
        store.open_stream("orders").trim(10)
    code, _, err = run(capsys, "dump", str(store_dir), "orders", "--from", "5")
    assert code == 2 and "offset out of range" in err and "[10, 40)" in err
    code, _, err = run(capsys, "inspect", str(tmp_path / "nothing"))
    assert code == 2 and "not a store" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "verify", str(tmp_path / "empty"))
    assert code == 2 and "not a store" in err and "meta.sqlite" in err
    code, _, err = run(capsys, "inspect", f"file://{tmp_path}/empty")
    assert code == 2 and "not a store" in err


# ---- beside a store in use; a shared store ----

def test_the_tools_do_not_disturb_a_store_in_use(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    with streamlib.open(str(path), upload_interval_ms=3_600_000, upload_bytes="1GiB",
                        **SETTINGS) as store:
        fill(store)
        orders = store.open_stream("orders")
        orders.append([b"pending"])
        wal = sorted((p.name, p.stat().st_size, p.read_bytes()) for p in (path / "wal").iterdir())
        found = json.loads(run(capsys, "inspect", str(path), "--json")[1])
        assert {s["name"]: s["wal_end_offset"] for s in found["streams"]} == {
            "orders": 41, "events": None}
        assert verify_json(capsys, str(path))[0] == 0
        last = run(capsys, "dump", str(path), "orders", "--from", "40")[1]
        assert json.loads(last)["value"] == "pending"
        # the node's WAL untouched; the node goes on appending and uploading
        assert sorted((p.name, p.stat().st_size, p.read_bytes())
                      for p in (path / "wal").iterdir()) == wal
        orders.append([b"after"])
        store.flush()
    with streamlib.open(str(path), **SETTINGS) as store:
        assert store.open_stream("orders", read_only=True).next_offset == 42


def test_a_diskless_store_on_a_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"memory://cli-tools-{uuid.uuid4().hex}"
    with streamlib.open("", wal="object", metadata="manifest", objects_url=url, node_id="a",
                        **SETTINGS) as store:
        fill(store)
        found = json.loads(run(capsys, "inspect", url, "--json")[1])
        assert found["metadata"]["backend"] == "manifest"
        assert found["metadata"]["version"] > 0 and found["metadata"]["manifest"]["bytes"] > 0
        assert {s["name"]: (s["end_offset"], s["owner"]) for s in found["streams"]} == {
            "orders": (40, "a"), "events": (20, "a")}
        assert found["wal"]["backend"] == "object"
        code, verdict = verify_json(capsys, url)
        assert code == 0 and verdict["checked"]["objects"] == 4
        assert any("object WAL is not checked" in note for note in verdict["notes"])
        lines = run(capsys, "dump", url, "orders", "--count", "2")[1].splitlines()
        assert [json.loads(line)["offset"] for line in lines] == [0, 1]
        key = store.metadata.live_objects()[0].key
        store.objects.delete([key])
        code, verdict = verify_json(capsys, url)
        assert code == 1 and [(p["kind"], p["key"]) for p in verdict["problems"]] == [
            ("missing", key)]


# ---- the command itself ----

def test_version_and_plain_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("streamlib ") and f"codec: {streamlib.codec.backend}" in out
    for command in ([], ["inspect"], ["dump"], ["verify"], ["check-store"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        assert "usage: streamlib" in text and "``" not in text and ":mod:" not in text


def pty_run(*args: str) -> tuple[int, str, str]:
    """The command with standard error on a terminal (a pseudo-terminal): stdout and what the
    terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    done = subprocess.Popen([sys.executable, "-m", "streamlib", *args], stdout=subprocess.PIPE,
                            stderr=follower)
    os.close(follower)
    shown = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed its end
            break
        if not chunk:
            break
        shown.append(chunk)
    os.close(leader)
    out = done.stdout.read().decode() if done.stdout else ""
    return done.wait(timeout=60), out, b"".join(shown).decode(errors="replace")


def test_a_progress_bar_only_on_a_terminal_and_never_with_json(store_dir: Path) -> None:
    code, out, shown = pty_run("verify", str(store_dir))
    assert code == 0 and "clean" in out
    assert "verify" in shown and "B/s" in shown  # tqdm's rate
    code, out, shown = pty_run("verify", str(store_dir), "--json")
    assert code == 0 and json.loads(out)["clean"] and shown == ""
    done = subprocess.run([sys.executable, "-m", "streamlib", "verify", str(store_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""  # not a terminal: no bar


def test_the_metadata_opens_read_only(store_dir: Path, tmp_path: Path) -> None:
    from streamlib.io import ObjectStore
    from streamlib.meta.local import SQLiteMetadataStore
    from streamlib.meta.manifest import ManifestMetadataStore

    before = (store_dir / "meta.sqlite").read_bytes()
    with SQLiteMetadataStore(store_dir / "meta.sqlite", read_only=True) as meta:
        assert [s.name for s in meta.streams()] == ["orders", "events"]
        with pytest.raises(streamlib.ReadOnlyError, match="read-only"):
            meta.create_stream("more")
    assert (store_dir / "meta.sqlite").read_bytes() == before
    with pytest.raises(streamlib.ConfigError, match="no metadata database"):
        SQLiteMetadataStore(tmp_path / "absent.sqlite", read_only=True)
    url = f"file://{tmp_path}/shared"
    with streamlib.open("", wal="object", metadata="manifest", objects_url=url, node_id="a",
                        **SETTINGS) as store:
        store.create_stream("orders")
    objects = ObjectStore.from_url(url)
    listed = objects.list("")
    manifest = ManifestMetadataStore(objects, read_only=True)
    try:
        assert [s.name for s in manifest.streams()] == ["orders"]
        with pytest.raises(streamlib.ReadOnlyError):
            manifest.register_node("b")
        with pytest.raises(streamlib.ReadOnlyError):
            manifest.collect_garbage(0)
    finally:
        manifest.close()
    assert objects.list("") == listed  # no probe, no delta: nothing written


def test_a_store_on_s3_with_storage_options(s3_bucket: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = s3_bucket.url + "/streams"
    options = s3_bucket.storage_options
    with streamlib.open("", wal="object", metadata="manifest", objects_url=url, node_id="a",
                        storage_options=options, **SETTINGS) as store:
        fill(store)
    given = ("--storage-options", json.dumps(options))
    found = json.loads(run(capsys, "inspect", url, "--json", *given)[1])
    assert [s["end_offset"] for s in found["streams"]] == [40, 20]
    code, verdict = verify_json(capsys, url, *given)
    assert code == 0 and verdict["checked"]["objects"] == 4
    code, _, err = run(capsys, "inspect", url)  # no endpoint: the store cannot be reached
    assert code == 2 and err.startswith("streamlib inspect: error:")

