"""Streaming benchmarks: producer and consumer throughput (event_id deduplication on and off) beside
naive baselines measured in the same run, event-to-table latency at a steady rate, and consumer
memory as volume grows.

    .venv/bin/python -m benchmarks.streaming [--events 1000000] [--rss-events 5000000]

Starts its own throwaway native stack (real Kafka, real Postgres) on free ports and prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import psutil
import psycopg
from confluent_kafka import Producer
from faker import Faker

from benchmarks.report import report
from common.contract import MAY_REPEAT_HEADER
from common.topics import ensure_topics
from kafka_producer.producer import produce_one
from tests.support.ephemeral import ROOT, EphemeralStack
from tests.support.events import STREAMING_TABLES

PARTITIONS = 6


class Bench:
    def __init__(self, stack: EphemeralStack) -> None:
        self.stack = stack
        self.dsn = stack.owner_dsn()
        self.bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
        self.results: list[tuple[str, str]] = []
        self.consumer_cpu_seconds = 0.0

    def env(self, topic: str, group: str) -> dict[str, str]:
        return {
            **self.stack.env,
            "KAFKA_TOPIC": topic,
            "KAFKA_PROFILES_TOPIC": f"{topic}_profiles",
            "KAFKA_CONSUMER_GROUP": group,
            "KAFKA_PARTITIONS": str(PARTITIONS),
        }

    def report(self, name: str, value: str) -> None:
        self.results.append((name, value))
        report(name, value)

    def sql(self, query: str, *params):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def stored(self, group: str, topic: str) -> int:
        [(n,)] = self.sql(
            "SELECT coalesce(sum(next_offset), 0) FROM streaming.consumer_offsets "
            "WHERE consumer_group = %s AND topic = %s",
            group,
            topic,
        )
        return int(n)

    def produce(self, topic: str, events: int) -> float:
        """Our producer, flat out: events/s as it reports them."""
        ensure_topics(self.bootstrap, topic, f"{topic}_profiles", PARTITIONS)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "kafka_producer",
                "--rate",
                "0",
                "--events",
                str(events),
                "--seed",
                "1",
                "--no-profiles",
            ],
            env=self.env(topic, "unused"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return float(re.search(r"\(([\d,]+)/s\)", proc.stderr).group(1).replace(",", ""))

    def produce_may_repeat(self, topic: str, events: int) -> None:
        """kafka_producer's events (the same seed and users), sent as the collector sends them: with
        MAY_REPEAT_HEADER, so that the consumer checks and records every id for its dedup window."""
        from kafka_producer.events import EventGenerator

        ensure_topics(self.bootstrap, topic, f"{topic}_profiles", PARTITIONS)
        gen = EventGenerator(100, 1)  # kafka_producer's default PRODUCER_USERS
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "compression.type": "lz4",  # as kafka_producer and the collector send
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "log_level": 0,
            }
        )
        for i in range(events):
            key, value = gen.event(time.time())
            produce_one(producer, topic, key, value, [MAY_REPEAT_HEADER])
            if i % 1000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0

    def steady(self, topic: str, rate: float, seconds: int) -> tuple[float, float, float]:
        """Our producer in steady-rate mode: the average rate and the lowest and highest rate of any
        whole second, read back from the messages' Kafka timestamps (CreateTime)."""
        from collections import Counter

        from confluent_kafka import Consumer

        ensure_topics(self.bootstrap, topic, f"{topic}_profiles", PARTITIONS)
        total = int(rate * seconds)
        subprocess.run(
            [sys.executable, "-m", "kafka_producer", "--rate", str(rate), "--events", str(total), "--no-profiles"],
            env=self.env(topic, "unused"),
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{topic}_reader",
                "auto.offset.reset": "earliest",
                "log_level": 0,
            }
        )
        c.subscribe([topic])
        stamps: list[int] = []
        while len(stamps) < total:
            stamps += [m.timestamp()[1] for m in c.consume(10_000, timeout=5) if not m.error()]
        c.close()
        t0 = min(stamps)
        per_second = Counter((t - t0) // 1000 for t in stamps)
        whole = [per_second[s] for s in range(seconds - 1)]  # the last second may be partial
        return total / ((max(stamps) - t0) / 1000 + 1 / rate), min(whole), max(whole)

    def naive_producer(self, topic: str, events: int) -> float:
        """Baseline: a dict per event from Faker, json.dumps, one produce + poll each, default settings."""
        fake = Faker()
        producer = Producer({"bootstrap.servers": self.bootstrap, "log_level": 0})
        t0 = time.perf_counter()
        for _ in range(events):
            event = {
                "schema_version": 1,
                "event_id": fake.uuid4(),
                "event_type": fake.random_element(("view", "click", "purchase")),
                "user_id": fake.random_int(1, 100),
                "session_id": fake.uuid4(),
                "occurred_at": fake.iso8601() + "Z",
                "page": fake.uri_path(),
                "device": "mobile",
                "country": "US",
            }
            producer.produce(topic, json.dumps(event).encode(), str(event["user_id"]).encode())
            producer.poll(0)
        producer.flush()
        return events / (time.perf_counter() - t0)

    def start_consumer(
        self, topic: str, group: str, module: str = "stream_consumer", extra_env: dict | None = None
    ) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env={**self.env(topic, group), **(extra_env or {})},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def consume(
        self, topic: str, group: str, total: int, rss_marks: tuple[int, ...] = (), extra_env: dict | None = None
    ) -> tuple[float, dict]:
        """Our consumer on a full topic: events/s between its first and last commit, RSS at marks."""
        # Every table the consumer writes: each run starts from the same empty state (event_log and
        # user_last_seen left from the previous run made the next one append and update instead).
        self.sql(f"TRUNCATE {', '.join(STREAMING_TABLES)}, streaming.event_ids")
        started = time.perf_counter()
        proc = self.start_consumer(topic, group, extra_env=extra_env)
        ps = psutil.Process(proc.pid)
        first = None
        rss: dict[int, float] = {}
        try:
            while True:
                n = self.stored(group, topic)
                now = time.perf_counter()
                if first is None and n > 0:
                    first = (now, n)
                for mark in rss_marks:
                    if n >= mark and mark not in rss:
                        rss[mark] = ps.memory_info().rss / 2**20
                if n >= total:
                    if n == first[1]:  # a topic small enough for one commit: from the start (a lower bound)
                        return n / (now - started), rss
                    return (n - first[1]) / (now - first[0]), rss
                if proc.poll() is not None:
                    raise RuntimeError("consumer exited")
                time.sleep(0.05)
        finally:
            # CPU per event: less noisy than events/s on a busy machine (benchmarks.ab compares it)
            times = ps.cpu_times()
            self.consumer_cpu_seconds = times.user + times.system
            proc.terminate()
            proc.wait(30)

    def naive_consume(self, topic: str, group: str, seconds: float) -> float:
        """Baseline: the reference README's consumer (docs/architecture.md) for `seconds`, events/s from its table."""
        self.sql("TRUNCATE streaming.user_events")
        proc = self.start_consumer(topic, group, "benchmarks.naive_consumer")
        try:
            while not self.sql("SELECT 1 FROM streaming.user_events LIMIT 1"):
                time.sleep(0.05)
            [(n0,)] = self.sql("SELECT coalesce(sum(event_count), 0) FROM streaming.user_events")
            t0 = time.perf_counter()
            time.sleep(seconds)
            [(n1,)] = self.sql("SELECT coalesce(sum(event_count), 0) FROM streaming.user_events")
            return float(n1 - n0) / (time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(30)

    def latency(self, topic: str, group: str, rate: float, seconds: float) -> list[float]:
        """Event-to-table latency: produce time → the commit that covers the event's offset,
        seen by polling the stored offsets every 10 ms."""
        ensure_topics(self.bootstrap, topic, f"{topic}_profiles", PARTITIONS)
        from kafka_producer.events import EventGenerator

        proc = self.start_consumer(topic, group)
        sent: list[tuple[int, int, float]] = []
        progress: dict[int, list[tuple[int, float]]] = {p: [] for p in range(PARTITIONS)}
        done = threading.Event()

        def watch() -> None:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not done.is_set():
                    now = time.time()
                    for p, off in conn.execute(
                        'SELECT "partition", next_offset FROM streaming.consumer_offsets '
                        "WHERE consumer_group = %s AND topic = %s",
                        (group, topic),
                    ):
                        if not progress[p] or progress[p][-1][0] != off:
                            progress[p].append((off, now))
                    time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        try:
            time.sleep(5)  # joined the group
            watcher.start()
            gen = EventGenerator(100, 1)
            producer = Producer(
                {"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": True, "log_level": 0}
            )
            t0 = time.time()
            n = int(rate * seconds)
            for i in range(n):
                ahead = t0 + i / rate - time.time()
                if ahead > 0.002:
                    producer.poll(0)
                    time.sleep(ahead)
                key, value = gen.event(time.time())
                sent_at = time.time()
                producer.produce(
                    topic, value, key, on_delivery=lambda e, m, s=sent_at: sent.append((m.partition(), m.offset(), s))
                )
            producer.flush()
            deadline = time.time() + 30
            while time.time() < deadline and sum(o for o, _ in (v[-1] for v in progress.values() if v)) < n:
                time.sleep(0.1)
        finally:
            done.set()
            proc.terminate()
            proc.wait(30)
        latencies = []
        for p, off, s in sent:
            seen = next((t for o, t in progress[p] if o > off), None)
            if seen is not None:
                latencies.append(seen - s)
        return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the throughput runs")
    parser.add_argument("--rss-events", type=int, default=5_000_000, help="events for the memory run")
    parser.add_argument("--latency-rate", type=float, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--baseline-seconds", type=float, default=15)
    parser.add_argument("--steady-seconds", type=int, default=20, help="length of each steady-rate run")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        "starting a throwaway stack (postgres, kafka)",
        flush=True,
    )
    stack = EphemeralStack(["postgres", "kafka"])
    try:
        stack.up()
        b = Bench(stack)
        print("producer", flush=True)
        ours = b.produce("bench_throughput", args.events)
        b.report(f"kafka_producer, {args.events:,} events, events/s", f"{ours:,.0f}")
        naive = b.naive_producer("bench_naive_producer", 20_000)
        b.report("baseline: Faker dict + json.dumps + produce per event, events/s", f"{naive:,.0f}")
        b.report("producer ratio", f"{ours / naive:.1f}x")
        for rate in (1_000, 10_000):
            held, low, high = b.steady(f"bench_steady_{rate}", rate, args.steady_seconds)
            b.report(
                f"kafka_producer --rate {rate:,} for {args.steady_seconds} s: events/s; slowest / fastest second",
                f"{held:,.1f} ({(held - rate) / rate:+.2%}); {low:,} ({(low - rate) / rate:+.1%}) / "
                f"{high:,} ({(high - rate) / rate:+.1%})",
            )

        print("consumer", flush=True)
        rate, _ = b.consume("bench_throughput", "bench_ours", args.events)
        b.report(
            f"stream_consumer (exactly once), 1 process, {args.events:,} events of kafka_producer, events/s",
            f"{rate:,.0f}",
        )
        b.report("its events per CPU-second of the consumer process", f"{args.events / b.consumer_cpu_seconds:,.0f}")
        b.produce_may_repeat("bench_recorded", args.events)
        recorded, _ = b.consume("bench_recorded", "bench_recorded", args.events)
        off, _ = b.consume(
            "bench_recorded", "bench_no_dedup", args.events, extra_env={"CONSUMER_DEDUP_WINDOW_SECONDS": "0"}
        )
        b.report(
            "the same as the collector sends them (event-ids: may-repeat), events/s",
            f"{recorded:,.0f} ({recorded / rate:.2f}x the events without the header)",
        )
        b.report(
            "the same with the window off (CONSUMER_DEDUP_WINDOW_SECONDS=0), events/s",
            f"{off:,.0f} (with the window: {recorded / off - 1:+.0%})",
        )
        base = b.naive_consume("bench_throughput", "bench_naive", args.baseline_seconds)
        b.report("baseline: per-event upsert + commit (reference README), events/s", f"{base:,.0f}")
        b.report("consumer ratio", f"{rate / base:.0f}x")

        print("latency", flush=True)
        lat = sorted(b.latency("bench_latency", "bench_latency", args.latency_rate, args.latency_seconds))
        if lat:
            q = statistics.quantiles(lat, n=100)
            b.report(
                f"event → streaming table at {args.latency_rate:,.0f}/s, {len(lat):,} events: p50 / p99 / max",
                f"{q[49] * 1000:.0f} ms / {q[98] * 1000:.0f} ms / {lat[-1] * 1000:.0f} ms",
            )

        print("memory", flush=True)
        b.produce("bench_rss", args.rss_events)
        marks = tuple(sorted({min(1_000_000, args.rss_events), args.rss_events}))
        rate, rss = b.consume("bench_rss", "bench_rss", args.rss_events, marks)
        for mark in marks:
            b.report(f"consumer RSS after {mark:,} events", f"{rss.get(mark, float('nan')):.0f} MiB")
        b.report(f"stream_consumer, {args.rss_events:,} events, events/s", f"{rate:,.0f}")
    finally:
        stack.down()


if __name__ == "__main__":
    main()
