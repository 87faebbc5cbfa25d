"""The examples run as users run them: the quickstart as a script, the S3 example against the
local moto server, the user guide's snippets in order."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib.testing.s3 import S3Bucket

EXAMPLES = Path(__file__).parents[2] / "examples"
GUIDE = Path(__file__).parents[2] / "docs" / "guide.md"
NEEDS = "# needs: "
"""The first line of a guide snippet that needs what a test machine lacks (a bucket, a device),
saying what: such a snippet is compiled, not run."""
ONCE = pytest.mark.once
"""The examples on S3 and across nodes show object stores and the hand-over, whose bytes the
quickstart and the guide's snippets already write and read in both passes: the C pass runs
them (conftest.py)."""


def test_quickstart_runs_and_shows_the_data_survived() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True,
                          text=True, timeout=120, check=True)
    out = done.stdout
    assert "five concurrent appends landed at [2, 3, 4, 5, 6]" in out
    assert "after trim(2): offset out of range" in out and "valid=`[2, 7)`" in out
    assert "stream 1 'orders': offsets [2, 7)" in out
    assert "orders from 2: ['{\"order\": 3}'" in out
    assert "clicks: opaque batch of 3 records" in out
    assert done.stderr == ""


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@ONCE
def test_s3_example_on_moto(moto_bucket: S3Bucket) -> None:
    example = _load("s3_store")
    options = moto_bucket.endpoint.storage_options()
    counts = example.run(f"{moto_bucket.url}/streams", options)
    assert counts == {"orders": 50, "payments": 50, "audit": 50}
    keys = moto_bucket.fs.find(f"{moto_bucket.name}/streams/data")
    assert len(keys) == 1  # three streams, one flush: one multi-stream object


@ONCE
def test_s3_example_with_the_wal_in_the_bucket(moto_bucket: S3Bucket) -> None:
    example = _load("s3_store")
    counts = example.run(f"{moto_bucket.url}/both", moto_bucket.endpoint.storage_options(),
                         object_wal=True)
    assert counts == {"orders": 50, "payments": 50, "audit": 50}


@ONCE
def test_shared_nodes_example_runs() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "shared_nodes.py")],
                          capture_output=True, text=True, timeout=120, check=True)
    out = done.stdout
    assert "node a, after the move: FencedError" in out
    assert "node c took over node b: offsets {1: [5, 9]}" in out
    assert out.split("\n")[2:-1] == [f"  order {n}" for n in range(5)] + [
        f"  order {n} (from b)" for n in range(5, 9)]


@ONCE
def test_shared_nodes_example_on_moto(moto_bucket: S3Bucket) -> None:
    """The same on S3, as a user would run it: credentials and endpoint in the environment."""
    endpoint = moto_bucket.endpoint
    env = {**os.environ, "AWS_ACCESS_KEY_ID": endpoint.key,
           "AWS_SECRET_ACCESS_KEY": endpoint.secret, "AWS_ENDPOINT_URL": endpoint.url,
           "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "shared_nodes.py"),
                           f"{moto_bucket.url}/shared"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "node c took over node b: offsets {1: [5, 9]}" in done.stdout
    assert "  order 8 (from b)" in done.stdout


def guide_snippets() -> list[tuple[int, str]]:
    """The guide's ``python`` code blocks, each with the line its code starts on."""
    text = GUIDE.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)]


def test_every_guide_snippet_runs_or_says_what_it_needs(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippets run in order in one namespace, as a reader would paste them, in an empty
    directory; one that needs hardware or a cloud says so on its first line."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}  # a script's, or a REPL's
    ran = needing = 0
    try:
        for line, code in guide_snippets():
            compiled = compile(code, f"{GUIDE}:{line}", "exec")  # each must at least parse
            if code.startswith(NEEDS):
                assert code.splitlines()[0].strip() != NEEDS.strip(), f"guide.md:{line}"
                needing += 1
                continue
            exec(compiled, namespace)  # the guide's own code, as a reader runs it
            ran += 1
    finally:
        for value in namespace.values():
            if isinstance(value, streamlib.StreamStore):
                value.close()
    assert ran >= 6 and needing >= 3  # the guide as it is: none was skipped by mistake


@ONCE  # the guide's text against the error kinds: no bytes
def test_the_guide_error_table_lists_every_error_kind() -> None:
    text = GUIDE.read_text()
    section = text[text.index("## Errors\n"):]
    section = section[:section.index("\n## ")]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
    listed = {name for row in rows for name in re.findall(r"`(\w+)`", row[1] + row[2])}
    exported = {name for name in streamlib.__all__
                if isinstance(getattr(streamlib, name), type)
                and issubclass(getattr(streamlib, name), streamlib.StreamLibError | Warning)}
    assert "StreamLibError" in section
    assert exported - {"StreamLibError"} <= listed, exported - listed
