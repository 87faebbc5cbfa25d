"""Mutations of valid inputs: byte-level (bit flips, truncation, splices, extreme integers in
header fields, magics sprayed, a chunk tiled to a large input) and JSON-level (a value replaced by
an extreme one, a field dropped or added, a list grown or cut).

Nothing here knows a format beyond what a target hands it (:class:`Shape`): where its header
fields are and what its magics look like. Checksums are the target's to recompute (its
``reseal``), after the bytes are changed."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

KiB = 1 << 10
MiB = 1 << 20


Mutation = Callable[[random.Random, bytes], "bytes | None"]
"""A structured mutation: the mutated input, or None when it does not apply to this one."""


@dataclass(frozen=True)
class Field:
    """A header field: ``width`` bytes at ``offset`` from where ``magic`` starts; with no
    ``magic``, from the input's start (``offset`` ≥ 0) or its end (``offset`` < 0)."""

    magic: bytes
    offset: int
    width: int


@dataclass(frozen=True)
class Shape:
    """What the byte mutations know of a format."""

    magics: tuple[bytes, ...] = ()
    fields: tuple[Field, ...] = ()
    max_size: int = MiB
    """The largest input made (bytes); mutations that grow an input stop there."""
    extra_ints: tuple[int, ...] = field(default=())
    """Values worth trying in this format's fields besides the usual extremes."""


def extremes(width: int, size: int, extra: Sequence[int]) -> list[int]:
    """Values an integer field of ``width`` bytes is tried with (all in range for the width)."""
    top = (1 << (8 * width)) - 1
    half = 1 << (8 * width - 1)
    values = [0, 1, 2, 6, 7, 0x7F, 0x80, 0xFF, 0x100, top, top - 1, half - 1, half, half + 1,
              size, size - 1, size + 1, 56, 64, 4096, 64 * MiB, 64 * MiB + 1, 128 * MiB,
              128 * MiB + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
              1 << 63, *extra]
    return [v for v in values if 0 <= v <= top]


def _anchors(data: bytes | bytearray, magics: Sequence[bytes]) -> list[int]:
    found = []
    for magic in magics:
        at = data.find(magic)
        while at >= 0 and len(found) < 4096:
            found.append(at)
            at = data.find(magic, at + 1)
    return found


# Varints that the records format must refuse or take at their limits: overlong, 10 bytes, more
# than 64 bits, the largest, a lone continuation byte.
_VARINTS = [b"\x80\x00", b"\xff" * 9 + b"\x01", b"\xff" * 9 + b"\x02", b"\xff" * 10 + b"\x01",
            b"\x80", b"\xff\xff\xff\xff\x0f", b"\x01", b"\x00", b"\x7f"]


