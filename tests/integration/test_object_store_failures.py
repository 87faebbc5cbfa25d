"""An object store that fails the way real ones do, as a user meets it: a server that accepts
connections and never answers bounds every call by the retry budget and shows the stall in
``stats()``; a bucket that does not exist is a ConfigError at open, not a failure at the first
upload."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from waits import wait_for

import streamlib
from streamlib.errors import ConfigError, StorageUnavailable
from streamlib.testing.s3 import S3Endpoint

pytestmark = pytest.mark.once  # the object store's behaviour, not the codec


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        for conn in held:
            conn.close()


def test_a_server_that_never_answers_bounds_flush_by_the_retry_budget(
        tmp_path: Path, silent_server: int) -> None:
    options = {"key": "k", "secret": "s",
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{silent_server}"}}
    budget = 2.0
    with streamlib.open(tmp_path / "data", objects_url="s3://bucket/streams",
                        storage_options=options, retry_timeout_ms=int(budget * 1000),
                        upload_interval_ms=3_600_000) as store:
        store.create_stream("s").append([b"kept in the WAL"])
        outcome: list[object] = []

        def flush() -> None:
            started = time.monotonic()
            try:
                store.flush()
                outcome.append("returned")
            except Exception as error:
                outcome.append(error)
            outcome.append(time.monotonic() - started)

        flusher = threading.Thread(target=flush)
        flusher.start()
        wait_for(lambda: store.stats()["object_store"]["longest_call_s"] > 0.5  # type: ignore[index]
                 or not flusher.is_alive(), what="the stalled PUT to show in stats()")
        assert store.stats()["object_store"]["calls_in_flight"] >= 1  # type: ignore[index]
        flusher.join(budget + 30)
        error, took = outcome
        assert isinstance(error, StorageUnavailable), error
        assert took < budget + 1 + 2, took  # the budget, the floor of one attempt, the load
        assert store.stats()["upload_failures"] >= 1


def test_a_missing_bucket_is_a_config_error_at_open(tmp_path: Path,
                                                    moto_s3: S3Endpoint) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        streamlib.open(tmp_path / "data", objects_url="s3://no-such-bucket-here/streams",
                       storage_options=moto_s3.storage_options())
    assert info.value.field == "objects_url"
    bucket = moto_s3.create_bucket()
    try:
        with streamlib.open(tmp_path / "data", objects_url=f"s3://{bucket}/streams",
                            storage_options=moto_s3.storage_options()) as store:
            store.create_stream("s").append([b"x"])
            store.flush()
            assert not [o for o in store.objects.list("") if "probe" in o.key]
    finally:
        moto_s3.delete_bucket(bucket)
