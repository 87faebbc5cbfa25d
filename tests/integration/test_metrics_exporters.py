"""The exporters of a store's metrics, read the way a monitoring system reads them: the
Prometheus collector scraped over HTTP (names, ``# TYPE`` lines, counters moving between two
scrapes), the OpenTelemetry instruments collected by the SDK's in-memory reader; and without
their packages, an error naming the extra to install."""

from __future__ import annotations

import importlib
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import streamlib
from streamlib import RecordBatch
from streamlib.errors import MissingExtra
from streamlib.exporters.otel import register
from streamlib.exporters.prometheus import StreamlibCollector

HELD = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB", "compaction_interval_ms": 0}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[streamlib.StreamStore]:
    with streamlib.open(tmp_path / "s", **HELD) as opened:
        yield opened


def work(store: streamlib.StreamStore, batches: int) -> None:
    stream = store.open_stream("a") if store.streams() else store.create_stream("a")
    for n in range(batches):
        stream.append(RecordBatch(n.to_bytes(4, "big") * 25, count=4))
    stream.fetch(0)
    store.flush()


def scrape(url: str) -> tuple[str, dict[str, Any]]:
    """The exposition text, and its families by name (as Prometheus parses them)."""
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family_name = name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    found = [s.value for s in families[family_name].samples
             if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels)
    return float(found[0])


def test_a_scrape_over_http_shows_the_documented_families_and_counters_move(
        store: streamlib.StreamStore) -> None:
    registry = CollectorRegistry()
    registry.register(StreamlibCollector(store, per_stream=True))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        work(store, 2)
        _, first = scrape(url)
        work(store, 3)
        text, second = scrape(url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    for line in ("# TYPE streamlib_append_latency_seconds histogram",
                 "# TYPE streamlib_append_records_total counter",
                 "# TYPE streamlib_wal_fill_ratio gauge",
                 "# TYPE streamlib_object_request_cost_usd_total counter",
                 "# HELP streamlib_upload_backlog_age_seconds Age of the oldest"):
        assert line in text, line
    assert 'streamlib_append_latency_seconds_bucket{le="+Inf"} 5.0' in text
    assert 'streamlib_stream_appends_total{name="a",stream="1"} 5.0' in text
    types = {name: f.type for name, f in second.items()}
    assert types["streamlib_append_records"] == "counter"
    assert types["streamlib_append_latency_seconds"] == "histogram"
    assert types["streamlib_streams"] == "gauge"
    assert store.metrics(per_stream=True).keys() == second.keys()
    for name, labels, moved in (
            ("streamlib_append_records_total", {}, 12),
            ("streamlib_append_latency_seconds_count", {}, 3),
            ("streamlib_upload_rounds_total", {}, 1),
            ("streamlib_object_requests_total", {"purpose": "upload", "kind": "put"}, 1)):
        assert sample(second, name, **labels) - sample(first, name, **labels) == moved, name
    cost = "streamlib_object_request_cost_usd_total"
    assert sample(second, cost, purpose="upload") > sample(first, cost, purpose="upload")


def test_a_closed_store_yields_nothing(tmp_path: Path) -> None:
    store = streamlib.open(tmp_path / "s", **HELD)
    collector = StreamlibCollector(store)
    assert list(collector.collect())
    store.close()
    assert list(collector.collect()) == []


def test_stores_of_a_mapping_are_told_apart_by_a_label(tmp_path: Path) -> None:
    stores = {"orders": streamlib.open(tmp_path / "a", **HELD),
              "audit": streamlib.open(tmp_path / "b", **HELD)}
    try:
        registry = CollectorRegistry()
        registry.register(StreamlibCollector(stores))
        work(stores["orders"], 2)
        families = {f.name: f for f in text_string_to_metric_families(
            generate_latest(registry).decode())}
        assert sample(families, "streamlib_append_records_total", store="orders") == 8
        assert sample(families, "streamlib_append_records_total", store="audit") == 0
        stores["audit"].close()
        stores["later"] = streamlib.open(tmp_path / "c", **HELD)  # read at each scrape
        text = generate_latest(registry).decode()
        assert 'store="later"' in text and 'store="audit"' not in text
    finally:
        for store in stores.values():
            store.close()


def test_opentelemetry_reads_the_instruments_through_the_sdk(
        store: streamlib.StreamStore) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        names = register(store, provider.get_meter("streamlib-test"))
        assert "streamlib_append_records" in names
        assert "streamlib_append_latency_seconds_bucket" in names
        work(store, 2)
        first = points(reader)
        work(store, 3)
        second = points(reader)
    finally:
        provider.shutdown()
    assert second[("streamlib_append_records", ())] - first[("streamlib_append_records", ())] \
        == 12
    assert second[("streamlib_append_latency_seconds_count", ())] == 5
    assert second[("streamlib_append_latency_seconds_bucket", (("le", "+Inf"),))] == 5
    upload = (("kind", "put"), ("purpose", "upload"))
    assert second[("streamlib_object_requests", upload)] == 2
    assert second[("streamlib_upload_pending_bytes", ())] == 0  # a gauge


def points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    """Every point the reader collects now, by instrument name and attributes."""
    found = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = tuple(sorted((point.attributes or {}).items()))
                    found[(metric.name, key)] = point.value  # type: ignore[union-attr]
    return found


@pytest.mark.parametrize(("module", "package", "extra"), [
    ("streamlib.exporters.prometheus", "prometheus_client", "prometheus"),
    ("streamlib.exporters.otel", "opentelemetry", "otel")])
def test_without_its_package_an_exporter_names_the_extra_to_install(
        module: str, package: str, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name in (module, package) or name.startswith(package + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(MissingExtra, match=rf'pip install "streamlib\[{extra}\]"') as error:
        importlib.import_module(module)
    assert isinstance(error.value, ImportError) and error.value.extra == extra
