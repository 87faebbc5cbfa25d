"""The child of the lifecycle crash test: open the store, then run lifecycle passes and sweeps
until it dies.

    python lifecycle_crash_child.py CONFIG_JSON ACKLOG POINT NTH

``POINT`` is where the child kills itself with SIGKILL, the ``NTH`` time it gets there:

- ``replace_before``: a compaction wrote its outputs; the swap is not made (orphans);
- ``replace_after``: the swap is made (its answer never arrives): inputs doomed, none deleted;
- ``delete_mid``: a deletion of doomed objects (or of a sweep) has deleted half its keys;
- ``forget_before``: doomed objects deleted, the metadata not told (dangling doomed entries);
- ``none``: no point: the child appends, flushes, compacts and sweeps in a loop, logging every
  acknowledged append, until the parent kills it at a random moment.

The kill points wrap the store's own components (its metadata store's ``replace`` and
``forget``, its object store's ``delete``); the store's code runs untouched. ACKLOG gets
``A stream offset value`` after each acknowledged append (one unbuffered write each).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import streamlib
from streamlib import Record


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def countdown(nth: int) -> Callable[[], bool]:
    left = [nth]

    def reached() -> bool:
        left[0] -= 1
        return left[0] == 0

    return reached


def install(store: streamlib.StreamStore, point: str, nth: int) -> None:
    meta: Any = store.metadata
    objects: Any = store.objects
    reached = countdown(nth)
    if point in ("replace_before", "replace_after"):
        replace = meta.replace

        def killing_replace(replacement: Any) -> None:
            if replacement.outputs and point == "replace_before" and reached():
                die()
            replace(replacement)
            if replacement.outputs and point == "replace_after" and reached():
                die()

        meta.replace = killing_replace
    elif point == "forget_before":
        forget = meta.forget

        def killing_forget(keys: Any) -> int:
            if reached():
                die()
            return forget(keys)  # type: ignore[no-any-return]

        meta.forget = killing_forget
    elif point == "delete_mid":
        # Every part has its own view of the store (streamlib.cost): the deletion's is not
        # store.objects, so the method is replaced on the class.
        cls: Any = type(objects)
        delete = cls.delete

        def killing_delete(self: Any, keys: Any) -> None:
            keys = list(keys)
            if len(keys) > 1 and reached():
                delete(self, keys[:len(keys) // 2])
                die()
            delete(self, keys)

        cls.delete = killing_delete


def main() -> None:
    config, acklog, point, nth = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(
        sys.argv[4])
    store = streamlib.open(**config)
    log = os.open(acklog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if point != "none":
        install(store, point, nth)
        for _ in range(3):
            store.compact()
        store.collect_garbage()
        print("survived", flush=True)
        store.close()
        return
    print("ready", flush=True)
    stream = store.open_stream("s0")
    i = 0
    while True:
        value = f"child-{os.getpid()}-{i}".encode()
        result = stream.append([Record(value)])
        os.write(log, f"A s0 {result.base_offset} {value.decode()}\n".encode())
        i += 1
        store.flush()
        if i % 2 == 0:
            store.compact()
        if i % 3 == 0:
            store.collect_garbage()


if __name__ == "__main__":
    main()
