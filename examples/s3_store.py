"""streamlib on S3: the quickstart's flow with the objects in a bucket.

    python examples/s3_store.py s3://my-bucket/streams --endpoint http://127.0.0.1:9000 \\
        --key KEY --secret SECRET

Without --endpoint, s3fs finds AWS credentials and the region as boto does. The WAL stays on
local disk (a temporary folder here) unless --object-wal puts it in the bucket too; the
metadata is a local SQLite file next to it. The tests run this against a local moto server.
"""

from __future__ import annotations

import argparse
import tempfile

import streamlib
from streamlib import Record


def run(url: str, storage_options: dict, *, object_wal: bool = False) -> dict[str, int]:
    """Append to three streams, flush to the bucket, reopen, read back. Returns each stream's
    record count as read after the reopen."""
    with tempfile.TemporaryDirectory(prefix="streamlib-s3-") as directory:
        settings = {"objects_url": url, "wal": "object" if object_wal else "file"}
        with streamlib.open(directory, storage_options=storage_options, **settings) as store:
            for name in ("orders", "payments", "audit"):
                stream = store.create_stream(name)
                for n in range(10):
                    stream.append([Record(f"{name} {n}.{i}".encode()) for i in range(5)])
            store.flush()  # one multi-stream object for the three streams
            print(f"uploaded {store.stats()['objects_uploaded']} object(s) to {url}")

        counts = {}
        with streamlib.open(directory, storage_options=storage_options, **settings) as store:
            for info in store.streams():
                stream = store.open_stream(info.id, read_only=True)
                records, offset = 0, info.start_offset
                while offset < info.next_offset:
                    result = stream.fetch(offset)
                    records += sum(batch.count for batch in result)
                    offset = result.next_fetch_offset
                counts[info.name] = records
                print(f"  {info.name}: {records} records read back from the bucket")
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="s3://bucket/prefix for the objects")
    parser.add_argument("--endpoint", help="an S3-compatible endpoint URL")
    parser.add_argument("--key")
    parser.add_argument("--secret")
    parser.add_argument("--object-wal", action="store_true", help="put the WAL in the bucket")
    args = parser.parse_args()
    options: dict = {}
    if args.endpoint:
        options["client_kwargs"] = {"endpoint_url": args.endpoint}
    if args.key:
        options["key"], options["secret"] = args.key, args.secret
    run(args.url, options, object_wal=args.object_wal)


if __name__ == "__main__":
    main()
