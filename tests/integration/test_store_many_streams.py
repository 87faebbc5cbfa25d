"""Many streams, few objects (docs/store.md "Upload, commit, trim"): quiet streams
share one multi-stream object per upload round, so the number of PUTs follows the upload
interval, not the number of streams; a stream with enough data in a round gets an object of its
own. On moto's S3 server; every upload writes fresh keys, so the objects listed under ``data/``
are the data PUTs."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib.io import ObjectStore
from streamlib.objects import ObjectReader
from streamlib.testing.s3 import S3Bucket

pytestmark = pytest.mark.slow

PREFIX = "many"


def open_store(tmp_path: Path, bucket: S3Bucket, **settings: object) -> streamlib.StreamStore:
    """Objects on the bucket, the file WAL and the metadata under ``tmp_path``."""
    return streamlib.open(tmp_path / "store", objects_url=f"{bucket.url}/{PREFIX}",
                          storage_options=bucket.endpoint.storage_options(), **settings)


def data_objects(bucket: S3Bucket) -> list[Any]:
    return bucket.store(PREFIX).list("data/")


def values(name: str, round_: int, count: int) -> list[bytes]:
    return [f"{name}/{round_}/{j}".encode() for j in range(count)]


def records_in_objects(bucket: S3Bucket, keys: list[str]) -> dict[int, list[tuple[int, bytes]]]:
    """``(offset, value)`` of every record in these objects, by stream id, read from the objects
    themselves: each object is fetched once (into memory) and read through its own index."""
    source = bucket.store(PREFIX)
    copy = ObjectStore.from_url(f"memory://many-{random.getrandbits(64):x}")
    found: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    for key in keys:
        data = source.get(key)
        copy.put(key, data)
        reader = ObjectReader(copy, key, len(data))
        for r in reader.index().ranges:
            for batch in reader.read(r.stream_id, r.start_offset, r.end_offset):
                found[r.stream_id].extend(
                    (offset, record.value)
                    for offset, record in enumerate(batch.records(), batch.base_offset))
    copy.fs.rm(copy.root, recursive=True)
    return found


@pytest.mark.once  # upload intervals, not the codec: the C pass runs it
def test_quiet_streams_share_an_object_per_interval(tmp_path: Path,
                                                    moto_bucket: S3Bucket) -> None:
    """1000 streams append a tiny batch each every half second (the upload interval) for four
    intervals: about one object a round, not one a stream."""
    streams_n, rounds, per_batch, interval = 1000, 4, 3, 0.5
    store = open_store(tmp_path, moto_bucket, upload_interval_ms=int(interval * 1000),
                       upload_bytes="64MiB")
    try:
        streams = [store.create_stream(f"q{i}") for i in range(streams_n)]
        started = time.monotonic()
        for round_ in range(rounds):
            futures = [s.append_future(values(s.name, round_, per_batch))  # type: ignore[arg-type]
                       for s in streams]
            for future in futures:
                future.result()
            # Pacing, not a wait: one round of appends an upload interval (the trigger tested).
            time.sleep(max(0.0, started + (round_ + 1) * interval - time.monotonic()))
        elapsed = time.monotonic() - started
        before_close = len(data_objects(moto_bucket))
    finally:
        store.close()
    total_elapsed = time.monotonic() - started
    listed = data_objects(moto_bucket)
    uploaded = store.stats()
    print(f"\n{streams_n} streams, {streams_n * rounds} appends of {per_batch} records over "
          f"{elapsed:.2f}s ({math.ceil(elapsed / interval)} upload intervals): "
          f"{before_close} data objects before close, {len(listed)} after "
          f"({uploaded['upload_rounds']} upload rounds, "
          f"{uploaded['stream_objects_uploaded']} stream objects)")
    assert 1 <= before_close <= math.ceil(elapsed / interval) + 2
    assert len(listed) <= math.ceil(total_elapsed / interval) + 2
    assert len(listed) == uploaded["objects_uploaded"], "objects listed != objects PUT"
    assert uploaded["stream_objects_uploaded"] == 0
    assert all(o.key.endswith(".mobj") for o in listed)

    # Every record readable: through the store for a sample of the streams, and straight from
    # the objects for all of them (fetching 1000 streams one by one from moto takes ~50 s).
    store = open_store(tmp_path, moto_bucket)
    try:
        infos = store.streams()
        assert len(infos) == streams_n
        assert all(i.start_offset == 0 and i.next_offset == rounds * per_batch for i in infos)
        for info in [*random.Random(7).sample(infos, 50), infos[0], infos[-1]]:
            got = store.open_stream(info.id, read_only=True).fetch(0)
            assert [(o, r.value) for o, r in got.records()] == list(enumerate(
                [v for n in range(rounds) for v in values(info.name, n, per_batch)]))  # type: ignore[arg-type]
        committed = {o.key for o in store.metadata.objects(infos[0].id)}
    finally:
        store.close()
    assert committed <= {o.key for o in listed}
    found = records_in_objects(moto_bucket, [o.key for o in listed])
    assert len(found) == streams_n
    for info in infos:
        expected = [v for n in range(rounds) for v in values(info.name, n, per_batch)]  # type: ignore[arg-type]
        assert sorted(found[info.id]) == list(enumerate(expected)), info


def test_big_streams_get_objects_of_their_own(tmp_path: Path, moto_bucket: S3Bucket) -> None:
    """Three streams with more than ``stream_object_bytes`` a round get a stream object each
    round; 100 quiet streams share one multi-stream object a round."""
    small_n, big_n, rounds = 100, 3, 3
    big_batches, big_records, big_value = 6, 16, 1024  # ~96 KiB a round per big stream
    store = open_store(tmp_path, moto_bucket, stream_object_bytes="64KiB",
                       upload_interval_ms=3_600_000, upload_bytes="64MiB")
    try:
        small = [store.create_stream(f"small{i}") for i in range(small_n)]
        big = [store.create_stream(f"big{i}") for i in range(big_n)]
        for round_ in range(rounds):
            futures = [s.append_future(values(s.name, round_, 2)) for s in small]  # type: ignore[arg-type]
            for s in big:
                for b in range(big_batches):
                    futures.append(s.append_future(
                        [v.ljust(big_value, b".") for v in
                         values(f"{s.name}-{b}", round_, big_records)]))
            for future in futures:
                future.result()
            store.flush()  # one upload round
        listed = data_objects(moto_bucket)
        kinds = {kind: sum(o.key.endswith(f".{kind}") for o in listed) for kind in ("sobj",
                                                                                  "mobj")}
        print(f"\n{big_n} big and {small_n} small streams, {rounds} upload rounds: "
              f"{kinds['sobj']} stream objects, {kinds['mobj']} multi-stream objects")
        assert kinds == {"sobj": big_n * rounds, "mobj": rounds}, kinds
        assert store.stats()["stream_objects_uploaded"] == big_n * rounds
        meta = store.metadata
        for s in big:
            objects = meta.objects(s.id)
            assert len(objects) == rounds
            for obj in objects:
                assert obj.key.endswith(".sobj") and [r.stream_id for r in obj.ranges] == [s.id]
        for s in small:
            objects = meta.objects(s.id)
            assert len(objects) == rounds
            for obj in objects:
                assert obj.key.endswith(".mobj")
                assert sorted(r.stream_id for r in obj.ranges) == sorted(x.id for x in small)
        # Every record readable through the store.
        for s in small:
            got = store.open_stream(s.id, read_only=True).fetch(0)
            assert [r.value for _, r in got.records()] == [
                v for n in range(rounds) for v in values(s.name, n, 2)]  # type: ignore[arg-type]
        for s in big:
            got = store.open_stream(s.id, read_only=True).fetch(0, max_bytes=1 << 30)
            assert [r.value for _, r in got.records()] == [
                v.ljust(big_value, b".") for n in range(rounds) for b in range(big_batches)
                for v in values(f"{s.name}-{b}", n, big_records)]
    finally:
        store.close()
