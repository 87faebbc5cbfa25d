"""ObjectStore (streamlib.io): the same behaviour on memory://, file://, moto and SeaweedFS;
retries and error translation, against injected faults and against real S3 error answers."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import fsspec
import pytest

from streamlib.errors import StorageUnavailable
from streamlib.io import TMP_PREFIX, ObjectInfo, ObjectStore, RetryPolicy, classify
from streamlib.testing import faults
from streamlib.testing.faults import FaultyFileSystem
from streamlib.testing.s3 import REGION, S3Bucket, free_ports, object_store

# Object-store calls and retries: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

# ---- the same behaviour on every store ----


@pytest.fixture(params=["memory", "file", "moto", "seaweedfs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    with object_store(request.param, request, tmp_path, "io") as opened:
        yield opened


def test_put_then_get(store: ObjectStore) -> None:
    store.put("a/b/c", b"hello")
    assert store.get("a/b/c") == b"hello"
    store.put("a/b/c", bytearray(b"replaced"))
    assert store.get("a/b/c") == b"replaced"
    store.put("view", memoryview(b"xyz")[1:])
    assert store.get("view") == b"yz"
    store.put("empty", b"")
    assert store.get("empty") == b""


def test_ranged_get_behaves_as_a_slice(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    store.put("k", data)
    for start, end in [(0, None), (None, None), (1, 3), (1000, None), (1000, 2000), (5, 1024),
                       (1024, None), (2000, None), (2000, 3000), (7, 7), (9, 3)]:
        assert store.get("k", start, end) == data[start:end], (start, end)
    with pytest.raises(ValueError, match="non-negative"):
        store.get("k", -1)


def test_missing_object_is_a_file_not_found_error_naming_the_key(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError, match="nothing/here") as caught:
        store.get("nothing/here")
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        store.get("nothing/here", 0, 10)


def test_list_is_sorted_with_sizes_and_takes_a_string_prefix(store: ObjectStore) -> None:
    for key, size in [("a/c", 3), ("a/b", 1), ("a/bc", 2), ("a/bd/deep", 4), ("b/x", 5)]:
        store.put(key, b"x" * size)
    everything = store.list()
    assert [i.key for i in everything] == ["a/b", "a/bc", "a/bd/deep", "a/c", "b/x"]
    assert everything[0] == ObjectInfo("a/b", 1)
    assert [i.key for i in store.list("a/b")] == ["a/b", "a/bc", "a/bd/deep"]
    assert [(i.key, i.size) for i in store.list("a/bd/")] == [("a/bd/deep", 4)]
    assert store.list("nothing/") == [] and store.list("zz") == []


def test_list_shows_a_put_at_once(store: ObjectStore) -> None:
    assert store.list("p/") == []
    store.put("p/1", b"1")
    assert [i.key for i in store.list("p/")] == ["p/1"]
    store.delete(["p/1"])
    assert store.list("p/") == []


def test_delete_ignores_missing_objects(store: ObjectStore) -> None:
    for key in ("d/1", "d/2", "d/3"):
        store.put(key, b"x")
    store.delete(["d/1", "d/missing", "d/3"])
    assert [i.key for i in store.list("d/")] == ["d/2"]
    store.delete([])
    store.delete(["d/2"])
    assert store.list("d/") == []


def test_exists(store: ObjectStore) -> None:
    store.put("e/1", b"x")
    assert store.exists("e/1")
    assert not store.exists("e/2")


def test_keys_are_checked(store: ObjectStore) -> None:
    for bad in ["", "/abs", "a//b", "a/../b", "trailing/", "./a"]:
        with pytest.raises(ValueError, match="invalid object key"):
            store.put(bad, b"x")
    with pytest.raises(TypeError):
        store.get(b"bytes")  # type: ignore[arg-type]


# ---- file:// ----


def test_local_put_is_atomic_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ObjectStore.from_url(f"file://{tmp_path}")
    store.put("deep/er/key", b"x" * 100_000)
    assert sorted(os.listdir(tmp_path / "deep" / "er")) == ["key"]  # no temporary file left
    (tmp_path / "deep" / "er" / f"{TMP_PREFIX}stray").write_bytes(b"half")  # a crashed put
    assert [i.key for i in store.list()] == ["deep/er/key"]
    store.delete(["deep/er/key"])
    assert (tmp_path / "deep" / "er").exists()  # the stray file keeps its directory
    os.unlink(tmp_path / "deep" / "er" / f"{TMP_PREFIX}stray")
    store.put("deep/er/again", b"y")
    store.delete(["deep/er/again"])
    assert os.listdir(tmp_path) == []  # empty directories go with their last object


# ---- S3 specifics ----


def test_from_url_builds_its_own_s3_filesystem_without_inner_retries(moto_bucket: S3Bucket
                                                                      ) -> None:
    options = moto_bucket.endpoint.storage_options()
    store = ObjectStore.from_url(f"s3://{moto_bucket.name}/p", options)
    assert store.fs is not moto_bucket.endpoint.store_fs
    assert store.fs.retries == 1
    assert store.url == f"s3://{moto_bucket.name}/p"
    store.put("k", b"v")
    assert moto_bucket.fs.cat_file(f"{moto_bucket.name}/p/k") == b"v"
    assert store.get("k") == b"v"


def test_a_missing_bucket_is_not_an_empty_listing(moto_bucket: S3Bucket) -> None:
    store = ObjectStore(moto_bucket.endpoint.store_fs, "no-such-bucket-here/x")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        store.list()
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        store.put("k", b"v")


# ---- retries, against injected faults ----


class FakeTime:
    """A clock that moves only when the store sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def faulty() -> Iterator[FaultyFileSystem]:
    fs = FaultyFileSystem(fsspec.filesystem("memory"))
    root = f"/faulty-{uuid.uuid4().hex}"
    fs.root_for_test = root  # type: ignore[attr-defined]
    yield fs
    with contextlib.suppress(FileNotFoundError):
        fs.fs.rm(root, recursive=True)


