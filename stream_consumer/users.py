"""`python -m stream_consumer users delete [--suppress] USER_ID...`: forget users.

In one Postgres transaction, holding store.DELETION_LOCK exclusive (the consumers' batches commit
wholly before it or wait and commit wholly after it, having read the deletion):
- a tombstone (null value, key = the id) is produced to the user_profiles topic for each user, so
  that Kafka's compaction removes their profile there too. The broker's append time of a user's
  tombstone is their `deleted_at`: every event appended to Kafka up to then is the deleted user's
  past (dropped if a consumer reads it later, in a rebuild too), on the broker's clock as every
  event's append time is;
- each user, and each anonymous id ever identified as them (streaming.identities: those events
  are theirs), is recorded in streaming.deleted_users (a plain deletion never lifts an earlier
  --suppress);
- every row of theirs goes from every table of `streaming` that holds a user id (found from the
  catalog: store.USER_ID_COLUMNS), and their dead letters (message_key = the id) with them.

Without --suppress, events the broker appends after the deletion are counted again (the user came
back); with it, every later event of theirs is dropped (stream_consumer_suppressed_events).

Exit status: 0 done; 1 Postgres or Kafka unavailable, or the topic missing (nothing deleted;
except if Postgres fails after the tombstones were produced: the consumer then deletes the users
when it reads the tombstones, without --suppress, and the message says to run the command again);
2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import sys

import psycopg
from confluent_kafka import KafkaException, Producer

from common.contract import BIGINT_MAX
from common.settings import Settings
from stream_consumer.store import DELETION_LOCK, delete_users, epoch_ms, first_line

#: How long the command waits for Kafka: to answer, and to acknowledge the tombstones.
KAFKA_TIMEOUT_SECONDS = 15


def user_id(text: str) -> int:
    """An argparse type: a user id as the contract bounds it (1 to 2^63 - 1, decimal digits)."""
    t = text.strip()
    if not t.isascii() or not t.isdigit():
        raise argparse.ArgumentTypeError(f"not a user id: {text!r} (a whole number from 1 to {BIGINT_MAX})")
    value = int(t)
    if not 1 <= value <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"user id {t} is out of range: 1 to {BIGINT_MAX}")
    return value


class TombstoneError(Exception):
    """Kafka did not acknowledge a tombstone."""


def produce_tombstones(producer: Producer, topic: str, ids: list[int]) -> dict[int, int]:
    """Produces a tombstone per user to `topic` and waits for Kafka's acknowledgements; returns each
    user's tombstone's timestamp in epoch ms (the broker's append time on a LogAppendTime topic)."""
    stamped: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(f"{msg.key()!r}: {err.str()}")
        else:
            stamped[int(msg.key())] = msg.timestamp()[1]

    for u in ids:
        producer.produce(topic, None, str(u).encode(), on_delivery=delivered)
    left = producer.flush(KAFKA_TIMEOUT_SECONDS)
    if errors or left or len(stamped) != len(ids):
        unacknowledged = f"{left} tombstone(s) not acknowledged within {KAFKA_TIMEOUT_SECONDS} s"
        raise TombstoneError("; ".join(errors) or unacknowledged)
    return stamped


def delete(settings: Settings, ids: list[int], suppress: bool, out=sys.stdout) -> int:
    ids = sorted(set(ids))
    topic = settings.kafka_profiles_topic
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": KAFKA_TIMEOUT_SECONDS * 1000,
            "log_level": 2,
        }
    )
    try:
        meta = producer.list_topics(topic, timeout=KAFKA_TIMEOUT_SECONDS).topics.get(topic)
    except KafkaException as exc:
        print(f"error: cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc.args[0].str()}", file=sys.stderr)
        return 1
    if meta is None or meta.error is not None:
        print(f"error: topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}", file=sys.stderr)
        return 1
    try:
        conn = psycopg.connect(settings.consumer_dsn())
    except psycopg.OperationalError as exc:
        print(f"error: cannot connect to Postgres: {first_line(exc)}", file=sys.stderr)
        return 1
    produced = False
    try:
        with conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (DELETION_LOCK,))
            stamped = produce_tombstones(producer, topic, ids)
            produced = True
            done = delete_users(cur, {u: epoch_ms(stamped[u]) for u in ids}, suppress)
    except TombstoneError as exc:
        print(f"error: Kafka did not take the tombstones ({exc}); nothing deleted", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        if produced:
            print(
                f"error: Postgres failed after the tombstones were produced ({first_line(exc)}): the consumer "
                "deletes the users when it reads them (without --suppress); run this command again",
                file=sys.stderr,
            )
        else:
            print(f"error: Postgres failed, nothing deleted: {first_line(exc)}", file=sys.stderr)
        return 1
    anonymous = f" and the anonymous ids identified as them: {', '.join(map(str, done.anonymous))}"
    print(
        f"deleted user(s) {', '.join(map(str, ids))}{anonymous if done.anonymous else ''}"
        f"{'; their later events are suppressed' if suppress else ''}",
        file=out,
    )
    for table, n in done.rows.items():
        print(f"  streaming.{table}: {n} rows", file=out)
    print(
        f"tombstones produced to {topic}: compaction removes their profiles from Kafka; {settings.kafka_topic} "
        'keeps their events until its retention deletes them (docs/operations.md, "Forgetting a user")',
        file=out,
    )
    return 0
