"""The fuzz targets: one per decoder of stored bytes. Each is a function of bytes that must
return, or raise only what its decoder documents; with the valid inputs it starts from (built by
streamlib's own writers), what the byte mutations need to know of its format, and how to
recompute its checksums after a mutation or rebuild it around changed contents
(:mod:`fuzz.forge`).

What each decoder documents:

- the codec (``streamlib.codec``) and the object index and footer (``streamlib.objects``):
  :class:`~streamlib.errors.CorruptDataError` for any damage; ValueError only for the caller's
  arguments, which the targets derive from the bytes as a reader does, so never here;
- the WAL's record scan (``streamlib.wal._format``: ``examine``, ``scan_run``) and the block
  WAL's header slots (``RingHeader.unpack``): nothing — damage is skipped and reported, or None;
- the block WAL's recovery as a whole (``BlockWal(path).recover()``): CorruptDataError for a
  file that is no ring; ValueError only for a file whose header slots are zero (a ring to
  format, for which the caller gave no size);
- the manifest's deltas and checkpoints (``streamlib.meta._manifest_state``): its ``Malformed``
  (a ValueError the manifest turns into CorruptDataError), and a delta that raises has changed
  nothing.

Every target also keeps to the harness's bounds (:mod:`fuzz.harness`): no input of at most
1 MiB takes a second of CPU, none makes its decoder allocate more than 64 MiB. Imported only
once ``STREAMLIB_PURE`` is set: it imports streamlib.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import os
import random
import shutil
import struct
import tempfile
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuzz import forge
from fuzz.mutate import (
    Field,
    KiB,
    MiB,
    Shape,
    dump_json,
    json_mutator,
    mutate_bytes,
    prefixed,
    u32,
)
from streamlib import Record, RecordBatch, codec, objects
from streamlib.codec import _python
from streamlib.errors import CorruptDataError
from streamlib.io import ObjectStore
from streamlib.meta import Commit, Replacement, Retention
from streamlib.meta import _manifest_checkpoint as checkpoint
from streamlib.meta import _manifest_state as manifest
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing.meta_model import make_object
from streamlib.wal import Recovery, WalRecord
from streamlib.wal import _format as wal_format
from streamlib.wal.block import RING_START, BlockWal, RingHeader

try:
    from streamlib.codec import _native
except ImportError:  # no C extension: the codec targets check the twin alone
    _native = None  # type: ignore[assignment]



@dataclass(frozen=True)
class Known:
    """A violation found and reported but not fixed yet (in code the fuzzing does not own):
    counted and shown apart, so that a run fails only on new ones. Remove it once fixed."""

    targets: tuple[str, ...]
    exception: type[BaseException]
    message: str
    """A part of the exception's message."""
    where: str
    """The function the exception comes out of (the innermost frame)."""
    what: str

    def matches(self, target: str, error: BaseException) -> bool:
        frames = traceback.extract_tb(error.__traceback__)
        return (target in self.targets and isinstance(error, self.exception)
                and self.message in str(error) and bool(frames) and frames[-1].name == self.where)


KNOWN: tuple[Known, ...] = ()


class Disagreement(AssertionError):
    """The C codec and its twin gave different answers for the same bytes."""


