"""streamlib: durable, ordered streams whose home is object storage.

The public names: ``open`` (and ``open_async``) and the store and stream it gives, records and
batches, the config object, the message cache (to share one memory budget between stores), the
asyncio fan-in (``Follower``), and the error kinds.
"""

import logging

from streamlib.aio import open_async
from streamlib.cache import MessageCache
from streamlib.config import Config
from streamlib.errors import (
    CacheMiss,
    CommitConflict,
    CompactionConflict,
    ConfigError,
    ConfigWarning,
    Conflict,
    CorruptDataError,
    FencedError,
    HandOverPending,
    MissingExtra,
    NodeLockedError,
    NotFound,
    OffsetMismatchError,
    OffsetOutOfRange,
    OutcomeUnknown,
    ReadOnlyError,
    RetryLater,
    SequenceError,
    StorageUnavailable,
    StreamClosed,
    StreamExists,
    StreamLibError,
    StreamNotFound,
    WalFullError,
)
from streamlib.follower import Follower
from streamlib.kv import KeyValue
from streamlib.meta import Retention
from streamlib.records import (
    AppendResult,
    DecodedRecord,
    FetchResult,
    PlacedBatch,
    Record,
    RecordBatch,
)
from streamlib.store import StreamStore, open
from streamlib.stream import Stream, StreamInfo

__version__ = "0.1.0.dev0"

# A library logs; the application decides where it goes (nothing reaches stderr unless it does).
logging.getLogger("streamlib").addHandler(logging.NullHandler())

__all__ = [
    "AppendResult",
    "CacheMiss",
    "CommitConflict",
    "CompactionConflict",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "Conflict",
    "CorruptDataError",
    "DecodedRecord",
    "FencedError",
    "FetchResult",
    "Follower",
    "HandOverPending",
    "KeyValue",
    "MessageCache",
    "MissingExtra",
    "NodeLockedError",
    "NotFound",
    "OffsetMismatchError",
    "OffsetOutOfRange",
    "OutcomeUnknown",
    "PlacedBatch",
    "ReadOnlyError",
    "Record",
    "RecordBatch",
    "Retention",
    "RetryLater",
    "SequenceError",
    "StorageUnavailable",
    "Stream",
    "StreamClosed",
    "StreamExists",
    "StreamInfo",
    "StreamLibError",
    "StreamNotFound",
    "StreamStore",
    "WalFullError",
    "open",
    "open_async",
]


def __getattr__(name: str) -> object:
    """Old names, kept for a while with a DeprecationWarning (``WalLockedError`` is
    ``NodeLockedError``)."""
    if name == "WalLockedError":
        from streamlib import errors

        return errors.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
