"""The object WAL ignores keys under its node's prefix whose numbers it could never have written
(beyond 2^63 - 1, or not 20 digits) and keys of no WAL shape: each is logged at WARNING and
counted in ``ObjectWal.ignored_keys``, and none moves the node's epoch or hides its records.

A stray epoch of 99999999999999999999 once made the next epoch 100000000000000000000: 21 digits,
a key shape that recovery does not list, so every append of that epoch was lost at the next
open, and the epoch was claimed again."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from streamlib.io import ObjectStore
from streamlib.testing.wal import make_record
from streamlib.wal import WalEntry
from streamlib.wal.object import ObjectWal

PREFIX = "wal/node-1/"
ALL_NINES = "9" * 20  # 20 digits, as the key format has, but above 2^63 - 1
KEY = re.compile(r"wal/node-1/(\d+)/(?:OPEN|\d+-\d+-\d+\.wal)")


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield ObjectStore.from_url(f"file://{tmp_path}")
        return
    url = f"memory://wal-{uuid.uuid4().hex}"
    yield ObjectStore.from_url(url)
    fs = fsspec.filesystem("memory")
    with contextlib.suppress(FileNotFoundError):
        fs.rm(fs._strip_protocol(url), recursive=True)


def recovered(store: ObjectStore) -> tuple[ObjectWal, list[WalEntry]]:
    wal = ObjectWal(store, "node-1")
    recovery = wal.recover()
    entries = recovery.entries()
    assert recovery.dropped == []
    return wal, entries


def test_keys_out_of_range_are_ignored_and_never_move_the_epoch(
        store: ObjectStore, caplog: pytest.LogCaptureFixture) -> None:
    wal, _ = recovered(store)
    first = [wal.append(make_record(1, i)).result(timeout=30) for i in range(3)]
    epoch, end = wal.epoch, wal.end_position
    wal.close()
    stray = [
        f"{PREFIX}{ALL_NINES}/OPEN",  # an epoch beyond range: it must not become the highest
        f"{PREFIX}{ALL_NINES}/{end:020d}-{end + 100:020d}-{end:020d}.wal",
        f"{PREFIX}{epoch:020d}/{end:020d}-{ALL_NINES}-{end:020d}.wal",  # its END overflows
        f"{PREFIX}{epoch:020d}/{end:020d}-{end + 100:020d}.wal",  # malformed: no ACKED
        f"{PREFIX}{epoch + 1:021d}/OPEN",  # malformed: 21 digits
    ]
    for key in stray:
        store.put(key, b"stray")

    with caplog.at_level(logging.WARNING, logger="streamlib.wal"):
        wal, entries = recovered(store)
    assert [e.position for e in entries] == first
    assert wal.epoch == epoch + 1
    assert wal.ignored_keys == len(stray)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in stray:
        assert any(key in message for message in warned), key
    second = [wal.append(make_record(1, 3 + i)).result(timeout=30) for i in range(3)]
    wal.close()
    ours = [k.key for k in store.list(PREFIX) if k.key not in stray and k.key != f"{PREFIX}TRIM"]
    assert all(len(KEY.fullmatch(k).group(1)) == 20 for k in ours), ours  # type: ignore[union-attr]
    assert any(int(KEY.fullmatch(k).group(1)) == epoch + 1  # type: ignore[union-attr]
               and k.endswith(".wal") for k in ours)

    wal, entries = recovered(store)  # the appends after the first reopen are found too
    assert [e.position for e in entries] == first + second
    assert [e.record.base_offset for e in entries] == list(range(6))
    assert wal.epoch == epoch + 2
    assert wal.ignored_keys == len(stray)
    wal.close()
