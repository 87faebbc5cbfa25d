"""ObjectStore.upload (streamlib.io_upload): an object written part by part appears whole under
its key only at complete, and an abort leaves nothing — the same on memory://, file://, moto
and SeaweedFS; its retries against faults injected in front of real S3 servers; listing times
and the store's own clock."""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamlib.errors import StorageUnavailable
from streamlib.io import TMP_PREFIX, ObjectInfo, ObjectStore, RetryPolicy
from streamlib.io_upload import LOCAL_PART_BYTES, S3Upload, State
from streamlib.testing import faults
from streamlib.testing.faults import FaultyFileSystem
from streamlib.testing.s3 import S3Bucket, object_store

# Object-store calls and retries: the codec plays no part; the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

S3_PART = 5 * 2**20
"""The smallest part S3 takes; uploads on S3 cost a few of these, so there are few of them."""
LOCAL_PART = 4096


@pytest.fixture(params=["memory", "file", "moto", "seaweedfs"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    with object_store(kind, request, tmp_path, "upload") as opened:
        yield opened


def part_bytes(store: ObjectStore) -> int:
    return S3_PART if S3Upload.takes(store.fs) else LOCAL_PART


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def pending_uploads(store: ObjectStore) -> list[str]:
    """Keys of the multipart uploads begun and neither completed nor aborted (S3 only)."""
    if not S3Upload.takes(store.fs):
        return []
    bucket, _, prefix = store.root.partition("/")
    answer = store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def temporary_files(store: ObjectStore) -> list[str]:
    """The temporary files under a local store's root (none elsewhere)."""
    if not store.url.startswith("file://"):
        return []
    return [name for _, _, names in os.walk(store.root) for name in names
            if name.startswith(TMP_PREFIX)]


def invisible(store: ObjectStore, key: str) -> bool:
    try:
        store.get(key)
    except FileNotFoundError:
        return store.list() == [] and not store.exists(key)
    return False


# ---- the same behaviour on every store ----


def test_a_multipart_object_appears_whole_only_at_complete(store: ObjectStore, kind: str
                                                           ) -> None:
    part = part_bytes(store)
    data = payload(part * 7 // 2)
    pieces = random.Random(1)
    with store.upload("a/big", part_bytes=part) as upload:
        at = 0
        while at < len(data):  # pieces across part boundaries, of every buffer type
            size = pieces.randrange(1, part * 3 // 2)
            piece = data[at:at + size]
            upload.write(piece if at % 3 == 0 else bytearray(piece) if at % 3 == 1
                         else memoryview(b"\0" + piece)[1:])
            at += len(piece)
        assert upload.written == len(data)
        assert invisible(store, "a/big")
        if kind in ("moto", "seaweedfs"):
            assert pending_uploads(store) == ["upload/a/big"]
        if kind == "file":
            assert len(temporary_files(store)) == 1  # the parts are on disk, not in memory
        assert upload.complete() == len(data)
    assert upload.state is State.COMPLETED
    assert store.get("a/big") == data
    assert store.list() == [ObjectInfo("a/big", len(data))]
    assert pending_uploads(store) == [] and temporary_files(store) == []



def test_a_local_upload_writes_its_parts_to_disk_as_they_fill(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Parts of a local upload are at most LOCAL_PART_BYTES whatever part_bytes says: memory
    and the disk's dirty pages stay at one such part, however large the object."""
    with object_store("file", request, tmp_path, "upload") as store:
        data = payload(LOCAL_PART_BYTES * 5 // 2)
        with store.upload("local", part_bytes=16 * 2**20) as upload:
            upload.write(data[:LOCAL_PART_BYTES * 2 + 1])
            (name,) = temporary_files(store)
            found = [os.path.join(d, name) for d, _, names in os.walk(store.root)
                     if name in names]
            assert os.path.getsize(found[0]) == LOCAL_PART_BYTES * 2
            upload.write(data[LOCAL_PART_BYTES * 2 + 1:])
            upload.complete()
        assert store.get("local") == data

def test_an_object_smaller_than_a_part_is_one_put(store: ObjectStore) -> None:
    upload = store.upload("small", part_bytes=part_bytes(store))
    upload.write(b"hel")
    upload.write(memoryview(b"lo"))
    assert invisible(store, "small")
    assert pending_uploads(store) == []  # no multipart upload begun
    assert upload.complete() == 5
    assert upload.complete() == 5  # again: the same answer
    assert store.get("small") == b"hello"
    with store.upload("empty", part_bytes=part_bytes(store)) as empty:
        assert empty.complete() == 0
    assert store.get("empty") == b""


def test_abort_leaves_nothing(store: ObjectStore) -> None:
    part = part_bytes(store)
    upload = store.upload("gone", part_bytes=part)
    upload.write(payload(part * 3 // 2))  # one part sent, half of one buffered
    upload.abort()
    upload.abort()  # idempotent
    assert upload.state is State.ABORTED
    assert invisible(store, "gone")
    assert pending_uploads(store) == [] and temporary_files(store) == []
    with pytest.raises(ValueError, match="not open"):
        upload.write(b"x")
    with pytest.raises(ValueError, match="not open"):
        upload.complete()
    if store.url.startswith("file://"):
        assert not os.path.exists(store.root) or os.listdir(store.root) == []


def test_leaving_the_with_block_without_complete_aborts(store: ObjectStore) -> None:
    part = part_bytes(store)
    with pytest.raises(RuntimeError, match="stop"), store.upload("k", part_bytes=part) as upload:
        upload.write(payload(part + 1))
        raise RuntimeError("stop")
    assert upload.state is State.ABORTED
    with store.upload("k", part_bytes=part) as quietly:
        quietly.write(b"never completed")
    assert quietly.state is State.ABORTED
    assert invisible(store, "k")
    assert pending_uploads(store) == [] and temporary_files(store) == []


def test_listed_times_are_by_the_store_clock(store: ObjectStore) -> None:
    store.put("put", b"x")
    with store.upload("uploaded") as upload:
        upload.write(b"y")
        upload.complete()
    now = store.server_time()
    listed = store.list()
    assert [info.key for info in listed] == ["put", "uploaded"]  # no probe object left
    for info in listed:
        assert info.modified is not None and now - 60 < info.modified <= now + 1, info
    assert abs(now - time.time()) < 60  # the servers run on this machine


# ---- S3: retries against faults injected in front of real servers ----


class FaultyS3(FaultyFileSystem):
    """A :class:`FaultyFileSystem` over s3fs whose own S3 calls (``call_s3``: the multipart
    requests) pass through the rules too, each named by its S3 method (``upload_part``)."""

    def call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
        path = f"{kwargs.get('Bucket', '')}/{kwargs.get('Key', '')}"
        return self._run(method, path, lambda: self.fs.call_s3(method, *args, **kwargs))


class FakeTime:
    """A clock that moves only when the store sleeps: the budget counts backoff alone."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture(params=["moto", "seaweedfs"])
def s3(request: pytest.FixtureRequest) -> S3Bucket:
    bucket: S3Bucket = request.getfixturevalue(f"{request.param}_bucket")
    return bucket


def faulty_store(bucket: S3Bucket, clock: FakeTime, timeout: float = 10.0
                 ) -> tuple[ObjectStore, FaultyS3]:
    fs = FaultyS3(bucket.endpoint.store_fs)
    store = ObjectStore(fs, f"{bucket.name}/upload",
                        retry=RetryPolicy(initial=0.1, cap=0.4, timeout=timeout),
                        sleep=clock.sleep, clock=clock.clock, random=lambda: 0.999)
    return store, fs


def no_such_upload(path: str) -> BaseException:
    """What s3fs raises for an HTTP 404 NoSuchUpload: FileNotFoundError caused by the
    ClientError."""
    from botocore.exceptions import ClientError

    error = FileNotFoundError(errno.ENOENT, "The specified upload does not exist.")
    error.__cause__ = ClientError({"Error": {"Code": "NoSuchUpload", "Message": "no upload"},
                                   "ResponseMetadata": {"HTTPStatusCode": 404}},
                                  "CompleteMultipartUpload")
    return error


def test_transient_faults_of_parts_are_retried(s3: S3Bucket) -> None:
    clock = FakeTime()
    store, fs = faulty_store(s3, clock)
    fs.inject("create_multipart_upload", faults.internal_error)
    fs.inject("upload_part", faults.slow_down, times=2)
    fs.inject("upload_part", faults.connection_reset, after=True)  # sent; the answer lost
    data = payload(S3_PART + 1000)
    with store.upload("k", part_bytes=S3_PART) as upload:
        upload.write(data)
        upload.complete()
    assert fs.calls["create_multipart_upload"] == 2
    assert fs.calls["upload_part"] == 5  # the first part four times, the last once
    assert len(clock.sleeps) == 4
    assert store.get("k") == data
    assert pending_uploads(store) == []


@pytest.mark.parametrize("retry_answer", ["success", "NoSuchUpload"])
def test_a_lost_answer_of_complete_is_a_success(s3: S3Bucket, retry_answer: str) -> None:
    """The retry of a CompleteMultipartUpload that went through: moto and SeaweedFS answer it
    as a success, as AWS does for a while; later AWS says NoSuchUpload."""
    store, fs = faulty_store(s3, FakeTime())
    fs.inject("complete_multipart_upload", faults.timeout, after=True)
    if retry_answer == "NoSuchUpload":
        fs.inject("complete_multipart_upload", no_such_upload)
    data = payload(S3_PART + 1)
    with store.upload("k", part_bytes=S3_PART) as upload:
        upload.write(data)
        assert upload.complete() == len(data)
    assert fs.calls["complete_multipart_upload"] == 2
    assert store.get("k") == data
    assert pending_uploads(store) == []


def test_an_upload_that_vanished_is_not_reported_complete(s3: S3Bucket) -> None:
    store, fs = faulty_store(s3, FakeTime())
    fs.inject("complete_multipart_upload", faults.connection_reset)  # not sent
    fs.inject("complete_multipart_upload", no_such_upload)  # and the object is not there
    with (pytest.raises(FileNotFoundError, match="op=`complete_upload`"),
          store.upload("k", part_bytes=S3_PART) as upload):
        upload.write(payload(S3_PART + 1))
        upload.complete()
    assert upload.state is State.ABORTED
    assert invisible(store, "k") and pending_uploads(store) == []


def test_exhausted_retries_fail_the_upload_and_the_with_block_aborts(s3: S3Bucket) -> None:
    store, fs = faulty_store(s3, FakeTime(), timeout=2.0)
    fs.inject("upload_part", faults.slow_down, times=None)
    with (pytest.raises(StorageUnavailable, match="op=`upload_part`"),
          store.upload("k", part_bytes=S3_PART) as upload):
        upload.write(payload(S3_PART))
    assert fs.calls["upload_part"] > 3 and fs.calls["abort_multipart_upload"] == 1
    assert upload.state is State.ABORTED
    assert invisible(store, "k") and pending_uploads(store) == []


def test_a_failed_write_leaves_only_abort(s3: S3Bucket) -> None:
    store, fs = faulty_store(s3, FakeTime())
    fs.inject("upload_part", faults.access_denied)
    upload = store.upload("k", part_bytes=S3_PART)
    with pytest.raises(PermissionError):
        upload.write(payload(S3_PART))
    assert upload.state is State.FAILED
    with pytest.raises(ValueError, match="state=`failed`"):
        upload.write(b"x")
    upload.abort()
    assert pending_uploads(store) == []


def test_s3_parts_are_5_mib_at_least(s3: S3Bucket) -> None:
    with pytest.raises(ValueError, match="5 MiB"):
        s3.store("p").upload("k", part_bytes=S3_PART - 1)


def test_a_missing_bucket_is_a_file_not_found_error(moto_bucket: S3Bucket) -> None:
    store = ObjectStore(moto_bucket.endpoint.store_fs, "no-such-bucket-here/x")
    small = store.upload("k", part_bytes=S3_PART)
    small.write(b"v")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        small.complete()
    big = store.upload("k", part_bytes=S3_PART)
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        big.write(payload(S3_PART))
    big.abort()
