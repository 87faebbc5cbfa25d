"""Freed memory given back to the system (streamlib.heap): what glibc keeps after a thread's
large buffers are freed is returned by heap.trim(), and a store's lifecycle thread calls it
every memory_trim_interval_ms (and only where it does something)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from waits import wait_for

import streamlib
from streamlib import heap

pytestmark = [pytest.mark.once,
              pytest.mark.skipif(not heap.AVAILABLE, reason="malloc_trim is glibc's")]

FRAGMENTS = """
import sys
from streamlib import heap

def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) // 1024

first = bytearray(1 << 20)  # freed: glibc's mmap threshold moves above 1 MiB
del first
kept = [bytearray(1 << 20) for _ in range(200)]  # now in the heap, each page touched
last = bytearray(1 << 20)  # holds the heap's top: glibc cannot shrink it on its own
del kept
before = rss()
heap.trim()
print(before, rss())
"""


def test_trim_gives_back_what_glibc_kept() -> None:
    """200 MiB freed below a live buffer stay in the RSS until a trim, which returns them."""
    answer = subprocess.run([sys.executable, "-c", FRAGMENTS], capture_output=True, text=True,
                            check=True)
    before, after = map(int, answer.stdout.split())
    assert before - after >= 150, (before, after)


def lifecycle_threads() -> int:
    return sum(t.name == "streamlib-lifecycle" for t in threading.enumerate())


def test_the_lifecycle_thread_trims_at_its_interval(tmp_path: Path) -> None:
    threads = lifecycle_threads()
    with streamlib.open(tmp_path / "a", compaction_interval_ms=0,
                        memory_trim_interval_ms=20) as store:
        assert lifecycle_threads() == threads + 1
        wait_for(lambda: store.stats()["lifecycle"]["memory_trims"] >= 3,  # type: ignore[index]
                 what="three trims")


def test_no_thread_when_neither_interval_is_set(tmp_path: Path) -> None:
    threads = lifecycle_threads()
    with streamlib.open(tmp_path / "b", compaction_interval_ms=0, memory_trim_interval_ms=0):
        assert lifecycle_threads() == threads
