"""Fault-injecting components, for tests of retries, failures, slow storage and races.

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

:class:`FaultyMetadataStore` does the same for a :class:`~streamlib.meta.MetadataStore`: it
wraps a real one and passes every call through, except that a :class:`MetadataRule` picks
calls by operation (the method's name), by their arguments (``match``, given a :class:`Call`)
and by the calling thread's name (``thread``), and for the next ``times`` of them (None: all)
delays them, raises before them (nothing applied), or — with ``after=True`` — lets them apply
and then raises (a lost answer), or holds them at a :class:`Gate` until the test releases it
(before the call, or with ``after=True`` once it ran and before it returns). A gate's
``reached`` event tells the test that a call is waiting there, so no test sleeps::

    faulty = FaultyMetadataStore(SQLiteMetadataStore(path))
    faulty.inject("commit", StorageUnavailable, after=True)     # applied, answer lost
    faulty.inject("open_stream", FencedError, match=lambda call: call.args["stream_id"] == 7)
    gate = faulty.pause("refresh", after=True, thread="streamlib-fences")
    assert gate.reached.wait(5)          # the fence thread has refreshed and waits to return
    ...                                  # look at the world while it is stopped there
    gate.release()                       # (or faulty.clear(): drops every rule, opens every gate)
    assert faulty.calls["commit"] == 1

Operations: every method of the interface (:data:`METADATA_OPERATIONS`), ``refresh`` included;
``version`` and ``capabilities`` are the wrapped store's, read through without faults.

Lock order: every lock here is a leaf — ``FaultyFileSystem._lock``, ``FaultyMetadataStore._lock``
and ``Gate._arrived`` — never held while a wrapped call runs, waits at a gate or sleeps, so the
wrapped filesystem's and store's own locks are never taken under one. A rule's predicates
(``match``, ``thread``) run under their wrapper's lock and must not call it.
"""

from __future__ import annotations

import errno
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from streamlib.errors import describe
from streamlib.io import TMP_PREFIX
from streamlib.meta import (
    ANY,
    AnyValue,
    Capabilities,
    Commit,
    DoomedObject,
    MetadataStore,
    NodeMeta,
    ObjectMeta,
    Replacement,
    Retention,
    StreamMeta,
    StreamObject,
)

T = TypeVar("T")

ErrorFactory = Callable[[str], BaseException]


def _client_error(code: str, status: int, message: str, operation: str) -> BaseException:
    from botocore.exceptions import ClientError

    error: BaseException = ClientError({"Error": {"Code": code, "Message": message},
                                        "ResponseMetadata": {"HTTPStatusCode": status}},
                                       operation)
    return error


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
    hits: int = 0  # GUARDED_BY(FaultyFileSystem._lock); read alone by tests
    paths: list[str] = field(default_factory=list)  # GUARDED_BY(FaultyFileSystem._lock)
    cleared: threading.Event = field(default_factory=threading.Event)
    """Set when the rule is cleared: a call in its delay goes on at once."""

    def applies(self, op: str, path: str) -> bool:
        return (op == self.op and (self.times is None or self.hits < self.times)
                and (self.match is None or self.match(path)))


class FaultyFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec has no types
    """Passes calls through to ``fs``, applying injected :class:`Rule` s first.

    Also keeps a log of finished calls (``events``: ``(op, path, ok)`` in completion order),
    the ranges of ``get`` calls as they start (``get_ranges``: ``(path, start, end)``), the
    number of ``put`` and of ``get`` calls running (``running_puts``, ``running_gets``) and the
    highest number of each seen running at once (``max_concurrent_puts``,
    ``max_concurrent_gets``)."""

    cachable = False  # every wrapper is its own instance, whatever it wraps
    protocol = "faulty"

    def __init__(self, fs: AbstractFileSystem, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fs = fs
        # These eight: GUARDED_BY(_lock); tests read them alone (a moment's value; complete
        # once the calls they look at have returned).
        self.rules: list[Rule] = []
        self.events: list[tuple[str, str, bool]] = []
        self.get_ranges: list[tuple[str, int | None, int | None]] = []
        self.calls: dict[str, int] = {}
        self.max_concurrent_puts = 0
        self.running_puts = 0
        self.max_concurrent_gets = 0
        self.running_gets = 0
        self._lock = threading.Lock()

    def inject(self, op: str, error: ErrorFactory | None = None, *, delay: float = 0.0,
               times: int | None = 1, match: Callable[[str], bool] | None = None,
               gate: threading.Event | None = None, after: bool = False) -> Rule:
        rule = Rule(op, error, delay, times, match, gate, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule; calls in a rule's delay go on at once."""
        with self._lock:
            rules, self.rules = self.rules, []
        for rule in rules:
            rule.cleared.set()

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
            elif op == "get":
                self.running_gets += 1
                self.max_concurrent_gets = max(self.max_concurrent_gets, self.running_gets)
        ok = False
        try:
            if rule is not None and rule.gate is not None and not rule.gate.wait(60):
                raise TimeoutError(f"a test left a gate closed: {op} {path}")
            if rule is not None and rule.delay:
                rule.cleared.wait(rule.delay)  # a slow call (cut short by clear())
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
                elif op == "get":
                    self.running_gets -= 1
                self.events.append((op, path, ok))

    @property
    def atomic_create(self) -> bool:
        """Whether ``pipe_file(mode="create")`` of the wrapped filesystem is atomic (S3's
        If-None-Match; memory, within this process), for ``ObjectStore.can_create``."""
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(
            self.fs.protocol)
        return bool({"s3", "s3a", "memory"} & protocols)

    # ---- what ObjectStore uses ----

    def _strip_protocol(self, path: str) -> str:
        return cast(str, self.fs._strip_protocol(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(path)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> Any:
        if isinstance(self.fs, LocalFileSystem) and kwargs.get("mode") != "create":
            # Whole or not at all, as ObjectStore's own local PUT (and S3's): a process killed
            # in the middle leaves no torn object.
            return self._run("put", path, lambda: self._replace_local(path, value))
        return self._run("put", path, lambda: self.fs.pipe_file(path, value, **kwargs))

    def _replace_local(self, path: str, value: bytes) -> None:
        tmp = f"{path.rpartition('/')[0]}/{TMP_PREFIX}{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, value)
        self.fs.mv(tmp, path)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> Any:
        with self._lock:
            self.get_ranges.append((path, start, end))
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


# ---- the metadata store ----

METADATA_OPERATIONS = frozenset({
    "create_stream", "set_retention", "get_stream", "get_stream_by_name", "streams",
    "open_stream", "release_streams", "trim_stream", "destroy_stream", "commit", "objects",
    "stream_objects", "live_objects", "replace", "doomed", "forget", "node", "register_node",
    "kv_get", "kv_items", "kv_write", "refresh", "collect_garbage", "close",
})
"""What rules of a :class:`FaultyMetadataStore` can pick: the interface's methods, by name."""


@dataclass(frozen=True, slots=True)
class Call:
    """One call of a :class:`FaultyMetadataStore`: the operation, its arguments by the names
    the interface gives them (``call.args["stream_id"]``, ``call.args["commit"]``) and the name
    of the thread that made it."""

    op: str
    args: Mapping[str, Any]
    thread: str

    def __str__(self) -> str:
        return describe("injected fault", op=self.op, thread=self.thread)


MetadataError = type[BaseException] | Callable[[Call], BaseException]
"""What a rule raises: an exception class (built with a message naming the call) or a factory
given the :class:`Call`."""


class Gate:
    """Where the calls of a pausing rule wait until the test lets them go.

    ``reached`` is set when the first call arrives (and stays set); :meth:`wait_reached` waits
    for more of them. :meth:`release` lets the waiting calls go on, and every later one."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._opened = threading.Event()
        self._arrived = threading.Condition()
        self.arrivals = 0
        """Calls that have come to the gate so far. GUARDED_BY(_arrived); read alone by
        ``repr`` and tests (a moment's value)."""

    def __repr__(self) -> str:
        return f"Gate(arrivals={self.arrivals}, released={self.released})"

    @property
    def released(self) -> bool:
        return self._opened.is_set()

    def release(self) -> None:
        self._opened.set()

    def wait_reached(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``count`` calls in all have come to the gate; False if ``timeout``
        (seconds) passed first."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.arrivals >= count, timeout)

    def _hold(self, call: Call, timeout: float) -> None:
        with self._arrived:
            self.arrivals += 1
            self._arrived.notify_all()
        self.reached.set()
        if not self._opened.wait(timeout):
            raise TimeoutError(describe("a test left a gate closed", op=call.op,
                                        thread=call.thread, waited=f"{timeout}s"))


@dataclass
class MetadataRule:
    """For the next ``times`` calls (None: all) of ``op`` that ``match`` (given the
    :class:`Call`) from a thread that ``thread`` names: hold them at ``gate`` until it is
    released, then sleep ``delay`` seconds, then raise ``error`` — all before the call, so that
    nothing of it applies, or with ``after`` once it has run (a change applied whose answer is
    lost; an answer held back). A call that raises by itself gets no ``after`` fault.

    ``thread`` is a thread's name (also matching the workers of a pool given it as
    ``thread_name_prefix``: ``name_0``, ``name_1``…) or a predicate on the name. ``hits``
    counts the calls the rule took; ``calls`` lists them."""

    op: str
    error: MetadataError | None = None
    delay: float = 0.0
    times: int | None = 1
    match: Callable[[Call], bool] | None = None
    thread: str | Callable[[str], bool] | None = None
    gate: Gate | None = None
    after: bool = False
    hits: int = 0  # GUARDED_BY(FaultyMetadataStore._lock); read alone by tests
    calls: list[Call] = field(default_factory=list)  # GUARDED_BY(FaultyMetadataStore._lock)
    cleared: threading.Event = field(default_factory=threading.Event)
    """Set when the rule is cleared: a call in its delay goes on at once."""

    def applies(self, call: Call) -> bool:
        return (call.op == self.op and (self.times is None or self.hits < self.times)
                and self._on_thread(call.thread) and (self.match is None or self.match(call)))

    def _on_thread(self, name: str) -> bool:
        if self.thread is None:
            return True
        if isinstance(self.thread, str):
            worker = name.removeprefix(f"{self.thread}_")
            return name == self.thread or (worker != name and worker.isdigit())
        return self.thread(name)


class FaultyMetadataStore(MetadataStore):
    """Passes every call through to ``store``, applying injected :class:`MetadataRule` s first
    (the module docstring shows how). The first rule that applies to a call takes it.

    ``calls`` counts the calls per operation, faulted ones included. ``capabilities`` and
    ``version`` are the wrapped store's. A call held at a gate for ``gate_timeout`` seconds
    raises ``TimeoutError``: a test that forgets a gate fails instead of hanging.

    Locks: ``_lock`` guards ``rules``, ``calls`` and each rule's ``hits`` and ``calls``; it is
    never held while a call runs, waits or sleeps, nor while another lock is taken. A rule's
    predicates run under it, so they must not call this store."""

    def __init__(self, store: MetadataStore, *, gate_timeout: float = 60.0) -> None:
        if not isinstance(store, MetadataStore):
            raise TypeError(f"store must be a MetadataStore, not {type(store).__name__}")
        self.store = store
        self.capabilities: Capabilities = store.capabilities
        self.gate_timeout = gate_timeout
        self.rules: list[MetadataRule] = []  # GUARDED_BY(_lock)
        self.calls: dict[str, int] = {}  # GUARDED_BY(_lock); read alone by tests
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultyMetadataStore({self.store!r})"

    # ---- rules ----

    def inject(self, op: str, error: MetadataError | None = None, *, delay: float = 0.0,
               times: int | None = 1, match: Callable[[Call], bool] | None = None,
               thread: str | Callable[[str], bool] | None = None, gate: Gate | None = None,
               after: bool = False) -> MetadataRule:
        """Add a rule (see :class:`MetadataRule`) and return it."""
        if op not in METADATA_OPERATIONS:
            raise ValueError(describe("no such metadata operation", op=op,
                                      known=", ".join(sorted(METADATA_OPERATIONS))))
        if times is not None and times < 1:
            raise ValueError(describe("times must be at least 1, or None for all", times=times))
        if delay < 0:
            raise ValueError(describe("delay must not be negative", delay=delay))
        rule = MetadataRule(op, error, delay, times, match, thread, gate, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def pause(self, op: str, *, after: bool = False, times: int | None = 1,
              match: Callable[[Call], bool] | None = None,
              thread: str | Callable[[str], bool] | None = None) -> Gate:
        """Hold the matching calls of ``op`` at a new gate — before the call, or with
        ``after`` once it ran and before it returns — and return the gate."""
        gate = Gate()
        self.inject(op, times=times, match=match, thread=thread, gate=gate, after=after)
        return gate

    def clear(self) -> None:
        """Drop every rule and release every gate (the calls waiting there go on)."""
        with self._lock:
            rules, self.rules = self.rules, []
        for rule in rules:
            rule.cleared.set()
            if rule.gate is not None:
                rule.gate.release()

    def _run(self, op: str, args: Mapping[str, Any], call: Callable[[], T]) -> T:
        here = Call(op, args, threading.current_thread().name)
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            rule = next((r for r in self.rules if r.applies(here)), None)
            if rule is not None:
                rule.hits += 1
                rule.calls.append(here)
        if rule is not None and not rule.after:
            self._strike(rule, here)
        result = call()
        if rule is not None and rule.after:
            self._strike(rule, here)
        return result

    def _strike(self, rule: MetadataRule, call: Call) -> None:
        if rule.gate is not None:
            rule.gate._hold(call, self.gate_timeout)
        if rule.delay:
            rule.cleared.wait(rule.delay)  # a slow call (cut short by clear())
        if isinstance(rule.error, type):
            raise rule.error(str(call))
        if rule.error is not None:
            raise rule.error(call)

    # ---- what the store's users see: refresh and version ----

    def refresh(self) -> int:
        """The wrapped store's ``refresh`` (0 where it has none)."""
        refresh: Callable[[], int] | None = getattr(self.store, "refresh", None)
        return self._run("refresh", {}, refresh if refresh is not None else lambda: 0)

    @property
    def version(self) -> int:
        """The wrapped store's ``version`` (0 where it has none)."""
        return int(getattr(self.store, "version", 0))

    # ---- streams ----

    def create_stream(self, name: str | None = None, *,
                      retention: Retention | None = None) -> StreamMeta:
        return self._run("create_stream", {"name": name, "retention": retention},
                         lambda: self.store.create_stream(name, retention=retention))

    def create_and_open(self, name: str | None = None, *, retention: Retention | None = None,
                        node_id: str | int, node_epoch: int | None = None) -> StreamMeta:
        return self._run("create_and_open", {"name": name, "retention": retention,
                                             "node_id": node_id, "node_epoch": node_epoch},
                         lambda: self.store.create_and_open(name, retention=retention,
                                                            node_id=node_id,
                                                            node_epoch=node_epoch))

    def set_retention(self, stream_id: int, retention: Retention | None) -> StreamMeta:
        return self._run("set_retention", {"stream_id": stream_id, "retention": retention},
                         lambda: self.store.set_retention(stream_id, retention))

    def get_stream(self, stream_id: int, *, include_destroyed: bool = False) -> StreamMeta:
        return self._run("get_stream", {"stream_id": stream_id,
                                        "include_destroyed": include_destroyed},
                         lambda: self.store.get_stream(stream_id,
                                                       include_destroyed=include_destroyed))

    def get_stream_by_name(self, name: str) -> StreamMeta:
        return self._run("get_stream_by_name", {"name": name},
                         lambda: self.store.get_stream_by_name(name))

    def streams(self) -> list[StreamMeta]:
        return self._run("streams", {}, self.store.streams)

    def open_stream(self, stream_id: int, *, expected_epoch: int | None = None,
                    node_id: str | int | None = None,
                    node_epoch: int | None = None) -> StreamMeta:
        return self._run("open_stream", {"stream_id": stream_id, "expected_epoch": expected_epoch,
                                         "node_id": node_id, "node_epoch": node_epoch},
                         lambda: self.store.open_stream(stream_id, expected_epoch=expected_epoch,
                                                        node_id=node_id, node_epoch=node_epoch))

    def release_streams(self, node_id: str | int, node_epoch: int,
                        stream_ids: Sequence[int]) -> None:
        self._run("release_streams", {"node_id": node_id, "node_epoch": node_epoch,
                                      "stream_ids": stream_ids},
                  lambda: self.store.release_streams(node_id, node_epoch, stream_ids))

    def trim_stream(self, stream_id: int, offset: int) -> StreamMeta:
        return self._run("trim_stream", {"stream_id": stream_id, "offset": offset},
                         lambda: self.store.trim_stream(stream_id, offset))

    def destroy_stream(self, stream_id: int) -> StreamMeta:
        return self._run("destroy_stream", {"stream_id": stream_id},
                         lambda: self.store.destroy_stream(stream_id))

    # ---- objects and nodes ----

    def commit(self, commit: Commit) -> None:
        self._run("commit", {"commit": commit}, lambda: self.store.commit(commit))

    def objects(self, stream_id: int, from_offset: int = 0) -> list[ObjectMeta]:
        return self._run("objects", {"stream_id": stream_id, "from_offset": from_offset},
                         lambda: self.store.objects(stream_id, from_offset))

    def stream_objects(self, stream_id: int, from_offset: int = 0, *,
                       limit: int | None = None) -> list[StreamObject]:
        return self._run("stream_objects", {"stream_id": stream_id, "from_offset": from_offset,
                                            "limit": limit},
                         lambda: self.store.stream_objects(stream_id, from_offset, limit=limit))

    def live_objects(self, after: str | None = None, limit: int = 1000) -> list[ObjectMeta]:
        return self._run("live_objects", {"after": after, "limit": limit},
                         lambda: self.store.live_objects(after, limit))

    def replace(self, replacement: Replacement) -> None:
        self._run("replace", {"replacement": replacement},
                  lambda: self.store.replace(replacement))

    def doomed(self) -> list[DoomedObject]:
        return self._run("doomed", {}, self.store.doomed)

    def forget(self, keys: Sequence[str]) -> int:
        return self._run("forget", {"keys": keys}, lambda: self.store.forget(keys))

    def node(self, node_id: str | int) -> NodeMeta:
        return self._run("node", {"node_id": node_id}, lambda: self.store.node(node_id))

    def register_node(self, node_id: str | int) -> NodeMeta:
        return self._run("register_node", {"node_id": node_id},
                         lambda: self.store.register_node(node_id))

    # ---- key-value entries ----

    def kv_get(self, namespace: str, key: str, *,
               max_staleness_ms: int | None = None) -> bytes | None:
        return self._run("kv_get", {"namespace": namespace, "key": key,
                                    "max_staleness_ms": max_staleness_ms},
                         lambda: self.store.kv_get(namespace, key,
                                                   max_staleness_ms=max_staleness_ms))

    def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, bytes]]:
        return self._run("kv_items", {"namespace": namespace, "prefix": prefix},
                         lambda: self.store.kv_items(namespace, prefix))

    def kv_write(self, namespace: str, key: str, value: bytes | None, *,
                 expected: bytes | AnyValue | None = ANY, node_id: str | int | None = None,
                 node_epoch: int | None = None) -> bool:
        return self._run("kv_write", {"namespace": namespace, "key": key, "value": value,
                                      "expected": expected, "node_id": node_id,
                                      "node_epoch": node_epoch},
                         lambda: self.store.kv_write(namespace, key, value, expected=expected,
                                                     node_id=node_id, node_epoch=node_epoch))

    def collect_garbage(self, grace_ms: int, *,
                        dry_run: bool = False) -> list[tuple[str, str, int, str]]:
        return self._run("collect_garbage", {"grace_ms": grace_ms, "dry_run": dry_run},
                         lambda: self.store.collect_garbage(grace_ms, dry_run=dry_run))

    def close(self) -> None:
        self._run("close", {}, self.store.close)


__all__ = ["METADATA_OPERATIONS", "Call", "FaultyFileSystem", "FaultyMetadataStore", "Gate",
           "MetadataError", "MetadataRule", "Rule", "access_denied", "connection_reset",
           "internal_error", "slow_down", "timeout"]
