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

Lock order: ``Meter._lock`` is a leaf.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

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

    def as_dict(self) -> dict[str, int]:
        return {"puts": self.puts, "gets": self.gets, "heads": self.heads,
                "lists": self.lists, "deletes": self.deletes, "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received}


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

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{purpose: {kind: count, "bytes_sent": n, "bytes_received": n}}`` and a
        ``"total"``."""
        with self._lock:
            found = {purpose: counts.as_dict() for purpose, counts in self._counts.items()}
        total = Counts().as_dict()
        for counts in found.values():
            for name, value in counts.items():
                total[name] += value
        return {**found, "total": total}


__all__ = ["KINDS", "PURPOSES", "Counts", "Meter"]
