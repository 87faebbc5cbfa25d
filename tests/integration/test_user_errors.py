"""What a new user meets when something is given wrong or waited on long: each mistake gets a
streamlib error that names it, before anything is made or written, and long waits mean what
they say."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
import os
import tarfile
import threading
import warnings
import zipfile
from pathlib import Path

import pytest
from fsspec.implementations.zip import ZipFileSystem
from waits import blocked_in

import streamlib
from streamlib.errors import (
    ConfigError,
    FencedError,
    NodeLockedError,
    OutcomeUnknown,
    StreamNotFound,
)
from streamlib.io import ObjectStore
from streamlib.records import Record, RecordBatch
from streamlib.stream import Stream
from streamlib.testing.s3 import S3Bucket

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


def test_max_batch_bytes_counts_the_records_data_so_an_8_mib_value_fits_the_default(
        tmp_path: Path) -> None:
    limit = 8 * 1024 * 1024
    with streamlib.open(tmp_path / "data") as store:
        assert store.config.max_batch_bytes == limit
        stream = store.create_stream("s")
        value = os.urandom(limit)
        assert stream.append([Record(value)]).base_offset == 0
        keyed = Record(value[:limit - 3], key=b"k", headers=[("h", b"v")])  # 8 MiB in all
        assert stream.append([keyed]).base_offset == 1
        assert stream.append(RecordBatch(value, 1)).base_offset == 2  # an opaque payload
        for batch in ([Record(value + b"!")], [Record(value[:limit - 1], key=b"kk")],
                      RecordBatch(value + b"!", 1)):
            with pytest.raises(ValueError, match="max_batch_bytes") as info:
                stream.append(batch)
            assert f"data=`{limit + 1}` max_batch_bytes=`{limit}`" in str(info.value)
        store.flush()
        assert [r.value for _, r in stream.fetch(0, 2, max_bytes=1).records()] == [value]
        assert [(r.value, r.key) for _, r in stream.fetch(1, 2).records()] == [
            (value[:limit - 3], b"k")]
        assert stream.next_offset == 3


def test_a_batch_of_many_tiny_records_is_refused_by_its_encoded_size(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data", max_batch_bytes="1KiB") as store:
        stream = store.create_stream("s")
        stream.append([b""] * 100)  # no data, and an encoding well under twice the limit
        with pytest.raises(ValueError, match=r"twice Config\.max_batch_bytes") as info:
            stream.append([b""] * 1000)
        assert "data=`0`" in str(info.value) and "max_batch_bytes=`1024`" in str(info.value)
        assert stream.next_offset == 100


def test_an_http_objects_url_is_shown_as_given(moto_bucket: S3Bucket) -> None:
    url = f"{moto_bucket.endpoint.url}/{moto_bucket.name}"  # http://127.0.0.1:port/bucket
    assert url.startswith("http://")
    store = ObjectStore.from_url(url)
    assert store.url == url and repr(store) == f"ObjectStore({url!r})"
    with pytest.raises(FileNotFoundError, match=f"key=`{url}/missing`"):
        store.get("missing")


def test_an_objects_store_that_cannot_be_written_is_refused_at_open(
        tmp_path: Path, moto_bucket: S3Bucket) -> None:
    # Plain HTTP on an S3 server: fsspec's http filesystem can PUT, but not delete or list.
    url = f"{moto_bucket.endpoint.url}/{moto_bucket.name}"
    with pytest.raises(ConfigError, match="read-only: its filesystem cannot delete") as info:
        streamlib.open(tmp_path / "http", objects_url=url)
    assert info.value.field == "objects_url" and f"url=`{url}`" in str(info.value)
    assert "http://http" not in str(info.value)

    # fsspec's read-only implementations, by URL and as a filesystem handed to open.
    archive = tmp_path / "objects.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("objects/old"), io.BytesIO())
    with pytest.raises(ConfigError, match="read-only: its filesystem cannot put"):
        streamlib.open(tmp_path / "tar", objects_url=f"tar://objects::file://{archive}")
    with zipfile.ZipFile(tmp_path / "objects.zip", "w") as zipped:
        zipped.writestr("objects/old", b"")
    with pytest.raises(ConfigError, match="read-only: its filesystem cannot put"):
        streamlib.open(tmp_path / "zip", objects_url="zip://objects",
                       filesystem=ZipFileSystem(tmp_path / "objects.zip"))
    for refused in ("http", "tar", "zip"):  # nothing was left open: the node can open again
        with streamlib.open(tmp_path / refused):
            pass


def test_an_s3_store_without_credentials_is_refused_at_open(
        tmp_path: Path, moto_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = {"client_kwargs": {"endpoint_url": moto_bucket.endpoint.url}}
    with pytest.raises(ConfigError, match="no credentials") as info:
        streamlib.open(tmp_path / "data", objects_url=moto_bucket.url, storage_options=options)
    assert info.value.field == "objects_url"
