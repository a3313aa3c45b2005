"""The two topics the contract relies on: `user_events` (N partitions, keyed by user_id) and the
compacted `user_profiles`, both stamped by the broker on arrival.

`topic_configs` is the one statement of their settings: `ensure_topics` creates them from it (native
mode, the producer, compose's kafka-init job), and any other deployment should read it too.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

#: The broker stamps each message when it arrives (LogAppendTime): the consumer bounds event times
#: by that stamp, which no producer can set, so a rebuild judges every message the same.
STAMP = {"message.timestamp.type": "LogAppendTime"}


def topic_configs(events_topic: str, profiles_topic: str) -> dict[str, dict[str, str]]:
    """{topic: its Kafka configuration}: events as they come; profiles compacted (last per user)."""
    return {events_topic: dict(STAMP), profiles_topic: {**STAMP, "cleanup.policy": "compact"}}


def ensure_topics(bootstrap: str, events_topic: str, profiles_topic: str, partitions: int) -> list[str]:
    """Creates whichever of the topics is missing; returns the names it created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        for name, config in topic_configs(events_topic, profiles_topic).items()
        if name not in existing
    ]
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
    """python -m common.topics: create the topics from the settings (compose's kafka-init job)."""
    from common.settings import load_settings

    s = load_settings()
    created = ensure_topics(s.kafka_bootstrap_servers, s.kafka_topic, s.kafka_profiles_topic, s.kafka_partitions)
    print(f"topics created: {', '.join(created) or 'none (all exist)'}")


if __name__ == "__main__":
    main()
