"""A small order service written the way a user of streamlib writes one, fully annotated.

``mypy --strict`` checks it against the types streamlib ships (``py.typed``): what a user's
type checker sees of the public API. The ``assert_type`` lines pin what read-back values are —
a fetched batch's ``base_offset`` and a decoded record's ``timestamp`` are ints, no casts — and
cost nothing at run time. tests/typing/test_user_program.py runs mypy on this file and runs the
program too, so that the types it checks are the ones the program meets.

    .venv/bin/mypy --strict tests/typing/user_program.py
    .venv/bin/python tests/typing/user_program.py [DIR]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import assert_type

import streamlib
from streamlib import (
    AppendResult,
    Config,
    DecodedRecord,
    FencedError,
    FetchResult,
    OffsetOutOfRange,
    PlacedBatch,
    Record,
    RecordBatch,
    RetryLater,
    Stream,
    StreamInfo,
    StreamNotFound,
    StreamStore,
)


@dataclass(frozen=True)
class Order:
    id: int
    customer: str
    cents: int

    def to_record(self) -> Record:
        body = json.dumps({"id": self.id, "cents": self.cents}).encode()
        return Record(body, key=self.customer.encode(), headers={"kind": b"order"})


@dataclass(frozen=True)
class Seen:
    """An order as the consumer saw it: where it is and how old it was when read."""

    offset: int
    order: Order
    timestamp_ms: int


def decode(offset: int, record: DecodedRecord) -> Seen:
    assert_type(record.timestamp, int)  # a decoded record always has its timestamp
    assert record.key is not None  # every order has a key (a Record's key is optional)
    fields = json.loads(record.value)
    order = Order(int(fields["id"]), record.key.decode(), int(fields["cents"]))
    return Seen(offset, order, record.timestamp)


def place_orders(stream: Stream, orders: list[Order], producer: str, sequence: int) -> AppendResult:
    """Idempotent: a retry of the same sequence returns the first result."""
    try:
        return stream.append([o.to_record() for o in orders], producer_id=producer,
                             sequence=sequence)
    except RetryLater:  # the WAL is full, or storage is down: the caller's retry is safe
        return stream.append([o.to_record() for o in orders], producer_id=producer,
                             sequence=sequence)


def read_orders(stream: Stream, start: int) -> Iterator[Seen]:
    """Every order from ``start`` to the end, a fetch at a time."""
    offset = start
    while offset < stream.next_offset:
        try:
            result: FetchResult = stream.fetch(offset, max_bytes=64 * 1024)
        except OffsetOutOfRange as error:  # trimmed meanwhile: go on from what is left
            offset = error.valid_start
            continue
        for batch in result:
            assert_type(batch, PlacedBatch)
            last = batch.base_offset + batch.count - 1  # an int: no check for None
            assert last + 1 == batch.next_offset
            if batch.encoding != "records":
                continue
            for at, record in enumerate(batch.records(), batch.base_offset):
                if at >= offset:
                    yield decode(at, record)
        offset = result.next_fetch_offset


def newest_batch(stream: Stream) -> PlacedBatch | None:
    """The last batch of the stream, read with ``read()`` (which follows the tail: here it
    stops once nothing comes for a moment)."""
    found: PlacedBatch | None = None
    for batch in stream.read(stream.start_offset, idle_timeout=0.05):
        found = batch
        if batch.next_offset >= stream.next_offset:
            break
    return found


async def audit(stream: Stream) -> int:
    """asyncio: append, then read from the start; returns the offset after the audit record."""
    done = await stream.append_async([Record(b"audit", timestamp=1_700_000_000_000)])
    async for batch in stream.read_async(done.base_offset, idle_timeout=0.05):
        assert_type(batch.base_offset, int)
        if batch.next_offset >= done.next_offset:
            return batch.next_offset
    return done.next_offset


def report(store: StreamStore) -> dict[str, int]:
    stats = store.stats()  # a typed snapshot: its keys index without casts
    cache_gets: int = stats["cache"]["gets"]
    return {"streams": stats["streams"], "pending_upload_bytes": stats["pending_upload_bytes"],
            "cache_gets": cache_gets, "puts": stats["cost"]["total"]["puts"]}


def main(directory: str) -> list[Seen]:
    config = Config(path=directory, compression="zstd", upload_interval_ms=50)
    with streamlib.open(config) as store:
        orders = store.create_stream("orders")
        first = place_orders(orders, [Order(1, "ada", 1250), Order(2, "bob", 990)], "shop", 0)
        again = place_orders(orders, [Order(1, "ada", 1250), Order(2, "bob", 990)], "shop", 0)
        assert again == first  # the retry wrote nothing
        orders.append(RecordBatch(b"a payload in our own format", count=3))  # opaque: 3 offsets
        orders.append([Order(3, "cy", 4000).to_record()])

        handed: RecordBatch = RecordBatch.from_records([Record(b"kept", timestamp=5)])
        assert handed.base_offset is None  # not appended: no offset yet (an Optional to mypy)
        placed: PlacedBatch = handed.with_offset(41)
        assert placed.base_offset + 1 == 42

        seen = list(read_orders(orders, 0))
        assert [s.order.id for s in seen] == [1, 2, 3]
        assert all(s.timestamp_ms > 0 for s in seen)
        latest = newest_batch(orders)
        assert latest is not None and latest.next_offset == orders.next_offset
        after = asyncio.run(audit(orders))
        assert after == orders.next_offset

        offsets = store.kv("consumers")
        offsets.put("billing", str(seen[-1].offset + 1).encode())
        committed = offsets.get("billing")
        assert committed is not None and int(committed) == seen[-1].offset + 1

        newer = store.open_stream("orders")  # a new epoch: the old handle is fenced
        try:
            orders.append([b"late"])
            raise AssertionError("a fenced handle appended")
        except FencedError:
            pass
        newer.trim(2)
        try:
            newer.fetch(0)
            raise AssertionError("fetched below the start")
        except OffsetOutOfRange as error:
            assert (error.valid_start, error.valid_end) == (2, newer.next_offset)
        try:
            refunds = store.open_stream("refunds")
        except StreamNotFound:
            refunds = store.create_stream("refunds")
        assert refunds.next_offset == 0

        info: StreamInfo = store.get("orders")
        ids = {s.id for s in store.streams()}
        assert info.id in ids and info.next_offset == newer.next_offset
        store.flush()
        numbers = report(store)
        assert numbers["streams"] == 2 and numbers["pending_upload_bytes"] == 0
        return seen


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(len(main(sys.argv[1])), "orders read")
    else:
        with tempfile.TemporaryDirectory() as scratch:
            print(len(main(scratch)), "orders read")
