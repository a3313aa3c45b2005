"""Committing batches: what to do when Postgres says no.

Three kinds of failure, three answers:
- the connection went away, or two writers collided (Postgres restarting, a deadlock): retry
  with backoff;
- Postgres refuses the batch's *data* (SQLSTATE class 22 "data exception" or 23 "integrity
  constraint violation"): the batch is split in halves, and halves again, until the one message
  at fault is alone and is filed as a dead letter; the rest is counted, each part in its own
  fenced transaction;
- anything else is systemic (a revoked privilege, a missing table or column, a read-only or full
  database): no message is to blame, so none is dead-lettered. The writer stalls: it says so in
  the log every STALL_LOG_SECONDS, reports itself unhealthy, and retries with backoff until the
  fix, then carries on exactly where it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg

from stream_consumer.batch import Batch, DeadLetter, PartitionKey
from stream_consumer.store import Fenced, Store, first_line, is_data_error

log = logging.getLogger("stream_consumer")

T = TypeVar("T")
STALL_LOG_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 5.0


@dataclass
class Health:
    """Whether the consumer is making progress; read by /healthz and the metrics."""

    stalled_since: float | None = None  # time.monotonic() when the current failure began
    error: str = ""
    #: partition -> why the consumer refuses to read it (its stored offset is outside the log)
    refused: dict[PartitionKey, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def healthy(self) -> bool:
        return self.stalled_since is None and not self.refused

    def stall(self, error: str) -> None:
        with self._lock:
            if self.stalled_since is None:
                self.stalled_since = time.monotonic()
            self.error = error

    def recover(self) -> None:
        with self._lock:
            self.stalled_since, self.error = None, ""

    def describe(self) -> str:
        parts = []
        if self.stalled_since is not None:
            parts.append(f"stalled for {time.monotonic() - self.stalled_since:.0f} s: {self.error}")
        parts += [f"refusing {t}[{p}]: {why}" for (t, p), why in sorted(self.refused.items())]
        return "; ".join(parts) or "ok"


@dataclass
class Landed:
    """What a committed batch (and the parts it was split into) added to the tables."""

    messages: int = 0
    events: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    transactions: int = 0
    splits: int = 0
    duplicates: int = 0  # events whose event_id was counted before, within the dedup window
    suppressed: int = 0  # events and profiles of deleted users, dropped (batch.forgotten)

    def add(self, batch: Batch) -> None:
        self.messages += len(batch)
        self.events += batch.events
        self.duplicates += batch.duplicates
        self.suppressed += batch.suppressed
        self.dead_letters += batch.dead_letters
        self.transactions += 1


class Writer:
    """Commits batches to the store; see the module docstring for how it meets each failure.

    Runs on the consumer's writer thread. `stopping()` is checked while it waits out a failure:
    then it gives up (returns None) and the batch stays uncommitted, to be read again."""

    def __init__(self, store: Store, health: Health, stopping: Callable[[], bool]) -> None:
        self.store = store
        self.health = health
        self.stopping = stopping

    def commit(
        self, batch: Batch, start_offsets: dict[PartitionKey, int], end_offsets: dict[PartitionKey, int]
    ) -> Landed | None:
        """Commits `batch` (split as needed) or raises Fenced; None if stopped during an outage."""
        landed = Landed()
        if self._commit_or_split(batch, dict(start_offsets), end_offsets, landed):
            return landed
        return None

    def _commit_or_split(self, batch: Batch, start: dict, end: dict, landed: Landed) -> bool:
        try:
            written = self.retrying(lambda: self.store.commit(batch, start, end))
            if written is None:
                return False
        except psycopg.Error as exc:  # retrying() lets only data errors through
            if len(batch) == 1:
                return self._file_refused(batch, start, end, landed, exc)
            if not landed.splits:
                log.warning(
                    "postgres refused a batch of %d messages for its data (%s); splitting it to find the message",
                    len(batch),
                    first_line(exc),
                )
            landed.splits += 1
            first, second = batch.halves()
            return self._commit_or_split(first, start, end, landed) and self._commit_or_split(
                second, start, end, landed
            )
        landed.add(written)
        start.update(batch.next_offsets)
        return True

    def _file_refused(self, batch: Batch, start: dict, end: dict, landed: Landed, exc: psycopg.Error) -> bool:
        """Files the one message Postgres refuses as a dead letter: with its raw value if Postgres
        takes that, else bare. If Postgres refuses even that, the message is not to blame: stall."""
        msg = batch.messages[0]
        error = f"refused by Postgres (SQLSTATE {exc.sqlstate or 'none'}): {first_line(exc)}"
        log.warning("%s[%d]@%d %s; filed as a dead letter", msg.topic(), msg.partition(), msg.offset(), error)
        filed = batch.refused(error)
        try:
            committed = self.retrying(lambda: self.store.commit(filed, start, end))
        except psycopg.Error:
            filed = batch.refused(error, bare=True)
            committed = self.retrying(lambda: self.store.commit(filed, start, end), data_errors_are_systemic=True)
        if committed is None:
            return False
        landed.add(filed)
        start.update(filed.next_offsets)
        return True

    def retrying(self, action: Callable[[], T], data_errors_are_systemic: bool = False) -> T | None:
        """`action()`, retried with backoff through every failure but a data error (raised) and
        Fenced (raised); None if the consumer is stopping meanwhile."""
        delay = 0.2
        last_log = 0.0
        while True:
            try:
                result = action()
            except Fenced:
                self.health.recover()
                raise
            except psycopg.Error as exc:
                if is_data_error(exc) and not data_errors_are_systemic:
                    self.health.recover()
                    raise
                transient = isinstance(exc, psycopg.OperationalError)
                what = "postgres unavailable" if transient else "stalled on a systemic postgres error"
                error = f"{what} (SQLSTATE {exc.sqlstate or 'none'}): {first_line(exc)}"
                self.health.stall(error)
                now = time.monotonic()
                if now - last_log >= STALL_LOG_SECONDS or delay < 1:
                    last_log = now
                    log.error(
                        "%s; %s, retrying every %.0f s at most",
                        self.health.describe(),
                        "nothing is dead-lettered while stalled" if not transient else "reconnecting",
                        MAX_BACKOFF_SECONDS,
                    )
                if self.stopping() and delay > 1:
                    return None
                self.store.close()
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            if self.health.stalled_since is not None:
                log.info("postgres accepts writes again after %s; resuming", self.health.describe())
            self.health.recover()
            return result
