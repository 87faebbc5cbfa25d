"""The ``streamlib`` command.

    streamlib check-store URL [--storage-options JSON] [--json]

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
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlib", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-store", help="does an object store have what "
                                "streamlib needs? (a verdict: shared, single-node, unusable)")
    check.add_argument("url", help="an fsspec URL: s3://bucket/prefix, file:///path, memory://x")
    check.add_argument("--storage-options", default="{}", metavar="JSON",
                       help='options for the filesystem, e.g. \'{"client_kwargs": '
                            '{"endpoint_url": "http://127.0.0.1:9000"}}\'')
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.storage_options)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        parser.error(f"--storage-options must be a JSON object: {error}")
    report = check_store(args.url, options)
    if args.json:
        print(json.dumps({"url": report.url, "verdict": report.verdict,
                          "checks": [asdict(c) for c in report.checks]}, indent=2))
    else:
        print(report.text())
    return {"shared": 0, "in-process": 1, "single-node": 1, "unusable": 2}[report.verdict]


if __name__ == "__main__":
    sys.exit(main())
