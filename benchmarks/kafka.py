"""The Kafka broker example (examples/kafka_broker) driven by aiokafka: produce throughput and
end-to-end latency, on the local-disk default and with the objects on moto.

    .venv/bin/python benchmarks/kafka.py [--quick] [--messages N] [--json PATH]

For each store (a broker process: ``python -m examples.kafka_broker --data DIR``, and the same
with ``--objects-url s3://…`` on a moto server in a process of its own):

1. **Produce throughput**: N messages of 1 KiB (default 100,000), acks=all, one aiokafka
   producer (linger 5 ms, batches up to 1 MiB, no compression) to a topic of 3 partitions;
   messages/s and MB/s (10^6 bytes of values a second) from the first send to the last
   acknowledgement.
2. **End-to-end latency of one message**: 500 times, one 1 KiB message sent (acks=all, no
   linger) while a consumer waits at the end of the partition (a long-poll fetch); the time
   from the send to the consumer getting it; p50 and p99.

Also the machine's raw ``write`` + ``fdatasync`` of 1 KiB appended to a file in the same
directory (p50, p99 of 500): the floor of an acks=all acknowledgement on local disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamlib.testing.s3 import MotoServer, fresh_bucket

ROOT = Path(__file__).resolve().parents[1]
VALUE = b"v" * 1024
MB = 1_000_000
LATENCY_ROUNDS = 500


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def broker(data: Path, *args: str) -> Iterator[str]:
    """A broker process on a free port; yields its bootstrap address; SIGTERM after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.kafka_broker", "--data", str(data), "--port", "0",
         *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=120)
        if not line.startswith("listening on "):
            raise RuntimeError(f"the broker did not start: {line!r}")
        yield line.split()[-1]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


async def make_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=1)])
    finally:
        await admin.close()


async def throughput(bootstrap: str, messages: int) -> dict[str, float]:
    await make_topic(bootstrap, "throughput", 3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=1 << 20, max_request_size=4 << 20)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send("throughput", VALUE, partition=n % 3)
                   for n in range(messages)]
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"messages": messages, "seconds": seconds, "messages_per_s": messages / seconds,
            "mb_per_s": messages * len(VALUE) / seconds / MB}


async def latency(bootstrap: str, rounds: int) -> dict[str, float]:
    await make_topic(bootstrap, "latency", 1)
    partition = TopicPartition("latency", 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5_000,
                                enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([partition])
        await producer.send_and_wait("latency", b"warm-up", partition=0)
        await consumer.seek_to_end(partition)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            await producer.send("latency", VALUE, partition=0)
            await consumer.getone()
            times.append(time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()
    return {"rounds": rounds, "p50_ms": percentile(times, 0.5) * 1000,
            "p99_ms": percentile(times, 0.99) * 1000}


def raw_fdatasync(directory: Path, rounds: int = 500) -> dict[str, float]:
    times = []
    fd = os.open(directory / "fdatasync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, VALUE)
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return {"p50_ms": percentile(times, 0.5) * 1000, "p99_ms": percentile(times, 0.99) * 1000}


def run_on(name: str, data: Path, args: list[str], messages: int,
           rounds: int) -> dict[str, Any]:
    with broker(data, *args) as bootstrap:
        found: dict[str, Any] = {"store": name,
                                 "produce": asyncio.run(throughput(bootstrap, messages)),
                                 "latency": asyncio.run(latency(bootstrap, rounds))}
    produce, e2e = found["produce"], found["latency"]
    print(f"{name:<22} produce {produce['messages_per_s']:>9,.0f} msg/s "
          f"{produce['mb_per_s']:>7.1f} MB/s   end-to-end p50 {e2e['p50_ms']:>6.2f} ms "
          f"p99 {e2e['p99_ms']:>6.2f} ms", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 messages, 100 rounds")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    messages = 10_000 if options.quick else options.messages
    rounds = 100 if options.quick else LATENCY_ROUNDS
    results: dict[str, Any] = {"messages": messages, "message_bytes": len(VALUE)}
    with tempfile.TemporaryDirectory(dir=ROOT / "build" if (ROOT / "build").is_dir() else None
                                     ) as home:
        home_path = Path(home)
        results["raw_fdatasync"] = sync = raw_fdatasync(home_path)
        print(f"raw write+fdatasync of 1 KiB: p50 {sync['p50_ms']:.2f} ms "
              f"p99 {sync['p99_ms']:.2f} ms", flush=True)
        runs = [run_on("local disk (default)", home_path / "local", [], messages, rounds)]
        server = MotoServer(own_process=True)
        endpoint = server.start()
        try:
            with fresh_bucket(endpoint) as bucket:
                options_json = json.dumps(bucket.storage_options)
                runs.append(run_on("objects on moto", home_path / "moto",
                                   ["--objects-url", f"{bucket.url}/kafka",
                                    "--storage-options", options_json], messages, rounds))
        finally:
            server.stop()
        shutil.rmtree(home_path / "local", ignore_errors=True)
    results["runs"] = runs
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
