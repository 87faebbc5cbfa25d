"""Status codes shared by the C codec and its pure-Python twin (native/segment_codec.h)."""

OK = 0
MORE = 1
TRUNCATED = 2
BAD_MAGIC = 3
BAD_VERSION = 4
BAD_CHECKSUM = 5
BAD_FLAGS = 6
BAD_COUNT = 7
BAD_LENGTH = 8
BAD_OFFSET = 9
BAD_TIMESTAMP = 10
BAD_VARINT = 11
BAD_RECORD = 12
BAD_UTF8 = 13
NEED_SPACE = 14
BAD_ARGUMENT = 15

MESSAGES = {
    TRUNCATED: "data ends inside a header or payload (truncated)",
    BAD_MAGIC: "bad magic (not the start of a batch or block)",
    BAD_VERSION: "unsupported format version",
    BAD_CHECKSUM: "checksum mismatch",
    BAD_FLAGS: "unknown flags, compression or non-zero reserved bytes",
    BAD_COUNT: "count out of range or impossible for its payload",
    BAD_LENGTH: "length out of range, or fields that do not end where their length says",
    BAD_OFFSET: "offset out of range",
    BAD_TIMESTAMP: "timestamps out of order (max below base)",
    BAD_VARINT: "malformed varint",
    BAD_RECORD: "record contradicts its batch (offset delta or first timestamp)",
    BAD_UTF8: "header name is not valid UTF-8",
}

# Layout constants, as in the header.
BATCH_HEADER_SIZE = 56
BLOCK_HEADER_SIZE = 64
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_BLOCK = 128 * 1024 * 1024
MIN_RECORD_SIZE = 6
BATCH_FIELDS = 8
BLOCK_FIELDS = 11
RECORD_FIELDS = 7
HEADER_FIELDS = 4
