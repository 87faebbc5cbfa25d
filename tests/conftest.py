"""Suite-wide checks and settings.

The suite runs once per codec backend (Makefile: STREAMLIB_PURE=0, then 1). The first check
below makes a silent fallback impossible: STREAMLIB_PURE=0 with no C extension fails the run
instead of quietly testing the Python twin twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import HealthCheck, settings

import streamlib.codec
from streamlib.testing.s3 import moto_bucket, moto_s3, seaweedfs_bucket, seaweedfs_s3
from streamlib.testing.wal import recover_all
from streamlib.wal._group import GroupCommitWal
from streamlib.wal.block import BlockWal
from streamlib.wal.file import FileWal

__all__ = ["moto_bucket", "moto_s3", "seaweedfs_bucket", "seaweedfs_s3"]  # S3 server fixtures

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
settings.load_profile("default")


def pytest_report_header(config: pytest.Config) -> str:
    return f"streamlib codec backend: {streamlib.codec.backend}"


def pytest_sessionstart(session: pytest.Session) -> None:
    policy = os.environ.get("STREAMLIB_PURE")
    expected = {"0": "c", "1": "python"}.get(policy or "")
    if expected and streamlib.codec.backend != expected:
        raise pytest.UsageError(f"STREAMLIB_PURE={policy} but the codec backend is "
                                f"{streamlib.codec.backend}")
    if os.environ.get("SANITIZED_CODEC") == "1":  # set by make asan
        from streamlib.codec import _segment_codec

        if "build/asan" not in _segment_codec.__file__:
            raise pytest.UsageError(f"make asan loaded the wrong extension: "
                                    f"{_segment_codec.__file__}")


@pytest.fixture(autouse=True)
def memory_filesystem_left_as_found() -> Iterator[None]:
    """What a test leaves on ``memory://`` goes with it. memory:// is one dict per process and
    fsspec lists it by walking every key: the thousands of keys earlier tests left there made
    every later listing slower (the in-memory manifest's model test several times slower).
    Keys of a module's or the session's fixtures are made before this runs: they stay."""
    files, directories = MemoryFileSystem.store, MemoryFileSystem.pseudo_dirs
    files_before, directories_before = set(files), set(directories)
    yield
    for key in [key for key in files if key not in files_before]:
        files.pop(key, None)
    directories[:] = [d for d in directories if d in directories_before]


GROUP_COMMIT_WALS: dict[str, Callable[[Path], GroupCommitWal]] = {
    "file": lambda path: FileWal(path / "wal"),
    "block": lambda path: BlockWal(path / "ring", size=4 << 20, direct_io=False),
}


@pytest.fixture(params=sorted(GROUP_COMMIT_WALS))
def wal(request: pytest.FixtureRequest, tmp_path: Path) -> GroupCommitWal:
    """A recovered, empty group-commit WAL of each local kind (a 4 MiB ring for the block WAL),
    closed after the test."""
    opened = GROUP_COMMIT_WALS[request.param](tmp_path)
    recover_all(opened)
    request.addfinalizer(opened.close)
    return opened


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The pure-Python pass skips tests marked ``once`` (crash rounds, installs): what they
    test does not depend on the codec, and the C pass runs them. Keeps the suite in budget."""
    if os.environ.get("STREAMLIB_PURE") != "1":
        return
    skip = pytest.mark.skip(reason="marked once: runs in the C-codec pass")
    for item in items:
        if "once" in item.keywords:
            item.add_marker(skip)

