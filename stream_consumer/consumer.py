"""The Kafka side: a consumer-group member whose offsets live in Postgres with its aggregates.

On assignment a partition resumes from the offset stored in Postgres; each micro-batch is one
Postgres transaction (aggregates + dead letters + offsets, fenced); Kafka-side commits are made
afterwards for lag monitoring only and are never read back.
"""

from __future__ import annotations

import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from common.settings import Settings
from stream_consumer.batch import Batch
from stream_consumer.store import Fenced, Store

log = logging.getLogger("stream_consumer")

# Postgres errors worth a retry: the server went away or is restarting, or two writers deadlocked.
TRANSIENT = (psycopg.OperationalError, psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


def consumer_config(settings: Settings) -> dict:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.kafka_consumer_group,
        # This program owns its offsets (in Postgres): nothing is committed or stored automatically.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        "heartbeat.interval.ms": max(100, settings.consumer_session_timeout_ms // 5),
        "max.poll.interval.ms": max(settings.consumer_max_poll_interval_ms, settings.consumer_session_timeout_ms),
        "fetch.max.bytes": 16 * 1024 * 1024,
        "max.partition.fetch.bytes": 2 * 1024 * 1024,
        # Bounded prefetch: memory stays flat however far behind the consumer is.
        "queued.max.messages.kbytes": 4096,
        "log_level": 3,
    }


