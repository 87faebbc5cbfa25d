"""Child of test_meta_local: begins a commit of many objects on the metadata store at argv[1]
for stream argv[2], says "committing" when SQLite is about to run COMMIT, and waits there to be
killed."""

from __future__ import annotations

import sys
import time

from streamlib.meta import Commit
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.testing.meta import make_object


def main() -> None:
    path, stream = sys.argv[1], int(sys.argv[2])
    store = SQLiteMetadataStore(path)
    conn = store._conn
    assert conn is not None
    conn.execute("PRAGMA cache_size = 8")  # a tiny cache: the transaction's pages spill to -wal

    def trace(statement: str) -> None:
        if statement == "COMMIT":
            print("committing", flush=True)
            time.sleep(600)  # killed here, before SQLite writes the commit frame

    conn.set_trace_callback(trace)
    objects = [make_object(f"obj-{i:05d}-{'x' * 200}", (stream, 10 + i, 11 + i))
               for i in range(2000)]
    store.commit(Commit(node_id="n1", wal_position=10_000, epochs={stream: 1}, objects=objects))
    print("committed", flush=True)  # not reached


if __name__ == "__main__":
    main()
