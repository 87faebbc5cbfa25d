"""``store.metrics()`` for Prometheus: :class:`StreamlibCollector`, a ``prometheus_client``
collector (``pip install "streamlib[prometheus]"``), docs/metrics.md.

```python
from prometheus_client import CollectorRegistry, start_http_server
from streamlib.exporters.prometheus import StreamlibCollector

registry = CollectorRegistry()
registry.register(StreamlibCollector(store))
start_http_server(9464, registry=registry)   # GET /metrics
```

Each scrape takes one snapshot of the store's metrics. A family keeps its name (a counter gets
``_total`` after it, as the exposition format wants), its help text and its unit; a histogram's
buckets are cumulative ``le`` buckets ending at ``+Inf``. A closed store yields nothing.

Several stores of one process go in one collector as a mapping, ``StreamlibCollector({"orders":
a, "audit": b})``: each sample then has a ``store`` label with its key. The mapping is read at
each scrape, so stores may come and go.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from streamlib.errors import MissingExtra, StreamClosed
from streamlib.metrics import Family, HistogramValue
from streamlib.store import StreamStore

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as error:  # the extra is not installed
    raise MissingExtra("prometheus", "prometheus_client",
                       "streamlib.exporters.prometheus") from error

if TYPE_CHECKING:
    from streamlib.cost import Prices


class StreamlibCollector(Collector):
    """The metrics of ``store`` at each scrape (``per_stream`` and ``prices`` as
    :meth:`StreamStore.metrics <streamlib.store.StreamStore.metrics>`), or of each store of a
    mapping, labelled ``store`` with its key. Register it with a ``CollectorRegistry`` (or
    ``prometheus_client.REGISTRY``); it holds the stores, not their parts, and leaves out a
    store once it is closed."""

    def __init__(self, store: StreamStore | Mapping[str, StreamStore], *,
                 per_stream: bool | int = False, prices: Prices | None = None) -> None:
        if not isinstance(store, StreamStore | Mapping):
            raise TypeError(f"store must be a StreamStore or a mapping of them, "
                            f"not {type(store).__name__}")
        self._store = store
        self._per_stream = per_stream
        self._prices = prices
        self._snapshots()  # the arguments checked now

    def _snapshots(self) -> list[tuple[dict[str, str], dict[str, Family]]]:
        # A copy first: the owner of the mapping may change it meanwhile.
        stores = (list(self._store.items()) if isinstance(self._store, Mapping)
                  else [(None, self._store)])
        found = []
        for key, store in stores:
            try:
                families = store.metrics(per_stream=self._per_stream, prices=self._prices)
            except StreamClosed:
                continue
            found.append(({} if key is None else {"store": key}, families))
        return found

    def collect(self) -> Iterator[Metric]:
        snapshots = self._snapshots()
        for name in dict.fromkeys(n for _, families in snapshots for n in families):
            yield convert([(extra, families[name]) for extra, families in snapshots
                           if name in families])

    def describe(self) -> Iterator[Metric]:
        """The families, for the registry's check of duplicate names at registration."""
        return self.collect()


def convert(parts: Sequence[tuple[Mapping[str, str], Family]]) -> Metric:
    """One family (of one store, or of several: each with the labels to add to its samples)
    as a ``prometheus_client`` metric family."""
    first = parts[0][1]
    samples = [({**sample.labels, **extra}, sample.value)
               for extra, family in parts for sample in family.samples]
    keys = list(samples[0][0]) if samples else []
    name, doc, unit = first.name, first.help, first.unit
    if first.type == "histogram":
        histogram = HistogramMetricFamily(name, doc, labels=keys, unit=unit)
        for labels, value in samples:
            assert isinstance(value, HistogramValue)
            histogram.add_metric([labels[k] for k in keys],
                                 [("+Inf" if math.isinf(bound) else repr(bound), count)
                                  for bound, count in value.cumulative()], value.sum)
        return histogram
    made: CounterMetricFamily | GaugeMetricFamily = (
        CounterMetricFamily(name, doc, labels=keys, unit=unit) if first.type == "counter"
        else GaugeMetricFamily(name, doc, labels=keys, unit=unit))
    for labels, value in samples:
        assert not isinstance(value, HistogramValue)
        made.add_metric([labels[k] for k in keys], value)
    return made


__all__ = ["StreamlibCollector", "convert"]
