"""A node of the shared-store tests: open a store on a shared manifest and write one stream.

    python shared_child.py CONFIG_JSON STREAM_NAME BATCHES [ACKLOG]

``CONFIG_JSON`` is the store's config (for ``streamlib.open``, ``metadata="manifest"``); an
``s3://`` store's storage options come as JSON in ``S3_STORAGE_OPTIONS``. The child creates the
stream and appends batches of 10 records (``name:batch:record``), 8 in flight.

Without ``ACKLOG`` it appends ``BATCHES`` batches, uploads them with ``flush()`` every 10 and at
the end, and prints ``done NEXT_OFFSET``. With ``ACKLOG`` it prints ``ready``, appends until it
is killed and, after each acknowledgement, writes ``base_offset batch`` as one line to ACKLOG
(one unbuffered write: a line is there only if the append was acknowledged). Once another node
opens the stream for write, its appends fail: it writes ``F batch`` for each refused one (``U
batch`` for one whose outcome is unknown: its node was taken over), then ``end``, closes the
store and exits.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from concurrent.futures import Future

import streamlib


def main() -> None:
    config, name, batches = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    acklog = sys.argv[4] if len(sys.argv) > 4 else None
    options = json.loads(os.environ.get("S3_STORAGE_OPTIONS", "null"))
    store = streamlib.open(config, storage_options=options)
    stream = store.create_stream(name)
    if acklog is None:
        for n in range(batches):
            stream.append([f"{name}:{n}:{i}".encode() for i in range(10)])
            if n % 10 == 9:
                store.flush()
        store.flush()
        print("done", stream.next_offset, flush=True)
        store.close()
        return
    fd = os.open(acklog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    print("ready", flush=True)
    flight: deque[tuple[int, Future[streamlib.AppendResult]]] = deque()
    n = 0
    fenced = False
    while True:  # until killed, or fenced by another node opening the stream
        if not fenced:
            try:
                flight.append((n, stream.append_future(
                    [f"{name}:{n}:{i}".encode() for i in range(10)])))
                n += 1
            except streamlib.FencedError:
                fenced = True
        if flight and (len(flight) >= 8 or fenced):
            done, future = flight.popleft()
            try:
                os.write(fd, f"{future.result().base_offset} {done}\n".encode())
            except streamlib.FencedError:
                os.write(fd, f"F {done}\n".encode())
                fenced = True
            except streamlib.OutcomeUnknown:
                os.write(fd, f"U {done}\n".encode())
                fenced = True
        elif fenced:
            os.write(fd, b"end\n")
            store.close()
            return


if __name__ == "__main__":
    main()