def mutate_bytes(rng: random.Random, data: bytes, shape: Shape, others: Sequence[bytes]) -> bytes:
    """``data`` with one to four random mutations."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        _one(rng, buf, shape, others)
    del buf[shape.max_size:]
    return bytes(buf)


def _one(rng: random.Random, buf: bytearray, shape: Shape, others: Sequence[bytes]) -> None:
    n = len(buf)
    at = rng.randrange(n + 1)
    kind = rng.randrange(14)
    if n and kind == 0:  # flip bits
        for _ in range(rng.randrange(1, 4)):
            bit = rng.randrange(8 * n)
            buf[bit // 8] ^= 1 << (bit % 8)
    elif n and kind == 1:  # set bytes to random or interesting values
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    elif kind in (2, 3):  # overwrite a header field, or an aligned word after an anchor
        _overwrite(rng, buf, shape)
    elif kind == 4:  # truncate
        del buf[rng.randrange(n + 1):]
    elif n and kind == 5:  # cut a range out
        del buf[at:at + rng.choice((1, 2, 4, 8, rng.randrange(1, 64)))]
    elif kind == 6:  # insert random bytes
        buf[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8, rng.randrange(1, 64))))
    elif kind == 7:  # insert a varint at its limits
        buf[at:at] = rng.choice(_VARINTS)
    elif n and kind == 8:  # repeat a chunk of itself elsewhere
        start = rng.randrange(n)
        chunk = buf[start:start + rng.randrange(1, 256)]
        buf[at:at] = chunk
    elif others and kind == 9:  # splice: this input's head, another's tail, or a chunk of it
        other = rng.choice(others)
        cut = rng.randrange(len(other) + 1)
        if rng.random() < 0.5:
            buf[at:] = other[cut:]
        else:
            buf[at:at] = other[cut:cut + rng.randrange(1, 512)]
    elif shape.magics and kind == 10:  # a magic where none should be
        for _ in range(rng.randrange(1, 4)):
            where = rng.randrange(len(buf) + 1)
            buf[where:where] = rng.choice(shape.magics)
    elif n and kind == 11 and rng.random() < 0.2:  # tile a chunk to a large input
        start = rng.randrange(n)
        chunk = bytes(buf[start:start + rng.randrange(1, 4 * KiB)])
        size = rng.choice((64 * KiB, 256 * KiB, shape.max_size))
        buf[:] = (chunk * (size // len(chunk) + 1))[:size]
    elif n and kind == 12:  # swap two chunks
        a, b = sorted((rng.randrange(n), rng.randrange(n)))
        size = min(rng.randrange(1, 64), b - a)
        if size:
            buf[a:a + size], buf[b:b + size] = buf[b:b + size], buf[a:a + size]
    else:  # set a run of bytes to one value
        buf[at:at + rng.randrange(1, 32)] = bytes([rng.choice((0, 0xFF))]) * rng.randrange(1, 32)


def _overwrite(rng: random.Random, buf: bytearray, shape: Shape) -> None:
    n = len(buf)
    if shape.fields and rng.random() < 0.7:
        f = rng.choice(shape.fields)
        if f.magic:
            anchors = [a for a in _anchors(buf, (f.magic,)) if a + f.offset + f.width <= n]
            if not anchors:
                return
            at = rng.choice(anchors) + f.offset
        else:
            at = f.offset if f.offset >= 0 else n + f.offset
            if at < 0 or at + f.width > n:
                return
        width = f.width
    else:  # an aligned word after an anchor: entries of an index, fields behind a header
        anchors = _anchors(buf, shape.magics) or [0]
        width = rng.choice((1, 2, 4, 8))
        at = rng.choice(anchors) + 4 * rng.randrange(64)
        if at + width > n:
            return
    value = rng.choice(extremes(width, n, shape.extra_ints))
    buf[at:at + width] = value.to_bytes(width, "little")


# ---- JSON ----


def _interesting(rng: random.Random) -> Any:
    return rng.choice([
        0, -1, 1, 2, (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63) - 1, 10 ** 30, 1.5, -0.0,
        1e308, True, False, None, "", "x", "x" * 300, "no/slash", "\ud800", "\u00e9", " ",
        [], {}, [1], [None], {"x": 1}, [[[[[[[[1]]]]]]]], list(range(rng.randrange(1, 50))),
        "AAAA", "====", "A" * 400_000,
    ])


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (the root too), as keys and indexes from the root."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:64]):
            found += _paths(item, (*path, i))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def mutate_json(rng: random.Random, value: Any) -> Any:
    """A deep copy of ``value`` with one to three changes."""
    value = json.loads(json.dumps(value))
    for _ in range(rng.randrange(1, 4)):
        paths = _paths(value)
        path = rng.choice(paths)
        kind = rng.randrange(6)
        if not path:
            if kind == 0:
                value = _interesting(rng)
            continue
        parent, key = _get(value, path[:-1]), path[-1]
        if kind <= 1:  # replace with an extreme or odd value
            parent[key] = _interesting(rng)
        elif kind == 2:  # drop
            del parent[key]
        elif kind == 3 and isinstance(parent, dict):  # a field nobody knows
            parent[rng.choice(("extra", "", "format", "ID", str(rng.randrange(9))))] = 1
        elif kind == 3:  # a list one element longer
            parent.insert(key, parent[key])
        elif kind == 4:  # another place's value here
            other = rng.choice(paths)
            if other and other[:len(path)] != path:
                parent[key] = json.loads(json.dumps(_get(value, other)))
        else:  # a neighbouring number off by one
            item = parent[key]
            if isinstance(item, int) and not isinstance(item, bool):
                parent[key] = item + rng.choice((-1, 1))
    return value


def json_mutator(load: Callable[[bytes], Any], dump: Callable[[Any], bytes]) -> Mutation:
    """A structured mutation for a format whose bytes are JSON once ``load`` has unwrapped them
    (None when ``load`` fails: the input is no longer JSON)."""

    def mutate(rng: random.Random, data: bytes) -> bytes | None:
        try:
            value = load(data)
        except (ValueError, UnicodeDecodeError):
            return None
        return dump(mutate_json(rng, value))

    return mutate


def u32(data: bytes) -> int:
    """The little-endian u32 a target's input starts with (zero-padded when short)."""
    return int(struct.unpack_from("<I", data[:4].ljust(4, b"\0"))[0])


def prefixed(mutation: Mutation) -> Mutation:
    """``mutation`` of what follows a target's four-byte prefix, the prefix kept."""
    def mutate(rng: random.Random, data: bytes) -> bytes | None:
        made = mutation(rng, data[4:])
        return None if made is None else data[:4] + made
    return mutate


def dump_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
