"""Giving the memory a store frees back to the system (docs/lifecycle.md, "Memory").

A store frees large buffers all the time, in many threads: decoded blocks leave the message
cache, upload rounds and compaction parts are built and dropped. glibc's malloc keeps what is
freed in its arenas (one per thread that allocates, up to eight per core) and on its own gives
back only the top of each heap, so the process's RSS creeps up while the bytes it holds stay
flat: a soak of 50 streams with 7 readers under a 64 MiB cache went from 134 to 201 MiB in ten
minutes, the live Python objects unchanged. ``malloc_trim(0)`` returns every whole free page
of every arena (a few milliseconds; ctypes releases the GIL for it): with it every 10 s the
same soak stayed between 131 and 144 MiB (at the default 30 s, with a pass every 5 minutes:
127 to 148 MiB). Past that, over 20 minutes, fragmentation it cannot return still creeps.

:func:`trim` is that call where the C library is glibc, and nothing elsewhere (musl, macOS:
they return memory on their own terms). The store calls it from its lifecycle thread every
``memory_trim_interval_ms``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Callable

log = logging.getLogger(__name__)


def _glibc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError) as error:  # a glibc without it: nothing to do
        log.debug("no malloc_trim: %r", error)
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim_function: Callable[[int], int] = function
    return trim_function


_TRIM = _glibc_trim()

AVAILABLE = _TRIM is not None
"""Whether :func:`trim` does anything here (glibc)."""


def trim() -> bool:
    """Give the free memory of every malloc arena back to the system; whether any was given
    (always False where the C library is not glibc)."""
    return bool(_TRIM(0)) if _TRIM is not None else False


__all__ = ["AVAILABLE", "trim"]