@dataclass(frozen=True)
class Target:
    """A decoder under fuzzing: ``decode`` returns, or raises one of ``allowed`` (or an
    AssertionError of its own for a broken invariant: a violation too)."""

    name: str
    group: str
    """codec, objects, wal or manifest: ``--targets`` takes a group for all its targets."""
    seeds: Callable[[random.Random], list[bytes]]
    decode: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    shape: Shape
    reseal: Callable[[bytearray], None] | None = None
    structured: Callable[[random.Random, bytes], bytes | None] | None = None
    memory_limit: int = 64 * MiB

    def mutate(self, rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
        """One mutated input: structured a third of the time (when the target has such a
        mutation), else byte-level, then resealed half the time so that the damage reaches the
        checks behind the checksums."""
        if self.structured is not None and rng.random() < 0.33:
            made = self.structured(rng, data)
            if made is not None:
                return made[:self.shape.max_size]
        made = mutate_bytes(rng, data, self.shape, others)
        if self.reseal is not None and rng.random() < 0.5:
            buf = bytearray(made)
            self.reseal(buf)
            made = bytes(buf)
        return made

    def known_issue(self, error: BaseException) -> Known | None:
        """The known issue ``error`` is, if any (see :data:`KNOWN`)."""
        return next((k for k in KNOWN if k.matches(self.name, error)), None)


# ---- the codec ----

_EXTREME_TIMESTAMPS = (-(1 << 63), (1 << 63) - 1, 0, -1, 1_700_000_000_000)


def _record(rng: random.Random) -> Record:
    return Record(rng.randbytes(rng.choice((0, 1, rng.randrange(60), rng.randrange(300)))),
                  key=rng.choice((None, b"", rng.randbytes(rng.randrange(1, 8)))),
                  headers=[(rng.choice(("h", "\u00e9t\u00e9", "", "x" * 20)),
                            rng.randbytes(rng.randrange(4)))
                           for _ in range(rng.choice((0, 0, 1, 3)))],
                  timestamp=rng.choice((None, rng.choice(_EXTREME_TIMESTAMPS),
                                        rng.randrange(1 << 41))))


def _batches(rng: random.Random, first_offset: int = 0, most: int = 4) -> list[RecordBatch]:
    batches = []
    offset = first_offset
    for _ in range(rng.randrange(1, most + 1)):
        if rng.random() < 0.2:
            batch = RecordBatch(rng.randbytes(rng.randrange(40)), rng.randrange(1, 5),
                                base_timestamp=rng.randrange(1 << 41))
        else:
            records = [_record(rng) for _ in range(rng.randrange(1, 12))]
            batch = RecordBatch.from_records(records, timestamp=rng.randrange(1 << 41))
        batches.append(batch.with_offset(offset))
        offset += batch.count
    return batches


def _framed(rng: random.Random) -> bytes:
    stream = rng.choice((0, 7, (1 << 64) - 1))
    return b"".join(codec.encode_batch(stream, b.base_offset, b)  # type: ignore[arg-type]
                    for b in _batches(rng, rng.choice((0, 1000, (1 << 63) - 100))))


def _block(rng: random.Random, most: int = 4 * KiB) -> bytes:
    """A data block of at most ``most`` bytes."""
    while True:
        block = codec.encode_block(rng.choice((1, 42)), _batches(rng, rng.randrange(1 << 20), 3),
                                   compression=rng.choice(("none", "lz4", "zstd")))
        if len(block) <= most:
            return block


def _agree(name: str, *args: object) -> None:
    if _native is None:
        return
    python, c = getattr(_python, name)(*args), getattr(_native, name)(*args)
    if python != c:
        raise Disagreement(f"backends differ on {name}: python={python!r:.300} c={c!r:.300}")


def decode_batch(data: bytes) -> None:
    _, batch = codec.decode_batch(data)
    if batch.encoding == "records":
        batch.records()


def scan_batches(data: bytes) -> None:
    _agree("scan_batches", data, 0, None)
    codec.scan_batches(data, strict=False)
    for _, batch in codec.read_batches(data):
        if batch.encoding == "records":
            batch.records()


def decode_block(data: bytes) -> None:
    for batch in codec.decode_block(data)[1]:
        if batch.encoding == "records":
            batch.records()


def scan_blocks(data: bytes) -> None:
    _agree("scan_blocks", data, 0, None)
    codec.scan_blocks(data, strict=False)


_RECORDS_ARGS = struct.Struct("<Iq")  # count, base timestamp: the target's input starts so


def decode_records(data: bytes) -> None:
    count, base = _RECORDS_ARGS.unpack_from(data.ljust(12, b"\0"))
    payload = data[12:]
    _agree("records_index", payload, count, base)
    codec.decode_records(payload, count, base)


def _records_seeds(rng: random.Random) -> list[bytes]:
    seeds = []
    for _ in range(24):
        records = [_record(rng) for _ in range(rng.randrange(1, 40))]
        batch = RecordBatch.from_records(records, timestamp=rng.randrange(1 << 41))
        seeds.append(_RECORDS_ARGS.pack(batch.count, batch.base_timestamp) + batch.payload)
    return seeds


# A zstd block may claim 32 KiB of output for each of its bytes (docs/format.md), and decoding
# allocates what it claims (twice: the raw bytes, and the batches copied out of them): blocks of
# at most 1 KiB keep what the format allows within the harness's 64 MiB.
_ONE_BLOCK = Shape(magics=(b"SLDB", b"SLRB"), fields=forge.BLOCK_FIELDS + forge.BATCH_FIELDS,
                   max_size=KiB)


# ---- objects ----

def _object_seeds(rng: random.Random) -> list[bytes]:
    seeds = []
    for version in objects.VERSIONS:
        for _ in range(6):
            streams = {stream: _batches(rng, rng.randrange(1 << 20), 5)
                       for stream in rng.sample((1, 2, 3, 1 << 40), rng.randrange(1, 4))}
            data, _ = objects.encode_object(
                streams, block_bytes=rng.choice((64, 300, MiB)),
                compression=rng.choice(("none", "lz4", "zstd")), version=version)
            seeds.append(data)
    return seeds


def decode_footer(data: bytes) -> None:
    objects.decode_footer(data[-32:], len(data))


def decode_object_index(data: bytes) -> None:
    objects.decode_object_index(data)


# ---- the WAL ----

WAL_BASE = 1 << 30  # the logical position of a WAL input's first byte (4 KiB-aligned)
def _wal_seeds(rng: random.Random) -> list[bytes]:
    seeds = []
    for _ in range(12):
        parts: list[bytes] = []
        position = WAL_BASE
        offsets: dict[int, int] = {}
        for _group in range(rng.randrange(1, 4)):
            start = position
            for _ in range(rng.randrange(1, 4)):
                if rng.random() < 0.15:
                    piece = wal_format.padding(position, rng.choice((40, 100, 4096)), start)
                else:
                    stream = rng.choice((1, 2, 9))
                    batch = _batches(rng, offsets.get(stream, 0), 1)[0]
                    offsets[stream] = batch.base_offset + batch.count  # type: ignore[operator]
                    record = WalRecord(stream, rng.choice((0, 1, 5)), batch)
                    piece = b"".join(wal_format.record_parts(position, record, start))
                parts.append(piece)
                position += len(piece)
            if rng.random() < 0.5:  # the file WAL's end marker after a group
                parts.append(wal_format.end_marker(position, start))
                if rng.random() < 0.5:
                    break
        seeds.append(b"".join(parts))
    return seeds


def examine(data: bytes) -> None:
    """``examine`` where a scan calls it, at the input's start and at record magics: each
    answer moves the scan on, and not past the input."""
    for at in sorted({0, *forge.positions(data, wal_format.MAGIC, 64)}) if data else ():
        found, step = wal_format.examine(data, at, WAL_BASE + at)
        if not 0 < step <= len(data) - at or (found is not None and found[1] != step):
            raise AssertionError(f"examine at {at} moves on by {step} ({found!r:.200})")


def scan_run(data: bytes) -> None:
    for last, ends in itertools.product((False, True), (False, True)):
        recovery = Recovery(lambda _recovery: iter(()), WAL_BASE)
        entries, end = wal_format.scan_run(data, WAL_BASE, recovery, last=last, ends=ends)
        positions = [e.position for e in entries]
        if not 0 <= end <= len(data) or positions != sorted(set(positions)) or any(
                not WAL_BASE <= p < WAL_BASE + end for p in positions):
            raise AssertionError(f"scan_run(last={last}, ends={ends}) ends at {end} with "
                                 f"records at {positions[:20]}")


def _ring_header_seeds(rng: random.Random) -> list[bytes]:
    return [RingHeader(rng.randrange(1 << 32), rng.choice((64 * KiB, 32 * MiB)),
                       rng.randrange(1 << 40) * 4096, rng.randrange(1 << 64), rng.randrange(9),
                       rng.randrange(1 << 41)).pack() for _ in range(8)]


def unpack_ring_header(data: bytes) -> None:
    RingHeader.unpack(data)


_scratch: list[str] = []


def _scratch_dir() -> str:
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="streamlib-fuzz-"))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


