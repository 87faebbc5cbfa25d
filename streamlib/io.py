"""The object store: with its streaming uploads (:mod:`streamlib.io_upload`), the one module of
streamlib that talks to fsspec (STYLE.md point 4).

:class:`ObjectStore` wraps an fsspec filesystem and a root path, and gives the rest of streamlib
a small key–value view of it — ``put``, ``upload`` (part by part), ranged ``get``, ``list``
(with sizes and modification times), ``delete``, ``exists``, ``server_time`` — with one retry
policy and one translation of errors:

- a **transient** error (a timeout, a refused or dropped connection, HTTP 500/502/503/504,
  ``SlowDown`` and other throttling) is retried with exponential backoff and full jitter until
  the policy's time budget is spent, then raised as
  :class:`~streamlib.errors.StorageUnavailable` naming the operation and the key;
- a **missing** object (or bucket) is a plain :class:`FileNotFoundError` whose message names
  the key: it is not retried, and it is what fsspec itself raises, so callers need no
  streamlib-specific handling for it;
- a local filesystem that cannot store data now (``ENOSPC`` a full disk, ``EDQUOT`` a quota,
  ``EROFS`` a read-only mount, ``EIO`` a failing device) is **unavailable**: raised at once as
  :class:`~streamlib.errors.StorageUnavailable` naming the operation, the key and the errno (its
  ``errno`` attribute is the original one); the caller keeps its data and tries again later;
- anything else (access denied, a bad request) is **permanent**: raised at once, unchanged,
  with a note naming the operation and the key.

Errors are classified by their shape, not their Python type alone: s3fs turns a botocore
``ClientError`` into a builtin ``OSError`` whose ``errno`` says little (a 412 is ``EINVAL``), so
the HTTP status and error code are read from the chain (``e.__cause__``).

Stores built by :meth:`ObjectStore.from_url` for ``s3://`` turn s3fs's and botocore's own
retries off, so that the budget here is the one that holds; a filesystem passed in is used as
its owner configured it (its retries then run inside each of ours).

Lock order: an :class:`ObjectStore` holds no lock and no mutable state (every field is fixed at
construction), so threads share one freely; it sits below every lock of the node's order
(:mod:`streamlib.node`) and calls nothing back up. The module's one lock, ``_MEMORY_CREATE``, is a
leaf held around a ``memory://`` create's check and write only (a plain put does not take it: no
caller puts and creates one key at once).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import functools
import logging
import os
import random as _random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import fsspec
from fsspec import AbstractFileSystem
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.local import LocalFileSystem

from streamlib.cost import Meter
from streamlib.disk import DURABLE, Syncing
from streamlib.errors import ConfigError, StorageUnavailable, describe

if TYPE_CHECKING:
    from streamlib.io_upload import Upload

log = logging.getLogger(__name__)

T = TypeVar("T")

TMP_PREFIX = ".streamlib-tmp-"
"""Names of the temporary files of a local PUT or upload; :meth:`ObjectStore.list` hides them."""

UPLOAD_PART_BYTES = 16 * 2**20
"""Default part size of :meth:`ObjectStore.upload`: 16 MiB."""

_S3_PROTOCOLS = frozenset({"s3", "s3a"})

# botocore ClientError codes worth another try (AWS's own list of throttling and server errors).
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "ProvisionedThroughputExceededException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "OperationAborted",
    "ConditionalRequestConflict",  # S3: a conditional write raced another; try again
    "500", "502", "503", "504",
})
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
# Without a ClientError to read, these errnos mean "try again" (EBUSY and EREMOTEIO are what
# s3fs gives 503/SlowDown and 500/InternalError when it drops the cause).
_TRANSIENT_ERRNOS = frozenset({
    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN, errno.EBUSY,
    errno.EREMOTEIO,
})
_PERMANENT_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG,
})
"""Local failures that say what they are whatever was being handled when they were raised."""
_UNAVAILABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Local failures of the storage itself, whatever was being handled when they were raised: no
call of this budget would do better, but a later round may (room freed, the mount writable).
``EIO`` means the same unless a network failure led to it (then it is transient)."""

