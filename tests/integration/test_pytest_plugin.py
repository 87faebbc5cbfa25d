"""The pytest plugin streamlib installs (docs/guide.md, "Testing your code"), run as a user's
suite would run it: a test file of its own, in a pytest process of its own.

And what the fixtures rely on: ``durability="unsafe-no-fsync"`` syncs nothing and is refused
outside a test, and a second open of an in-memory node in one process is refused."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import streamlib
from streamlib.errors import ConfigError, NodeLockedError
from streamlib.testing import plugin

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.once  # processes and files, not the codec: the C-codec pass runs it

USER_SUITE = '''
import streamlib


def test_a_store(streamlib_store):
    orders = streamlib_store.create_stream("orders")
    orders.append([b"first", b"second"])
    assert [r.value for _, r in orders.fetch(0).records()] == [b"first", b"second"]
    assert streamlib_store.config.durability == "unsafe-no-fsync"


def test_a_memory_store(streamlib_memory_store):
    s = streamlib_memory_store.create_stream("s")
    s.append([b"m"])
    streamlib_memory_store.flush()
    assert streamlib_memory_store.config.objects_url.startswith("memory://streamlib-test-")


def test_two_nodes(streamlib_stores):
    a, b = streamlib_stores("a"), streamlib_stores("b")
    a.create_stream("s").append([b"1"])
    a.flush()
    seen = b.open_stream("s", read_only=True).fetch(0, timeout=10)
    assert [r.value for _, r in seen.records()] == [b"1"]


def test_nodes_on_s3(streamlib_stores, s3_bucket):
    a = streamlib_stores("a", objects_url=s3_bucket.url + "/x",
                         storage_options=s3_bucket.storage_options)
    a.create_stream("s").append([b"on s3"])
    a.flush()
    assert s3_bucket.fs.find(s3_bucket.name + "/x")
'''


def plugin_options() -> list[str]:
    """``-p`` for the plugin where streamlib's install does not register it already."""
    registered = any(e.value == "streamlib.testing.plugin"
                     for e in importlib.metadata.entry_points(group="pytest11"))
    return ["-p", "no:cacheprovider"] + ([] if registered else ["-p", plugin.__name__])


def test_the_install_registers_the_plugin() -> None:
    (entry,) = [e for e in importlib.metadata.entry_points(group="pytest11")
                if e.name == "streamlib"]
    assert entry.value == "streamlib.testing.plugin"


def test_a_user_suite_uses_every_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_SUITE)
    result = pytester.runpytest_subprocess(*plugin_options())
    result.assert_outcomes(passed=4)


def test_a_file_left_open_in_the_store_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leak='''
import os

def test_keeps_a_file(streamlib_store):
    global kept
    kept = open(os.path.join(streamlib_store.config.path, "held"), "w")
''')
    result = pytester.runpytest_subprocess(*plugin_options())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*StoreLeak*held* still open*"])


def test_a_store_left_open_fails_the_test(pytester: pytest.Pytester) -> None:
    """A store the test opened itself and never closed keeps its threads: named at teardown."""
    # The threads are left running on purpose: the check need not give them its whole 5 s.
    pytester.makeconftest('''
from streamlib.testing import plugin

plugin.THREAD_EXIT_TIMEOUT = 0.2
''')
    pytester.makepyfile(test_leak='''
import streamlib

def test_opens_another(streamlib_store, tmp_path):
    global other
    other = streamlib.open(str(tmp_path / "other"), durability="unsafe-no-fsync")
''')
    result = pytester.runpytest_subprocess(*plugin_options())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*StoreLeak*thread 'streamlib-*still running*"])


def test_settings_reach_the_fixture_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_settings='''
import pytest

@pytest.fixture
def streamlib_settings():
    return {"compression": "zstd"}

def test_zstd(streamlib_store):
    assert streamlib_store.config.compression == "zstd"
''')
    result = pytester.runpytest_subprocess(*plugin_options())
    result.assert_outcomes(passed=1)


# ---- what the fixtures rely on ----

def _open_outside_pytest(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = ("import streamlib, sys; "
            "streamlib.open(sys.argv[1], durability='unsafe-no-fsync').close()")
    return subprocess.run([sys.executable, "-c", code, str(path)], env=env, text=True,
                          capture_output=True, timeout=120)


def test_unsafe_no_fsync_is_refused_outside_a_test(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "STREAMLIB_ALLOW_UNSAFE_NO_FSYNC")}
    refused = _open_outside_pytest(tmp_path / "a", env)
    assert refused.returncode != 0
    assert "ConfigError" in refused.stderr and "durability" in refused.stderr
    assert "STREAMLIB_ALLOW_UNSAFE_NO_FSYNC=1" in refused.stderr
    allowed = _open_outside_pytest(tmp_path / "b",
                                   {**env, "STREAMLIB_ALLOW_UNSAFE_NO_FSYNC": "1"})
    assert allowed.returncode == 0, allowed.stderr
    assert "nothing is fsynced" in allowed.stderr  # said loudly, once


def test_an_unknown_durability_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        streamlib.open(str(tmp_path), durability="sometimes")


@pytest.mark.parametrize("durability", ["fsync", "unsafe-no-fsync"])
def test_unsafe_no_fsync_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       durability: str) -> None:
    """Counted at the system calls (each still made): a store's whole life — open, create,
    append, upload, fetch, close — syncs nothing in the unsafe mode, and does sync in the
    durable one."""
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counted(fd: int, real: object = real, name: str = name) -> None:
            calls.append(name)
            real(fd)  # type: ignore[operator]

        monkeypatch.setattr(os, name, counted)
    with streamlib.open(str(tmp_path / "store"), durability=durability) as store:
        stream = store.create_stream("s")
        stream.append([b"x" * 100])
        store.flush()
        assert len(list(stream.fetch(0).records())) == 1
    if durability == "fsync":
        assert {"fsync", "fdatasync"} <= set(calls)
    else:
        assert calls == []


def test_a_second_open_of_an_in_memory_node_is_refused() -> None:
    settings = {"wal": "object", "metadata": "manifest",
                "objects_url": "memory://plugin-test-second-open"}
    first = streamlib.open(**settings)
    try:
        with pytest.raises(NodeLockedError, match="already open on these in-memory objects"):
            streamlib.open(**settings)
        streamlib.open(node_id="b", **settings).close()  # another node: welcome
        assert first.create_stream("still-mine").append([b"ok"]).next_offset == 1
    finally:
        first.close()
    streamlib.open(**settings).close()  # the claim went with the close
