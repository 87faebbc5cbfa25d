"""What a reader of the manifest accepts of one value: its JSON (nesting bounded before it is
parsed), the shape of each object and list, and each field's type and range, one value or a
checkpoint's column at a time (the rules: :mod:`streamlib.meta._manifest_state`'s docstring).
Anything else raises :class:`Malformed`."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, NoReturn

from streamlib.errors import describe
from streamlib.meta import MAX_KV_VALUE, MAX_NAME_CHARS, TIERS, check_node_id, check_text
from streamlib.records import INT64_MAX

Range = tuple[int, int, int, int]  # stream id, start offset, end offset, size

_NONE = type(None)
_BASE64_CHARS = 4 * ((MAX_KV_VALUE + 2) // 3)


class Malformed(ValueError):
    """A checkpoint or delta its writers could not have written (the message says which field
    and why); the manifest reports it as CorruptDataError naming the object."""


# ---- JSON of bounded nesting ----

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_BRACKETS = bytes.maketrans(b"{}", b"[]")


def parse_json(raw: bytes | bytearray, depth: int) -> Any:
    """JSON of at most ``depth`` levels of nesting (checked before it is parsed)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Malformed(f"not UTF-8 ({error})") from error
    # The brackets outside strings — escapes removed first (``\\`` then ``\"``), then all but
    # quotes and brackets, then what is between quotes. Removing the innermost pairs once per
    # level empties them, in C, if they nest at most ``depth`` deep.
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = raw.translate(None, _NOT_STRUCTURE)
    brackets = b"".join(structure.split(b'"')[::2]).translate(_BRACKETS)
    for _ in range(depth):
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise Malformed(f"JSON nested deeper than this format's {depth} levels, or unbalanced")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise Malformed(f"not JSON ({error})") from error


# ---- the checks of single values ----

def show(value: object) -> str:
    """A value as a message shows it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}… ({type(value).__name__})"


def fail(what: str, value: object) -> NoReturn:
    raise Malformed(describe(what, found=show(value)))


def json_object(value: object, what: str, required: tuple[str, ...] = (),
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object with every field of ``required``, any of ``optional``, and no other."""
    if type(value) is not dict:
        fail(f"{what} must be a JSON object", value)
    missing = [name for name in required if name not in value]
    if missing:
        raise Malformed(describe(f"{what} lacks a field", field=missing[0]))
    if len(value) > len(required):
        unknown = [name for name in value if name not in required and name not in optional]
        if unknown:
            raise Malformed(describe(f"{what} has an unknown field", field=show(unknown[0])))
    return value


def json_list(value: object, what: str, lengths: tuple[int, ...] | None = None) -> list[Any]:
    if type(value) is not list:
        fail(f"{what} must be a JSON list", value)
    if lengths is not None and len(value) not in lengths:
        fail(f"{what} must have {' or '.join(map(str, lengths))} items", value)
    return value


