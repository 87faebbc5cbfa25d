"""streamlib's pytest plugin: fixtures for users' own tests (docs/guide.md, "Testing your code").

Registered by the ``pytest11`` entry point, so installing streamlib is enough. It imports pytest,
as any plugin does; pytest imports it, never ``import streamlib``.

- ``streamlib_store``: a fresh store in the test's ``tmp_path``, closed after the test;
- ``streamlib_memory_store``: the same with its objects in a ``memory://`` of its own;
- ``streamlib_stores``: a factory of nodes sharing one object location through the manifest;
- ``streamlib_settings``: the settings the first two use (override it to change them);
- ``s3_server`` (session) and ``s3_bucket``: a moto S3 server on 127.0.0.1 and a fresh bucket.

Every store a fixture opened is closed at the test's teardown, and then checked: no thread it
started still runs, no file descriptor points into its directory. The stores use
``durability="unsafe-no-fsync"`` (nothing fsynced: a few ms a store instead of tens).

Lock order: none. A fixture runs in the test's thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib.io import open_filesystem
from streamlib.store import StreamStore
from streamlib.testing.s3 import MotoServer, S3Bucket, S3Endpoint, fresh_bucket, running

TEST_SETTINGS: dict[str, Any] = {
    "durability": "unsafe-no-fsync",
    "append_timeout_ms": 5000,
}
"""What every fixture's store uses, under the test's own ``streamlib_settings``."""

SHARED_SETTINGS: dict[str, Any] = {
    "metadata": "manifest",
    "fence_poll_ms": 20,
    "sync_interval_ms": 10,
    "reader_poll_ms": 10,
}
"""What ``streamlib_stores`` adds: nodes that see each other's changes within a few ms."""

THREAD_EXIT_TIMEOUT = 5.0
"""Seconds a closed store's threads may take, together, to end before the check calls them
leaked (close() joins them: a thread still running after it is one a store left behind)."""

STORE_THREADS = "streamlib-"
"""How the names of the threads a store starts begin (the test's own threads, and those a
library keeps for the whole process, such as fsspec's event loop, are not the store's)."""


class StoreLeak(AssertionError):
    """A store left a thread running or a file open after it was closed."""


class _Opened:
    """The stores one test opened, closed and checked at its teardown."""

    def __init__(self) -> None:
        self.stores: list[tuple[StreamStore, list[Path]]] = []
        self.threads_before = {t.ident for t in threading.enumerate()}

    def open(self, places: list[Path], **settings: Any) -> StreamStore:
        store = streamlib.open(**settings)
        self.stores.append((store, places))
        return store

    def close_and_check(self) -> None:
        errors: list[BaseException] = []
        for store, _ in reversed(self.stores):
            try:
                store.close()
            except BaseException as error:  # close every store before failing
                errors.append(error)
        if errors:
            raise errors[0]
        problems = _left_threads(self.threads_before)
        for _, places in self.stores:
            problems += _open_files(places)
        if problems:
            raise StoreLeak("a closed streamlib store left behind: " + "; ".join(problems))


def _left_threads(before: set[int | None]) -> list[str]:
    """A store's threads started since ``before`` that do not end once it is closed."""
    late = [t for t in threading.enumerate()
            if t.ident not in before and t.name.startswith(STORE_THREADS)]
    deadline = time.monotonic() + THREAD_EXIT_TIMEOUT
    for thread in late:  # waits on each thread's end, not for a fixed time
        thread.join(max(0.0, deadline - time.monotonic()))
    return [f"thread {t.name!r} still running" for t in late if t.is_alive()]


def _open_files(places: list[Path]) -> list[str]:
    """This process's file descriptors that point under ``places`` (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    roots = [str(p.resolve()) for p in places]
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if any(target == root or target.startswith(root + os.sep) for root in roots):
            found.append(f"file {target!r} still open (fd {fd.name})")
    return found


@contextlib.contextmanager
def _memory_url() -> Iterator[str]:
    """A ``memory://`` location of its own, deleted afterwards."""
    url = f"memory://streamlib-test-{uuid.uuid4().hex}"
    try:
        yield url
    finally:
        fs, root = open_filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(root, recursive=True)


@pytest.fixture
def streamlib_settings() -> dict[str, Any]:
    """Settings for ``streamlib_store`` and ``streamlib_memory_store`` (none by default):
    override this fixture in a test module or ``conftest.py`` to change them."""
    return {}


@pytest.fixture
def streamlib_store(tmp_path: Path, streamlib_settings: dict[str, Any]) -> Iterator[StreamStore]:
    """A fresh store in the test's ``tmp_path``, closed and checked for leaks after the test."""
    opened = _Opened()
    path = tmp_path / "streamlib"
    store = opened.open([path], path=str(path), **{**TEST_SETTINGS, **streamlib_settings})
    yield store
    opened.close_and_check()


@pytest.fixture
def streamlib_memory_store(tmp_path: Path, streamlib_settings: dict[str, Any]
                           ) -> Iterator[StreamStore]:
    """A fresh store whose objects are in a ``memory://`` of their own (wiped after the test);
    its WAL and metadata in the test's ``tmp_path``."""
    opened = _Opened()
    path = tmp_path / "streamlib"
    with _memory_url() as url:
        store = opened.open([path], path=str(path), objects_url=url,
                            **{**TEST_SETTINGS, **streamlib_settings})
        yield store
        opened.close_and_check()


@pytest.fixture
def streamlib_stores(tmp_path: Path) -> Iterator[Callable[..., StreamStore]]:
    """A factory of nodes on one object location: ``streamlib_stores("a")`` opens node ``a``
    (its own WAL and directory under ``tmp_path``) with the metadata in a manifest beside the
    objects, so that every node the test opens shares them. Objects go to
    ``tmp_path/objects`` unless ``objects_url`` (and ``storage_options``) say otherwise; other
    keywords are settings. Every node is closed and checked after the test."""
    opened = _Opened()
    default_objects = "file://" + str((tmp_path / "objects").resolve())

    def open_node(node_id: str = "0", **settings: Any) -> StreamStore:
        path = tmp_path / f"node-{node_id}"
        options = settings.pop("storage_options", None)
        settings.setdefault("objects_url", default_objects)
        return opened.open([path], path=str(path), node_id=node_id, storage_options=options,
                           **{**TEST_SETTINGS, **SHARED_SETTINGS, **settings})

    yield open_node
    opened.close_and_check()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """moto's S3 server on 127.0.0.1 (a free port) for the session: ``.url`` and
    ``.storage_options()`` (the credentials and endpoint s3fs needs)."""
    with running(MotoServer()) as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server: S3Endpoint) -> Iterator[S3Bucket]:
    """A fresh bucket on ``s3_server``, deleted with what it holds after the test: ``.url``
    (``s3://name``) and ``.storage_options``."""
    with fresh_bucket(s3_server) as bucket:
        yield bucket
