"""A machine without a C compiler still installs streamlib, which then runs on the Python twin.

A real sdist is built from a copy of the source tree (so that a file missing from MANIFEST.in
fails here), then installed by pip with the compiler replaced by `false`; a fresh interpreter
imports the result and round-trips a batch.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

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

    run_env["STREAMLIB_PURE"] = "0"
    forced = subprocess.run([sys.executable, "-c", "import streamlib.codec"], env=run_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert forced.returncode != 0 and "extension" in forced.stderr and "not built" in forced.stderr