def int_field(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        fail(f"{what} must be an int in [0, 2^63)", value)
    return value


def int_or_none(value: object, what: str) -> int | None:
    return None if value is None else int_field(value, what)


def text_field(value: object, what: str) -> str:
    if type(value) is not str:
        fail(f"{what} must be a str", value)
    try:
        return check_text(value, what)
    except ValueError as error:
        raise Malformed(str(error)) from None


def node_field(value: object, what: str) -> str:
    if type(value) is not str:
        fail(f"{what} must be a node id (a str)", value)
    try:
        return check_node_id(value)
    except ValueError as error:
        raise Malformed(f"{what}: {error}") from None


def node_or_none(value: object, what: str) -> str | None:
    return None if value is None else node_field(value, what)


def kv_field(value: object, what: str) -> bytes:
    if type(value) is not str or len(value) > _BASE64_CHARS:
        fail(f"{what} must be base64 of at most {MAX_KV_VALUE} bytes", value)
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError as error:  # binascii.Error, or a str not of ASCII
        raise Malformed(describe(f"{what} is not base64 ({error})", found=show(value))) from None
    if len(data) > MAX_KV_VALUE:
        raise Malformed(describe(f"{what} is larger than a key-value value may be",
                                 size=len(data), limit=MAX_KV_VALUE))
    return data


def tier_field(value: object, what: str) -> str:
    """An object's tier: one of :data:`~streamlib.meta.TIERS`."""
    if type(value) is not str or value not in TIERS:
        fail(f"{what} must be one of {TIERS}", value)
    return value


def limit_or_none(value: object, what: str) -> int | None:
    """A retention's limit (``max_age_ms``, ``max_bytes``): None, or an int in ``[1, 2^63)``."""
    if value is not None and (type(value) is not int or not 1 <= value <= INT64_MAX):
        fail(f"{what} must be null or an int in [1, 2^63)", value)
    return value


# ---- the checks of a checkpoint's columns (at C speed where the values are many) ----

def column(table: dict[str, Any], name: str, what: str, length: int | None) -> list[Any]:
    values = json_list(table[name] if name in table else [None] * (length or 0), f"{what}.{name}")
    if length is not None and len(values) != length:
        raise Malformed(describe(f"{what} columns of different lengths", column=name,
                                 length=len(values), expected=length))
    return values


def column_kinds(values: list[Any], what: str, kinds: tuple[type, ...]) -> bool:
    """Whether ``values`` hold None; Malformed unless every one is of ``kinds`` exactly."""
    found = set(map(type, values))
    if not found <= set(kinds):
        fail(f"{what} must hold {' or '.join(k.__name__ for k in kinds)}",
              next(v for v in values if type(v) not in kinds))
    return _NONE in found


def int_column(values: list[Any], what: str, nullable: bool = False) -> None:
    if column_kinds(values, what, (int, _NONE) if nullable else (int,)):
        values = [v for v in values if v is not None]
    if values and (min(values) < 0 or max(values) > INT64_MAX):
        for value in values:
            int_field(value, what)


def text_column(values: list[Any], what: str, nullable: bool = False) -> None:
    if column_kinds(values, what, (str, _NONE) if nullable else (str,)):
        values = [v for v in values if v is not None]
    if not values:
        return
    joined = "".join(values)
    try:
        joined.encode("utf-8")
        fine = (min(map(len, values)) > 0 and max(map(len, values)) <= MAX_NAME_CHARS
                and "\x00" not in joined)
    except UnicodeEncodeError:
        fine = False
    if not fine:
        for value in values:
            text_field(value, what)


def node_column(values: list[Any], what: str) -> None:
    """Node ids or None (checked once per distinct value: a few nodes own many streams)."""
    column_kinds(values, what, (str, _NONE))
    for value in set(values) - {None}:
        node_field(value, what)


def tier_column(values: list[Any], what: str) -> None:
    column_kinds(values, what, (str,))
    for value in set(values):
        tier_field(value, what)


def limit_column(values: list[Any], what: str) -> None:
    int_column(values, what, nullable=True)
    if 0 in values:
        fail(f"{what} must be null or an int in [1, 2^63)", 0)


# ---- what an object is ----

def check_ranges(key: str, size: int, ranges: Sequence[Range]) -> None:
    """An object's ranges as readers take them (:class:`~streamlib.meta.ObjectMeta`): at least
    one, one per stream, each of at least one record, their sizes within the object's."""
    if not ranges:
        raise Malformed(describe("an object holds no range", key=key))
    if len({r[0] for r in ranges}) != len(ranges):
        raise Malformed(describe("an object holds two ranges of one stream", key=key))
    for stream_id, start, end, _ in ranges:
        if end <= start:
            raise Malformed(describe("a range holds no record", key=key, stream=stream_id,
                                     range=f"[{start}, {end})"))
    used = sum(r[3] for r in ranges)
    if used > size:
        raise Malformed(describe("an object's ranges are larger than the object", key=key,
                                 size=size, ranges=used))


def first_twice(values: list[Any]) -> object:
    """The first value that appears twice in ``values``."""
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None



__all__ = ["Malformed", "Range", "check_ranges", "column", "column_kinds", "fail", "first_twice",
           "int_column", "int_field", "int_or_none", "json_list", "json_object", "kv_field",
           "limit_column", "limit_or_none", "node_column", "node_field", "node_or_none",
           "parse_json", "show", "text_column", "text_field", "tier_column", "tier_field"]
