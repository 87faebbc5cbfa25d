"""Streaming uploads: an object written part by part, for objects too big to hold in memory
(compaction's, up to 4 GiB). Built by :meth:`streamlib.io.ObjectStore.upload`; with the store,
the only module that knows S3's and the local filesystem's shapes (STYLE.md point 4).

An :class:`Upload` buffers what is written up to ``part_bytes`` and sends each full part on
(the memory held is about one part); :meth:`Upload.complete` sends the rest and makes the
object appear under its key, whole and durable, at once — never a partial object under the
key. Three backends:

- **S3** (a filesystem offering s3fs's ``call_s3``): a multipart upload, created with the first
  full part; an object smaller than a part is one PUT at complete. Each request runs under the
  store's retry policy. A lost answer of UploadPart is harmless (the retry sends the same part
  number again); a lost answer of CompleteMultipartUpload makes its retry answer
  ``NoSuchUpload``, and the upload counts as complete if the object is there with the size
  (and, for a multipart ETag, the ETag) expected. A lost answer of CreateMultipartUpload
  leaves an empty pending upload behind (no parts: nothing stored); a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` removes such leftovers, as it removes those of a crash.
- **local** (``file://``): parts of at most 4 MiB written at their offsets (a retry rewrites
  the same bytes) into a temporary file named ``TMP_PREFIX…`` beside the target
  (:meth:`ObjectStore.list` hides it), each made durable as it is written (fdatasync: the
  disk never holds more than one part of the object's dirty pages, which a WAL's sync on the
  same disk would wait for), then rename into place and fsync of the directory — the
  durability of a local PUT. A crash leaves the temporary file, as it does for a PUT.
- **anything else** (memory): the parts kept in memory, one PUT at complete.

States (:class:`State`), one transition table::

    OPEN ──complete──► COMPLETED          OPEN ──abort──► ABORTED
    OPEN ──a write or complete fails──► FAILED ──abort──► ABORTED

Only ``write`` and ``complete`` in OPEN; ``abort`` in any state (nothing to do once COMPLETED
or ABORTED). A ``complete`` that fails may still have made the whole object appear (its answer
lost for good): the key is then an orphan for the garbage collector. Errors are the store's
(:mod:`streamlib.io`): StorageUnavailable after the retry budget, FileNotFoundError for a
missing bucket, permanent ones unchanged.

Lock order: no lock. An upload belongs to the thread that writes it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

from fsspec import AbstractFileSystem

from streamlib.disk import DURABLE, Syncing
from streamlib.errors import describe
from streamlib.io import TMP_PREFIX, classify

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_MIN_PART_BYTES = 5 * 2**20
"""S3's smallest part (all but the last): 5 MiB."""
S3_MAX_PART_BYTES = 5 * 2**30
"""S3's largest part: 5 GiB."""
S3_MAX_PARTS = 10_000
"""S3's most parts in one upload."""
LOCAL_PART_BYTES = 4 * 2**20
"""The largest part of a local upload: what is written and made durable at once."""


class Run(Protocol):
    """The store's retry policy and error translation around one call: ``run(op, attempt,
    sent)`` (``sent``: the bytes each attempt sends, for the store's meter)."""

    def __call__(self, op: str, attempt: Callable[[], T], sent: int = 0, /) -> T: ...


Put = Callable[[bytes | bytearray | memoryview], None]
"""The store's ``put`` of the upload's key (retried, translated)."""