class StreamConsumer:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.consumer_dsn(), settings.kafka_consumer_group)
        self.consumer = Consumer({**consumer_config(settings), "error_cb": self._on_kafka_error})
        self.topics = [settings.kafka_topic, settings.kafka_profiles_topic]
        # The stored offset each owned partition's next batch must start from (the fence).
        self.expected: dict[tuple[str, int], int] = {}
        self.batch = self._new_batch()
        self.batch_started = 0.0
        self.stopping = False
        self.committed_events = 0
        self.committed_batches = 0
        self.dead_letters = 0
        self.fenced = 0
        self.commit_seconds = 0.0
        # One writer thread: Postgres commits batch N (releasing the GIL while it waits) while this
        # thread decodes batch N+1. The store's connection is used by one thread at a time.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._inflight: tuple | None = None
        self._last_report = time.monotonic()
        self._last_sync = time.monotonic()
        self._last_kafka_error = ""
        # After Postgres refused a batch: partition -> end offset to replay one message at a time.
        self.careful: dict[tuple[str, int], int] = {}

    def _new_batch(self) -> Batch:
        s = self.settings
        return Batch(s.kafka_topic, s.kafka_profiles_topic, s.consumer_max_event_bytes)

    # --- rebalance callbacks (run inside consume()) -------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle()
        stored = self._with_postgres(lambda: self.store.claim([(tp.topic, tp.partition) for tp in partitions]))
        if stored is None:  # shutting down
            return
        for tp in partitions:
            tp.offset = stored[(tp.topic, tp.partition)]
            self.expected[(tp.topic, tp.partition)] = tp.offset
        consumer.incremental_assign(partitions)
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hand over cleanly: commit what we have (the fence decides if it still may), then let go.
        self.flush()
        self._forget(partitions)
        consumer.incremental_unassign(partitions)
        log.info("revoked %s", _describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may already own these: drop the batch instead of racing the new owner.
        log.warning("lost %s (session timed out); abandoning the open batch", _describe(partitions))
        self._settle()
        self._abandon_batch()
        self._forget(partitions)
        consumer.incremental_unassign(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.expected.pop((tp.topic, tp.partition), None)

    def _on_kafka_error(self, err: KafkaError) -> None:
        # librdkafka reconnects by itself; say so once per distinct error.
        if err.str() != self._last_kafka_error:
            self._last_kafka_error = err.str()
            log.warning("kafka: %s", err.str())
        if err.fatal():
            raise KafkaException(err)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, until=None) -> None:
        """Consumes until SIGTERM/SIGINT, or until `until()` (checked every second) is true."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        max_events = self.settings.consumer_batch_max_events
        max_wait = self.settings.consumer_batch_max_ms / 1000
        log.info("consuming %s as group %s", ", ".join(self.topics), self.settings.kafka_consumer_group)
        last_until = 0.0
        try:
            while not self.stopping:
                if len(self.batch):
                    wait = max(0.0, self.batch_started + max_wait - time.monotonic())
                else:
                    wait = 0.5
                if self.careful:
                    self._replay_carefully(self.consumer.consume(num_messages=100, timeout=0.5))
                    continue
                msgs = self.consumer.consume(num_messages=min(10_000, max_events - len(self.batch)), timeout=wait)
                if msgs:
                    self._add(msgs)
                if len(self.batch) and (
                    len(self.batch) >= max_events or time.monotonic() - self.batch_started >= max_wait
                ):
                    self.flush(wait=False)
                elif self._inflight is not None and self._inflight[0].done():
                    self._settle()
                self._report()
                if not len(self.batch) and self._inflight is None and time.monotonic() - self._last_sync >= 2:
                    self._resync_if_moved()
                if until is not None and time.monotonic() - last_until >= 1:
                    last_until = time.monotonic()
                    self.stopping = self.stopping or until()
            # Finish the open batch atomically, then leave the group (its revoke callback runs in close()).
            self.flush()
        finally:
            self._settle()
            self.consumer.close()
            self._writer.shutdown()
            self.store.close()
            log.info(
                "stopped: %d events in %d batches committed (%.1f s in commits), %d dead letters, %d fenced batches",
                self.committed_events,
                self.committed_batches,
                self.commit_seconds,
                self.dead_letters,
                self.fenced,
            )

    def _stop(self, signum, _frame) -> None:
        log.info("signal %d: finishing the open batch and leaving the group", signum)
        self.stopping = True

    def _add(self, msgs) -> None:
        good = msgs
        if any(m.error() for m in msgs):
            good = []
            for m in msgs:
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err.str())
        # Messages fetched before a fence or a revoke are not ours to count.
        good = [m for m in good if (m.topic(), m.partition()) in self.expected]
        if good:
            if not len(self.batch):
                self.batch_started = time.monotonic()
            self.batch.add(good)

    def flush(self, wait: bool = True) -> bool:
        """Hands the open batch to the writer thread, which commits it while the next one fills.

        The next batch is built on the optimistic assumption that this one lands; if it does not,
        the fence refuses the next one too and both are re-read from the stored offsets. With
        `wait`, returns once everything handed over has landed (True) or was rewound (False)."""
        if not self._settle():
            return False
        batch = self.batch
        if len(batch):
            high = {}
            for topic, partition in batch.next_offsets:
                try:
                    high[(topic, partition)] = self.consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), cached=True
                    )[1]
                except KafkaException:
                    pass
            expected = {k: self.expected[k] for k in batch.next_offsets}
            self._inflight = (self._writer.submit(self._commit, batch, expected, high), batch, expected)
            self.expected.update(batch.next_offsets)
            self.batch = self._new_batch()
        return self._settle() if wait else True

    def _commit(self, batch: Batch, expected: dict, high: dict):
        """Runs on the writer thread: the batch's one transaction, retried through outages."""
        started = time.perf_counter()
        done = self._with_postgres(lambda: self.store.commit(batch, expected, high))
        return done, time.perf_counter() - started

    def _settle(self) -> bool:
        """Waits for the batch in flight. On failure rewinds to the stored offsets, dropping the
        batch built on top of it; a batch Postgres refused switches to one-message replay."""
        if self._inflight is None:
            return True
        future, batch, expected = self._inflight
        self._inflight = None
        try:
            done, seconds = future.result()
        except Fenced as exc:
            self.fenced += 1
            log.warning("batch of %d messages fenced off: %s; resuming from stored offsets", len(batch), exc)
            self._abandon_batch()
            return False
        except psycopg.Error as exc:
            self.expected.update(expected)
            if self.careful or len(batch) == 1:
                raise
            # A message Postgres refuses (a poisoned message) must not stall the partition: replay
            # this batch's range one message per transaction and dead-letter the one that fails.
            log.error(
                "postgres refused a batch of %d messages (%s); replaying it one by one",
                len(batch),
                str(exc).strip().splitlines()[0],
            )
            self.careful = dict(batch.next_offsets)
            self._abandon_batch()
            return False
        if done is None:  # stopping while Postgres was unreachable: the batch is simply not committed
            self._abandon_batch()
            return False
        self.commit_seconds += seconds
        self.committed_events += batch.events
        self.committed_batches += 1
        self.dead_letters += len(batch.dead_letters)
        # For lag monitoring only (kafka-consumer-groups, dashboards); Postgres is the truth.
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()], asynchronous=True
            )
        except KafkaException:
            pass
        return True

    def _resync_if_moved(self) -> None:
        """While idle, notices stored offsets that moved under us (a rebuild reset them) and follows."""
        self._last_sync = time.monotonic()
        owned = list(self.expected)
        if not owned:
            return
        stored = self._with_postgres(lambda: self.store.claim(owned))
        if stored and any(stored[k] != self.expected[k] for k in owned):
            log.warning("stored offsets moved while idle (a rebuild?); resuming from them")
            self._abandon_batch()

    def _replay_carefully(self, msgs) -> None:
        self.batch = self._new_batch()
        for msg in msgs:
            self._add([msg])
            if not len(self.batch):
                continue
            try:
                self.flush()
            except psycopg.Error as exc:
                reason = f"refused by Postgres: {str(exc).strip().splitlines()[0]}"
                self.batch = self._new_batch()
                self.batch.add_dead_letter(msg, reason)
                self.flush()
        if all(self.expected.get(k, end) >= end for k, end in self.careful.items()):
            log.info("replay done; back to full batches")
            self.careful = {}

    def _abandon_batch(self) -> None:
        """Drops the open batch and rewinds every owned partition to its stored offset."""
        self.batch = self._new_batch()
        owned = list(self.expected)
        if not owned:
            return
        stored = self._with_postgres(lambda: self.store.claim(owned))
        if stored is None:
            return
        for key, offset in stored.items():
            self.expected[key] = offset
            try:
                self.consumer.seek(TopicPartition(key[0], key[1], offset))
            except KafkaException as exc:
                # Not fetching yet: re-assigning at the stored offset has the same effect.
                log.debug("seek %s: %s; re-assigning", key, exc)
                self.consumer.incremental_unassign([TopicPartition(*key)])
                self.consumer.incremental_assign([TopicPartition(key[0], key[1], offset)])

    def _with_postgres(self, action):
        """Runs `action`, retrying through Postgres outages with backoff; None if stopped meanwhile."""
        delay = 0.2
        while True:
            try:
                return action()
            except TRANSIENT as exc:
                if self.stopping and delay > 1:
                    return None
                log.warning("postgres unavailable (%s); retrying in %.1f s", str(exc).strip().splitlines()[0], delay)
                self.store.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_report >= 10:
            self._last_report = now
            log.info(
                "committed %d events in %d batches, %d dead letters, %d fenced, %d partitions owned",
                self.committed_events,
                self.committed_batches,
                self.dead_letters,
                self.fenced,
                len(self.expected),
            )


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions) or "nothing"
