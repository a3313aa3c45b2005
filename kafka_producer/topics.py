"""The two topics: `user_events` (N partitions, keyed by user_id) and the compacted `user_profiles`."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def ensure_topics(bootstrap: str, events_topic: str, profiles_topic: str, partitions: int) -> list[str]:
    """Creates whichever of the topics is missing; returns the names it created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    # The broker stamps each message when it arrives (LogAppendTime): the consumer bounds event
    # times by that stamp, which no producer can set, so a rebuild judges every message the same.
    stamp = {"message.timestamp.type": "LogAppendTime"}
    wanted = [
        NewTopic(events_topic, num_partitions=partitions, replication_factor=1, config=stamp),
        NewTopic(
            profiles_topic,
            num_partitions=partitions,
            replication_factor=1,
            config={**stamp, "cleanup.policy": "compact"},
        ),
    ]
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return []
    for future in admin.create_topics(missing, operation_timeout=30).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won the race
                raise
    return [t.topic for t in missing]


def main() -> None:
    """python -m kafka_producer.topics: create the topics from the settings (compose's kafka-init job)."""
    from common.settings import load_settings

    s = load_settings()
    created = ensure_topics(s.kafka_bootstrap_servers, s.kafka_topic, s.kafka_profiles_topic, s.kafka_partitions)
    print(f"topics created: {', '.join(created) or 'none (all exist)'}")


if __name__ == "__main__":
    main()