RING = 64 * KiB  # the smallest ring: a fuzz input holds all of it


def _block_ring_seeds(rng: random.Random) -> list[bytes]:
    seeds = []
    for i in range(4):
        path = os.path.join(_scratch_dir(), f"seed-{i}")
        with BlockWal(path, size=RING, direct_io=False, full_timeout=1.0) as wal:
            wal.recover().entries()
            offset = 0
            for _ in range(rng.randrange(1, 30)):
                batch = _batches(rng, offset, 1)[0]
                offset += batch.count
                if wal.usage > RING // 2 or rng.random() < 0.2:  # records of a few laps
                    wal.trim(wal.end_position)
                wal.append(WalRecord(3, 1, batch)).result()
        with open(path, "rb") as f:
            seeds.append(f.read())
        os.unlink(path)
    return seeds


def recover_block_ring(data: bytes) -> None:
    path = os.path.join(_scratch_dir(), "ring")
    with open(path, "wb") as f:
        f.write(data)
    # Zero header slots, or an empty file: a ring to format, which without a size is the
    # caller's mistake (ValueError). A file too short for the slots that holds anything else is
    # not a ring and is never formatted (ConfigError on wal_path, a ValueError too).
    unformatted = len(data) < RING_START or not data[:RING_START].strip(b"\0")
    try:
        wal = BlockWal(path, direct_io=False)
    except ValueError:
        if unformatted:
            return  # a ring to format, and the caller gave no size: its mistake, documented
        raise
    try:
        wal.recover().entries()
    finally:
        wal.close()