Kind = Literal["missing", "transient", "permanent", "unavailable", "invalid_range"]

_MEMORY_CREATE = threading.Lock()  # Lock order: a leaf. Makes a memory:// create atomic


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and what led to it, nearest first: the chain a traceback shows (the
    ``__cause__``, else the ``__context__`` unless suppressed)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 16 and not any(current is c for c in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return chain


def _client_error(error: BaseException) -> tuple[str, int | None] | None:
    """(code, HTTP status) of the first botocore ClientError in the chain, if any."""
    # Looked up, not imported: if botocore was never imported, no error can come from it.
    exceptions = sys.modules.get("botocore.exceptions")
    if exceptions is None:
        return None
    for link in _chain(error):
        if isinstance(link, exceptions.ClientError):
            response = getattr(link, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code, status if isinstance(status, int) else None
    return None


def _no_credentials(error: BaseException) -> bool:
    """Whether botocore found no credentials to sign with (none given, none in the
    environment)."""
    exceptions = sys.modules.get("botocore.exceptions")
    return exceptions is not None and any(isinstance(link, exceptions.NoCredentialsError)
                                          for link in _chain(error))


def _transport_error(link: BaseException) -> bool:
    """Whether ``link`` is a connection or timeout failure of botocore, aiohttp or the OS."""
    if isinstance(link, TimeoutError | ConnectionError):
        return True
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None and isinstance(link, botocore.ConnectionError
                                           | botocore.HTTPClientError
                                           | botocore.IncompleteReadError):
        return True
    parsers = sys.modules.get("botocore.parsers")
    if parsers is not None and isinstance(link, parsers.ResponseParserError):
        return True  # how some throttling answers arrive: as XML that does not parse
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(link, aiohttp.ClientConnectionError
                                              | aiohttp.ClientPayloadError)


def classify(error: BaseException) -> Kind:
    """What an error from a filesystem call means: ``missing``, ``transient`` (worth another
    try), ``unavailable`` (the local storage cannot store data now: a full disk, a read-only
    mount, an I/O error), ``invalid_range`` (HTTP 416: the object exists but the range is past
    its end) or ``permanent``."""
    # Whatever was being handled when these were raised (their context) does not change them
    # unless it is an HTTP answer (s3fs raises its translations while handling the answer).
    found = _client_error(error)
    if isinstance(error, FileExistsError):
        return "permanent"
    if found is None and isinstance(error, FileNotFoundError):
        return "missing"
    if found is None and isinstance(error, OSError) and error.errno in _PERMANENT_ERRNOS:
        return "permanent"
    if found is None and isinstance(error, OSError) and error.errno in _UNAVAILABLE_ERRNOS:
        return "unavailable"
    if found is not None:  # the HTTP answer is the best evidence there is
        code, status = found
        if code == "InvalidRange" or status == 416:
            return "invalid_range"
        if code in _MISSING_CODES or status == 404:
            return "missing"
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return "transient"
        return "permanent"
    chain = _chain(error)
    if any(_transport_error(link) for link in chain):
        return "transient"
    if isinstance(error, FileNotFoundError):
        return "missing"
    if any(isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNOS for link in chain):
        return "transient"
    if isinstance(error, OSError) and error.errno == errno.EIO:
        return "unavailable"
    return "permanent"


ATTEMPT_FLOOR = 1.0
"""Seconds an attempt on an asynchronous filesystem may always take, whatever is left of its
call's budget (a call given a budget of 0 still gets one real try)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient errors are retried: exponential backoff with full jitter.

    Before attempt *n + 1* the caller sleeps a random time in ``[0, min(cap, initial * 2^n))``;
    once the next attempt would start more than ``timeout`` seconds after the first, the call
    fails with StorageUnavailable. On an asynchronous filesystem (s3fs: the network) each
    attempt also gets the rest of the budget as its deadline (at least
    :data:`ATTEMPT_FLOOR`), so that a server that accepts and never answers costs at most the
    budget plus that floor; a local filesystem's calls run to their end."""

    initial: float = 0.1
    """Ceiling of the first backoff, seconds. Default: 0.1."""
    cap: float = 5.0
    """Largest backoff ceiling, seconds. Default: 5."""
    timeout: float = 60.0
    """Time budget of one call, retries included, seconds. Default: 60. Zero: one attempt."""

    def __post_init__(self) -> None:
        for name in ("initial", "cap", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"retry {name} must be a non-negative number: "
                                 f"{name}=`{value}`")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key (relative to the store's root), its size in bytes and when it
    was last modified (POSIX seconds by the store's clock, :meth:`ObjectStore.server_time`;
    None if the filesystem does not say). Equality compares key and size only."""

    key: str
    size: int
    modified: float | None = field(default=None, compare=False)


_MODIFIED_FIELDS = ("LastModified", "mtime", "created")
"""Where fsspec infos give the modification time: s3fs a datetime, local a float (``mtime``),
memory a float (``created``: its objects are never modified in place)."""


def _modified(info: Mapping[str, Any]) -> float | None:
    """The modification time in an fsspec info, as POSIX seconds (None if it has none)."""
    for name in _MODIFIED_FIELDS:
        value = info.get(name)
        if isinstance(value, datetime):
            if value.tzinfo is None:  # S3 and fsspec times are UTC; never the local zone
                value = value.replace(tzinfo=UTC)
            return value.timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _s3_defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """Storage options for an s3fs filesystem this module owns: our own instance (so that
    changing it touches nobody else's), no listings cache (a listing must show the latest
    writes), no retries below ours, and connect/read timeouts short enough for a WAL."""
    merged: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    merged.update(options)
    # total_max_attempts counts the first try; botocore's max_attempts counts only retries.
    config = {"retries": {"mode": "standard", "total_max_attempts": 1},
              "connect_timeout": 5, "read_timeout": 30}
    config.update(merged.get("config_kwargs") or {})
    merged["config_kwargs"] = config
    return merged


def open_filesystem(url: str, storage_options: Mapping[str, Any] | None = None
                    ) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and root path for ``url``. For ``s3://`` the filesystem is a new
    instance of its own, without a listings cache and with s3fs's and botocore's retries off
    (unless ``storage_options`` say otherwise), so that the retries of :class:`ObjectStore`
    are the only ones and their budget holds."""
    options = dict(storage_options or {})
    protocol = fsspec.utils.get_protocol(url)
    own_s3 = protocol in _S3_PROTOCOLS and "skip_instance_cache" not in options
    if protocol in _S3_PROTOCOLS:
        options = _s3_defaults(options)
    fs, root = fsspec.url_to_fs(url, **options)
    if own_s3:
        fs.retries = 1  # s3fs's own loop (a class attribute; this instance is ours alone)
    return fs, root


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _unavailable(op: str, key_url: str, error: OSError) -> StorageUnavailable:
    """A local storage failure (a full disk, a read-only mount, an I/O error) as the kind
    callers handle, keeping its errno."""
    code = error.errno if error.errno is not None else errno.EIO
    unavailable = StorageUnavailable(describe(
        "object store cannot store data now", op=op, key=key_url,
        errno=errno.errorcode.get(code, code), error=error.strerror or error))
    unavailable.errno = code  # not strerror: with both, str() would show only them
    return unavailable


class ObjectStore:
    """Keys and bytes under ``root`` of an fsspec filesystem, with retries.

    ``fs`` is any fsspec filesystem; ``root`` a path in it (``bucket/prefix`` for S3, a
    directory for ``file://``); keys are ``/``-separated paths relative to it. Keep keys valid
    as file paths too: on ``file://`` and ``memory://`` a key cannot also be the start of
    another (``a/b`` and ``a/b/c``), as it can on S3.

    Guarantees: a ``put`` is atomic and durable when it returns — S3 and memory give that by
    themselves; on a local filesystem the bytes go to a temporary file that is fsynced and
    renamed (and its directory fsynced). ``list`` shows every completed ``put``.

    ``sleep``, ``clock`` and ``random`` are the backoff's components, for tests (``random``
    returns a float in [0, 1))."""

    def __init__(self, fs: AbstractFileSystem, root: str, *,
                 retry: RetryPolicy | None = None,
                 sleep: Callable[[float], object] = time.sleep,  # the retry backoff's pause
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[], float] = _random.random,
                 syncing: Syncing = DURABLE) -> None:
        if not isinstance(fs, AbstractFileSystem):
            raise TypeError(f"fs must be an fsspec filesystem, not {type(fs).__name__}")
        self.fs = fs
        self.root = fs._strip_protocol(root).rstrip("/")
        if not self.root:
            raise ValueError(f"an object store needs a root (a bucket, a directory): "
                             f"root=`{root}`")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._random = random
        self._local = isinstance(fs, LocalFileSystem)
        self.syncing = syncing  # how local puts are made durable: fixed
        self._async = isinstance(fs, AsyncFileSystem)
        self._deadline = threading.local()  # .at: the running call's deadline (this thread's)
        self._calls_lock = threading.Lock()
        self._calls: dict[int, tuple[str, str, float]] = {}  # GUARDED_BY(_calls_lock)
        self._meter: Meter | None = None  # what the calls cost (metered): fixed per view
        self.purpose = ""
        protocols = _protocols(fs)
        # Some filesystems keep the scheme in their paths (http: the root is the whole URL).
        self.url = (self.root if any(self.root.startswith(f"{p}://") for p in protocols)
                    else f"{protocols[0]}://{self.root}")

    @classmethod
    def from_url(cls, url: str, storage_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> ObjectStore:
        """A store for ``url`` (``memory://name``, ``file:///path``, ``s3://bucket/prefix``, any
        fsspec URL); ``storage_options`` go to the filesystem (for S3: ``key``, ``secret``,
        ``client_kwargs={"endpoint_url": …}``…); ``kwargs`` to the constructor."""
        fs, root = open_filesystem(url, storage_options)
        return cls(fs, root, **kwargs)

    def with_retry(self, **changes: float) -> ObjectStore:
        """The same store (same filesystem) with some retry settings changed."""
        other = ObjectStore(self.fs, self.root, retry=dataclasses.replace(self.retry, **changes),
                            sleep=self._sleep, clock=self._clock, random=self._random,
                            syncing=self.syncing)
        other._meter, other.purpose = self._meter, self.purpose
        return other

    def metered(self, meter: Meter | None, purpose: str) -> ObjectStore:
        """A view of this store whose requests ``meter`` counts under ``purpose``
        (:mod:`streamlib.cost`): the same filesystem, retries and calls in flight."""
        view = copy.copy(self)
        view._meter, view.purpose = meter, purpose
        return view

    def purposed(self, purpose: str) -> ObjectStore:
        """This view's meter, counting under another ``purpose``."""
        return self.metered(self._meter, purpose)

    @property
    def meter(self) -> Meter | None:
        """What counts this view's requests (None: nothing)."""
        return self._meter

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # ---- paths ----

    def _path(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid object key (empty part, '.' or '..'): key=`{key}`")
        return f"{self.root}/{key}"

    def _key_url(self, key: str) -> str:
        return f"{self.url}/{key}"

    # ---- retries and errors ----

    @property
    def remote(self) -> bool:
        """Whether the store is across a network (not a local directory, not memory)."""
        return not self._local and "memory" not in _protocols(self.fs)

    def check_writable(self) -> None:
        """Whether this process can write here: a local directory must be writable (the
        nearest one that exists, as the root is made at the first put), memory always is, and
        anywhere else one small object is written and deleted.

        A store that cannot be written raises ``PermissionError`` saying why: a read-only
        mount, no permission, or a filesystem that refuses to write or delete (fsspec's
        read-only implementations — http, zip, tar, data — answer ``NotImplementedError`` or
        ``ValueError``), and an S3 store with no credentials. A missing bucket is
        ``FileNotFoundError``; a store that does not answer (or whose disk is full)
        ``StorageUnavailable``."""
        if self._local:
            self._check_local_writable()
            return
        if "memory" in _protocols(self.fs):
            return
        key = f"streamlib-probe/{uuid.uuid4().hex}"
        op = "put"
        try:
            self.put(key, b"probe")
            op = "delete"
            self.delete([key])
        except (NotImplementedError, ValueError) as error:
            raise PermissionError(errno.EROFS, describe(
                f"the object store is read-only: its filesystem cannot {op} objects",
                url=self.url, filesystem=type(self.fs).__name__, error=repr(error))) from error
        except StorageUnavailable as error:
            if error.errno != errno.EROFS:
                raise
            raise PermissionError(errno.EROFS, describe(
                "the object store is read-only", url=self.url, error=error)) from error
        except Exception as error:
            if not _no_credentials(error):
                raise
            raise PermissionError(errno.EACCES, describe(
                "no credentials found for the object store (give them in storage_options or "
                "the environment)", url=self.url)) from error

    def _check_local_writable(self) -> None:
        directory = self.root
        while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
            directory = os.path.dirname(directory)
        if os.access(directory, os.W_OK | os.X_OK):
            return
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            raise PermissionError(errno.EROFS, describe(
                "the object store is read-only: its directory is on a read-only mount",
                url=self.url, directory=directory))
        raise PermissionError(errno.EACCES, describe(
            "the object store is not writable: no permission to write in its directory",
            url=self.url, directory=directory))

    def in_flight(self) -> tuple[int, float]:
        """Calls running now and how long the oldest has been running (seconds): a stalled
        object store shows here before its calls fail."""
        now = time.monotonic()
        with self._calls_lock:
            return len(self._calls), max((now - s for _, _, s in self._calls.values()),
                                         default=0.0)

    def _limit(self) -> dict[str, float]:
        """The keyword that bounds one network call of an asynchronous filesystem by what is
        left of its budget (nothing for other filesystems)."""
        at = getattr(self._deadline, "at", None)
        if not self._async or at is None:
            return {}
        return {"timeout": max(ATTEMPT_FLOOR, at - self._clock())}

    def _call(self, op: str, key: str, attempt: Callable[[], T], sent: int = 0) -> T:
        """Run ``attempt`` until it succeeds, retrying transient errors within the budget
        (each attempt a request of ``sent`` bytes, for the meter)."""
        token = id(threading.current_thread())
        with self._calls_lock:
            self._calls[token] = (op, key, time.monotonic())
        meter = self._meter
        if meter is not None:
            inner, purpose = attempt, self.purpose

            def attempt() -> T:
                meter.request(purpose, op)
                if sent:
                    meter.moved(purpose, sent=sent)
                found = inner()
                if op == "get" and isinstance(found, bytes):
                    meter.moved(purpose, received=len(found))
                return found
        try:
            return self._attempts(op, key, attempt)
        finally:
            with self._calls_lock:
                self._calls.pop(token, None)
            self._deadline.at = None

    def _attempts(self, op: str, key: str, attempt: Callable[[], T]) -> T:
        started = self._clock()
        self._deadline.at = started + self.retry.timeout
        ceiling = self.retry.initial
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt()
            except Exception as error:
                kind = classify(error)
                if kind == "missing":
                    raise FileNotFoundError(
                        errno.ENOENT, describe("no such object (or bucket)", op=op,
                                               key=self._key_url(key))) from error
                if kind == "unavailable":
                    assert isinstance(error, OSError)  # what classify says
                    raise _unavailable(op, self._key_url(key), error) from error
                if kind != "transient":
                    error.add_note(describe("object store call failed", op=op,
                                            key=self._key_url(key)))
                    raise
                pause = self._random() * ceiling  # full jitter
                elapsed = self._clock() - started
                if elapsed + pause > self.retry.timeout:
                    log.debug("giving up %s of %s: %r", op, key, _chain(error))
                    raise StorageUnavailable(describe(
                        "object store unavailable after retries", op=op,
                        key=self._key_url(key), attempts=attempts,
                        elapsed=f"{elapsed:.2f}s", error=repr(error))) from error
                log.debug("retrying %s of %s in %.3fs after %r", op, self._key_url(key),
                          pause, error)
                self._sleep(pause)
                ceiling = min(ceiling * 2, self.retry.cap)

    # ---- operations ----

    def put(self, key: str, data: bytes | bytearray | memoryview, *,
            part_bytes: int | None = None) -> None:
        """Store ``data`` under ``key`` (replacing any object there), atomically and durably.

        On S3, ``data`` of at least twice ``part_bytes`` goes up as a multipart upload in parts
        of that size (s3fs's own threshold when not given: parts of 50 MiB); the object
        appears only when the upload completes, so atomicity holds either way."""
        path = self._path(key)
        if self._local:
            self._call("put", key, lambda: self._put_local(path, data), len(data))
            return
        body = bytes(data) if isinstance(data, memoryview) else data
        options: dict[str, Any] = {}
        if part_bytes is not None and "s3" in _protocols(self.fs):
            options["chunksize"] = part_bytes
        self._call("put", key, lambda: self.fs.pipe_file(path, body, **options,
                                                          **self._limit()), len(body))

    def upload(self, key: str, *, part_bytes: int = UPLOAD_PART_BYTES) -> Upload:
        """An object written part by part, holding about one part (``part_bytes``; S3: 5 MiB
        at least) in memory; it appears whole and durable under ``key`` only at complete. The
        backends (S3 multipart, a local temporary file, memory): :mod:`streamlib.io_upload`."""
        from streamlib import io_upload  # it builds on this module: imported when first used

        path, url = self._path(key), self._key_url(key)

        def run(op: str, attempt: Callable[[], T], sent: int = 0) -> T:
            return self._call(op, key, attempt, sent)

        if self._local:
            return io_upload.LocalUpload(url, path, part_bytes, run,
                                         cleanup=lambda: self._remove_empty_dirs([path]),
                                         syncing=self.syncing)
        put = functools.partial(self.put, key)
        if io_upload.S3Upload.takes(self.fs):
            return io_upload.S3Upload(url, path, part_bytes, run, put, fs=self.fs,
                                      limit=self._limit)
        return io_upload.BufferedUpload(url, part_bytes, put)

    def server_time(self) -> float:
        """The store's clock now, POSIX seconds: what the ``modified`` times of :meth:`list`
        compare with, whatever this machine's clock says. Across a network: an empty probe
        object (``streamlib-probe/<uuid>``) put, its time read, deleted — whole seconds on S3,
        so up to a second behind. Local, memory, or no time given: ``time.time()``."""
        if not self.remote:
            return time.time()
        key = f"streamlib-probe/{uuid.uuid4().hex}"
        self.put(key, b"")
        try:
            info = self._call("info", key, lambda: self.fs.info(self._path(key),
                                                                **self._limit()))
        finally:
            self.delete([key])
        found = _modified(info)
        return time.time() if found is None else found

    @property
    def can_create(self) -> bool:
        """Whether :meth:`create` is atomic against other writers here: S3 (``If-None-Match``),
        a local filesystem (a hard link) and memory (a lock: one process)."""
        return (self._local or bool({"s3", "s3a", "memory"} & set(_protocols(self.fs)))
                or getattr(self.fs, "atomic_create", False) is True)

    @property
    def create_trusts_the_server(self) -> bool:
        """Whether :meth:`create` relies on the server honouring a condition (S3's
        If-None-Match) rather than on this machine's file system or memory: a caller that
        depends on it should check it once (the manifest does, at open)."""
        return self.can_create and not self._local and "memory" not in _protocols(self.fs)

    def create(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` only if no object is there, atomically against every
        other writer: :class:`FileExistsError` if one is (also when an earlier try of this very
        call, whose answer was lost, created it: the caller tells which by reading it back).
        ``ConfigError`` on a store that cannot do it (:attr:`can_create`)."""
        path = self._path(key)
        if not self.can_create:
            raise ConfigError("objects_url", "this store cannot create an object only if absent "
                              "(S3 If-None-Match, a local or memory filesystem)", self.url)
        if self._local:
            self._call("create", key, lambda: self._put_local(path, data, exclusive=True),
                       len(data))
            return
        if "memory" in _protocols(self.fs):  # fsspec's own "create" checks, then writes
            def attempt() -> None:
                with _MEMORY_CREATE:
                    if self.fs.exists(path):
                        raise FileExistsError(errno.EEXIST, "object exists", path)
                    self.fs.pipe_file(path, bytes(data))
        else:
            def attempt() -> None:
                try:
                    self.fs.pipe_file(path, bytes(data), mode="create", **self._limit())
                except Exception as error:
                    found = _client_error(error)
                    if isinstance(error, FileExistsError) or (found is not None and (
                            found[0] == "PreconditionFailed" or found[1] == 412)):
                        raise FileExistsError(errno.EEXIST, "object exists", path) from error
                    raise
        self._call("create", key, attempt, len(data))

    def _put_local(self, path: str, data: bytes | bytearray | memoryview, *,
                   exclusive: bool = False) -> None:
        directory = os.path.dirname(path)
        self.syncing.makedirs(directory)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self.syncing.data(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if exclusive:  # a hard link fails if the name exists: the bytes appear whole or not
            try:
                os.link(tmp, path)
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
        self.syncing.directory(directory)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end`` None: to its end), as a slice would
        give them: a range past the end gives fewer bytes or none. Only non-negative offsets.
        Raises FileNotFoundError if there is no such object."""
        path = self._path(key)
        start = 0 if start is None else start
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"get takes non-negative offsets: start=`{start}` end=`{end}`")
        if end is not None and end <= start:
            # No request: S3 ignores a backwards Range header and sends the whole object.
            return b""

        def attempt() -> bytes:
            # Always a range: without one s3fs sends a HEAD first (one request more).
            try:
                return bytes(self.fs.cat_file(path, start=start, end=end, **self._limit()))
            except Exception as error:
                if classify(error) == "invalid_range":
                    return b""  # the object exists; the range starts at or past its end
                raise

        return self._call("get", key, attempt)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), sorted by key.
        A prefix with nothing under it gives an empty list."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        directory = prefix.rpartition("/")[0]
        base = f"{self.root}/{directory}" if directory else self.root
        strip = len(self.root) + 1

        def attempt() -> list[ObjectInfo]:
            self.fs.invalidate_cache(base)
            try:
                found = self.fs.find(base, detail=True, **self._limit())
            except FileNotFoundError as error:
                if (_client_error(error) or ("",))[0] == "NoSuchBucket":
                    raise  # a missing bucket is a configuration error, not an empty listing
                return []
            infos = []
            for name, info in found.items():
                key = name[strip:]
                if (info.get("type") != "directory" and key.startswith(prefix)
                        and not key.rpartition("/")[2].startswith(TMP_PREFIX)):
                    infos.append(ObjectInfo(key, int(info.get("size") or 0), _modified(info)))
            return sorted(infos, key=lambda i: i.key)

        return self._call("list", prefix, attempt)

    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects (missing ones are ignored), in as few requests as the filesystem
        allows (S3: one per 1000 keys)."""
        keys = list(keys)
        paths = [self._path(k) for k in keys]
        if not paths:
            return

        def attempt() -> None:
            try:
                self.fs.rm(paths, **self._limit())
            except FileNotFoundError:
                # fsspec refuses a list with a missing path in it; S3 does not care.
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(path, **self._limit())
            if self._local:
                self._remove_empty_dirs(paths)

        self._call("delete", keys[0] if len(keys) == 1 else f"{keys[0]} (+{len(keys) - 1})",
                   attempt)

    def _remove_empty_dirs(self, paths: Iterable[str]) -> None:
        """A local store leaves no empty directories behind (S3 has none to leave)."""
        for directory in sorted({os.path.dirname(p) for p in paths}, reverse=True):
            while len(directory) > len(self.root):
                try:
                    os.rmdir(directory)
                except OSError:
                    break  # not empty, or gone already
                directory = os.path.dirname(directory)

    def exists(self, key: str) -> bool:
        path = self._path(key)

        def attempt() -> bool:
            try:
                self.fs.info(path, **self._limit())
            except FileNotFoundError as error:
                if classify(error) != "missing":
                    raise
                return False
            return True

        return self._call("exists", key, attempt)


__all__ = ["ObjectInfo", "ObjectStore", "RetryPolicy", "classify", "open_filesystem"]
