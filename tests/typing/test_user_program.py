"""streamlib is a typed package: a user's program type-checks against it with ``mypy --strict``,
and runs.

mypy sees streamlib as an installed package here: the program is checked from a folder of its
own, with streamlib found on ``PYTHONPATH`` beside it, as it would be in site-packages — so
mypy reads streamlib's annotations only because of its ``py.typed`` marker (without it:
"module is installed, but missing library stubs or py.typed marker"), and reports no error
inside streamlib, only the program's. About 1 s, the cache starting empty.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[2]
PROGRAM = pathlib.Path(__file__).with_name("user_program.py")
pytestmark = pytest.mark.once


def test_the_user_program_passes_mypy_strict_against_the_installed_package(
        tmp_path: pathlib.Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "streamlib").symlink_to(ROOT / "streamlib", target_is_directory=True)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROGRAM, project / PROGRAM.name)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MYPYPATH", None)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         PROGRAM.name], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues found in 1 source file" in checked.stdout


def test_the_user_program_runs(tmp_path: pathlib.Path) -> None:
    from user_program import main

    seen = main(str(tmp_path))
    assert [s.order.customer for s in seen] == ["ada", "bob", "cy"]