# ---- the manifest ----

_manifest_cache: dict[str, Any] = {}


def _manifest_history() -> tuple[list[dict[str, Any]], list[bytes], list[bytes]]:
    """A manifest's states at versions 0..n (as checkpoint JSON), its deltas 1..n and its
    checkpoints 1..n, as a ManifestMetadataStore writes them: streams made, opened by one node
    and handed over to another, trimmed, destroyed; a node registered; objects committed and
    removed; objects replaced (compaction: the inputs doomed, an output in the archive tier) and
    forgotten; retention set; key-value entries written and deleted."""
    if not _manifest_cache:
        store = ObjectStore.from_url(f"memory://streamlib-fuzz-{uuid.uuid4().hex}")
        meta = ManifestMetadataStore(store, node_id="w", checkpoint_every=1)
        one = meta.create_stream("one").id
        two = meta.create_stream("two").id
        meta.destroy_stream(meta.create_stream("gone").id)
        meta.create_stream()
        node = meta.register_node("a")
        epoch = meta.open_stream(one, node_id="a").epoch
        meta.open_stream(two, node_id="a")
        meta.open_stream(two, node_id="b")
        meta.commit(Commit(node_id="a", wal_position=10, epochs={one: epoch},
                           objects=[make_object("obj-1", (one, 0, 5))]))
        meta.commit(Commit(node_id="a", wal_position=20, epochs={one: epoch},
                           objects=[make_object("obj-2", (one, 5, 9))]))
        meta.trim_stream(one, 5)
        meta.commit(Commit(node_id="a", wal_position=21, epochs={one: epoch}, remove=["obj-1"]))
        meta.release_streams("a", node.node_epoch, [two])
        meta.commit(Commit(node_id="a", wal_position=30, epochs={one: epoch},
                           objects=[make_object("obj-3", (one, 9, 12)),
                                    make_object("obj-4", (one, 12, 20))]))
        meta.replace(Replacement(inputs=["obj-3", "obj-4"], outputs=[
            dataclasses.replace(make_object("obj-5", (one, 9, 20)), tier="archive")]))
        meta.forget(["obj-1"])
        meta.set_retention(one, Retention(max_age=3600, max_bytes=1 << 20))
        meta.create_stream("kept", retention=Retention(max_bytes=4096))
        meta.kv_write("ns", "k", b"value")
        meta.kv_write("ns", "gone", b"x")
        meta.kv_write("ns", "gone", None)
        versions = meta.version
        deltas = [store.get(f"manifest/log/{v:020d}") for v in range(1, versions + 1)]
        checkpoints = [store.get(f"manifest/checkpoint/{v:020d}") for v in range(1, versions + 1)]
        meta.close()
        states = [checkpoint.dump_state(manifest.ManifestState())]
        states += [checkpoint.dump_state(checkpoint.read_checkpoint(raw, v))
                   for v, raw in enumerate(checkpoints, 1)]
        _manifest_cache.update(states=states, deltas=deltas, checkpoints=checkpoints)
    return (_manifest_cache["states"], _manifest_cache["deltas"], _manifest_cache["checkpoints"])


def _delta_seeds(rng: random.Random) -> list[bytes]:
    _, deltas, _ = _manifest_history()
    return [struct.pack("<I", v) + raw for v, raw in enumerate(deltas)]


