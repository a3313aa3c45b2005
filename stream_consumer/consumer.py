"""The Kafka side: a consumer-group member whose offsets live in Postgres with its aggregates.

On assignment a partition resumes from the offset stored in Postgres; each micro-batch is one
Postgres transaction (aggregates + dead letters + offsets, fenced); Kafka-side commits are made
afterwards for lag monitoring only and are never read back.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from common.metrics import MetricsServer
from common.settings import Settings
from stream_consumer.batch import Batch, KafkaMessage, PartitionKey
from stream_consumer.metrics import ConsumerMetrics
from stream_consumer.store import Fenced, Store, first_line, purge_dead_letters
from stream_consumer.writer import Health, Landed, Writer

log = logging.getLogger("stream_consumer")

RECHECK_REFUSED_SECONDS = 10.0
PURGE_DEAD_LETTERS_SECONDS = 3600.0
PURGE_EVENT_IDS_SECONDS = 60.0
#: Allocations between two collections of the garbage collector's youngest generation (Python's
#: default: 700). A batch keeps its Kafka messages (tracked objects, and a message whose headers were
#: read keeps them as a list of tuples, two more) until it lands: at the default, collections ran
#: every few hundred events and kept promoting them, and the older generations' collections walked
#: every message of the batches in flight: the events with headers cost far more than those without
#: (docs/benchmarks.md, Streaming).
GC_YOUNG_THRESHOLD = 10_000
#: While a batch is due but the one before is still being committed, the open batch grows by reads
#: of at most this many messages, each waiting at most this long: the writer's end is noticed
#: within one such read.
WHILE_WRITER_BUSY_MESSAGES = 2_000
WHILE_WRITER_BUSY_SECONDS = 0.01


def consumer_config(settings: Settings) -> dict:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.kafka_consumer_group,
        # This program owns its offsets (in Postgres): nothing is committed or stored automatically.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A stored offset outside the log is an error to report, never a reason to jump silently to
        # either end of it (that would skip or re-read messages); see _refuse().
        "auto.offset.reset": "error",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        "heartbeat.interval.ms": max(100, settings.consumer_session_timeout_ms // 5),
        "max.poll.interval.ms": max(settings.consumer_max_poll_interval_ms, settings.consumer_session_timeout_ms),
        # A fetch waits for 64 KiB or 100 ms: at a steady few thousand events/s, librdkafka would
        # otherwise fetch again as soon as any message arrived (a round trip per few messages).
        "fetch.min.bytes": 64 * 1024,
        "fetch.wait.max.ms": 100,
        "fetch.max.bytes": 16 * 1024 * 1024,
        "max.partition.fetch.bytes": 2 * 1024 * 1024,
        # Bounded prefetch: memory stays flat however far behind the consumer is.
        "queued.max.messages.kbytes": 4096,
        "log_level": 3,
    }


def reset_command(topic: str, partition: int) -> str:
    return f"python -m stream_consumer offsets reset --topic {topic} --partition {partition} --to earliest|latest"


class StreamConsumer:
    """One member of the consumer group: it owns its Kafka consumer, the open batch, the writer
    thread (with its Store and connection) and its health and metrics.

    It promises that every message of the partitions it owns is counted exactly once in the
    `streaming` tables, or filed once as a dead letter, whatever crashes or rebalances happen:
    offsets move only in the transaction that writes the aggregates (Store.commit). It is not for
    reading the topics for anything else (it takes partitions from the group and moves its stored
    offsets), and one instance serves one process: it installs signal handlers and a metrics port.

    The states of its data, and what moves between them:
    - **open batch** (`self.batch`): messages read since the last hand-over, aggregated in memory
      (`_add`). Nothing is written yet.
    - **in flight** (`self._in_flight`): `flush()` hands the open batch to the writer thread, which
      commits it while the next batch fills. `start_offsets` already points past it, on the
      optimistic assumption that it lands.
    - **settled**: `_settle()` waits for the batch in flight and takes its outcome: *landed*
      (counted, with its dead letters), *fenced* (another member or an offsets reset moved the
      stored offsets: `_rewind()` drops the open batch and seeks every owned partition back to its
      stored offset), or *not committed* because the consumer is stopping during an outage
      (rewound too).
    - **split**: a batch Postgres refuses for its data is split by the writer until the one
      message at fault is alone and becomes a dead letter (writer.py); the rest lands.
    - **stalled**: while Postgres fails for a reason no message caused (a revoked privilege, a
      missing table, a read-only or full database, an outage), the writer retries with backoff and
      `/healthz` says 503; nothing is dead-lettered.
    - **refused partitions** (`health.refused`): a partition whose stored offset is outside its log
      is not read (`_refuse`) until `offsets reset` moves it back inside (`_recheck_refused`).
    """

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.consumer_dsn(), settings.kafka_consumer_group)
        self.consumer = Consumer({**consumer_config(settings), "error_cb": self._on_kafka_error})
        self.topics = [settings.kafka_topic, settings.kafka_profiles_topic]
        self.health = Health()
        self.metrics = ConsumerMetrics()
        self.metrics.stalled.set_function(lambda: 0 if self.health.healthy else 1)
        self.metrics.refused_partitions.set_function(lambda: len(self.health.refused))
        self.metrics.partitions_owned.set_function(lambda: len(self.start_offsets))
        self.writer = Writer(self.store, self.health, lambda: self.stopping)
        # Where the next batch of each owned partition starts, which is also the offset the store
        # must still hold for that batch to commit (the fence).
        self.start_offsets: dict[PartitionKey, int] = {}
        self.batch = self._new_batch()
        self.batch_started = 0.0
        self.stopping = False
        self.committed_events = 0
        self.committed_batches = 0
        self.dead_letters = 0
        self.duplicates = 0
        self.fenced = 0
        self.commit_seconds = 0.0
        # One writer thread: Postgres commits batch N (releasing the GIL while it waits) while this
        # thread decodes batch N+1. The store's connection is used by one thread at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._in_flight: tuple[Future, Batch, dict[PartitionKey, int]] | None = None
        self._last_report = time.monotonic()
        self._last_sync = time.monotonic()
        self._last_recheck = time.monotonic()
        self._last_purge = float("-inf")  # the first purge runs at start
        self._last_id_purge = float("-inf")
        self._last_kafka_error = ""

    def _new_batch(self) -> Batch:
        batch = Batch.for_settings(self.settings)
        # The deleted users as last read (store.Deletions): their events are dropped as they are read.
        batch.deleted = self.store.deletions.users
        return batch

    def _postgres(self, action):
        """`action()` on this thread (after `_settle()`), through outages; None if stopped meanwhile."""
        return self.writer.retrying(action, data_errors_are_systemic=True)

    # --- rebalance callbacks (run inside consume()) -------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        self._settle()
        keys = [(tp.topic, tp.partition) for tp in partitions]
        ranges = {k: self._log_range(k) for k in keys}
        starts = {k: r[0] for k, r in ranges.items() if r is not None}
        stored = self._postgres(lambda: self.store.load_offsets(keys, starts))
        if stored is None:  # shutting down
            return
        readable = []
        for tp, key in zip(partitions, keys):
            offset = stored[key]
            why = self._outside_log(key, offset, ranges[key])
            if why:
                self._refuse(key, why)
                continue
            tp.offset = offset
            self.start_offsets[key] = offset
            readable.append(tp)
        if readable:
            consumer.incremental_assign(readable)
        log.info("assigned %s", _describe(readable))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hand over cleanly: commit what we have (the fence decides if it still may), then let go.
        self.metrics.rebalances.labels("revoke").inc()
        self.flush()
        consumer.incremental_unassign(self._forget(partitions))
        log.info("revoked %s", _describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may already own these: drop the batch instead of racing the new owner.
        self.metrics.rebalances.labels("lost").inc()
        log.warning("lost %s (session timed out); abandoning the open batch", _describe(partitions))
        self._settle()
        self._rewind()
        consumer.incremental_unassign(self._forget(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Drops these partitions from what this member reads; returns those it was reading."""
        reading = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.health.refused.pop(key, None)
            if self.start_offsets.pop(key, None) is not None:
                reading.append(tp)
        return reading

    def _on_kafka_error(self, err: KafkaError) -> None:
        # librdkafka reconnects by itself; say so once per distinct error.
        if err.str() != self._last_kafka_error:
            self._last_kafka_error = err.str()
            log.warning("kafka: %s", err.str())
        if err.fatal():
            raise KafkaException(err)

    # --- offsets outside the log ---------------------------------------------------------------
    def _log_range(self, key: PartitionKey) -> tuple[int, int] | None:
        """(low, high) watermarks of a partition: the offsets its log holds now; None if unknown."""
        try:
            return self.consumer.get_watermark_offsets(TopicPartition(*key), timeout=10)
        except KafkaException as exc:
            log.warning("could not read the range of %s[%d]: %s", *key, exc)
            return None

    @staticmethod
    def _outside_log(key: PartitionKey, offset: int, log_range: tuple[int, int] | None) -> str:
        if log_range is None:
            return ""  # unknown: the fetch itself reports an offset out of range (auto.offset.reset=error)
        low, high = log_range
        if offset < low:
            return (
                f"stored offset {offset} is below the log's start {low}: messages {offset}..{low - 1} "
                "were deleted by retention before they were read"
            )
        if offset > high:
            return (
                f"stored offset {offset} is past the log's end {high}: the topic was recreated or the "
                "database restored from elsewhere"
            )
        return ""

    def _refuse(self, key: PartitionKey, why: str) -> None:
        self.health.refused[key] = why
        log.error(
            "not reading %s[%d]: %s. Nothing is read from it until its offset is reset: %s "
            "(it says what is skipped or read again before it acts)",
            *key,
            why,
            reset_command(*key),
        )

    def _refuse_while_reading(self, key: PartitionKey, why: str) -> None:
        self.flush()  # what was read before the gap is counted
        if self.start_offsets.pop(key, None) is not None:
            self.consumer.incremental_unassign([TopicPartition(*key)])
        self._refuse(key, why)

    def _recheck_refused(self) -> None:
        """Starts reading a refused partition once its stored offset is inside the log again."""
        self._last_recheck = time.monotonic()
        keys = list(self.health.refused)
        if not keys:
            return
        self._settle()
        stored = self._postgres(lambda: self.store.load_offsets(keys))
        if stored is None:
            return
        for key in keys:
            log_range = self._log_range(key)
            why = self._outside_log(key, stored[key], log_range)
            if why or log_range is None:
                self.health.refused[key] = why or self.health.refused[key]
                continue
            del self.health.refused[key]
            self.start_offsets[key] = stored[key]
            self.consumer.incremental_assign([TopicPartition(key[0], key[1], stored[key])])
            log.info("%s[%d]: stored offset %d is inside the log again; reading it", *key, stored[key])

    # --- the loop ------------------------------------------------------------------------------
    def run(self, until=None) -> None:
        """Consumes until SIGTERM/SIGINT, or until `until()` (checked every second) is true."""
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        s = self.settings
        server = MetricsServer(self.metrics.registry, lambda: (self.health.healthy, self.health.describe()))
        port = server.start(
            s.metrics_host, range(s.consumer_metrics_port, s.consumer_metrics_port + s.consumer_replicas)
        )
        if port:
            log.info("metrics on http://%s:%d/metrics, health on /healthz", s.metrics_host, port)
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        max_events = s.consumer_batch_max_events
        max_wait = s.consumer_batch_max_ms / 1000
        log.info("consuming %s as group %s", ", ".join(self.topics), s.kafka_consumer_group)
        last_until = 0.0
        try:
            while not self.stopping:
                due = len(self.batch) and time.monotonic() - self.batch_started >= max_wait
                if due and self._writer_busy():
                    # The batch is due but the writer is still committing the one before: reading on
                    # into the open batch (up to max_events) beats waiting idle, and a larger batch
                    # costs Postgres less per event, so a slow commit is caught up with.
                    chunk, wait = WHILE_WRITER_BUSY_MESSAGES, WHILE_WRITER_BUSY_SECONDS
                else:
                    chunk = 10_000
                    wait = max(0.0, self.batch_started + max_wait - time.monotonic()) if len(self.batch) else 0.5
                msgs = self.consumer.consume(num_messages=min(chunk, max_events - len(self.batch)), timeout=wait)
                if msgs:
                    self._add(msgs)
                if len(self.batch) and (
                    len(self.batch) >= max_events
                    or (time.monotonic() - self.batch_started >= max_wait and not self._writer_busy())
                ):
                    self.flush(wait=False)
                elif self._in_flight is not None and self._in_flight[0].done():
                    self._settle()
                self._housekeeping()
                if until is not None and time.monotonic() - last_until >= 1:
                    last_until = time.monotonic()
                    self.stopping = self.stopping or until()
            # Finish the open batch atomically, then leave the group (its revoke callback runs in close()).
            self.flush()
        finally:
            self._settle()
            self.consumer.close()
            self._executor.shutdown()
            self.store.close()
            server.stop()
            log.info(
                "stopped: %d events in %d batches committed (%.1f s in commits), %d dead letters, %d fenced batches",
                self.committed_events,
                self.committed_batches,
                self.commit_seconds,
                self.dead_letters,
                self.fenced,
            )

    def _housekeeping(self) -> None:
        now = time.monotonic()
        self._report(now)
        if not len(self.batch) and self._in_flight is None and now - self._last_sync >= 2:
            self._resync_if_moved()
        if self.health.refused and now - self._last_recheck >= RECHECK_REFUSED_SECONDS:
            self._recheck_refused()
        if self.settings.dead_letter_retention_days and now - self._last_purge >= PURGE_DEAD_LETTERS_SECONDS:
            self._last_purge = now
            # On the writer thread, behind any commit; with a connection of its own.
            self._executor.submit(self._purge_dead_letters)
        if self.settings.consumer_dedup_window_seconds and now - self._last_id_purge >= PURGE_EVENT_IDS_SECONDS:
            self._last_id_purge = now
            self._executor.submit(self._purge_event_ids)

    def _stop(self, signum, _frame) -> None:
        log.info("signal %d: finishing the open batch and leaving the group", signum)
        self.stopping = True

    def _add(self, msgs: list[Message]) -> None:
        good: list[Message] = msgs
        if any(m.error() for m in msgs):
            good = []
            for m in msgs:
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                    key = cast(PartitionKey, (m.topic(), m.partition()))  # a partition's error names it
                    self._refuse_while_reading(
                        key,
                        f"the next offset to read, {self.start_offsets.get(key)}, is no longer in the log "
                        f"({err.str()}): retention deleted messages before they were read, or the topic was recreated",
                    )
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err.str())
        # Messages fetched before a fence, a refusal or a revoke are not ours to count.
        good = [m for m in good if (m.topic(), m.partition()) in self.start_offsets]
        if good:
            if not len(self.batch):
                self.batch_started = time.monotonic()
            # Without error(), a consumed message has its topic, partition and offset (KafkaMessage).
            self.batch.add(cast("list[KafkaMessage]", good))

    def flush(self, wait: bool = True) -> bool:
        """Hands the open batch to the writer thread, which commits it while the next one fills.

        The next batch is built on the optimistic assumption that this one lands; if it does not,
        the fence refuses the next one too and both are re-read from the stored offsets. With
        `wait`, returns once everything handed over has landed (True) or was rewound (False)."""
        if not self._settle():
            return False
        batch = self.batch
        if len(batch):
            end_offsets = {}
            for key in batch.next_offsets:
                try:
                    end_offsets[key] = self.consumer.get_watermark_offsets(TopicPartition(*key), cached=True)[1]
                except KafkaException:
                    pass
            start = {k: self.start_offsets[k] for k in batch.next_offsets}
            self._in_flight = (self._executor.submit(self._commit, batch, start, end_offsets), batch, start)
            self.start_offsets.update(batch.next_offsets)
            self.batch = self._new_batch()
        return self._settle() if wait else True

    def _writer_busy(self) -> bool:
        return self._in_flight is not None and not self._in_flight[0].done()

    def _commit(self, batch: Batch, start: dict, end_offsets: dict) -> tuple[Landed | None, float]:
        """Runs on the writer thread: the batch's transaction(s), through outages and splits."""
        started = time.perf_counter()
        landed = self.writer.commit(batch, start, end_offsets)
        return landed, time.perf_counter() - started

    def _settle(self) -> bool:
        """Waits for the batch in flight; on any outcome but landed, rewinds to the stored offsets,
        dropping the batch built on top of it."""
        if self._in_flight is None:
            return True
        future, batch, start = self._in_flight
        self._in_flight = None
        try:
            landed, seconds = future.result()
        except Fenced as exc:
            self.fenced += 1
            self.metrics.fenced.inc()
            log.warning("batch of %d messages fenced off: %s; resuming from stored offsets", len(batch), exc)
            self._rewind()
            return False
        if landed is None:  # stopping while Postgres was failing: the batch is simply not committed
            self._rewind()
            return False
        self._count(landed, seconds)
        # For lag monitoring only (kafka-consumer-groups, dashboards); Postgres is the truth.
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()], asynchronous=True
            )
        except KafkaException:
            pass
        return True

    def _count(self, landed: Landed, seconds: float) -> None:
        self.commit_seconds += seconds
        self.committed_events += landed.events
        self.committed_batches += 1
        self.dead_letters += len(landed.dead_letters)
        self.duplicates += landed.duplicates
        m = self.metrics
        m.events.inc(landed.events)
        m.messages.inc(landed.messages)
        m.duplicates.inc(landed.duplicates)
        m.suppressed.inc(landed.suppressed)
        for d in landed.dead_letters:
            m.dead_letters.labels(d.reason).inc()
        m.batch_messages.observe(landed.messages)
        m.commit_seconds.observe(seconds)
        if landed.splits:
            m.split.inc()
        m.last_commit.set_to_current_time()

    def _resync_if_moved(self) -> None:
        """While idle, notices stored offsets that moved under us (a rebuild reset them) and follows."""
        self._last_sync = time.monotonic()
        owned = list(self.start_offsets)
        if not owned:
            return
        stored = self._postgres(lambda: self.store.load_offsets(owned))
        if stored and any(stored[k] != self.start_offsets[k] for k in owned):
            log.warning("stored offsets moved while idle (a rebuild or an offsets reset?); resuming from them")
            self._rewind()

    def _rewind(self) -> None:
        """Drops the open batch and seeks every owned partition back to its stored offset."""
        self.batch = self._new_batch()
        owned = list(self.start_offsets)
        if not owned:
            return
        stored = self._postgres(lambda: self.store.load_offsets(owned))
        if stored is None:
            return
        for key, offset in stored.items():
            # An offset outside the log (moved there by hand) is reported by the fetch itself: see _add.
            self.start_offsets[key] = offset
            try:
                self.consumer.seek(TopicPartition(key[0], key[1], offset))
            except KafkaException as exc:
                # Not fetching yet: re-assigning at the stored offset has the same effect.
                log.debug("seek %s: %s; re-assigning", key, exc)
                self.consumer.incremental_unassign([TopicPartition(*key)])
                self.consumer.incremental_assign([TopicPartition(key[0], key[1], offset)])

    def _purge_dead_letters(self) -> None:
        """DEAD_LETTER_RETENTION_DAYS: deletes older dead letters, a bounded chunk per transaction."""
        days = self.settings.dead_letter_retention_days
        self._purge(
            "dead-letter retention",
            "an hour",
            lambda: purge_dead_letters(self.settings.consumer_dsn(), days),
            f"deleted %d dead letters older than {days} days",
        )

    def _purge_event_ids(self) -> None:
        """CONSUMER_DEDUP_WINDOW_SECONDS: a new generation of the window once the current one is
        a window old, forgetting the generation before it."""
        from stream_consumer.store import rotate_event_ids

        window = self.settings.consumer_dedup_window_seconds
        self._purge(
            "event id window",
            "a minute",
            lambda: rotate_event_ids(self.settings.consumer_dsn(), window),
            f"new generation, forgot %d ids at least {window} s old",
            logging.DEBUG,  # every minute, as a matter of course
        )

    @staticmethod
    def _purge(what: str, again: str, delete, done: str, level: int = logging.INFO) -> None:
        """Runs on the writer thread, with a connection of its own: a failure is logged, not raised."""
        try:
            deleted = delete()
        except psycopg.Error as exc:
            log.warning("%s: %s; trying again in %s", what, first_line(exc), again)
            return
        if deleted:
            log.log(level, "%s: " + done, what, deleted)

    def _report(self, now: float) -> None:
        if now - self._last_report >= 10:
            self._last_report = now
            log.info(
                "committed %d events in %d batches, %d dead letters, %d fenced, %d partitions owned; %s",
                self.committed_events,
                self.committed_batches,
                self.dead_letters,
                self.fenced,
                len(self.start_offsets),
                self.health.describe(),
            )


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions) or "nothing"
