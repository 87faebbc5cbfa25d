"""What a store asks of its object stores, counted by purpose: requests of each kind and the
bytes sent and received (``store.stats()["cost"]``, docs/store.md "What a store costs").

Every part of a store talks to its object store through its own metered view
(:meth:`streamlib.io.ObjectStore.metered`), named by its purpose:

==============  ==================================================================
``wal``         the object WAL's PUTs, listings, trims
``upload``      the uploader's objects (and a take-over's)
``manifest``    a shared manifest's deltas, checkpoints, looks
``read``        readers' GETs of indexes and blocks
``compaction``  the lifecycle: compaction's reads and writes, deletions of doomed objects
``gc``          the garbage-collecting sweep's listings and deletions
==============  ==================================================================

Each attempt of a call is one request, as the store bills it: a retried PUT is two. Requests
are classed as S3 prices them: ``puts`` (PUT, POST, copy, the calls of a multipart upload),
``gets``, ``heads`` (a HEAD of an object, ``exists``), ``lists`` (one per call: a listing of
more than 1,000 keys takes more pages) and ``deletes`` (one per call: a batch of up to 1,000
keys). ``bytes_sent`` counts request bodies, ``bytes_received`` what GETs returned.

:class:`Prices` turns counts into an estimate in US dollars (``store.metrics()``'s
``streamlib_object_request_cost_usd``): per 1,000 requests of each class and per GB moved, S3
Standard's list prices by default.

Lock order: ``Meter._lock`` is a leaf.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamlib.stats import RequestCounts

PURPOSES = ("wal", "upload", "manifest", "read", "compaction", "gc")
"""The purposes a store counts, in the order ``stats()`` shows them."""

KINDS = {"put": "puts", "create": "puts", "create_upload": "puts", "upload_part": "puts",
         "complete_upload": "puts", "abort_upload": "puts", "get": "gets", "info": "heads",
         "exists": "heads", "list": "lists", "delete": "deletes"}
"""The request class of each :class:`~streamlib.io.ObjectStore` operation."""


@dataclass(slots=True)
class Counts:
    """The requests of one purpose."""

    puts: int = 0
    gets: int = 0
    heads: int = 0
    lists: int = 0
    deletes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_dict(self) -> RequestCounts:
        return {"puts": self.puts, "gets": self.gets, "heads": self.heads,
                "lists": self.lists, "deletes": self.deletes, "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received}


@dataclass(frozen=True, slots=True)
class Prices:
    """US dollars per 1,000 requests of each class and per GB (10^9 bytes) sent or received.
    The defaults are S3 Standard's list prices in us-east-1: PUT, COPY, POST and LIST $0.005
    per 1,000, GET and HEAD $0.0004 per 1,000, DELETE free; bytes into S3, and out of it to
    compute in the same region, free (set ``received_per_gb`` to about 0.09 for reads across
    the internet). Storage is billed apart (by the GB-month) and not counted here."""

    puts: float = 0.005
    gets: float = 0.0004
    heads: float = 0.0004
    lists: float = 0.005
    deletes: float = 0.0
    sent_per_gb: float = 0.0
    received_per_gb: float = 0.0

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"a price must be a non-negative number: {name}=`{value}`")

    def of(self, counts: RequestCounts) -> float:
        """What the requests and bytes of one :meth:`Meter.snapshot` entry cost."""
        return ((counts["puts"] * self.puts + counts["gets"] * self.gets
                 + counts["heads"] * self.heads + counts["lists"] * self.lists
                 + counts["deletes"] * self.deletes) / 1000
                + (counts["bytes_sent"] * self.sent_per_gb
                   + counts["bytes_received"] * self.received_per_gb) / 1e9)


class Meter:
    """Counts by purpose, for one store (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {purpose: Counts() for purpose in PURPOSES}  # GUARDED_BY(_lock)

    def request(self, purpose: str, op: str) -> None:
        """One attempt of ``op`` made for ``purpose``."""
        kind = KINDS.get(op)
        if kind is None:
            raise ValueError(f"not an object store operation: op=`{op}`")
        with self._lock:
            counts = self._counts.setdefault(purpose, Counts())
            setattr(counts, kind, getattr(counts, kind) + 1)

    def moved(self, purpose: str, *, sent: int = 0, received: int = 0) -> None:
        """Bytes of a request's body sent, of an answer received."""
        with self._lock:
            counts = self._counts.setdefault(purpose, Counts())
            counts.bytes_sent += sent
            counts.bytes_received += received

    def snapshot(self) -> dict[str, RequestCounts]:
        """``{purpose: {kind: count, "bytes_sent": n, "bytes_received": n}}`` and a
        ``"total"``."""
        total = Counts()
        with self._lock:
            found = {purpose: counts.as_dict() for purpose, counts in self._counts.items()}
            for counts in self._counts.values():
                for f in fields(Counts):
                    setattr(total, f.name, getattr(total, f.name) + getattr(counts, f.name))
        return {**found, "total": total.as_dict()}


__all__ = ["KINDS", "PURPOSES", "Counts", "Meter", "Prices"]