class StateChanged(AssertionError):
    """A delta that was refused changed the state it was applied to."""


def apply_delta(data: bytes) -> None:
    """The delta in ``data[4:]``, applied to the state of the version before it (the input's
    first four bytes choose which)."""
    states, _, _ = _manifest_history()
    before = u32(data) % len(states)
    state = checkpoint.load_state(states[before])
    delta = manifest.read_delta(data[4:], before + 1)
    try:
        state.apply(delta["op"], delta["args"], delta["time"], delta["format"])
    except manifest.Malformed:
        if checkpoint.dump_state(state) != states[before]:
            raise StateChanged(f"a refused {delta['op']} changed the state") from None
        raise


def _checkpoint_seeds(rng: random.Random) -> list[bytes]:
    _, _, checkpoints = _manifest_history()
    return [struct.pack("<I", v) + raw for v, raw in enumerate(checkpoints, 1)]


def read_checkpoint(data: bytes) -> None:
    checkpoint.read_checkpoint(data[4:], u32(data))


TARGETS: tuple[Target, ...] = (
    Target("batch.decode", "codec", lambda rng: [_framed(rng) for _ in range(24)],
           decode_batch, (CorruptDataError,), forge.BATCHES, forge.reseal_frames),
    Target("batch.scan", "codec", lambda rng: [_framed(rng) for _ in range(24)],
           scan_batches, (CorruptDataError,), forge.BATCHES, forge.reseal_frames),
    Target("records.decode", "codec", _records_seeds, decode_records, (CorruptDataError,),
           Shape(fields=(Field(b"", 0, 4), Field(b"", 4, 8)), extra_ints=(3, 6, 40))),
    Target("block.decode", "codec", lambda rng: [_block(rng, KiB) for _ in range(24)],
           decode_block, (CorruptDataError,), _ONE_BLOCK, forge.reseal_frames, forge.mutate_block),
    Target("block.scan", "codec",
           lambda rng: [b"".join(_block(rng) for _ in range(rng.randrange(1, 4)))
                        for _ in range(16)],
           scan_blocks, (CorruptDataError,), Shape(magics=(b"SLDB",), fields=forge.BLOCK_FIELDS),
           forge.reseal_frames, forge.mutate_block),
    Target("object.footer", "objects", _object_seeds, decode_footer, (CorruptDataError,),
           Shape(magics=(b"SLOB", b"SLIX"), fields=forge.FOOTER_FIELDS), forge.reseal_object),
    Target("object.index", "objects", _object_seeds, decode_object_index, (CorruptDataError,),
           Shape(magics=(b"SLIX", b"SLOB", b"SLDB"),
                 fields=forge.FOOTER_FIELDS + forge.BLOCK_FIELDS), forge.reseal_object),
    Target("wal.examine", "wal", _wal_seeds, examine, (),
           Shape(magics=(wal_format.MAGIC, b"SLRB"), fields=forge.WAL_FIELDS + forge.BATCH_FIELDS),
           forge.reseal_wal),
    Target("wal.scan_run", "wal", _wal_seeds, scan_run, (),
           Shape(magics=(wal_format.MAGIC, b"SLRB"), fields=forge.WAL_FIELDS + forge.BATCH_FIELDS),
           forge.reseal_wal),
    Target("wal.ring_header", "wal", _ring_header_seeds, unpack_ring_header, (),
           Shape(magics=(b"SLWH",), fields=forge.RING_HEADER_FIELDS),
           forge.reseal_ring_header),
    Target("wal.block_ring", "wal", _block_ring_seeds, recover_block_ring, (CorruptDataError,),
           Shape(magics=(b"SLWH", wal_format.MAGIC),
                 fields=forge.RING_HEADER_FIELDS + forge.WAL_FIELDS,
                 max_size=RING_START + 4 * RING),
           forge.reseal_block_ring),
    Target("manifest.delta", "manifest", _delta_seeds, apply_delta, (manifest.Malformed,),
           Shape(), None, prefixed(json_mutator(json.loads, dump_json))),
    Target("manifest.checkpoint", "manifest", _checkpoint_seeds, read_checkpoint,
           (manifest.Malformed,), Shape(), None, prefixed(forge.mutate_checkpoint)),
)
