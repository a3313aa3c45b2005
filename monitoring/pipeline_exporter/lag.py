"""Lag and freshness from two sources of truth, neither of them the consumer process.

Kafka says where each partition ends; Postgres says where the consumer group resumes (the offsets
stored in the same transaction as the aggregates they produced). Their difference is exactly the
number of messages not yet counted, whether the consumer runs, crashed or was never started.
"""

from __future__ import annotations

from dataclasses import dataclass

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Watermarks:
    """A partition's offsets in Kafka: the first still kept (retention) and the next to be written."""

    low: int
    high: int


@dataclass(frozen=True)
class StoredOffset:
    """One row of streaming.consumer_offsets: where the group resumes, and when it last stored a batch
    (updated_at, set with clock_timestamp() by the commit of every batch that read the partition)."""

    next_offset: int
    updated_at: float


def consumer_lag(
    ends: dict[TopicPartition, Watermarks], stored: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Messages of each partition Kafka holds that the group has not stored yet.

    A partition with no stored offset (the group never claimed it) lags by everything Kafka keeps;
    a stored offset below the partition's start (retention deleted what was never read) counts only
    what still exists. Never negative: a stored offset ahead of the end (a topic recreated under the
    group) reads as 0 here, and the consumer refuses it loudly (its stalled gauge)."""
    lag = {}
    for tp, marks in ends.items():
        resume = max(stored.get(tp, marks.low), marks.low)
        lag[tp] = max(marks.high - resume, 0)
    return lag


def freshness_seconds(rows: dict[TopicPartition, StoredOffset], now: float) -> float | None:
    """Ingestion-time freshness: seconds since the consumer last stored a batch, any partition.

    Rows still at offset 0 are left out: a claim (or a rebuild's reset) writes updated_at without
    storing any event. None when the group has stored nothing yet. This is when events were
    *stored*, not when they say they happened (occurred_at): one event dated in the future cannot
    make it read 0, and it keeps growing while the consumer is down. It also grows when no events
    arrive at all; read it beside lag (lag 0: nothing is waiting)."""
    stored = [row.updated_at for row in rows.values() if row.next_offset > 0]
    if not stored:
        return None
    return max(now - max(stored), 0.0)
