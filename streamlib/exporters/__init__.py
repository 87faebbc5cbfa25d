"""Exporters of ``store.metrics()`` to monitoring systems (docs/metrics.md), each behind an
optional extra and imported only when used:

- :mod:`streamlib.exporters.prometheus` — ``pip install "streamlib[prometheus]"``: a
  ``prometheus_client`` collector to register;
- :mod:`streamlib.exporters.otel` — ``pip install "streamlib[otel]"``: observable instruments
  on an OpenTelemetry ``Meter``.

Without its package, importing an exporter raises :class:`~streamlib.errors.MissingExtra`
naming the extra to install.
"""
