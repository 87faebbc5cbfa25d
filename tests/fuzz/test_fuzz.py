"""Every decoder of stored bytes survives mutated input within its bounds: only the exceptions it
documents, under a second of CPU, under 64 MiB (fuzz.harness). A short run, a few seconds, in a
child process of the active backend (the suite runs once per backend); ``make fuzz`` runs
longer. The seed is fixed so that a run finds what the last one found (``FUZZ_SEED`` to vary
it); a violation's input is kept under the test's tmp_path and named in the failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fuzz.targets import TARGETS
from streamlib import codec

SECONDS = 3.0  # the whole run, shared by the targets
TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fuzz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [sys.executable, "-m", "fuzz", "--backend", codec.backend, "--seconds",
               str(SECONDS), "--seed", os.environ.get("FUZZ_SEED", "20261207"),
               "--json", str(out / "report.json"), "--failures", str(out / "failures")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    if not (out / "report.json").exists():  # the harness itself failed, or a hang ended it
        pytest.fail(f"the fuzz run ended without a report (exit {run.returncode}):\n"
                    f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    found: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert found["backend"] == codec.backend
    return found


@pytest.mark.parametrize("name", [t.name for t in TARGETS])
def test_decoder_keeps_its_bounds_on_mutated_input(report: dict[str, Any], name: str) -> None:
    tally = report["targets"][name]
    problems = "\n".join(f"{v['kind']}: {v['detail']}\n  input: {v['input']}"
                         for v in tally["violations"])
    assert not tally["violations"], f"{name} ({report['backend']}):\n{problems}"
    assert tally["inputs"] > tally["seeds"], "no mutated input was tried"
