"""Collector benchmark: events/s and accept latency of `POST /v1/events` under a loopback load
generator, for each ASGI server the collector can run on, beside producing the same events
straight to Kafka in the same run.

    .venv/bin/python -m benchmarks.collector [--seconds 20] [--connections 32] [--batch 10]

Starts its own throwaway Kafka on free ports. The load generator (this process, asyncio, raw
HTTP/1.1 on keep-alive connections) keeps `--connections` requests of `--batch` events in flight
for `--seconds`; a request's latency runs from its first byte sent to the last byte of its 202,
which the collector sends only after Kafka acknowledged the events. The baseline produces the same
number of events with one confluent-kafka producer (idempotent, acks=all) and waits for every
acknowledgement. On a 2-core machine the generator and the collector share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid

from confluent_kafka import Producer

from benchmarks.report import report
from common.topics import ensure_topics
from kafka_producer.producer import produce_one
from tests.support.ephemeral import ROOT, EphemeralStack, free_port
from tests.support.events import BROWSER_USER_AGENT

SERVERS = ("uvicorn", "granian")


def events(n: int, user: int = 1) -> list[dict]:
    now = dt.datetime.now(dt.UTC).isoformat()
    session = str(uuid.uuid4())
    return [
        {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "event_type": "view",
            "user_id": user + i % 100,
            "session_id": session,
            "occurred_at": now,
            "page": "/products/42",
        }
        for i in range(n)
    ]


async def one_connection(port: int, batch: int, until: float, latencies: list[float], statuses: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            body = json.dumps(events(batch)).encode()
            request = (
                f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"User-Agent: {BROWSER_USER_AGENT}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def load(port: int, seconds: float, connections: int, batch: int) -> tuple[float, list[float], dict]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def run() -> float:
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(one_connection(port, batch, until, latencies, statuses) for _ in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return elapsed, latencies, statuses


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def wait_healthy(port: int, proc: subprocess.Popen) -> None:
    """Until the collector's /healthz (on its metrics port) answers 200."""
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the collector exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the collector never turned healthy")


def bench_server(server: str, env: dict, args) -> tuple[float, list[float], dict]:
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "--server", server],
        cwd=ROOT,
        env={
            **env,
            "COLLECTOR_PORT": str(port),
            "COLLECTOR_METRICS_PORT": str(metrics_port),
            # the generator is one client: no rate limit in the way
            "COLLECTOR_CLIENT_EVENTS_PER_SECOND": "1000000",
            "COLLECTOR_CLIENT_BURST": "1000000",
        },
    )
    try:
        wait_healthy(metrics_port, proc)
        load(port, 2, args.connections, args.batch)  # warm-up
        return load(port, args.seconds, args.connections, args.batch)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_direct(bootstrap: str, topic: str, n: int) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 2})
    values = [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events(n)]
    started = time.perf_counter()
    for key, value in values:
        produce_one(producer, topic, key, value)
        producer.poll(0)
    assert producer.flush(60) == 0
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    args = parser.parse_args()
    stack = EphemeralStack(["kafka"])
    figures = []
    try:
        stack.up()
        topic = f"bench_collector_{int(time.time())}"
        bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
        ensure_topics(bootstrap, topic, f"{topic}_profiles", 6)
        env = {**os.environ, **stack.env, "KAFKA_TOPIC": topic}
        total = 0
        for server in args.servers:
            elapsed, latencies, statuses = bench_server(server, env, args)
            accepted = statuses.get(202, 0) * args.batch
            total = max(total, accepted)
            figures.append(
                (
                    f"collector on {server}: events/s ({args.connections} connections x {args.batch} events)",
                    f"{accepted / elapsed:,.0f} ({statuses})",
                )
            )
            figures.append(
                (
                    f"collector on {server}: accept latency p50 / p99 / max",
                    f"{percentile(latencies, 50) * 1000:.1f} ms / {percentile(latencies, 99) * 1000:.1f} ms / "
                    f"{max(latencies) * 1000:.1f} ms ({len(latencies):,} requests)",
                )
            )
        rate = bench_direct(bootstrap, topic, max(total, 10_000))
        figures.append(("baseline: the same events produced straight to Kafka, events/s", f"{rate:,.0f}"))
    finally:
        stack.down()
    print(f"\nload average {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores")
    for name, value in figures:
        report(name, value)


if __name__ == "__main__":
    main()
