"""A Kafka-compatible broker built on streamlib's public API: ``python -m examples.kafka_broker
--data DIR --port PORT`` (README.md; the design in DESIGN.md)."""
