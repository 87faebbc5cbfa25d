"""streamlib: durable, ordered streams whose home is object storage.

The public names: ``open`` and the store and stream it gives, records and batches, the config
object, the message cache (to share one memory budget between stores), and the error kinds.
"""

from streamlib.cache import MessageCache
from streamlib.config import Config
from streamlib.errors import (
    CacheMiss,
    CommitConflict,
    ConfigError,
    CorruptDataError,
    FencedError,
    HandOverPending,
    OffsetMismatchError,
    OffsetOutOfRange,
    OutcomeUnknown,
    ReadOnlyError,
    SequenceError,
    StorageUnavailable,
    StreamClosed,
    StreamExists,
    StreamLibError,
    StreamNotFound,
    WalFullError,
    WalLockedError,
)
from streamlib.kv import KeyValue
from streamlib.records import AppendResult, FetchResult, Record, RecordBatch
from streamlib.store import StreamStore, open
from streamlib.stream import Stream, StreamInfo

__version__ = "0.1.0.dev0"

__all__ = [
    "AppendResult",
    "CacheMiss",
    "CommitConflict",
    "Config",
    "ConfigError",
    "CorruptDataError",
    "FencedError",
    "FetchResult",
    "HandOverPending",
    "KeyValue",
    "MessageCache",
    "OffsetMismatchError",
    "OffsetOutOfRange",
    "OutcomeUnknown",
    "ReadOnlyError",
    "Record",
    "RecordBatch",
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
    "WalLockedError",
    "open",
]