class State(enum.Enum):
    OPEN = "open"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class Upload:
    """An object being written part by part; see the module docstring. Use it as a context
    manager: leaving the block without :meth:`complete` (by an exception or not) aborts."""

    def __init__(self, key_url: str, part_bytes: int) -> None:
        if isinstance(part_bytes, bool) or not isinstance(part_bytes, int) or part_bytes <= 0:
            raise ValueError(f"part_bytes must be a positive int: part_bytes=`{part_bytes}`")
        self.key_url = key_url
        self.part_bytes = part_bytes
        self.state = State.OPEN
        # What is written and not yet sent: the first ``_filled`` bytes of ``_part`` (less
        # than one part). A backend that is done with a part when _send returns gets the same
        # buffer again (REUSES_PARTS): no allocation, page faults or growing copies per part.
        self._part: bytearray | None = None
        self._filled = 0
        self._written = 0
        self._parts = 0  # parts sent

    REUSES_PARTS = True
    """Whether a part's buffer is free again once ``_send`` returns (False: the backend
    keeps it)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.key_url!r}, state={self.state.value}, "
                f"written={self._written})")

    @property
    def written(self) -> int:
        """Bytes written so far."""
        return self._written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; every part that fills is sent before this returns."""
        self._check_open("write")
        view = memoryview(data).cast("B")
        while view:
            if self._part is None:
                self._part = bytearray(self.part_bytes)
            taken = min(len(view), self.part_bytes - self._filled)
            self._part[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            self._written += taken
            view = view[taken:]
            if self._filled == self.part_bytes:
                part = self._part
                if not self.REUSES_PARTS:
                    self._part = None
                self._filled = 0
                with self._failing():
                    self._send(part, self._parts + 1)
                self._parts += 1

    def complete(self) -> int:
        """Send the rest and make the object appear under its key, whole and durable; the
        object's size. Again after success: the size again."""
        if self.state is State.COMPLETED:
            return self._written
        self._check_open("complete")
        tail = bytes(memoryview(self._part)[:self._filled]) if self._part else b""
        self._part, self._filled = None, 0
        with self._failing():
            self._finish(tail)
        self.state = State.COMPLETED
        return self._written

    def abort(self) -> None:
        """Discard everything sent (idempotent; nothing is undone once completed). Raises only
        if the store cannot be told (after its retries); an upload already gone is fine."""
        if self.state in (State.COMPLETED, State.ABORTED):
            return
        self.state = State.FAILED
        self._part, self._filled = None, 0
        self._discard()
        self.state = State.ABORTED

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.state in (State.COMPLETED, State.ABORTED):
            return
        if error is None:
            self.abort()
            return
        try:
            self.abort()
        except Exception as failed:  # the error that left the block is the one to raise
            log.warning("could not abort the upload of %s: %r", self.key_url, failed)
            error.add_note(describe("the upload could not be aborted", key=self.key_url,
                                    error=repr(failed)))

    def _check_open(self, op: str) -> None:
        if self.state is not State.OPEN:
            raise ValueError(describe(f"cannot {op}: the upload is not open", key=self.key_url,
                                      state=self.state.value))

    @contextlib.contextmanager
    def _failing(self) -> Any:
        try:
            yield
        except BaseException:
            self.state = State.FAILED
            raise

    # ---- what a backend provides ----

    def _send(self, part: bytearray, number: int) -> None:
        """Send a full part (numbered from 1)."""
        raise NotImplementedError

    def _finish(self, tail: bytes) -> None:
        """Send ``tail`` (less than a part, maybe nothing) and make the object appear."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Remove whatever was sent; an upload already gone is fine."""
        raise NotImplementedError


class BufferedUpload(Upload):
    """Parts kept in memory, one PUT at complete (memory://, and filesystems without a
    streaming write that keeps the object invisible until it is whole)."""

    REUSES_PARTS = False

    def __init__(self, key_url: str, part_bytes: int, put: Put) -> None:
        super().__init__(key_url, part_bytes)
        self._put = put
        self._kept: list[bytes | bytearray] = []

    def _send(self, part: bytearray, number: int) -> None:
        self._kept.append(part)

    def _finish(self, tail: bytes) -> None:
        self._kept.append(tail)
        data = b"".join(self._kept)
        self._kept = []
        self._put(data)

    def _discard(self) -> None:
        self._kept = []


class LocalUpload(Upload):
    """Parts written into a temporary file beside the target, renamed into place at complete.

    Its parts are at most :data:`LOCAL_PART_BYTES`, each made durable as it is written
    (fdatasync): a large object never has more than one such part of dirty pages, which a
    later sync (a WAL's, on the same disk) would otherwise have to wait for at once."""

    def __init__(self, key_url: str, path: str, part_bytes: int, run: Run, *,
                 cleanup: Callable[[], None], syncing: Syncing = DURABLE) -> None:
        super().__init__(key_url, min(part_bytes, LOCAL_PART_BYTES))
        self._sync = syncing
        self._path = path
        self._run = run
        self._cleanup = cleanup  # removes the directories left empty by an abort
        self._tmp: str | None = None
        self._fd: int | None = None
        self._offset = 0  # where the next part goes in the temporary file
        self._renamed = False

    def _write_at(self, data: bytes | bytearray, offset: int) -> None:
        if self._fd is None:
            directory = os.path.dirname(self._path)
            self._sync.makedirs(directory)
            self._tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}")
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        view = memoryview(data)
        while view:  # at its offset: a retry writes the same bytes at the same place
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def _send(self, part: bytearray, number: int) -> None:
        def attempt() -> None:
            self._write_at(part, self._offset)
            assert self._fd is not None
            self._sync.data(self._fd)

        self._run("upload_part", attempt, len(part))
        self._offset += len(part)

    def _finish(self, tail: bytes) -> None:
        def attempt() -> None:
            if not self._renamed:
                self._write_at(tail, self._offset)  # creates the file of an empty object
                assert self._fd is not None and self._tmp is not None
                self._sync.data(self._fd)
                os.close(self._fd)
                self._fd = None
                os.replace(self._tmp, self._path)
                self._renamed = True
            self._sync.directory(os.path.dirname(self._path))

        self._run("complete_upload", attempt, len(tail))

    def _discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        tmp = self._tmp
        if tmp is None or self._renamed:
            return
        with contextlib.suppress(FileNotFoundError):
            self._run("abort_upload", lambda: os.unlink(tmp))
        self._tmp = None
        self._cleanup()


