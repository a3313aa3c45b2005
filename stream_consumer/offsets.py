"""The group's stored offsets against the logs they point into: `offsets show`, `offsets reset`, `rebuild`.

A stored offset outside its partition's log (retention deleted messages before they were read, the
topic was recreated, the database was restored from elsewhere) is never moved silently: the
consumer refuses that partition, and an operator moves it with `offsets reset`, which says first
what will be skipped or read twice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from common.settings import Settings
from stream_consumer.store import Store

log = logging.getLogger("stream_consumer")


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    stored: int | None  # the group's next offset in Postgres; None if it never read the partition
    low: int  # the first offset the log still holds
    high: int  # the offset the next message will get

    @property
    def problem(self) -> str:
        if self.stored is None:
            return ""
        if self.stored < self.low:
            return f"below the log's start: {self.low - self.stored} messages deleted before they were read"
        if self.stored > self.high:
            return "past the log's end: the topic was recreated, or the database restored from elsewhere"
        return ""

    def plan(self, to: str) -> tuple[int, str]:
        """The offset `--to earliest|latest` moves to, and what that means for the counts."""
        new = self.low if to == "earliest" else self.high
        stored = self.stored
        if stored is None:
            return new, f"no stored offset yet; reading starts at {new}"
        if new == stored:
            return new, "stays where it is"
        if stored > self.high:  # past the end: which messages were counted is not known
            held = f"offsets {self.low}..{self.high - 1} ({self.high - self.low} messages)"
            if to == "earliest":
                return new, (
                    f"reads offsets {new}..{self.high - 1} of the current log ({self.high - new} messages); "
                    "if the database was restored and they were counted before, they are COUNTED TWICE"
                )
            return new, (
                f"resumes at the end of the current log: SKIPS {held} if they were never counted (a "
                "recreated topic); skips nothing if the database was restored after counting them"
            )
        if new < stored:
            return new, (
                f"reads offsets {new}..{stored - 1} again ({stored - new} messages): they were counted "
                "already and are COUNTED TWICE"
            )
        lost = max(0, min(self.low, new) - stored)
        parts = []
        if lost:
            parts.append(
                f"offsets {stored}..{stored + lost - 1} ({lost} messages) are gone from Kafka and never counted"
            )
        skipped = new - max(stored, self.low)
        if skipped > 0:
            parts.append(f"SKIPS offsets {max(stored, self.low)}..{new - 1} ({skipped} messages), never counted")
        return new, "; ".join(parts)

    def __str__(self) -> str:
        stored = "-" if self.stored is None else str(self.stored)
        lag = "" if self.stored is None or self.problem else f", lag {self.high - self.stored}"
        status = f"  <- {self.problem}" if self.problem else ""
        return f"{self.topic}[{self.partition}]: stored {stored}, log {self.low}..{self.high}{lag}{status}"


def partition_states(settings: Settings, topics: list[str]) -> list[PartitionState]:
    """Every partition of `topics` with the group's stored offset and the log's current range."""
    store = Store(settings.consumer_dsn(), settings.kafka_consumer_group)
    try:
        stored = store.stored_offsets()
    finally:
        store.close()
    probe = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"{settings.kafka_consumer_group}.admin",
            "log_level": 3,
        }
    )
    try:
        meta = probe.list_topics(timeout=10).topics
        out = []
        for topic in topics:
            if topic not in meta or meta[topic].error is not None:
                raise SystemExit(f"error: topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}")
            for p in sorted(meta[topic].partitions):
                low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                out.append(PartitionState(topic, p, stored.get((topic, p)), low, high))
        return out
    finally:
        probe.close()


def show(settings: Settings, out=sys.stdout) -> int:
    states = partition_states(settings, [settings.kafka_topic, settings.kafka_profiles_topic])
    print(f"consumer group {settings.kafka_consumer_group}:", file=out)
    for s in states:
        print(f"  {s}", file=out)
    bad = [s for s in states if s.problem]
    if bad:
        print(
            f"{len(bad)} partition(s) outside their log are not read; see "
            "`python -m stream_consumer offsets reset --help`",
            file=out,
        )
    return 1 if bad else 0


def confirm_by_prompt(question: str) -> bool:
    if not sys.stdin.isatty():
        print("error: not a terminal: add --yes to act without asking", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def reset(
    settings: Settings,
    to: str,
    topic: str | None,
    partition: int | None,
    yes: bool,
    confirm: Callable[[str], bool] = confirm_by_prompt,
    out=sys.stdout,
) -> int:
    """Moves stored offsets to the start or the end of their log, after saying what that skips or
    re-reads. Without --partition: the partitions whose stored offset is outside the log."""
    topic = topic or settings.kafka_topic
    states = partition_states(settings, [topic])
    if partition is not None:
        chosen = [s for s in states if s.partition == partition]
        if not chosen:
            print(f"error: {topic} has no partition {partition} (it has {len(states)})", file=sys.stderr)
            return 2
    else:
        chosen = [s for s in states if s.problem]
        if not chosen:
            print(
                f"every stored offset of {topic} is inside its log: nothing to reset "
                "(name one with --partition N to move it anyway)",
                file=out,
            )
            return 0
    plans = {(s.topic, s.partition): s.plan(to) for s in chosen}
    print(f"offsets reset --to {to}, consumer group {settings.kafka_consumer_group}:", file=out)
    for s in chosen:
        new, what = plans[(s.topic, s.partition)]
        print(f"  {s.topic}[{s.partition}]: {'-' if s.stored is None else s.stored} -> {new}: {what}", file=out)
    if not yes and not confirm("Move these offsets?"):
        print("nothing changed", file=out)
        return 1
    store = Store(settings.consumer_dsn(), settings.kafka_consumer_group)
    try:
        store.set_offsets({k: new for k, (new, _) in plans.items()})
    finally:
        store.close()
    print(f"done: {len(plans)} offset(s) moved; running members follow within seconds", file=out)
    return 0


def rebuild(settings: Settings, force: bool, out=sys.stdout) -> int:
    """Resets the aggregates and offsets in one transaction, then consumes until caught up.

    Identical aggregates need the whole history: refused (unless forced) when a log no longer
    starts at offset 0."""
    from stream_consumer.consumer import StreamConsumer

    topics = [settings.kafka_topic, settings.kafka_profiles_topic]
    states = partition_states(settings, topics)
    truncated = [s for s in states if s.low > 0]
    if truncated:
        lost = ", ".join(f"{s.topic}[{s.partition}] offsets 0..{s.low - 1}" for s in truncated)
        if not force:
            print(
                f"error: rebuild refused: the topics no longer hold their whole history ({lost} were deleted "
                f"by retention, {sum(s.low for s in truncated)} messages). A rebuild would drop those "
                "messages' counts from the aggregates. Add --force to rebuild from what is left.",
                file=sys.stderr,
            )
            return 2
        print(f"rebuild --force: the aggregates will not count {lost}", file=out)
    starts = {(s.topic, s.partition): s.low for s in states}
    ends = {(s.topic, s.partition): s.high for s in states}
    store = Store(settings.consumer_dsn(), settings.kafka_consumer_group)
    store.reset(starts)
    store.close()
    log.info("rebuild: aggregates and offsets reset; reconsuming %d messages", sum(ends[k] - starts[k] for k in ends))
    consumer = StreamConsumer(settings)
    watcher = Store(settings.consumer_dsn(), settings.kafka_consumer_group)  # the consumer's own is busy

    def caught_up() -> bool:
        stored = watcher.stored_offsets()
        return all(stored.get(k, 0) >= end for k, end in ends.items())

    consumer.run(until=caught_up)
    watcher.close()
    log.info("rebuild: done")
    return 0
