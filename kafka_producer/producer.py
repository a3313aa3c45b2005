"""The Kafka side of the producer: configuration, pacing, delivery accounting, clean shutdown."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from common.contract import Header
from common.metrics import MetricsServer
from common.settings import Settings
from common.topics import ensure_topics
from kafka_producer.events import EventGenerator


@dataclass
class Options:
    rate: float  # events/s; 0 = as fast as possible
    events: int | None  # stop after this many
    users: int
    seed: int | None
    start_time: dt.datetime | None  # a fixed clock: occurred_at = start + i / rate
    dry_run: bool
    profiles: bool = True

    def clock(self) -> tuple[float | None, float]:
        """(base, step) of the events' occurred_at: base + i * step on a fixed clock (--start-time),
        the wall clock when base is None; step is 1 / rate (1 ms flat out)."""
        step = 1 / self.rate if self.rate else 0.001
        return (self.start_time.timestamp() if self.start_time else None), step


class Stats:
    def __init__(self, target_rate: float = 0) -> None:
        self.produced = 0
        self.failed = 0
        self.target_rate = target_rate
        self.first_error: str | None = None
        self.broker_error: str | None = None

    def collect(self):
        """Prometheus reads the counters at scrape time: nothing is added to the per-event loop."""
        yield CounterMetricFamily("kafka_producer_events", "Events handed to the Kafka client", value=self.produced)
        yield CounterMetricFamily(
            "kafka_producer_delivery_errors", "Events Kafka did not acknowledge", value=self.failed
        )
        yield GaugeMetricFamily(
            "kafka_producer_target_rate", "Events/s asked for (0: flat out)", value=self.target_rate
        )

    def on_error(self, err: KafkaError) -> None:
        # Client-level errors (broker down, ...): librdkafka retries by itself; show the latest.
        self.broker_error = err.str()

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Only failures are reported (delivery.report.only.error): one callback per error.
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or str(err)


def producer_config(settings: Settings, stats: Stats) -> dict:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": "kafka_producer",
        # Idempotence: retries never duplicate or reorder a partition's messages.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "delivery.report.only.error": True,
        "on_delivery": stats.on_delivery,
        "error_cb": stats.on_error,
        # Connection failures reach error_cb once; librdkafka's own log would repeat them.
        "log_level": 2,
    }


class Progress:
    """One live status line on a terminal; a line every 10 s in a log."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else 10.0
        self.started = self.last = time.monotonic()
        self.last_count = 0

    def update(self, stats: Stats, pending: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        rate = (stats.produced - self.last_count) / max(now - self.last, 1e-9)
        self.last, self.last_count = now, stats.produced
        line = (
            f"produced {stats.produced:,}  rate {rate:,.0f}/s  in flight {pending:,}  delivery errors {stats.failed:,}"
        )
        if stats.broker_error:
            line += f"  (kafka: {stats.broker_error})"
            stats.broker_error = None
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run(settings: Settings, opts: Options) -> int:
    """Produces as `opts` asks until its count is reached or SIGINT/SIGTERM; 0 when every event was
    acknowledged, 1 when some were not, 2 when Kafka cannot be reached."""
    gen = EventGenerator(opts.users, opts.seed)
    if opts.dry_run:
        return dry_run(gen, opts)
    stats = Stats(opts.rate)
    registry = CollectorRegistry()
    registry.register(stats)
    server = MetricsServer(registry, lambda: (True, "ok"))
    server.start(settings.metrics_host, range(settings.producer_metrics_port, settings.producer_metrics_port + 1))
    producer = Producer(producer_config(settings, stats))
    try:
        producer.list_topics(timeout=5)
        ensure_topics(
            settings.kafka_bootstrap_servers,
            settings.kafka_topic,
            settings.kafka_profiles_topic,
            settings.kafka_partitions,
        )
    except KafkaException as exc:
        print(f"error: cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc.args[0].str()}", file=sys.stderr)
        return 2

    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if opts.profiles:
        produce_profiles(producer, settings.kafka_profiles_topic, gen, opts.start_time)
    progress = Progress()
    t0 = time.monotonic()
    produce_events(producer, settings.kafka_topic, gen, opts, stats, progress, lambda: stopping)
    left = producer.flush(30)
    progress.update(stats, left, force=True)
    if progress.tty:
        sys.stderr.write("\n")
    elapsed = time.monotonic() - t0
    print(
        f"done: {stats.produced:,} events in {elapsed:.1f} s ({stats.produced / max(elapsed, 1e-9):,.0f}/s), "
        f"{stats.failed:,} delivery errors, {left:,} undelivered",
        file=sys.stderr,
    )
    if stats.first_error:
        print(f"first delivery error: {stats.first_error}", file=sys.stderr)
    return 1 if stats.failed or left else 0


def dry_run(gen: EventGenerator, opts: Options) -> int:
    """--dry-run: the events as JSON lines on stdout (10 unless --events), nothing sent."""
    base, step = opts.clock()
    out = sys.stdout.buffer
    for i in range(opts.events if opts.events is not None else 10):
        _, value = gen.event(base + i * step if base is not None else time.time())
        out.write(value + b"\n")
    return 0


def produce_profiles(producer: Producer, topic: str, gen: EventGenerator, start_time: dt.datetime | None) -> None:
    """Every user's profile, once, before the events (updated now, or at --start-time)."""
    updated_at = start_time or dt.datetime.now(dt.UTC)
    for key, value in gen.profiles(updated_at):
        produce_one(producer, topic, key, value)
    producer.flush(30)


def produce_events(
    producer: Producer,
    topic: str,
    gen: EventGenerator,
    opts: Options,
    stats: Stats,
    progress: Progress,
    stopping: Callable[[], bool],
) -> None:
    """The paced loop: at --rate, the events due so far in chunks of at most 1,000 (flat out at 0),
    until --events or `stopping()`. The clock is the wall clock, or --start-time + i / rate."""
    base, step = opts.clock()
    produce = producer.produce
    limit = opts.events
    t0 = time.monotonic()
    chunk = 1000
    while not stopping() and (limit is None or stats.produced < limit):
        if opts.rate:
            due = int((time.monotonic() - t0) * opts.rate)
            n = due - stats.produced
            if n <= 0:
                time.sleep(min(0.002, step))
                producer.poll(0)
                continue
            n = min(n, chunk)
        else:
            n = chunk
        if limit is not None:
            n = min(n, limit - stats.produced)
        for _ in range(n):
            i = stats.produced
            key, value = gen.event(base + i * step if base is not None else time.time())
            try:
                produce(topic, value, key)
            except BufferError:
                # The local queue is full: let librdkafka drain it, then retry this message.
                producer.poll(0.05)
                produce_one(producer, topic, key, value)
            stats.produced = i + 1
        producer.poll(0)
        progress.update(stats, len(producer))


def produce_one(producer: Producer, topic: str, key: bytes, value: bytes, headers: list[Header] | None = None) -> None:
    """Produces one message, waiting for room in librdkafka's queue as long as it takes."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.1)
