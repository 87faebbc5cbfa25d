"""Idempotent producers: Kafka's per-record sequences mapped onto streamlib's per-batch ones.

A Kafka producer numbers records: a batch carries the sequence of its first record, and the
next batch's base sequence is this one's plus its record count (wrapping at 2^31). streamlib's
idempotent append numbers batches: each ``sequence`` is the last one plus one, and a retry of
a remembered sequence gets the original result back without a write. This table gives each
Kafka batch the streamlib sequence it had (a retry) or the next one (a new batch), per
partition and producer. The streamlib producer id is ``"<producer id>.<epoch>"``: a new epoch
(the producer re-initialised) starts its sequences afresh.

Kept in memory, as streamlib keeps its own side: a retry after a broker restart is not
recognised (DESIGN.md, "Idempotent producers").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .batches import KafkaBatch
from .protocol import ErrorCode

WINDOW = 5
"""Batches remembered per producer: Kafka clients have at most 5 in flight per partition."""


class SequenceRefused(Exception):
    """A batch whose sequence neither follows nor repeats a recent one (or of an old epoch)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Producer:
    epoch: int
    next_base: int  # the Kafka base sequence expected next
    next_sequence: int = 0  # the streamlib sequence the next new batch gets
    recent: OrderedDict[int, tuple[int, int]] = field(default_factory=OrderedDict)
    """Kafka base sequence -> (streamlib sequence, records), the last WINDOW batches."""


class ProducerTable:
    """The producers seen on each partition. Used from the event loop only: placing a batch
    and submitting its append happen with no await between them."""

    def __init__(self) -> None:
        self._producers: dict[tuple[str, int, int], _Producer] = {}

    def place(self, topic: str, partition: int, batch: KafkaBatch) -> tuple[str, int]:
        """The streamlib ``(producer_id, sequence)`` to append ``batch`` with; SequenceRefused
        for a batch that can be neither the next nor a retry."""
        key = (topic, partition, batch.producer_id)
        known = self._producers.get(key)
        if known is None or batch.producer_epoch > known.epoch:
            # A producer not seen since this broker started (or re-initialised): its batch is
            # taken as the next, whatever its sequence.
            known = self._producers[key] = _Producer(batch.producer_epoch, batch.base_sequence)
        elif batch.producer_epoch < known.epoch:
            raise SequenceRefused(f"producer {batch.producer_id} epoch {batch.producer_epoch} "
                                  f"is older than {known.epoch}", ErrorCode.INVALID_PRODUCER_EPOCH)
        producer_id = f"{batch.producer_id}.{batch.producer_epoch}"
        if batch.base_sequence == known.next_base:
            sequence = known.next_sequence
            known.next_sequence += 1
            known.next_base = batch.next_sequence
            known.recent[batch.base_sequence] = (sequence, batch.records)
            while len(known.recent) > WINDOW:
                known.recent.popitem(last=False)
            return producer_id, sequence
        retry = known.recent.get(batch.base_sequence)
        if retry is not None and retry[1] == batch.records:
            return producer_id, retry[0]
        raise SequenceRefused(f"producer {batch.producer_id} sent sequence {batch.base_sequence}, "
                              f"expected {known.next_base}",
                              ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)

    def forget(self, topic: str, partition: int) -> None:
        """Drop a partition's producers (its stream moved to another broker)."""
        for key in [key for key in self._producers if key[:2] == (topic, partition)]:
            del self._producers[key]
