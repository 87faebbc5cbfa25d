"""A fault-injecting fsspec filesystem, for tests of retries, failures and slow storage.

:class:`FaultyFileSystem` wraps a real filesystem (memory, local, s3fs) and passes every call
through, except that rules can delay a call or make it raise first — LevelDB's fault-injection
``Env``, for object stores. Nothing inside s3fs or botocore is touched: the wrapped filesystem
runs for real, and the errors raised are built in the shapes s3fs produces (a builtin
``OSError`` whose ``__cause__`` is a botocore ``ClientError`` carrying the HTTP answer)::

    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    faulty.inject("put", slow_down, times=2)                   # two 503 SlowDown, then fine
    faulty.inject("put", delay=0.3, match=lambda p: p.endswith(".wal"), times=1)
    store = ObjectStore(faulty, "/root")

Operations: ``put`` (pipe_file), ``get`` (cat_file), ``list`` (find), ``delete`` (rm,
rm_file), ``info``.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem

ErrorFactory = Callable[[str], BaseException]


def _client_error(code: str, status: int, message: str, operation: str) -> BaseException:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def slow_down(path: str) -> BaseException:
    """What s3fs raises for an HTTP 503 SlowDown: OSError(EBUSY) caused by the ClientError."""
    error = OSError(errno.EBUSY, "Please reduce your request rate.")
    error.__cause__ = _client_error("SlowDown", 503, "Please reduce your request rate.",
                                    "PutObject")
    return error


def internal_error(path: str) -> BaseException:
    """What s3fs raises for an HTTP 500 InternalError."""
    error = OSError(errno.EREMOTEIO, "We encountered an internal error. Please try again.")
    error.__cause__ = _client_error("InternalError", 500, "internal error", "PutObject")
    return error


def connection_reset(path: str) -> BaseException:
    return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def timeout(path: str) -> BaseException:
    return TimeoutError(f"timed out: {path}")


def access_denied(path: str) -> BaseException:
    """What s3fs raises for an HTTP 403 AccessDenied: permanent, never retried."""
    error = PermissionError("Access Denied")
    error.__cause__ = _client_error("AccessDenied", 403, "Access Denied", "PutObject")
    return error


@dataclass
class Rule:
    """Hold matching calls until ``gate`` is set (if given), delay them by ``delay`` seconds,
    then raise ``error(path)`` (if given) — or, with ``after``, make the call and then raise
    (the server did it, the client never heard: a timeout after the fact); for the next
    ``times`` matching calls (None: all)."""

    op: str
    error: ErrorFactory | None = None
    delay: float = 0.0
    times: int | None = 1
    match: Callable[[str], bool] | None = None
    gate: threading.Event | None = None
    after: bool = False
    hits: int = 0
    paths: list[str] = field(default_factory=list)

    def applies(self, op: str, path: str) -> bool:
        return (op == self.op and (self.times is None or self.hits < self.times)
                and (self.match is None or self.match(path)))


class FaultyFileSystem(AbstractFileSystem):
    """Passes calls through to ``fs``, applying injected :class:`Rule` s first.

    Also keeps a log of finished calls (``events``: ``(op, path, ok)`` in completion order),
    the number of ``put`` calls running (``running_puts``) and the highest number seen running
    at once (``max_concurrent_puts``)."""

    cachable = False  # every wrapper is its own instance, whatever it wraps
    protocol = "faulty"

    def __init__(self, fs: AbstractFileSystem, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fs = fs
        self.rules: list[Rule] = []
        self.events: list[tuple[str, str, bool]] = []
        self.calls: dict[str, int] = {}
        self.max_concurrent_puts = 0
        self.running_puts = 0
        self._lock = threading.Lock()

    def inject(self, op: str, error: ErrorFactory | None = None, *, delay: float = 0.0,
               times: int | None = 1, match: Callable[[str], bool] | None = None,
               gate: threading.Event | None = None, after: bool = False) -> Rule:
        rule = Rule(op, error, delay, times, match, gate, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _run(self, op: str, path: str, call: Callable[[], Any]) -> Any:
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            rule = next((r for r in self.rules if r.applies(op, path)), None)
            if rule is not None:
                rule.hits += 1
                rule.paths.append(path)
            if op == "put":
                self.running_puts += 1
                self.max_concurrent_puts = max(self.max_concurrent_puts, self.running_puts)
        ok = False
        try:
            if rule is not None and rule.gate is not None and not rule.gate.wait(60):
                raise TimeoutError(f"a test left a gate closed: {op} {path}")
            if rule is not None and rule.delay:
                time.sleep(rule.delay)
            if rule is not None and rule.error is not None and not rule.after:
                raise rule.error(path)
            result = call()
            ok = True
            if rule is not None and rule.error is not None:
                raise rule.error(path)
            return result
        finally:
            with self._lock:
                if op == "put":
                    self.running_puts -= 1
                self.events.append((op, path, ok))

    @property
    def atomic_create(self) -> bool:
        """Whether ``pipe_file(mode="create")`` of the wrapped filesystem is atomic (S3's
        If-None-Match; memory, within this process), for ``ObjectStore.can_create``."""
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(
            self.fs.protocol)
        return bool({"s3", "s3a", "memory"} & protocols)

    # ---- what ObjectStore uses ----

    def _strip_protocol(self, path: str) -> str:  # type: ignore[override]
        return self.fs._strip_protocol(path)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(path)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> Any:
        return self._run("put", path, lambda: self.fs.pipe_file(path, value, **kwargs))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> Any:
        return self._run("get", path, lambda: self.fs.cat_file(path, start=start, end=end,
                                                               **kwargs))

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        return self._run("list", path, lambda: self.fs.find(path, maxdepth=maxdepth,
                                                            withdirs=withdirs, detail=detail,
                                                            **kwargs))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> Any:
        first = path if isinstance(path, str) else (path[0] if path else "")
        return self._run("delete", first, lambda: self.fs.rm(path, recursive=recursive,
                                                             maxdepth=maxdepth))

    def rm_file(self, path: str) -> Any:
        return self._run("delete", path, lambda: self.fs.rm_file(path))

    def info(self, path: str, **kwargs: Any) -> Any:
        return self._run("info", path, lambda: self.fs.info(path, **kwargs))


__all__ = ["FaultyFileSystem", "Rule", "access_denied", "connection_reset", "internal_error",
           "slow_down", "timeout"]
