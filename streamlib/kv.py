"""Key-value entries kept in the store's metadata (S3Stream's KVClient): a broker's own
bookkeeping — which stream backs which partition, consumer offsets — as durable as a commit and
fenced like one: once another process has taken this store's node over, every change made
through the old one raises :class:`~streamlib.errors.FencedError`.

Get one namespace's view with ``store.kv("offsets")``. Keys are non-empty strings, values bytes
(at most 1 MiB). On a shared manifest, reads see other nodes' changes (each read looks first),
unless the caller accepts a bounded staleness (``get(key, max_staleness_ms=…)``): then a read
answers from the node's view of the metadata if that view is recent enough. A node's own
writes are seen by its reads either way. On a manifest, the changes that threads of one node
make at the same time are written together (docs/shared-stores.md, "Group commit").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from streamlib.errors import FencedError, describe
from streamlib.meta import ANY, MetadataStore, check_kv, check_text
from streamlib.records import INT64_MAX, check_int

if TYPE_CHECKING:
    from streamlib.node import Node

T = TypeVar("T")


class KeyValue:
    """The entries of one namespace of a store's metadata; thread-safe."""

    def __init__(self, node: Node, namespace: str) -> None:
        self._node = node
        self.namespace = check_text(namespace, "namespace")

    def __repr__(self) -> str:
        return f"<KeyValue namespace={self.namespace!r}>"

    def _meta(self) -> MetadataStore:
        return self._node.meta

    def _write(self, key: str, value: bytes | None, expected: object) -> bool:
        return self._meta().kv_write(self.namespace, key, value,
                                     expected=expected,  # type: ignore[arg-type]
                                     node_id=self._node.id, node_epoch=self._node.epoch)

    def get(self, key: str, default: bytes | None = None, *,
            max_staleness_ms: int | None = None) -> bytes | None:
        """The value under ``key``, or ``default``.

        ``max_staleness_ms``: None (the default) reads the newest value (on a shared manifest,
        one GET first); an int in ``[0, 2^63)`` accepts a value that was the newest at most
        that many milliseconds ago — on a manifest, answered from the node's view without a
        round trip if the node read the metadata (or wrote to it) that recently, else read
        first. Values this node wrote are seen in any case. A bad value: TypeError (not an
        int) or ValueError (out of range)."""
        if max_staleness_ms is not None:
            check_int(max_staleness_ms, "max_staleness_ms", 0, INT64_MAX)
        found = self._meta().kv_get(self.namespace, key, max_staleness_ms=max_staleness_ms)
        return default if found is None else found

    def put(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` whatever it was."""
        check_kv(self.namespace, key, _bytes(value))
        self._write(key, value, ANY)

    def put_if_absent(self, key: str, value: bytes) -> bool:
        """Set ``key`` to ``value`` if it has no value; True if it was set."""
        check_kv(self.namespace, key, _bytes(value))
        return self._write(key, value, None)

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes) -> bool:
        """Set ``key`` to ``value`` if its value is ``expected`` (None: it has none); True if
        it was set. Retry loops read with :meth:`get` and try again on False."""
        check_kv(self.namespace, key, _bytes(value))
        return self._write(key, value, expected)

    def delete(self, key: str, expected: bytes | None = None) -> bool:
        """Remove ``key``: whatever its value, or only if it is ``expected`` (when given).
        True if an entry was removed."""
        if expected is not None:
            return self._write(key, None, expected)
        while True:  # report whether there was something to delete, atomically
            current = self.get(key)
            if current is None:
                self._check_fence()  # a fenced node is told so, even with nothing to delete
                return False
            if self._write(key, None, current):
                return True

    def _check_fence(self) -> None:
        current = self._meta().node(self._node.id).node_epoch
        if current != self._node.epoch:
            raise FencedError(describe("key-value change by a fenced node", node=self._node.id,
                                       node_epoch=self._node.epoch, current=current))

    def items(self, prefix: str = "") -> dict[str, bytes]:
        """The entries whose key starts with ``prefix``, in key order."""
        return dict(self._meta().kv_items(self.namespace, prefix))

    def update(self, key: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Set ``key`` to ``change(current value)`` (None: delete it) with compare-and-set,
        calling ``change`` again if another writer got there first; returns the new value."""
        while True:
            current = self.get(key)
            new = change(current)
            if new is not None:
                check_kv(self.namespace, key, _bytes(new))
            if self._write(key, new, current):
                return new

    # ---- asyncio: each runs its twin on one of the store's threads (docs/asyncio.md) ----

    async def _run(self, call: Callable[[], T]) -> T:
        return await self._node.workers.run(call)

    async def get_async(self, key: str, default: bytes | None = None, *,
                        max_staleness_ms: int | None = None) -> bytes | None:
        """:meth:`get` for asyncio."""
        return await self._run(functools.partial(self.get, key, default,
                                                 max_staleness_ms=max_staleness_ms))

    async def put_async(self, key: str, value: bytes) -> None:
        """:meth:`put` for asyncio. Cancelled once it started, the change may or may not be
        made (as when an answer is lost): read before retrying."""
        await self._run(functools.partial(self.put, key, value))

    async def put_if_absent_async(self, key: str, value: bytes) -> bool:
        """:meth:`put_if_absent` for asyncio."""
        return await self._run(functools.partial(self.put_if_absent, key, value))

    async def compare_and_set_async(self, key: str, expected: bytes | None,
                                    value: bytes) -> bool:
        """:meth:`compare_and_set` for asyncio."""
        return await self._run(functools.partial(self.compare_and_set, key, expected, value))

    async def delete_async(self, key: str, expected: bytes | None = None) -> bool:
        """:meth:`delete` for asyncio."""
        return await self._run(functools.partial(self.delete, key, expected))

    async def items_async(self, prefix: str = "") -> dict[str, bytes]:
        """:meth:`items` for asyncio."""
        return await self._run(functools.partial(self.items, prefix))

    async def update_async(self, key: str,
                           change: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """:meth:`update` for asyncio: ``change`` runs on the event loop, the reads and the
        compare-and-set on the store's threads."""
        while True:
            current = await self.get_async(key)
            new = change(current)
            if new is not None:
                check_kv(self.namespace, key, _bytes(new))
            if await self._run(functools.partial(self._write, key, new, current)):
                return new


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a value must be bytes, not {type(value).__name__}")
    return bytes(value)


__all__ = ["KeyValue"]
