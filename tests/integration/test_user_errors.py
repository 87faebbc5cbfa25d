"""What a new user meets when something is given wrong or waited on long: each mistake gets a
streamlib error that names it, before anything is made or written, and long waits mean what
they say."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
import warnings
from pathlib import Path

import pytest
from waits import blocked_in

import streamlib
from streamlib.errors import (
    ConfigError,
    FencedError,
    NodeLockedError,
    OutcomeUnknown,
    StreamNotFound,
)
from streamlib.stream import Stream

pytestmark = pytest.mark.once  # the store's arguments, not the codec


def test_a_url_given_as_the_path_is_refused_and_says_how_to_open_a_store_on_s3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a URL taken for a path would have made directories
    for url in ("s3://bucket/prefix", "memory://x"):
        with pytest.raises(ConfigError, match="objects_url") as info:
            streamlib.open(url)
        assert info.value.field == "path"
    with pytest.raises(ConfigError, match="must be a URL") as info:
        streamlib.open(tmp_path / "data", objects_url="not a url")
    assert info.value.field == "objects_url"
    assert list(tmp_path.iterdir()) == []  # refused before anything was made


def test_a_path_that_is_a_file_or_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        streamlib.open(tmp_path / "file")
    with pytest.raises(ConfigError, match="cannot be made"):
        streamlib.open(tmp_path / "file" / "below")


def test_a_block_wal_under_dev_must_be_an_existing_device(tmp_path: Path) -> None:
    missing = "/dev/streamlib-no-such-device"
    with pytest.raises(ConfigError, match="existing block device") as info:
        streamlib.open(tmp_path / "data", wal="block", wal_path=missing)
    assert info.value.field == "wal_path"
    assert not os.path.exists(missing)


def test_stream_names_are_printable_and_long_ones_are_cut_in_messages(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data") as store:
        for bad in (" ", "a\nb", "tab\there", "\x01x", " lead", "trail "):
            with pytest.raises(ValueError, match="printable"):
                store.create_stream(bad)
        assert store.create_stream("a b · ü").name == "a b · ü"
        with pytest.raises(StreamNotFound) as info:
            store.open_stream("x" * 1000)
        assert len(str(info.value)) < 400 and "1000 characters" in str(info.value)


def test_timeouts_are_numbers_and_inf_waits_for_the_event(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data") as store:
        stream = store.create_stream("s")
        for wrong, kind in (("x", TypeError), (True, TypeError), (math.nan, ValueError),
                            (-1, ValueError)):
            with pytest.raises(kind, match="timeout"):
                stream.append([b"v"], timeout=wrong)  # type: ignore[arg-type]  # on purpose
            with pytest.raises(kind, match="timeout"):
                stream.fetch(0, timeout=wrong)  # type: ignore[arg-type]  # on purpose
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(
            len(stream.fetch(0, timeout=math.inf).batches)))
        waiter.start()
        deadline_ok = False
        for _ in range(1000):  # until the fetch waits at the tail
            if blocked_in(waiter, Stream.fetch):
                deadline_ok = True
                break
            waiter.join(0.01)
        assert deadline_ok, "the long poll never waited"
        stream.append([b"v"], timeout=math.inf)
        waiter.join(10)
        assert got == [1]


def test_a_second_store_of_one_node_in_one_process_is_told_so(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data"), pytest.raises(NodeLockedError,
                                                         match="this process"):
        streamlib.open(tmp_path / "data")


def test_an_unclosed_store_warns_when_it_is_collected(tmp_path: Path) -> None:
    store = streamlib.open(tmp_path / "data")
    text = repr(store)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del store
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and text in str(w.message)
               for w in caught)


def test_the_library_logs_nothing_to_stderr_unless_asked_and_quiet_opens_stay_quiet(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert any(isinstance(h, logging.NullHandler)
               for h in logging.getLogger("streamlib").handlers)
    with caplog.at_level(logging.INFO, logger="streamlib"):
        with streamlib.open(tmp_path / "data"):
            pass
        with streamlib.open(tmp_path / "data"):  # an empty WAL to recover
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.INFO
                and "recovered" in r.getMessage()], caplog.text


def test_a_fenced_node_is_told_what_took_its_stream(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    options = {"metadata": "manifest", "objects_url": f"file://{bucket}", "wal": "object",
               "upload_interval_ms": 3_600_000}
    a = streamlib.open(tmp_path / "a", node_id="a", **options)
    c = streamlib.open(tmp_path / "c", node_id="c", **options)
    try:
        stream = a.create_stream("s")
        stream.append([b"1"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            c.take_over("a", wal="object")
        with pytest.raises(FencedError) as info:
            for _ in range(1000):  # until A has looked and refuses at once
                with contextlib.suppress(OutcomeUnknown):  # durable before A looked
                    stream.append([b"late"])
        assert "None" not in str(info.value) and "took over" in str(info.value)
    finally:
        a.close()
        c.close()
