"""What a :class:`~streamlib.stream.Stream` handle runs on: the store's write and read paths,
its uploader, its coordination and its life, behind the interface the handle documents
(:class:`~streamlib.stream.StreamPaths`). Built by :class:`~streamlib.store.StreamStore`.

Lock order: as :mod:`streamlib.node`.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING

from streamlib.errors import StreamClosed

if TYPE_CHECKING:
    from streamlib.cache import Reader
    from streamlib.meta import Retention
    from streamlib.node import Node
    from streamlib.read import ReadPath
    from streamlib.records import AppendResult, FetchResult, RecordBatch
    from streamlib.shared.coordination import Coordination
    from streamlib.state import StreamState
    from streamlib.uploader import Uploader
    from streamlib.write import WritePath


class StorePaths:
    """What a :class:`~streamlib.stream.Stream` handle runs on (the interface it documents as
    :class:`~streamlib.stream.StreamPaths`): the store's write and read paths, its uploader
    (a trim of data not yet uploaded uploads it first), its coordination and its life."""

    def __init__(self, node: Node, write: WritePath, read: ReadPath, uploader: Uploader,
                 coordination: Coordination) -> None:
        self.config = node.config
        self._node = node
        self._write = write
        self._read = read
        self._uploader = uploader
        self._coordination = coordination
        self.workers = node.workers

    def check_open(self) -> None:
        self._node.check_open()

    def closing(self) -> bool:
        return self._node.closing_or_closed()

    def append(self, state: StreamState, epoch: int, batch: RecordBatch,
               expected_offset: int | None, producer_id: object, sequence: int | None,
               timeout: float | None, lead: bool = False) -> Future[AppendResult]:
        return self._write.submit(state, epoch, batch, expected_offset, producer_id, sequence,
                                  timeout, lead)

    def fetch(self, state: StreamState, start: int, end: int | None, max_bytes: int,
              cache_only: bool = False, reader: Reader | None = None) -> FetchResult:
        return self._read.fetch(state, start, end, max_bytes, cache_only, reader)

    def new_reader(self, state: StreamState, offset: int) -> Reader:
        return self._read.new_reader(state, offset)

    def forget_reader(self, reader: Reader) -> None:
        self._read.forget_reader(reader)

    def offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        return self._read.offset_for_timestamp(state, timestamp)

    def remote(self, state: StreamState) -> bool:
        return self._coordination.remote(state)

    def sync(self) -> None:
        self._coordination.sync()

    def flush(self) -> None:
        self._node.check_open()
        if self._node.closing.is_set():
            raise StreamClosed("the store is closing (close() uploads what is left)")
        self._uploader.upload()

    def trim_as_owner(self, state: StreamState, offset: int) -> None:
        """A trim by the node that writes the stream (retention), with its current epoch."""
        self._write.trim(state, state.epoch, offset, self.flush)

    def trim(self, state: StreamState, epoch: int, offset: int) -> None:
        """Records below ``offset`` become unreadable (uploading first what is not)."""
        self._write.trim(state, epoch, offset, self.flush)

    def retention(self, state: StreamState) -> Retention | None:
        return self._node.meta.get_stream(state.id).retention

    def set_retention(self, state: StreamState, epoch: int,
                      retention: Retention | None) -> None:
        with self._node.changes:
            state.check_writer(epoch)
            self._node.meta.set_retention(state.id, retention)


__all__ = ["StorePaths"]
