"""What the Kafka client tests send and how they check what comes back: keyed messages with
headers and timestamps of their own, each unique by its value."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BASE_TIMESTAMP = 1_790_000_000_000
COMPRESSIONS = (None, "gzip", "lz4", "zstd")


@dataclass(frozen=True, slots=True)
class Message:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


@dataclass(frozen=True, slots=True)
class Placed:
    """A message as the broker acknowledged it (or as a consumer read it)."""

    message: Message
    partition: int
    offset: int


def messages(count: int, tag: str, start: int = 0) -> list[Message]:
    """``count`` messages: 50 keys (so each partition gets several keys, each key one
    partition), two headers, a timestamp a millisecond apart, values of 20 to 400 bytes."""
    found = []
    for n in range(start, start + count):
        body = f"{tag} message {n} ".encode()
        found.append(Message(key=f"key-{n % 50}".encode(),
                             value=body * (1 + n % 20),
                             headers=(("n", str(n).encode()), ("tag", tag.encode())),
                             timestamp=BASE_TIMESTAMP + n))
    return found


def check_sent_in_order(sent: Sequence[Placed]) -> None:
    """Per partition, the offsets the broker gave follow the order of sending."""
    last: dict[int, int] = {}
    for placed in sent:
        assert placed.offset > last.get(placed.partition, -1), (
            f"partition {placed.partition}: offset {placed.offset} after {last[placed.partition]}")
        last[placed.partition] = placed.offset


def check_consumed(sent: Iterable[Placed], consumers: Iterable[Sequence[Placed]]) -> None:
    """Every message sent was consumed exactly once, as it was sent (key, value, headers,
    timestamp, partition, offset); each consumer read each partition in offset order."""
    expected = {(p.partition, p.offset): p for p in sent}
    seen: dict[tuple[int, int], Placed] = {}
    duplicates = []
    for consumed in consumers:
        last: dict[int, int] = defaultdict(lambda: -1)
        for placed in consumed:
            where = (placed.partition, placed.offset)
            if where in seen:
                duplicates.append(where)
            seen[where] = placed
            assert placed.offset > last[placed.partition], f"out of order at {where}"
            last[placed.partition] = placed.offset
    assert not duplicates, f"{len(duplicates)} consumed twice, e.g. {duplicates[:5]}"
    missing = sorted(set(expected) - set(seen))
    assert not missing, f"{len(missing)} never consumed, e.g. {missing[:5]}"
    extra = sorted(set(seen) - set(expected))
    assert not extra, f"{len(extra)} consumed but never sent, e.g. {extra[:5]}"
    for where, placed in seen.items():
        assert placed.message == expected[where].message, f"at {where}"
