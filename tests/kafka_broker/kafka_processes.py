"""Broker processes for the Kafka broker tests (``python -m examples.kafka_broker`` on
127.0.0.1), started and stopped by the test, driven by real Kafka clients."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # bounds a hang only: a start takes about a second
STOP_TIMEOUT = 60.0


def _die_with_parent() -> list[str]:
    """A command prefix that makes the broker get SIGTERM if the test process dies."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []


class BrokerProcess:
    """One broker process. :meth:`start` returns once it printed ``listening on HOST:PORT``;
    a restart keeps its port (clients keep their bootstrap address)."""

    def __init__(self, data: Path, *args: str, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.data = data
        self.args = list(args)
        self.env = env or {}
        self.cwd = cwd
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log = data.parent / f"{data.name}.log"
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BrokerProcess:
        assert self.process is None or self.process.poll() is not None
        command = [*_die_with_parent(), sys.executable, "-m", "examples.kafka_broker",
                   "--data", str(self.data), "--port", str(self.port), *self.args]
        environment = {**os.environ, **self.env}
        if self.cwd != ROOT:  # the package is found from anywhere, as from the root
            environment["PYTHONPATH"] = str(ROOT)
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, cwd=self.cwd, env=environment,
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        self._lines = lines
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = None
        if line is None or not line.startswith("listening on "):
            self.kill()
            raise AssertionError(f"the broker did not start: {line!r}\n{self.output()}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        """SIGKILL: as a machine that loses power (the page cache keeps what was written)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def stop(self) -> int | None:
        """SIGTERM and wait: the broker closes its store; returns its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Brokers:
    """Every broker a test starts; all are stopped after it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.started: list[BrokerProcess] = []

    def __call__(self, name: str = "broker", *args: str, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> BrokerProcess:
        broker = BrokerProcess(self.home / name, *args, env=env, cwd=cwd)
        self.started.append(broker)
        return broker.start()

    def stop_all(self) -> list[tuple[str, int | None, str]]:
        return [(b.data.name, b.stop(), b.output()) for b in self.started]


def kafka_settings(**more: Any) -> dict[str, Any]:
    """Client settings shared by the tests (kafka-python and aiokafka take the same names)."""
    return {"request_timeout_ms": 30_000, **more}
