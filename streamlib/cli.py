"""The ``streamlib`` command (also ``python -m streamlib``; docs/guide.md, "Operating").

    streamlib --version
    streamlib inspect PATH_OR_URL [--json]
    streamlib dump PATH_OR_URL STREAM [--from OFFSET] [--count N] [--format json|raw]
    streamlib verify PATH_OR_URL [--deep] [--json]
    streamlib check-store URL [--storage-options JSON] [--json]

``inspect``, ``dump`` and ``verify`` look at a store from outside, read-only, beside a node that
may have it open (:mod:`streamlib.tools` holds their logic; this module parses the arguments
and prints). Exit status 0, 1 when ``verify`` found damage, 2 when the store cannot be read.

``check-store`` tells whether an object store has what streamlib needs, by trying each thing
under a fresh prefix of ``URL`` (removed afterwards): plain writes and reads, ranged GETs,
listings that show a write at once, multipart uploads (S3), create-only writes (what a shared
manifest stands on: docs/shared-stores.md), and compare-and-set (S3 ``If-Match``; reported,
not needed). The verdict: ``shared`` (several nodes may share it), ``in-process``
(``memory://``: stores of one process may share it), ``single-node`` (a store of one node:
objects and a local metadata file), or ``unusable``. Exit status 0 for ``shared``, 1 for
``in-process`` and ``single-node``, 2 for ``unusable``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from streamlib.io import ObjectStore, RetryPolicy

MiB = 1 << 20


@dataclass(slots=True)
class Check:
    name: str
    outcome: str  # "ok", "failed", "not needed"
    detail: str = ""


@dataclass(slots=True)
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)
    in_process: bool = False  # memory://: nothing outside this process sees it

    def outcome(self, name: str) -> str:
        return next(c.outcome for c in self.checks if c.name == name)

    @property
    def verdict(self) -> str:
        basics = ("write and read", "ranged GET", "list after write", "multipart upload")
        if any(self.outcome(name) == "failed" for name in basics):
            return "unusable"
        if self.outcome("create only if absent") != "ok":
            return "single-node"
        return "in-process" if self.in_process else "shared"

    def text(self) -> str:
        lines = [f"streamlib check-store {self.url}"]
        for check in self.checks:
            mark = {"ok": "ok", "failed": "FAILED", "not needed": "n/a"}[check.outcome]
            lines.append(f"  {check.name:<24} {mark:<7} {check.detail}".rstrip())
        meaning = {"shared": "several nodes may share this store (metadata=manifest)",
                   "in-process": "stores of this process may share it (metadata=manifest); "
                                 "nothing outside this process sees it",
                   "single-node": "one node's objects, with its metadata in a local file "
                                  "(metadata=sqlite); not for a shared manifest",
                   "unusable": "streamlib cannot keep its objects here"}
        lines.append(f"verdict: {self.verdict}: {meaning[self.verdict]}")
        return "\n".join(lines)


class _Probes:
    """The checks of :func:`check_store`, on a fresh prefix (``store``) of ``base``; each
    returns what it saw, or raises what went wrong ("n/a: …": not needed on this store)."""

    def __init__(self, base: ObjectStore, store: ObjectStore, s3: bool) -> None:
        self.base, self.store, self.s3 = base, store, s3

    def write_read(self) -> str:
        data = uuid.uuid4().bytes * 64
        self.store.put("plain", data)
        if self.store.get("plain") != data:
            raise AssertionError("read back other bytes than were written")
        return f"{len(data)} bytes"

    def ranged(self) -> str:
        data = bytes(range(256)) * 16
        self.store.put("ranged", data)
        got = self.store.get("ranged", 1000, 1100)
        if got != data[1000:1100]:
            raise AssertionError(f"bytes [1000, 1100) came back as {len(got)} other bytes")
        return "bytes [1000, 1100) of 4096"

    def listed(self) -> str:
        self.store.put("listed/one", b"1")
        keys = [info.key for info in self.store.list("listed/")]
        if keys != ["listed/one"]:
            raise AssertionError(f"a listing right after a write shows {keys}")
        self.store.delete(["listed/one"])
        if self.store.list("listed/"):
            raise AssertionError("a listing right after a delete still shows the object")
        return "a write and a delete show at once"

    def multipart(self) -> str:
        if not self.s3:
            return "n/a: objects are written whole"
        data = uuid.uuid4().bytes * (11 * MiB // 16)
        self.store.put("multipart", data, part_bytes=5 * MiB)
        if self.store.get("multipart", len(data) - 16) != data[-16:]:
            raise AssertionError("the multipart object reads back wrong")
        return "11 MiB in 5 MiB parts"

    def create_only(self) -> str:
        store = self.store
        if not store.can_create:
            raise AssertionError(f"no create-only write is known for {self.base.fs.protocol}")
        store.create("created", b"first")
        try:
            store.create("created", b"second")
        except FileExistsError:
            pass
        else:
            raise AssertionError("a second create of one key succeeded: conditions ignored")
        if store.get("created") != b"first":
            raise AssertionError("the refused create changed the object")
        winners = []

        def race(i: int) -> None:
            try:
                store.create("raced", str(i).encode())
                winners.append(i)
            except FileExistsError:
                pass

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(winners) != 1:
            raise AssertionError(f"{len(winners)} of 8 racing creates of one key succeeded")
        return "a second create is refused; 1 of 8 racing creates wins"

    def compare_and_set(self) -> str:
        if not self.s3:
            return "n/a: the manifest uses create-only writes"
        fs, path = self.base.fs, f"{self.store.root}/cas"
        bucket, _, key = path.partition("/")
        first = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"1")
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"x", IfMatch='"0000"')
        except Exception:  # refused: as it should be
            pass
        else:
            raise AssertionError("a put with a wrong If-Match succeeded")
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"2", IfMatch=first["ETag"])
        return "If-Match honoured (not needed by streamlib)"

    CHECKS = (("write and read", write_read), ("ranged GET", ranged),
              ("list after write", listed), ("multipart upload", multipart),
              ("create only if absent", create_only), ("compare-and-set", compare_and_set))


def check_store(url: str, storage_options: dict[str, Any] | None = None) -> Report:
    """Try everything on a fresh prefix of ``url`` and report (see the module docstring)."""
    base = ObjectStore.from_url(url, storage_options, retry=RetryPolicy(timeout=10))
    prefix = f"streamlib-check-{uuid.uuid4().hex[:12]}"
    store = ObjectStore(base.fs, f"{base.root}/{prefix}", retry=base.retry)
    protocols = {base.fs.protocol} if isinstance(base.fs.protocol, str) else set(
        base.fs.protocol)
    report = Report(url, in_process="memory" in protocols)
    probes = _Probes(base, store, s3=bool({"s3", "s3a"} & protocols))
    try:
        for name, probe in _Probes.CHECKS:
            try:
                detail = probe(probes)
                outcome = "not needed" if detail.startswith("n/a") else "ok"
                report.checks.append(Check(name, outcome, detail.removeprefix("n/a: ")))
            except Exception as error:  # a failed check is a finding, not a crash
                report.checks.append(Check(name, "failed", f"{type(error).__name__}: {error}"))
    finally:
        try:
            store.delete([info.key for info in store.list("")])
            if base.fs.exists(store.root):  # a local directory stays behind its objects
                base.fs.rm(store.root, recursive=True)
        except Exception as error:
            report.checks.append(Check("clean up", "failed", f"{prefix}: {error!r}"))
    return report


STORE_OPTIONS = (
    ("--objects-url", "URL", "where the objects are, if not in the store's objects/ directory"),
    ("--metadata-path", "FILE", "the SQLite metadata file, if not the store's meta.sqlite"),
    ("--metadata-url", "URL", "where the manifest is, if not beside the objects"),
    ("--wal-path", "PATH", "the node's WAL directory (or ring file), if not the store's wal/"),
    ("--archive-url", "URL", "the archive tier's objects, for a store that has one"),
)
EXIT_ERROR = 2


def _storage_options_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-options", default="{}", metavar="JSON",
                        help='options for the filesystem (credentials, endpoint), e.g. '
                             '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'')


def _store_parser() -> argparse.ArgumentParser:
    """The arguments every command that opens a store takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("store", metavar="PATH_OR_URL",
                        help="a store's directory (./data), or the objects' URL of a store "
                             "without one (s3://bucket/prefix, file:///path)")
    _storage_options_argument(common)
    common.add_argument("--metadata", choices=("sqlite", "manifest"),
                        help="where the metadata is (default: sqlite for a directory, "
                             "manifest for a URL)")
    common.add_argument("--wal", choices=("file", "block", "object"),
                        help="the node's WAL backend (default: what the directory holds)")
    for flag, metavar, text in STORE_OPTIONS:
        common.add_argument(flag, metavar=metavar, help=text)
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlib", description="Look at, read and check streamlib stores; check an "
        "object store. Settings not given as options come from the STREAMLIB_* variables a "
        "store reads; credentials from --storage-options or the object store's usual "
        "variables.")
    parser.add_argument("--version", action="store_true",
                        help="print the version and the codec backend, and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _store_parser()
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--json", action="store_true", help="print the answer as JSON")
    quiet.add_argument("--quiet", action="store_true", help="no progress bar")
    commands.add_parser("inspect", parents=[common, quiet],
                        help="what a store holds: streams, objects, WAL, manifest",
                        description="Show a store's streams, objects, WAL and manifest.")
    dump = commands.add_parser("dump", parents=[common],
                               help="print a stream's records",
                               description="Print a stream's records: the committed ones, "
                               "then those in the node's WAL not yet uploaded.")
    dump.add_argument("stream", metavar="STREAM", help="the stream's name or id")
    dump.add_argument("--from", dest="start", type=int, metavar="OFFSET",
                      help="the first offset (default: the stream's start)")
    dump.add_argument("--count", type=int, metavar="N", help="at most N records")
    dump.add_argument("--format", choices=("json", "raw"), default="json",
                      help="json: one object a line (offset, timestamp, key, headers, value; "
                           "bytes as text when printable, else base64); raw: the values alone")
    verify = commands.add_parser("verify", parents=[common, quiet],
                                 help="read every object and check it; exit 1 on damage",
                                 description="Read every object of a store and check its "
                                 "blocks, its index against the metadata, the streams' ranges "
                                 "and the WAL. Exit status 0: clean; 1: damage found.")
    verify.add_argument("--deep", action="store_true",
                        help="also decompress every block and check the batches inside")
    verify.add_argument("--jobs", type=int, default=8, metavar="N",
                        help="objects read at once (default 8)")
    check = commands.add_parser("check-store", help="does an object store have what "
                                "streamlib needs? (a verdict: shared, single-node, unusable)",
                                description="Try what streamlib needs of an object store "
                                "under a fresh prefix of URL, removed afterwards.")
    check.add_argument("url", help="an fsspec URL: s3://bucket/prefix, file:///path, memory://x")
    _storage_options_argument(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def version() -> str:
    """The package's version and the codec backend in use."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from streamlib import codec

    try:
        number = installed("streamlib")
    except PackageNotFoundError:
        number = "unknown (not installed)"
    return f"streamlib {number} (codec: {codec.backend})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version())
        return 0
    if args.command is None:
        parser.error("a command is needed (inspect, dump, verify, check-store)")
    try:
        options = json.loads(args.storage_options)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        parser.error(f"--storage-options must be a JSON object: {error}")
    if args.command == "check-store":
        return _check_store(args.url, options, args.json)
    if args.command == "dump" and args.count is not None and args.count < 0:
        parser.error(f"--count must not be negative: count=`{args.count}`")
    if args.command == "verify" and args.jobs < 1:
        parser.error(f"--jobs must be at least 1: jobs=`{args.jobs}`")
    from streamlib.errors import StreamLibError

    try:
        return _run_tool(args, options)
    except BrokenPipeError:  # a reader that stopped early (dump | head): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the interpreter closes it at exit)
        return 0
    except (StreamLibError, OSError) as error:
        print(f"streamlib {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # what an object store refused (no credentials…), as it came
        print(f"streamlib {args.command}: error: {type(error).__name__}: {error}",
              file=sys.stderr)
        return EXIT_ERROR


def _check_store(url: str, options: dict[str, Any], as_json: bool) -> int:
    report = check_store(url, options)
    if as_json:
        print(json.dumps({"url": report.url, "verdict": report.verdict,
                          "checks": [asdict(c) for c in report.checks]}, indent=2))
    else:
        print(report.text())
    return {"shared": 0, "in-process": 1, "single-node": 1, "unusable": 2}[report.verdict]


def _run_tool(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from streamlib.tools.opening import find_places, open_store

    settings = {name: getattr(args, name) or "" for name in
                ("objects_url", "metadata", "metadata_path", "metadata_url", "wal",
                 "wal_path", "archive_url")}
    with open_store(find_places(args.store, settings), options) as store:
        if args.command == "dump":
            return _dump(store, args)
        show = not (args.json or args.quiet) and sys.stderr.isatty()
        if args.command == "inspect":
            from streamlib.tools.inspection import describe_store, inspect_store

            with _Bar("WAL", show) as bar:
                found = inspect_store(store, progress=bar.advance)
            print(json.dumps(found, indent=2) if args.json else describe_store(found))
            return 0
        from streamlib.tools.verify import verify_store

        with _Bar("verify", show) as bar:
            verdict = verify_store(store, deep=args.deep, jobs=args.jobs, started=bar.start,
                                   progress=bar.advance)
        print(json.dumps(verdict.as_json(), indent=2) if args.json else verdict.text())
        return 0 if verdict.clean else 1


def _dump(store: Any, args: argparse.Namespace) -> int:
    from streamlib.tools.dump import as_json, find_stream, raw_value, records

    meta = find_stream(store, args.stream)
    found = records(store, meta, args.start, args.count)
    if args.format == "raw":
        out: IO[bytes] = sys.stdout.buffer
        for _, item in found:
            out.write(raw_value(item))
        out.flush()
    else:
        for offset, item in found:
            sys.stdout.write(json.dumps(as_json(offset, item), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0


class _Bar:
    """A tqdm progress bar on standard error (``show``: else nothing is drawn), in bytes;
    ``advance`` may be called from several threads."""

    def __init__(self, what: str, show: bool) -> None:
        self._what = what
        self._show = show
        self._bar: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> _Bar:
        if self._show:
            from tqdm import tqdm

            self._bar = tqdm(desc=self._what, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False, dynamic_ncols=True)
        return self

    def start(self, total: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.reset(total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            with self._lock:
                self._bar.update(n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


if __name__ == "__main__":
    sys.exit(main())
