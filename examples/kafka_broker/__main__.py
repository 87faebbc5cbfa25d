"""``python -m examples.kafka_broker --data DIR --port PORT``: run the broker (README.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from .handlers import Settings
from .server import Options, serve


def parse(argv: list[str]) -> tuple[Options, str]:
    parser = argparse.ArgumentParser(prog="python -m examples.kafka_broker",
                                     description="A Kafka-compatible broker on streamlib.")
    parser.add_argument("--data", required=True,
                        help="the store's local directory (its WAL and, by default, objects "
                             "and metadata)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on and to "
                        "give clients (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9092,
                        help="the port (default 9092; 0: any free port)")
    parser.add_argument("--node-id", type=int, default=0,
                        help="this broker's id (distinct for each broker of one bucket)")
    parser.add_argument("--objects-url", help="where the objects go, e.g. s3://bucket/prefix")
    parser.add_argument("--metadata", choices=["sqlite", "manifest"],
                        help="manifest: the metadata in the bucket, shared by several brokers")
    parser.add_argument("--storage-options", type=json.loads,
                        help="fsspec storage options as JSON (credentials, endpoint_url)")
    parser.add_argument("--partitions", type=int, default=1,
                        help="partitions of a topic made on first use (default 1)")
    parser.add_argument("--no-auto-create", action="store_true",
                        help="refuse topics that were not created")
    parser.add_argument("--heartbeat-ms", type=int, default=1000,
                        help="several brokers: how often this one beats (default 1000)")
    parser.add_argument("--session-ms", type=int, default=10_000,
                        help="several brokers: a broker quiet this long is taken over "
                             "(default 10000)")
    parser.add_argument("--initial-rebalance-delay-ms", type=int, default=300,
                        help="how long a group's first rebalance waits for more members")
    parser.add_argument("--log-level", default="WARNING")
    found = parser.parse_args(argv)
    return Options(
        data=found.data, host=found.host, port=found.port, node_id=found.node_id,
        objects_url=found.objects_url, metadata=found.metadata,
        storage_options=found.storage_options,
        settings=Settings(auto_create=not found.no_auto_create,
                          default_partitions=found.partitions),
        heartbeat_ms=found.heartbeat_ms, session_ms=found.session_ms,
        initial_rebalance_delay_ms=found.initial_rebalance_delay_ms), found.log_level.upper()


def main(argv: list[str] | None = None) -> None:
    options, level = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(host: str, port: int) -> None:
        print(f"listening on {host}:{port}", flush=True)

    if asyncio.run(serve(options, ready)):
        sys.exit("taken over by another broker: stopped")


if __name__ == "__main__":
    main()