def faulty_store(fs: FaultyFileSystem, clock: FakeTime, *, jitter: Callable[[], float]
                 = lambda: 0.999, timeout: float = 10.0) -> ObjectStore:
    return ObjectStore(fs, fs.root_for_test,  # type: ignore[attr-defined]
                       retry=RetryPolicy(initial=0.1, cap=0.4, timeout=timeout),
                       sleep=clock.sleep, clock=clock.clock, random=jitter)


@pytest.mark.parametrize("error", [faults.slow_down, faults.internal_error,
                                   faults.connection_reset, faults.timeout])
def test_transient_errors_are_retried_with_doubling_backoff(faulty: FaultyFileSystem,
                                                            error: faults.ErrorFactory) -> None:
    clock = FakeTime()
    store = faulty_store(faulty, clock)
    faulty.inject("put", error, times=5)
    store.put("k", b"v")
    assert faulty.calls["put"] == 6
    assert clock.sleeps == pytest.approx([0.0999, 0.1998, 0.3996, 0.3996, 0.3996])
    assert store.get("k") == b"v"


def test_backoff_has_full_jitter(faulty: FaultyFileSystem) -> None:
    clock = FakeTime()
    store = faulty_store(faulty, clock, jitter=random.Random(7).random)
    faulty.inject("put", faults.slow_down, times=30)
    store.put("k", b"v")
    ceilings = [min(0.1 * 2 ** i, 0.4) for i in range(30)]
    assert all(0 <= s < c for s, c in zip(clock.sleeps, ceilings, strict=True))
    assert len(set(clock.sleeps)) == 30  # random, not a fixed schedule


@pytest.mark.parametrize("op", ["get", "list", "delete", "info"])
def test_every_operation_is_retried(faulty: FaultyFileSystem, op: str) -> None:
    store = faulty_store(faulty, FakeTime())
    store.put("k", b"v")
    faulty.inject(op, faults.slow_down, times=2)
    calls = {"get": lambda: store.get("k"), "list": lambda: store.list(),
             "delete": lambda: store.delete(["k"]), "info": lambda: store.exists("k")}
    calls[op]()
    assert faulty.calls[op] >= 3


def test_exhausted_retries_raise_storage_unavailable_naming_the_key(faulty: FaultyFileSystem
                                                                    ) -> None:
    clock = FakeTime()
    store = faulty_store(faulty, clock, timeout=3.0)
    faulty.inject("put", faults.slow_down, times=None)
    with pytest.raises(StorageUnavailable, match=r"op=`put` key=`faulty:///faulty-\w+/a/k`") \
            as caught:
        store.put("a/k", b"v")
    assert isinstance(caught.value, OSError)
    assert classify(caught.value.__cause__) == "transient"  # type: ignore[arg-type]
    assert sum(clock.sleeps) <= 3.0 and faulty.calls["put"] > 5


def test_a_zero_budget_means_one_attempt(faulty: FaultyFileSystem) -> None:
    store = faulty_store(faulty, FakeTime()).with_retry(timeout=0)
    faulty.inject("put", faults.slow_down, times=None)
    with pytest.raises(StorageUnavailable):
        store.put("k", b"v")
    assert faulty.calls["put"] == 1


