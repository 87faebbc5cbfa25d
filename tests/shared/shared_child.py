"""A node of the shared-store tests: open a store on a shared manifest, write one stream, exit.

    python shared_child.py CONFIG_JSON STREAM_NAME BATCHES

``CONFIG_JSON`` is the store's config (for ``streamlib.open``, ``metadata="manifest"``); an
``s3://`` store's storage options come as JSON in ``S3_STORAGE_OPTIONS``. The child creates the
stream, appends ``BATCHES`` batches of 10 records (``name:batch:record``), uploads them with
``flush()`` every 10 batches and at the end, and prints ``done NEXT_OFFSET``.
"""

from __future__ import annotations

import json
import os
import sys

import streamlib


def main() -> None:
    config, name, batches = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    options = json.loads(os.environ.get("S3_STORAGE_OPTIONS", "null"))
    with streamlib.open(config, storage_options=options) as store:
        stream = store.create_stream(name)
        for n in range(batches):
            stream.append([f"{name}:{n}:{i}".encode() for i in range(10)])
            if n % 10 == 9:
                store.flush()
        store.flush()
        print("done", stream.next_offset, flush=True)


if __name__ == "__main__":
    main()
