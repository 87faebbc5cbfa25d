"""A machine without a C compiler still installs streamlib, which then runs on the Python twin.

A real sdist is built from a copy of the source tree (so that a file missing from MANIFEST.in
fails here), then installed by pip with the compiler replaced by `false`; a fresh interpreter
imports the result and round-trips a batch. And a user's project with nothing but that install
and a test file runs its tests on the fixtures of the installed pytest plugin.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.once]

CHECK = """
import streamlib, streamlib.codec as codec
from streamlib import Record, RecordBatch
assert streamlib.__file__.startswith({target!r}), streamlib.__file__
b = RecordBatch.from_records([Record(b"v", key=b"k", timestamp=1)])
assert codec.decode_batch(codec.encode_batch(1, 0, b))[1].records() == b.records()
print(codec.backend)
"""

USER_TEST = """
import importlib.metadata

import streamlib


def test_the_fixture_store_is_the_installed_one(streamlib_store):
    assert streamlib.__file__.startswith({target!r}), streamlib.__file__
    installed = importlib.metadata.distribution("streamlib")  # the first on the path
    assert str(installed.locate_file("")).startswith({target!r})
    assert [e.value for e in installed.entry_points if e.group == "pytest11"] == [
        "streamlib.testing.plugin"]
    stream = streamlib_store.create_stream("orders")
    stream.append([b"first"])
    assert [r.value for _, r in stream.fetch(0).records()] == [b"first"]
"""


def test_install_without_a_compiler_falls_back_to_python(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "CHANGELOG.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "native", source / "native")
    shutil.copytree(ROOT / "streamlib", source / "streamlib",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_segment_codec.c"))
    dist = tmp_path / "dist"
    sdist = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(dist)],
        cwd=source, capture_output=True, text=True, timeout=120)
    assert sdist.returncode == 0, sdist.stderr
    tarball = dist / sdist.stdout.strip().splitlines()[-1]
    target = tmp_path / "site"
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
         "--target", str(target), str(tarball)],
        env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    assert not list(target.rglob("_segment_codec*.so")), "the extension was built after all"

    run_env = {k: v for k, v in os.environ.items() if k != "STREAMLIB_PURE"}
    run_env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-c", CHECK.format(target=str(target))],
                         env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "python"
    # said once, at import, with what to do about it
    assert run.stderr.count("C codec is not built") == 1 and "reinstall" in run.stderr

    run_env["STREAMLIB_PURE"] = "0"
    forced = subprocess.run([sys.executable, "-c", "import streamlib.codec"], env=run_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert forced.returncode != 0 and "extension" in forced.stderr and "not built" in forced.stderr


    # A user's project: its own folder, a test file, pytest, and the installed streamlib.
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_orders.py").write_text(USER_TEST.format(target=str(target)))
    del run_env["STREAMLIB_PURE"]
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            env=run_env, cwd=project, capture_output=True, text=True,
                            timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout


def test_the_wheel_is_tagged_for_the_stable_abi(tmp_path: pathlib.Path) -> None:
    """cffi builds the extension for the stable ABI: the wheel says so (``cp311-abi3``), and
    holds the ``abi3`` extension; and the ``py.typed`` marker (PEP 561: type checkers read
    the installed package's annotations)."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.so", "__pycache__", "_segment_codec.c", "*.egg-info",
        "tests", "benchmarks", "docs", "examples"))
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600)
    assert wheel.returncode == 0, wheel.stdout + wheel.stderr
    (built,) = (tmp_path / "dist").glob("*.whl")
    assert built.name.endswith("-cp311-abi3-linux_x86_64.whl"), built.name
    with zipfile.ZipFile(built) as archive:
        assert any(n.endswith("_segment_codec.abi3.so") for n in archive.namelist())
        assert "streamlib/py.typed" in archive.namelist()