class S3Upload(Upload):
    """An S3 multipart upload through s3fs's ``call_s3`` (one PUT if the object is smaller
    than a part)."""

    @staticmethod
    def takes(fs: AbstractFileSystem) -> bool:
        """Whether ``fs`` offers S3's own calls: s3fs, or a wrapper passing ``call_s3`` on."""
        return callable(getattr(fs, "call_s3", None))

    def __init__(self, key_url: str, path: str, part_bytes: int, run: Run, put: Put, *,
                 fs: AbstractFileSystem, limit: Callable[[], dict[str, float]]) -> None:
        if not S3_MIN_PART_BYTES <= part_bytes <= S3_MAX_PART_BYTES:
            raise ValueError(describe("S3 takes parts of 5 MiB to 5 GiB", key=key_url,
                                      part_bytes=part_bytes))
        super().__init__(key_url, part_bytes)
        self._path = path
        self._bucket, _, self._key = path.partition("/")
        self._run = run
        self._put = put
        self._fs = fs
        self._limit = limit  # the per-attempt timeout of an asynchronous filesystem
        self._upload_id: str | None = None
        self._etags: list[str] = []  # of the parts sent, in order

    def _s3(self, method: str, **kwargs: Any) -> Any:
        return self._fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs,
                                **self._limit())

    def _send(self, part: bytearray | bytes, number: int) -> None:
        if number > S3_MAX_PARTS:
            raise ValueError(describe("too many parts for S3: make the parts bigger",
                                      key=self.key_url, part_bytes=self.part_bytes,
                                      parts=number, limit=S3_MAX_PARTS))
        if self._upload_id is None:
            created = self._run("create_upload", lambda: self._s3("create_multipart_upload"))
            self._upload_id = str(created["UploadId"])
        upload_id = self._upload_id
        answer = self._run("upload_part", lambda: self._s3(
            "upload_part", UploadId=upload_id, PartNumber=number, Body=part), len(part))
        self._etags.append(str(answer["ETag"]))

    def _finish(self, tail: bytes) -> None:
        if self._upload_id is None:
            self._put(tail)  # smaller than a part: no multipart at all
            return
        if tail:
            self._send(tail, self._parts + 1)
            self._parts += 1
        upload_id = self._upload_id
        parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(self._etags, 1)]
        tried = False

        def attempt() -> None:
            nonlocal tried
            try:
                self._s3("complete_multipart_upload", UploadId=upload_id,
                         MultipartUpload={"Parts": parts})
            except Exception as error:
                # NoSuchUpload after an attempt whose answer was lost: it may have completed.
                if not (tried and classify(error) == "missing" and self._landed()):
                    raise
            finally:
                tried = True

        self._run("complete_upload", attempt)
        self._fs.invalidate_cache(self._path)

    def _landed(self) -> bool:
        """Whether the object under the key is this upload's: its size, and its ETag if the
        server gives the multipart kind (the MD5 of the parts' MD5s, ``-`` the part count)."""
        self._fs.invalidate_cache(self._path)
        try:
            info = self._fs.info(self._path, **self._limit())
        except FileNotFoundError:
            return False
        etag = str(info.get("ETag") or "").strip('"')
        if "-" in etag:
            digests = b"".join(bytes.fromhex(e.strip('"')) for e in self._etags)
            digest = hashlib.md5(digests, usedforsecurity=False).hexdigest()
            if etag != f"{digest}-{len(self._etags)}":
                return False
        return int(info.get("size") or 0) == self._written

    def _discard(self) -> None:
        if self._upload_id is None:
            return
        upload_id = self._upload_id
        with contextlib.suppress(FileNotFoundError):  # NoSuchUpload: gone already
            self._run("abort_upload", lambda: self._s3("abort_multipart_upload",
                                                       UploadId=upload_id))
        self._upload_id = None


__all__ = ["BufferedUpload", "LocalUpload", "S3Upload", "State", "Upload"]