def test_permanent_errors_are_raised_at_once_with_the_key(faulty: FaultyFileSystem) -> None:
    clock = FakeTime()
    store = faulty_store(faulty, clock)
    faulty.inject("put", faults.access_denied, times=None)
    with pytest.raises(PermissionError) as caught:
        store.put("k", b"v")
    assert faulty.calls["put"] == 1 and clock.sleeps == []
    assert any("op=`put`" in note for note in caught.value.__notes__)


def test_missing_objects_are_not_retried(faulty: FaultyFileSystem) -> None:
    clock = FakeTime()
    store = faulty_store(faulty, clock)
    with pytest.raises(FileNotFoundError):
        store.get("missing")
    assert faulty.calls["get"] == 1 and clock.sleeps == []


def test_retry_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="timeout"):
        RetryPolicy(timeout=-1)
    with pytest.raises(TypeError, match="filesystem"):
        ObjectStore("memory://x", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root"):
        ObjectStore(fsspec.filesystem("memory"), "/")


# ---- retries, against real S3 error answers (real botocore and s3fs shapes) ----


class _Answer(BaseHTTPRequestHandler):
    """Answers every request with the S3 error set in ``answer`` (status, code)."""

    protocol_version = "HTTP/1.1"  # so that `Expect: 100-continue` is answered
    answer: ClassVar[list[object]] = [503, "SlowDown"]
    requests: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.requests.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, code = self.answer
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>canned</Message><RequestId>1</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


def s3_store(endpoint: str) -> ObjectStore:
    """A store on ``endpoint`` whose retry budget counts only its backoff pauses (a clock that
    moves only when the store sleeps, and the longest pauses): 7 attempts within 0.3 s
    however long each takes — on a loaded machine one request may take most of 0.3 s."""
    options = {"key": "k", "secret": "s",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION}}
    clock = FakeTime()
    return ObjectStore.from_url("s3://bucket/p", options,
                                retry=RetryPolicy(initial=0.02, cap=0.05, timeout=0.3),
                                sleep=clock.sleep, clock=clock.clock, random=lambda: 0.999)


@pytest.fixture(scope="module")
def canned() -> Iterator[tuple[ObjectStore, type[_Answer]]]:
    """A server that answers every request with one S3 error, and a store on it."""
    handler = type("Handler", (_Answer,), {"answer": [503, "SlowDown"], "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield s3_store(f"http://127.0.0.1:{server.server_address[1]}"), handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def answer(canned: tuple[ObjectStore, type[_Answer]], status: int, code: str) -> list[str]:
    handler = canned[1]
    handler.answer[:] = [status, code]
    handler.requests.clear()
    return handler.requests


@pytest.mark.parametrize(("status", "code"), [
    (503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"),
    (429, "TooManyRequests")])
def test_real_throttling_answers_are_retried(canned: tuple[ObjectStore, type[_Answer]],
                                             status: int, code: str) -> None:
    requests = answer(canned, status, code)
    with pytest.raises(StorageUnavailable, match="op=`put`"):
        canned[0].put("k", b"v")
    assert requests.count("PUT") >= 3  # ours: s3fs's and botocore's retries are off


def test_real_permanent_answers_are_not_retried(canned: tuple[ObjectStore, type[_Answer]]
                                                ) -> None:
    requests = answer(canned, 403, "AccessDenied")
    with pytest.raises(PermissionError):
        canned[0].put("k", b"v")
    assert requests == ["PUT"]
    requests = answer(canned, 404, "NoSuchKey")
    with pytest.raises(FileNotFoundError, match="s3://bucket/p/k"):
        canned[0].get("k")
    assert requests == ["GET"]  # and no HEAD first: get always sends a Range


def test_a_refused_connection_is_retried() -> None:
    (port,) = free_ports(1)  # nothing listens there
    with pytest.raises(StorageUnavailable, match="op=`get`") as caught:
        s3_store(f"http://127.0.0.1:{port}").get("k")
    assert "attempts=`1`" not in str(caught.value)


@pytest.mark.parametrize("local", [FileExistsError(17, "exists"), FileNotFoundError(2, "gone"),
                                   PermissionError(13, "denied"), IsADirectoryError(21, "dir")])
def test_a_local_error_raised_while_handling_a_timeout_means_what_it_says(
        local: OSError) -> None:
    """Raised inside an ``except TimeoutError`` block, these carry the timeout as their
    context; following it made them look transient and each call retried for a minute."""
    try:
        try:
            raise TimeoutError("an earlier attempt timed out")
        except TimeoutError:
            raise local  # noqa: B904 - the implicit context is the point
    except OSError as error:
        assert error.__context__ is not None
        expected = "missing" if isinstance(local, FileNotFoundError) else "permanent"
        assert classify(error) == expected
