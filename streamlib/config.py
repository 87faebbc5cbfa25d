"""The one configuration object of streamlib.

Settings are data: a frozen dataclass whose every field documents its default and unit, loadable
from keyword arguments, a mapping, and ``STREAMLIB_*`` environment variables. Components (an
fsspec filesystem, a clock, a metrics sink) are passed to ``open()`` as objects, not configured
here. Precedence, lowest first: defaults, environment, mapping, keyword arguments.

Byte sizes accept plain integers or strings with a binary unit: ``"64KiB"``, ``"8MiB"``,
``"1GiB"``, ``"4096"``, ``"1_000_000"``; ``K``/``KB``, ``M``/``MB`` and ``G``/``GB`` mean the
same binary units (1 KB = 1024 bytes here, as in most storage settings).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamlib.errors import ConfigError, ConfigWarning, describe

ENV_PREFIX = "STREAMLIB_"
_NO_VALUE = ConfigError.NO_VALUE
# STREAMLIB_* variables that are not config fields: the codec's import policy (codec/__init__.py).
ALLOW_UNSAFE_NO_FSYNC = "STREAMLIB_ALLOW_UNSAFE_NO_FSYNC"
"""Set to 1, it lets ``durability="unsafe-no-fsync"`` be used outside a pytest test."""
RESERVED_ENV = frozenset({"STREAMLIB_PURE", ALLOW_UNSAFE_NO_FSYNC})

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB}


@dataclass(frozen=True)
class _Kind:
    """How one field is parsed from text and checked."""

    unit: str
    choices: tuple[str, ...] = ()
    low: int | None = None
    high: int | None = None

    def parse(self, name: str, value: object) -> object:
        if self.unit == "text":
            if not isinstance(value, str):
                raise ConfigError(name, "must be a string", value)
            if "\x00" in value:
                raise ConfigError(name, "must not contain NUL", value)
            return value.strip()
        if self.choices:
            if not isinstance(value, str):
                raise ConfigError(name, f"must be one of {', '.join(self.choices)}", value)
            value = value.strip().lower()
            if value not in self.choices:
                raise ConfigError(name, f"must be one of {', '.join(self.choices)}", value)
            return value
        if isinstance(value, str):
            value = _parse_int(name, value, self.unit == "bytes")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer ({self.unit})", value)
        if self.low is not None and value < self.low:
            raise ConfigError(name, f"must be at least {self.low} {self.unit}", value)
        if self.high is not None and value > self.high:
            raise ConfigError(name, f"must be at most {self.high} {self.unit}", value)
        return value


def _parse_int(name: str, text: str, sized: bool) -> int:
    match = re.fullmatch(r"\s*(-?[\d_]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or (match.group(2) and not sized):
        raise ConfigError(name, "must be an integer" + (" with an optional unit (KiB, MiB, GiB)"
                                                        if sized else ""), text)
    unit = _UNITS.get(match.group(2).lower())
    if unit is None:
        raise ConfigError(name, "unknown unit (use B, KiB, MiB or GiB)", text)
    try:
        return int(match.group(1)) * unit
    except ValueError:
        raise ConfigError(name, "must be an integer", text) from None


def _setting(default: Any, doc: str, kind: _Kind) -> Any:
    return field(default=default, metadata={"doc": doc, "kind": kind})


@dataclass(frozen=True, kw_only=True)
class Config:
    """Validated settings of a store. Build with ``Config(...)``, :meth:`load`, :meth:`from_dict`
    or :meth:`from_env`; change with :meth:`replace`. Invalid values raise
    :class:`~streamlib.errors.ConfigError` naming the field."""

    compression: str = _setting(
        "lz4",
        "Compression of object data blocks: none, lz4 or zstd. A block that does not shrink is "
        "stored uncompressed whatever this says.",
        _Kind("codec", choices=("none", "lz4", "zstd")))
    zstd_level: int = _setting(
        3, "zstd compression level when compression is zstd (1 fastest, 22 smallest).",
        _Kind("level", low=1, high=22))
    block_bytes: int = _setting(
        1 * MiB,
        "Target size of an object data block before compression: the unit of a ranged GET and "
        "of the block cache. A single larger batch makes a larger block.",
        _Kind("bytes", low=4 * KiB, high=64 * MiB))
    max_batch_bytes: int = _setting(
        8 * MiB,
        "Largest record batch a stream append will accept, counted as its records' keys, "
        "values and headers (names and values), or an opaque batch's payload: an 8 MiB value "
        "fits the default. Its encoding, a few bytes a record more, must also stay within "
        "twice this and the format's 64 MiB. A larger batch is refused with ValueError "
        "naming the limit and the sizes.",
        _Kind("bytes", low=1 * KiB, high=64 * MiB))

    # ---- where the parts live (empty: under `path`) ----
    path: str = _setting(
        "",
        "The store's directory: the default home of the WAL, the objects and the metadata "
        "(`streamlib.open(\"./data\")` sets it). May stay empty when the three are placed "
        "elsewhere.",
        _Kind("text"))
    wal: str = _setting(
        "file",
        "The write-ahead log backend: file (segment files on a local disk), block (a "
        "preallocated ring in a file or on a block device) or object (one object a flush, in "
        "the object store).",
        _Kind("backend", choices=("file", "block", "object")))
    wal_path: str = _setting(
        "",
        "The file WAL's directory or the block WAL's ring file or device. Empty: `wal/` "
        "(file) or `wal.ring` (block) under the store's path. Not used by the object WAL.",
        _Kind("text"))
    wal_url: str = _setting(
        "",
        "Where the object WAL writes (an fsspec URL). Empty: the objects' store, under "
        "`wal/`. Not used by the other backends.",
        _Kind("text"))
    objects_url: str = _setting(
        "",
        "Where objects are uploaded: any fsspec URL (`file:///data/objects`, "
        "`s3://bucket/prefix`, `memory://name`). Empty: `objects/` under the store's path. "
        "Storage options (credentials, endpoint) are passed to streamlib.open.",
        _Kind("text"))
    metadata: str = _setting(
        "sqlite",
        "Where the metadata lives: sqlite (a local file, one machine: metadata_path) or "
        "manifest (objects in the object store, changed by create-only writes: several "
        "processes and machines can share one bucket; docs/shared-stores.md).",
        _Kind("backend", choices=("sqlite", "manifest")))
    metadata_path: str = _setting(
        "",
        "The local metadata store (an SQLite file). Empty: `meta.sqlite` under the store's "
        "path. Not used by the manifest.",
        _Kind("text"))
    metadata_url: str = _setting(
        "",
        "Where the manifest lives (an fsspec URL that can create objects only if absent: "
        "s3://, file://, memory://). Empty: the objects' store, under `manifest/`. Not used "
        "by sqlite.",
        _Kind("text"))
    node_id: str = _setting(
        "0",
        "This node's name in the metadata and in object WAL keys: letters, digits, '.', '_' "
        "or '-'. Two processes using one store at once need different node ids.",
        _Kind("text"))
    durability: str = _setting(
        "fsync",
        "fsync: an append is acknowledged once it is on stable storage, and every metadata "
        "change and local object too. unsafe-no-fsync: nothing local is fsynced — a process "
        "crash loses nothing (the page cache keeps it), but a machine crash or power loss "
        "loses acknowledged appends. For tests (a fresh store in a few ms): accepted only "
        "while pytest runs a test, or with STREAMLIB_ALLOW_UNSAFE_NO_FSYNC=1. The block WAL "
        "always syncs; object stores other than local files are as durable as they are.",
        _Kind("mode", choices=("fsync", "unsafe-no-fsync")))

    # ---- the write path ----
    wal_bytes: int = _setting(
        256 * MiB,
        "Bytes the WAL may hold before appends wait for uploads (back-pressure). Data not yet "
        "uploaded is also kept in memory for readers, so this bounds that memory too. The "
        "block WAL's ring size when it creates the ring.",
        _Kind("bytes", low=256 * KiB, high=1 << 50))
    append_timeout_ms: int = _setting(
        30_000,
        "How long an append waits for room in a full WAL before raising WalFullError.",
        _Kind("milliseconds", low=0, high=24 * 3600 * 1000))
    upload_bytes: int = _setting(
        8 * MiB,
        "Upload once this many bytes of appended data wait for upload (the size trigger).",
        _Kind("bytes", low=1 * KiB, high=4 * GiB))
    upload_interval_ms: int = _setting(
        1_000,
        "Upload at the latest this long after the first append not yet uploaded (the time "
        "trigger): with quiet streams, about one multi-stream object per interval.",
        _Kind("milliseconds", low=1, high=24 * 3600 * 1000))
    stream_object_bytes: int = _setting(
        4 * MiB,
        "A stream with at least this many bytes in one upload gets an object of its own (a "
        "stream object, read back with few large GETs); the others share one multi-stream "
        "object.",
        _Kind("bytes", low=1 * KiB, high=4 * GiB))
    retry_timeout_ms: int = _setting(
        60_000,
        "Time budget of one object-store call, retries of transient errors (throttling, 5xx, "
        "timeouts) with backoff included; then the upload round fails and is tried again "
        "later, and flush() raises StorageUnavailable.",
        _Kind("milliseconds", low=0, high=24 * 3600 * 1000))
    cache_bytes: int = _setting(
        256 * MiB,
        "The message cache's one memory budget, a hard limit: data waiting for upload (appends "
        "wait for room when it fills), uploaded data kept for readers near the tail, and "
        "decoded blocks read back (docs/cache.md).",
        _Kind("bytes", low=1 * MiB, high=1 << 50))
    part_bytes: int = _setting(
        16 * MiB,
        "Objects of at least twice this size go to S3 as multipart uploads in parts of this "
        "size (S3's minimum part is 5 MiB).",
        _Kind("bytes", low=5 * MiB, high=5 * GiB))

    # ---- the object WAL ----
    object_wal_flush_bytes: int = _setting(
        1 * MiB,
        "The object WAL seals an object (one PUT) once this many bytes of appends wait.",
        _Kind("bytes", low=4 * KiB, high=1 * GiB))
    object_wal_linger_us: int = _setting(
        2_000,
        "While a PUT of the object WAL is running, it seals the next object at the latest "
        "this long after its first append (microseconds): appends arriving meanwhile share "
        "its PUT. With no PUT running an object is sealed at once.",
        _Kind("microseconds", low=0, high=60_000_000))
    object_wal_in_flight: int = _setting(
        8,
        "PUTs the object WAL runs at once; appends complete in order whatever order they "
        "finish in.",
        _Kind("count", low=1, high=1024))

    # ---- the read path ----
    readahead_bytes: int = _setting(
        64 * MiB,
        "The largest readahead window of a catch-up reader (decoded bytes loaded ahead of "
        "it, within cache_bytes); 0 turns readahead off. Used when the store makes its own "
        "message cache.",
        _Kind("bytes", low=0, high=1 << 40))
    readahead_gets: int = _setting(
        4,
        "Ranged GETs a store's readahead runs at once, each on a thread of its own that "
        "then decodes what it fetched (at most 8 MiB of one object a GET), so that one large "
        "object is read as fast as several. Used when the store makes its own message cache.",
        _Kind("count", low=1, high=1024))
    async_threads: int = _setting(
        8,
        "Threads of a store for the calls of its asyncio face that may wait (a fetch from "
        "objects, a flush, a metadata change, a key-value call): started as such calls come "
        "(all at once by open_async), ended by close (docs/asyncio.md).",
        _Kind("count", low=1, high=1024))
    max_block_bytes: int = _setting(
        16 * MiB,
        "The most a data block read back may decode to: a block whose header or index says "
        "more is refused as CorruptDataError before anything is decompressed. At least "
        "block_bytes and twice max_batch_bytes (the store's own blocks always fit); the "
        "format's limit is 128 MiB.",
        _Kind("bytes", low=1 * MiB, high=128 * MiB))
    index_cache_bytes: int = _setting(
        16 * MiB,
        "Memory for object indexes (each object's footer and index, read once), beside the "
        "message cache.",
        _Kind("bytes", low=64 * KiB, high=1 << 40))

    # ---- shared stores (metadata=manifest) ----
    fence_poll_ms: int = _setting(
        100,
        "How often an idle node looks at the shared metadata (one GET) for hand-overs of its "
        "streams and for a take-over of itself; an append's acknowledgement never waits for "
        "this (it has a look of its own).",
        _Kind("milliseconds", low=1, high=3600 * 1000))
    lease_ms: int = _setting(
        1_000,
        "The owner's lease (docs/shared-stores.md): after a look at the shared metadata that "
        "found this node not fenced, appends durable within this many milliseconds of the "
        "look's start are acknowledged at once, without a look of their own. Each process "
        "records its lease in the metadata; a take-over, and the open of a node whose WAL is "
        "an object WAL after a process of it crashed, wait out the recorded lease (plus "
        "LEASE_DRIFT) before reading the WAL. 0: every acknowledgement waits for a look that "
        "started after its append was durable.",
        _Kind("milliseconds", low=0, high=3600 * 1000))
    sync_interval_ms: int = _setting(
        50,
        "The longest a read of another node's stream relies on the shared metadata it has "
        "before looking again (one GET).",
        _Kind("milliseconds", low=0, high=3600 * 1000))
    reader_poll_ms: int = _setting(
        100,
        "How often a reader waiting at the end of another node's stream looks for its new "
        "data (that node's appends wake nobody here).",
        _Kind("milliseconds", low=1, high=3600 * 1000))
    checkpoint_every: int = _setting(
        512,
        "A node that commits a version this many past the newest checkpoint of the shared "
        "manifest writes a new one (opening reads the newest checkpoint and the deltas after "
        "it).",
        _Kind("versions", low=1, high=1 << 30))

    # ---- the object lifecycle (docs/lifecycle.md) ----
    compaction_interval_ms: int = _setting(
        300_000,
        "How often the store's lifecycle thread runs a pass: retention, compaction of small "
        "objects, marking objects that hold nothing readable, deleting doomed objects. 0 turns "
        "the background thread off (store.compact() still runs a pass on demand).",
        _Kind("milliseconds", low=0, high=7 * 24 * 3600 * 1000))
    compaction_object_bytes: int = _setting(
        64 * MiB,
        "The size compaction merges objects up to: objects smaller than this are its inputs, "
        "and its outputs are about this large.",
        _Kind("bytes", low=1 * MiB, high=64 * GiB))
    compaction_max_object_bytes: int = _setting(
        4 * GiB,
        "The largest object compaction writes (it writes large objects as multipart uploads, "
        "never holding one in memory).",
        _Kind("bytes", low=1 * MiB, high=1024 * GiB))
    compaction_max_objects: int = _setting(
        500,
        "The most objects one compaction merges at once.",
        _Kind("objects", low=2, high=100_000))
    compaction_bytes_per_s: int = _setting(
        64_000_000,
        "Bytes per second background compaction may read plus write (a token bucket); 0: no "
        "limit. store.compact() runs unlimited unless given bytes_per_s.",
        _Kind("bytes", low=0, high=1 << 50))
    delete_grace_ms: int = _setting(
        600_000,
        "How long an object no longer referenced stays before it is deleted, so that reads "
        "that resolved it before (on any node) finish. At least four times retry_timeout_ms.",
        _Kind("milliseconds", low=0, high=30 * 24 * 3600 * 1000))
    gc_interval_ms: int = _setting(
        3_600_000,
        "The least time between two garbage-collecting sweeps of the lifecycle thread (each "
        "lists the objects and deletes what no metadata references and is older than "
        "delete_grace_ms). 0: no sweep in the background (store.collect_garbage() still runs "
        "one).",
        _Kind("milliseconds", low=0, high=30 * 24 * 3600 * 1000))
    memory_trim_interval_ms: int = _setting(
        30_000,
        "How often the lifecycle thread gives the memory the store freed back to the system "
        "(glibc's malloc_trim, a few milliseconds; nothing on other C libraries). Without it "
        "glibc keeps what the store's threads free and RSS creeps up while the bytes held "
        "stay flat. 0: never.",
        _Kind("milliseconds", low=0, high=24 * 3600 * 1000))
    retention_max_age_ms: int = _setting(
        0,
        "The store's default retention by age, for streams without their own "
        "(create_stream(retention=...)): records older than this go, at block granularity. "
        "0: no limit.",
        _Kind("milliseconds", low=0, high=1 << 62))
    retention_max_bytes: int = _setting(
        0,
        "The store's default retention by size, for streams without their own: the newest "
        "this many bytes of a stream's uploaded data stay, at block granularity. 0: no limit.",
        _Kind("bytes", low=0, high=1 << 62))
    archive_url: str = _setting(
        "",
        "A cheaper object store compaction writes its outputs to (any fsspec URL); uploads "
        "keep going to objects_url and readers read either. Empty: compaction writes to "
        "objects_url.",
        _Kind("text"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = f.metadata["kind"].parse(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        least = max(self.block_bytes, 2 * self.max_batch_bytes)
        if self.max_block_bytes < least:
            raise ConfigError("max_block_bytes", f"must be at least block_bytes and twice "
                              f"max_batch_bytes ({least} bytes), so that the store reads "
                              f"back every block it writes", self.max_block_bytes)
        if self.delete_grace_ms < 4 * self.retry_timeout_ms:
            raise ConfigError("delete_grace_ms", f"must be at least four times retry_timeout_ms "
                              f"({4 * self.retry_timeout_ms} ms), so that an upload or a "
                              f"compaction still running never finds its objects deleted",
                              self.delete_grace_ms)
        if self.compaction_max_object_bytes < self.compaction_object_bytes:
            raise ConfigError("compaction_max_object_bytes", f"must be at least "
                              f"compaction_object_bytes ({self.compaction_object_bytes} bytes)",
                              self.compaction_max_object_bytes)

    # ---- loading ----

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def describe(cls) -> list[tuple[str, object, str, str]]:
        """``(name, default, unit, doc)`` for every field, for documentation and ``--help``."""
        return [(f.name, f.default, f.metadata["kind"].unit, f.metadata["doc"])
                for f in dataclasses.fields(cls)]

    @classmethod
    def _check_names(cls, names: Iterable[object], origin: str) -> None:
        known = cls.field_names()
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                raise ConfigError(str(name), f"unknown setting in {origin}{hint}", _NO_VALUE)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Config:
        """Defaults overridden by ``data``; unknown keys raise ConfigError."""
        if not isinstance(data, Mapping):
            raise TypeError(f"config must be a mapping, not {type(data).__name__}")
        cls._check_names(data, "mapping")
        return cls(**data)  # type: ignore[arg-type]  # parsed by __post_init__

    @classmethod
    def env_values(cls, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The ``STREAMLIB_*`` settings in ``environ`` (default ``os.environ``), by field name.
        An unknown ``STREAMLIB_*`` variable is most likely a typo: it is left out with a
        :class:`~streamlib.errors.ConfigWarning` naming it (and the field it may mean), rather
        than stopping every store of the process."""
        environ = os.environ if environ is None else environ
        known = cls.field_names()
        values = {}
        for key, value in environ.items():
            if not key.startswith(ENV_PREFIX) or key in RESERVED_ENV:
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
                warnings.warn(describe(f"unknown environment variable left out{hint}",
                                       variable=key, value=repr(value)), ConfigWarning,
                              stacklevel=3)
                continue
            values[name] = value
        return values

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Defaults overridden by ``STREAMLIB_*`` variables."""
        return cls(**cls.env_values(environ))  # type: ignore[arg-type]  # parsed by __post_init__

    @classmethod
    def load(cls, source: Config | Mapping[str, object] | None = None, *, env: bool = True,
             environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Defaults, then the environment (unless ``env=False``), then ``source``, then keyword
        ``overrides``. A ``Config`` given as ``source`` already holds every field, so the
        environment is not read at all."""
        if isinstance(source, Config):
            values: dict[str, object] = source.to_dict()
        else:
            values = dict(cls.env_values(environ)) if env else {}
        if source is not None and not isinstance(source, Config):
            if not isinstance(source, Mapping):
                raise TypeError("config must be a Config or a mapping, "
                                f"not {type(source).__name__}")
            cls._check_names(source, "mapping")
            values.update(source)
        cls._check_names(overrides, "keyword arguments")
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]  # parsed by __post_init__

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes`` applied and validated."""
        self._check_names(changes, "keyword arguments")
        return dataclasses.replace(self,
                                   **changes)  # type: ignore[arg-type]  # parsed by __post_init__

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.field_names()}


# ---- Tuning constants ----
# Fixed values of the data flow that are not settings (changing them changes no guarantee, but
# none needs tuning by users); named here so that every one is found in one place.

LONGEST_WAIT = threading.TIMEOUT_MAX / 2
"""Seconds any wait is capped at (about 146 years): a timeout of ``inf`` waits until the event
or close, and the operating system's lock waits refuse longer ones."""
LEASE_DRIFT = 0.01
"""The most one node's clock may run faster than another's, as a fraction: a node waits out
another's lease for ``lease_ms × (1 + LEASE_DRIFT)`` of its own clock."""
RELEASE_POLL = 0.02
"""Seconds between a shared store's looks at the metadata while an append waits for another
node's release of its stream (the hand-over completes within about this much of the release)."""
UPLOAD_BACKOFF_FIRST = 0.1
"""Seconds the uploader waits after a failed round; doubled by each further failure."""
UPLOAD_BACKOFF_MAX = 5.0
"""The longest wait between failed upload rounds (seconds)."""
COMPACTION_READ_BYTES = 8 * MiB
"""Decoded bytes compaction reads at once (a run of input blocks, fetched with one GET per
input object it touches): with the part being uploaded and the one being filled, compaction's
memory is about this plus twice ``part_bytes``."""
UPLOAD_DESTROYED_RETRIES = 3
"""Rounds tried in a row when streams are destroyed under them (each leaves those out)."""
