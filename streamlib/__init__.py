"""streamlib: durable, ordered streams whose home is object storage.

The public names: records and batches, the config object, and the error kinds.
"""

from streamlib.config import Config
from streamlib.errors import (
    CommitConflict,
    ConfigError,
    CorruptDataError,
    FencedError,
    OffsetOutOfRange,
    StorageUnavailable,
    StreamClosed,
    StreamExists,
    StreamLibError,
    StreamNotFound,
    WalFullError,
    WalLockedError,
)
from streamlib.records import AppendResult, FetchResult, Record, RecordBatch

__version__ = "0.1.0.dev0"

__all__ = [
    "AppendResult",
    "CommitConflict",
    "Config",
    "ConfigError",
    "CorruptDataError",
    "FencedError",
    "FetchResult",
    "OffsetOutOfRange",
    "Record",
    "RecordBatch",
    "StorageUnavailable",
    "StreamClosed",
    "StreamExists",
    "StreamLibError",
    "StreamNotFound",
    "WalFullError",
    "WalLockedError",
]
