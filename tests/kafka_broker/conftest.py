"""Fixtures of the Kafka broker tests: broker processes on 127.0.0.1 (kafka_processes.py),
each stopped after its test."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_processes import BrokerProcess, Brokers


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Brokers]:
    """A factory of broker processes in the test's directory; each is stopped (SIGTERM) after
    the test, and one that did not exit cleanly fails it with its log."""
    found = Brokers(tmp_path)
    yield found
    failed = [(name, status, output) for name, status, output in found.stop_all()
              if status not in (0, -signal.SIGKILL, None)]
    assert not failed, "\n".join(f"broker {n} exited with {s}:\n{o}" for n, s, o in failed)


@pytest.fixture
def broker(brokers: Brokers) -> BrokerProcess:
    """One broker on local disk (the store's default: WAL, objects and metadata under DIR)."""
    return brokers("broker")
