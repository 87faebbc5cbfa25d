"""``store.metrics()`` for OpenTelemetry: :func:`register` puts an observable instrument on
an ``opentelemetry.metrics.Meter`` for each family (``pip install "streamlib[otel]"``; the
SDK, a reader and an exporter are the application's), docs/metrics.md.

```python
from opentelemetry import metrics
from streamlib.exporters.otel import register

register(store, metrics.get_meter("streamlib"))
```

A counter is an observable counter, a gauge an observable gauge, each under the family's name
and with its unit in UCUM (``s``, ``By``, ``{record}``…); labels become attributes. The API has
no asynchronous histogram: a histogram is three observable counters, ``<name>_count``,
``<name>_sum`` and ``<name>_bucket`` (one point per cumulative bucket, the attribute ``le``
its upper bound as Prometheus writes it: ``"0.001"``, …, ``"+Inf"``). A collection takes one
snapshot of the store's metrics, whatever the number of instruments; a closed store reports
nothing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from streamlib.errors import MissingExtra, StreamClosed
from streamlib.metrics import Family, HistogramValue, Metrics

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as error:  # the extra is not installed
    raise MissingExtra("otel", "opentelemetry-api", "streamlib.exporters.otel") from error

if TYPE_CHECKING:
    from streamlib.cost import Prices
    from streamlib.store import StreamStore

UNITS = {"seconds": "s", "bytes": "By", "records": "{record}", "requests": "{request}",
         "usd": "USD", "ratio": "1", "": "1"}
"""The UCUM unit of each unit of :mod:`streamlib.metrics`."""

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class _Snapshots:
    """One snapshot a collection: an instrument that asks a second time starts the next."""

    def __init__(self, take: Callable[[], Metrics]) -> None:
        self._take = take
        self._lock = threading.Lock()
        self._current: Metrics | None = None  # GUARDED_BY(_lock)
        self._served: set[str] = set()  # GUARDED_BY(_lock): instruments that read it

    def read(self, instrument: str) -> Metrics | None:
        with self._lock:
            if self._current is None or instrument in self._served:
                try:
                    self._current = self._take()
                except StreamClosed:
                    self._current = None
                    return None
                self._served = set()
            self._served.add(instrument)
            return self._current


def register(store: StreamStore, meter: Meter, *, per_stream: bool | int = False,
             prices: Prices | None = None) -> list[str]:
    """Create an observable instrument on ``meter`` for every family of ``store``'s metrics
    (``per_stream`` and ``prices`` as :meth:`StreamStore.metrics
    <streamlib.store.StreamStore.metrics>`). Returns the instruments' names."""
    families = store.metrics(per_stream=per_stream, prices=prices)
    snapshots = _Snapshots(lambda: store.metrics(per_stream=per_stream, prices=prices))
    names = []
    for family in families.values():
        unit = UNITS.get(family.unit, "1")
        if family.type == "histogram":
            for part in ("count", "sum", "bucket"):
                name = f"{family.name}_{part}"
                meter.create_observable_counter(
                    name, [_observer(snapshots, name, family.name, part)],
                    unit="1" if part != "sum" else unit,
                    description=f"{family.help} ({part})")
                names.append(name)
            continue
        create = (meter.create_observable_counter if family.type == "counter"
                  else meter.create_observable_gauge)
        create(family.name, [_observer(snapshots, family.name, family.name, None)], unit=unit,
               description=family.help)
        names.append(family.name)
    return names


def _observer(snapshots: _Snapshots, instrument: str, name: str, part: str | None) -> Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        found = snapshots.read(instrument)
        family = None if found is None else found.get(name)
        return [] if family is None else observations(family, part)

    return observe


def observations(family: Family, part: str | None) -> list[Observation]:
    """The points of one family (of one part of a histogram: ``count``, ``sum`` or
    ``bucket``)."""
    found = []
    for sample in family.samples:
        labels = dict(sample.labels)
        value = sample.value
        if not isinstance(value, HistogramValue):
            found.append(Observation(value, labels))
        elif part == "count":
            found.append(Observation(value.count, labels))
        elif part == "sum":
            found.append(Observation(value.sum, labels))
        else:
            found += [Observation(count, {**labels, "le": "+Inf" if math.isinf(bound)
                                          else repr(bound)})
                      for bound, count in value.cumulative()]
    return found


__all__ = ["UNITS", "observations", "register"]
