"""The reference README's consumer, kept as the baseline: per-event upsert + commit, Kafka auto-commit
(that README: the demo this project rebuilds, docs/architecture.md).

    python -m benchmarks.naive_consumer

It double-counts after every crash (the messages since the last auto-commit are replayed and
counted again) and is ~100x slower; benchmarks/streaming.py measures it beside ours.
Malformed messages are skipped so that the comparison is about delivery, not parsing.
"""

from __future__ import annotations

import json
import signal

import psycopg
from confluent_kafka import Consumer

from common.settings import load_settings


def main() -> None:
    settings = load_settings()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.kafka_consumer_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "session.timeout.ms": settings.consumer_session_timeout_ms,
        }
    )
    consumer.subscribe([settings.kafka_topic])
    conn = psycopg.connect(settings.consumer_dsn())
    cur = conn.cursor()
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        try:
            event = json.loads(msg.value())
            user_id, event_type = int(event["user_id"]), str(event["event_type"])
        except Exception:  # noqa: BLE001 - the reference has no dead letters
            continue
        cur.execute(
            """INSERT INTO streaming.user_events (user_id, event_type, event_count, created_at, updated_at)
               VALUES (%s, %s, 1, now(), now())
               ON CONFLICT (user_id, event_type)
               DO UPDATE SET event_count = streaming.user_events.event_count + 1""",
            (user_id, event_type),
        )
        conn.commit()
    consumer.close()


if __name__ == "__main__":
    main()
