"""A store's metrics (streamlib.metrics, docs/metrics.md): every documented family is there
with its type, counters and histograms only go up and move with the work done, per-stream
families come when asked (all, or the busiest n), StreamInfo carries a stream's figures, and
stats() keeps its keys, now typed."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from pathlib import Path

import pytest

import streamlib
from streamlib import RecordBatch
from streamlib.cost import Prices
from streamlib.metrics import Family, HistogramValue

DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB", "compaction_interval_ms": 0}
"""Uploads only by flush or close; no background lifecycle pass."""


def documented() -> dict[str, str]:
    """The families docs/metrics.md lists: ``{name: type}``."""
    rows = re.findall(r"^\| `(streamlib_\w+)` \| (counter|gauge|histogram) \|",
                      DOC.read_text(), re.MULTILINE)
    return dict(rows)


def values(family: Family) -> dict[tuple[tuple[str, str], ...], float]:
    """Each sample's value by its labels (a histogram's: its count and its sum)."""
    found = {}
    for sample in family.samples:
        key = tuple(sorted(sample.labels.items()))
        value = sample.value
        if isinstance(value, HistogramValue):
            found[(*key, ("part", "count"))] = float(value.count)
            found[(*key, ("part", "sum"))] = value.sum
        else:
            found[key] = float(value)
    return found


def work(store: streamlib.StreamStore, stream: streamlib.Stream, batches: int) -> None:
    """``batches`` opaque batches of 4 records, 100 payload bytes each; a fetch; a flush."""
    for n in range(batches):
        stream.append(RecordBatch(n.to_bytes(4, "big") * 25, count=4))
    stream.fetch(stream.start_offset)
    store.flush()


def test_every_documented_family_is_there_with_its_type_and_unit(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        work(store, store.create_stream("a"), 3)
        found = store.metrics(per_stream=True)
    assert {name: f.type for name, f in found.items()} == documented()
    for name, family in found.items():
        assert re.fullmatch(r"streamlib_[a-z_]+", name)
        assert not name.endswith("_total"), "an exporter adds it to counters"
        if family.unit:
            assert name.endswith(f"_{family.unit}"), (name, family.unit)
        keys = {tuple(sorted(s.labels)) for s in family.samples}
        assert len(keys) <= 1, f"{name}: one set of label names a family"


def test_counters_go_up_and_move_with_appends_fetches_and_uploads(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        stream = store.create_stream("a")
        work(store, stream, 2)
        before = store.metrics()
        work(store, stream, 5)
        after = store.metrics()
    for name, family in after.items():
        if family.type == "gauge":
            continue
        old = values(before[name])
        for labels, value in values(family).items():
            assert value >= old.get(labels, 0.0), (name, labels)

    def moved(name: str, **labels: str) -> float:
        new, old = after[name].value(**labels), before[name].value(**labels)
        if isinstance(new, HistogramValue):
            assert isinstance(old, HistogramValue)
            return new.count - old.count
        assert not isinstance(old, HistogramValue)
        return new - old

    assert moved("streamlib_append_latency_seconds") == 5
    assert moved("streamlib_append_records") == 20
    assert moved("streamlib_append_bytes") == 5 * 100
    assert moved("streamlib_fetch_latency_seconds") == 1
    assert moved("streamlib_upload_rounds") == 1
    assert moved("streamlib_upload_round_seconds") == 1
    assert moved("streamlib_uploaded_objects", kind="multi") == 1
    assert moved("streamlib_object_requests", purpose="upload", kind="put") == 1
    assert moved("streamlib_object_request_cost_usd", purpose="upload") == pytest.approx(
        Prices().puts / 1000)
    latency = after["streamlib_append_latency_seconds"].value()
    assert isinstance(latency, HistogramValue)
    assert latency.cumulative()[-1] == (math.inf, latency.count) and latency.sum > 0
    assert after["streamlib_upload_pending_bytes"].value() == 0
    assert after["streamlib_upload_backlog_age_seconds"].value() == 0.0
    assert after["streamlib_write_opens"].value() == 1


def test_the_backlog_shows_its_age_until_it_is_uploaded(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        stream = store.create_stream("a")
        stream.append(RecordBatch(b"x" * 100, count=1))
        waiting = store.metrics()
        assert waiting["streamlib_upload_pending_bytes"].value() == 100
        assert waiting["streamlib_upload_backlog_age_seconds"].value() > 0
        fill = waiting["streamlib_wal_fill_ratio"].value()
        assert isinstance(fill, float) and 0 < fill < 1
        store.flush()
        assert store.metrics()["streamlib_upload_backlog_age_seconds"].value() == 0.0


def test_a_destroyed_streams_backlog_is_no_backlog(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        store.create_stream("a").append([b"x" * 100])
        store.destroy_stream("a")
        found = store.metrics()
        assert found["streamlib_upload_pending_bytes"].value() == 0
        assert found["streamlib_upload_backlog_age_seconds"].value() == 0.0


def test_per_stream_families_come_for_every_stream_or_the_busiest(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        for name, size in (("small", 10), ("big", 1000), ("middle", 100)):
            store.create_stream(name).append(RecordBatch(b"x" * size, count=1))
        assert not [n for n in store.metrics() if n.startswith("streamlib_stream_")]
        every = store.metrics(per_stream=True)["streamlib_stream_append_bytes"]
        assert {s.labels["name"]: s.value for s in every.samples} == {
            "small": 10, "big": 1000, "middle": 100}
        busiest = store.metrics(per_stream=2)["streamlib_stream_append_bytes"]
        assert [s.labels["name"] for s in busiest.samples] == ["big", "middle"]  # by id
        for wrong in (-1, 2.5, "all"):
            with pytest.raises(ValueError, match="per_stream"):
                store.metrics(per_stream=wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Prices"):
            store.metrics(prices={"puts": 1})  # type: ignore[arg-type]
    with pytest.raises(streamlib.StreamClosed):
        store.metrics()


def test_tailing_readers_and_their_lag(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        stream = store.create_stream("a")
        stream.append([b"x"] * 10)
        reader = stream.read(0, idle_timeout=0)
        next(reader)
        stream.append([b"y"] * 5)
        found = store.metrics(per_stream=True)
        assert found["streamlib_tailing_readers"].value() == 1
        assert found["streamlib_tailing_max_lag_records"].value() == 5
        assert found["streamlib_stream_tailing_lag_records"].value(stream=str(stream.id),
                                                                   name="a") == 5
        reader.close()
        assert store.metrics()["streamlib_tailing_readers"].value() == 0


def test_stream_info_and_stored_bytes(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        stream = store.create_stream("a")
        assert store.get("a").last_append is None
        work(store, stream, 4)
        info = store.get("a")
        assert info.records == 16 and info.last_append is not None
        assert info.stored_bytes is None  # no lifecycle pass yet
        listed = sum(r.size for obj in store.metadata.objects(stream.id) for r in obj.ranges)
        store.compact()  # counts the objects as it lists them (then compacts them)
        assert store.get("a").stored_bytes == listed > 0
        work(store, stream, 2)  # this node's uploads add to it
        added = sum(r.size for obj in store.metadata.objects(stream.id) for r in obj.ranges
                    if r.start_offset >= 16)
        assert store.get("a").stored_bytes == listed + added
        found = store.metrics(per_stream=True)
        assert found["streamlib_stream_stored_bytes"].value(stream=str(stream.id),
                                                            name="a") == listed + added
        kinds = found["streamlib_objects"]
        assert kinds.total() >= 1 and {s.labels["kind"] for s in kinds.samples} <= {
            "single", "multi", "compacted", "other"}


def test_stream_info_and_a_gauge_show_when_the_stream_was_created(tmp_path: Path) -> None:
    """The creation time comes from the metadata: the same after a reopen; a stream whose
    metadata has none (created by an older streamlib) shows None and no sample."""
    before = math.floor(time.time() * 1000) / 1000  # kept in whole milliseconds
    with streamlib.open(tmp_path / "s", **HELD) as store:
        created = store.create_stream("a").info().created
        store.create_stream("old")
    assert created is not None and before <= created <= time.time()
    with sqlite3.connect(tmp_path / "s" / "meta.sqlite") as conn:
        conn.execute("UPDATE streams SET created_ms = NULL WHERE name = 'old'")
    conn.close()
    with streamlib.open(tmp_path / "s", **HELD) as store:
        assert store.get("a").created == created and store.get("old").created is None
        found = store.metrics(per_stream=True)["streamlib_stream_created_timestamp_seconds"]
        assert {s.labels["name"]: s.value for s in found.samples} == {"a": created}


def test_stats_keeps_its_keys_and_is_typed(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "s", **HELD) as store:
        work(store, store.create_stream("a"), 2)
        stats = store.stats()
    assert set(stats) == {
        "streams", "pending_upload_bytes", "upload_rounds", "objects_uploaded",
        "stream_objects_uploaded", "bytes_uploaded", "upload_failures", "last_upload_error",
        "wal_usage_bytes", "object_store", "cache", "lifecycle", "cost"}
    gets: int = stats["cost"]["upload"]["puts"]  # no cast: the dicts are typed
    assert gets == 1 and stats["cache"]["max_bytes"] > 0
    assert stats["lifecycle"]["compaction"]["tasks"] == 0


def test_prices_turn_counts_into_dollars() -> None:
    counts = {"puts": 2000, "gets": 10_000, "heads": 0, "lists": 1000, "deletes": 5,
              "bytes_sent": 0, "bytes_received": 2 * 10 ** 9}
    assert Prices().of(counts) == pytest.approx(2 * 0.005 + 10 * 0.0004 + 0.005)  # type: ignore[arg-type]
    internet = Prices(received_per_gb=0.09)
    assert internet.of(counts) == pytest.approx(0.019 + 0.18)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="puts"):
        Prices(puts=-1)
