"""streamlib quickstart: a store in a temporary folder, a few streams, appends, fetches, a trim,
and a reopen showing that the data survived.

Run with `make demo`. Everything here runs on the local filesystem: the write-ahead log in
`<dir>/wal`, objects in `<dir>/objects`, metadata in `<dir>/meta.sqlite`.
"""

from __future__ import annotations

import asyncio
import tempfile

import streamlib
from streamlib import OffsetOutOfRange, Record, RecordBatch


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="streamlib-quickstart-") as directory:
        print(f"streamlib {streamlib.__version__}, store in {directory}")

        with streamlib.open(directory) as store:
            orders = store.create_stream("orders")
            clicks = store.create_stream("clicks")

            # An append returns once the batch is durable in the WAL.
            first = orders.append([
                Record(b'{"order": 1, "item": "tea"}', key=b"ada"),
                Record(b'{"order": 2, "item": "cake"}', key=b"lin",
                       headers={"trace-id": b"7f3a"}),
            ])
            print(f"\norders: appended offsets [{first.base_offset}, {first.next_offset})")

            # A broker with its own record format appends an opaque payload and a count.
            clicks.append(RecordBatch(b"\x00three clicks in my own format\x00", count=3))

            # Many appends in flight at once (asyncio): they complete in offset order.
            async def burst() -> list[int]:
                results = await asyncio.gather(*(
                    orders.append_async([f'{{"order": {n}}}'.encode()]) for n in range(3, 8)))
                return [r.base_offset for r in results]

            print(f"orders: five concurrent appends landed at {asyncio.run(burst())}")

            # Reads see every acknowledged append at once, before any upload.
            for offset, record in orders.fetch(0).records():
                print(f"  {offset}: key={record.key!r} value={record.value.decode()}")

            # flush() uploads now: the data moves to objects, reads are the same.
            store.flush()
            print(f"\nafter flush: {store.stats()['objects_uploaded']} object(s) uploaded, "
                  f"orders reads {len(list(orders.fetch(0).records()))} records back")

            # trim() makes older records unreadable; fetching below the start says so.
            orders.trim(2)
            try:
                orders.fetch(0)
            except OffsetOutOfRange as error:
                print(f"after trim(2): {error}")

        # Reopen: everything acknowledged is still there.
        with streamlib.open(directory) as store:
            print("\nreopened:")
            for info in store.streams():
                print(f"  stream {info.id} {info.name!r}: offsets "
                      f"[{info.start_offset}, {info.next_offset}), epoch {info.epoch}")
            orders = store.open_stream("orders")  # for write: a new epoch
            result = orders.fetch(orders.start_offset)
            print(f"  orders from {orders.start_offset}: "
                  f"{[r.value.decode() for _, r in result.records()]}")
            batch = store.open_stream("clicks", read_only=True).fetch(0).batches[0]
            print(f"  clicks: opaque batch of {batch.count} records, payload {batch.payload!r}")


if __name__ == "__main__":
    main()
