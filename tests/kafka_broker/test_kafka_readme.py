"""The commands of examples/kafka_broker/README.md work as written: each broker command line
runs (from a directory of its own, so that ``./data`` lands there; the port made free; the
bucket and its storage options those of a moto bucket), and the client snippet produces and
consumes against it."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from kafka_processes import ROOT, Brokers
from raw_client import RawClient
from waits import wait_for

from streamlib.testing.s3 import S3Bucket

pytestmark = pytest.mark.once

README = (ROOT / "examples" / "kafka_broker" / "README.md").read_text()
COMMANDS = [line for block in re.findall(r"```sh\n(.*?)```", README, re.S)
            for line in block.splitlines() if line.startswith("python -m examples.kafka_broker")]
SNIPPET = re.findall(r"```python\n(.*?)```", README, re.S)[0]
WAIT = 60.0  # bounds a hang only


def arguments(command: str, bucket: S3Bucket | None = None) -> list[str]:
    """The command's arguments after the module name, with the port free and the bucket real."""
    args = shlex.split(command)[3:]
    args[args.index("--port") + 1] = "0"
    if bucket is not None:
        where = args.index("--objects-url") + 1
        args[where] = args[where].replace("s3://my-bucket", bucket.url)
        if "--storage-options" in args:
            args[args.index("--storage-options") + 1] = json.dumps(bucket.storage_options)
        else:
            args += ["--storage-options", json.dumps(bucket.storage_options)]
    return args


def test_the_local_command_and_the_client_snippet_work(brokers: Brokers, tmp_path: Path) -> None:
    (local,) = [c for c in COMMANDS if "--objects-url" not in c]
    home = tmp_path / "home"
    home.mkdir()
    broker = brokers("readme", *arguments(local), cwd=home)
    assert (home / "data").is_dir()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(SNIPPET.replace("127.0.0.1:9092", broker.bootstrap), {})
    assert "b'ada' b'hello' [('lang', b'en')]" in printed.getvalue()


def test_the_s3_commands_work_on_moto(moto_bucket: S3Bucket, brokers: Brokers,
                                      tmp_path: Path) -> None:
    single, *several = [c for c in COMMANDS if "--objects-url" in c]
    home = tmp_path / "home"
    home.mkdir()
    broker = brokers("single", *arguments(single, moto_bucket), cwd=home)
    with RawClient(broker.bootstrap) as client:
        client.make_topic("readme")
    assert broker.stop() == 0
    started = []
    for n, command in enumerate(several):
        home = tmp_path / f"node-{n}"
        home.mkdir()
        args = arguments(command, moto_bucket)
        args[args.index("--objects-url") + 1] += "-shared"
        started.append(brokers(f"node-{n}", *args, cwd=home))
    assert len(started) == 2

    def both_seen() -> bool:
        with RawClient(started[0].bootstrap) as client:
            return client.brokers() == [1, 2]

    wait_for(both_seen, WAIT, "the two brokers to see each other")
