"""The argument checks of the metadata store, shared by its value types and its backends
(re-exported by :mod:`streamlib.meta`)."""

from __future__ import annotations

import re

from streamlib.records import INT64_MAX, check_int

MAX_NAME_CHARS = 1024
"""The longest stream name (characters); the same bound applies to object keys."""

_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")  # as the object WAL names its node

MAX_KV_VALUE = 1 << 20
"""The largest key-value value (bytes): the entries are metadata, kept in memory and in every
checkpoint of a manifest."""


class AnyValue:
    """The type of :data:`ANY`: the ``expected`` of an unconditional key-value write."""

    def __repr__(self) -> str:
        return "ANY"


ANY = AnyValue()


# ---- argument checks shared by the types and the backends ----

def check_id(value: object, what: str = "stream_id") -> int:
    """A stream id, offset, epoch, size or position: an int in ``[0, 2^63)``, the range every
    backend stores as a signed 64-bit integer (SQLite, PostgreSQL)."""
    return check_int(value, what, 0, INT64_MAX)


def check_text(value: object, what: str) -> str:
    """A stream name or object key: a non-empty str of at most :data:`MAX_NAME_CHARS`, UTF-8
    encodable and without NUL (PostgreSQL's text cannot hold one)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or len(value) > MAX_NAME_CHARS or "\x00" in value:
        raise ValueError(f"{what} must be 1 to {MAX_NAME_CHARS} characters without NUL: "
                         f"{what}=`{value[:100]!r}`")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not encodable as UTF-8: {what}=`{value[:100]!r}`") from e
    return value


def check_limit(value: object) -> int:
    """A page size: an int of at least 1."""
    return check_int(value, "limit", 1, INT64_MAX)


def check_name(value: object) -> str:
    """A new stream's name: as :func:`check_text`, and printable (no control characters, no
    line breaks), neither blank nor starting or ending with whitespace."""
    name = check_text(value, "name")
    if not name.isprintable() or name != name.strip():
        raise ValueError(f"a stream name is printable characters (no control characters), not "
                         f"blank and without whitespace at either end: name=`{name[:100]!r}`")
    return name


TIERS = ("", "archive")
"""The object stores an object may be in: the objects store and the archive tier."""


def check_tier(value: object) -> str:
    """An object's tier: one of :data:`TIERS`."""
    if value not in TIERS or not isinstance(value, str):
        raise ValueError(f"tier must be one of {TIERS}: tier=`{value!r}`")
    return value


def check_node_id(value: object) -> str:
    """A node id as the WALs take it: an int or a str of letters, digits, '.', '_', '-'; the
    metadata keeps its str form (``7`` and ``"7"`` are the same node)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"node_id must be a str or an int, not {type(value).__name__}")
    node = str(value)
    if not _NODE.fullmatch(node):
        raise ValueError(f"node_id must be 1 to 255 letters, digits, '.', '_' or '-', starting "
                         f"with a letter or digit: node_id=`{value!r}`")
    return node


def check_kv(namespace: object, key: object, value: object = None) -> bytes | None:
    """A key-value entry's namespace and key (as :func:`check_text`) and value (bytes of at
    most :data:`MAX_KV_VALUE`, or None); returns the value as ``bytes``."""
    check_text(namespace, "namespace")
    check_text(key, "key")
    if value is None:
        return None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a value must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > MAX_KV_VALUE:
        raise ValueError(f"a value is at most {MAX_KV_VALUE} bytes: size=`{len(value)}`")
    return value


def check_kv_write(namespace: object, key: object, value: object, expected: object,
                   node_id: object, node_epoch: object) -> tuple[bytes | None, object,
                                                               str | None]:
    """The arguments of :meth:`MetadataStore.kv_write`, checked: ``(value, expected,
    node)`` as the backends use them."""
    value = check_kv(namespace, key, value)
    if not isinstance(expected, AnyValue):
        expected = check_kv(namespace, key, expected)
    node = None if node_id is None else check_node_id(node_id)
    if node_epoch is not None:
        check_id(node_epoch, "node_epoch")
    return value, expected, node
