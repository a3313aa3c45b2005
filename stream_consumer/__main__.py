"""python -m stream_consumer [run|rebuild]: one member of the consumer group (run it N times for N)."""

from __future__ import annotations

import argparse
import logging
import sys

from common.settings import load_settings
from stream_consumer.consumer import StreamConsumer
from stream_consumer.store import Store


def rebuild(settings) -> int:
    """Resets the aggregates and offsets in one transaction, then consumes until caught up."""
    from confluent_kafka import Consumer, TopicPartition

    store = Store(settings.consumer_dsn(), settings.kafka_consumer_group)
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "stream_consumer.rebuild"})
    topics = [settings.kafka_topic, settings.kafka_profiles_topic]
    meta = probe.list_topics(timeout=10).topics
    ends = {
        (t, p): probe.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        for t in topics
        for p in meta[t].partitions
    }
    probe.close()
    store.reset()
    logging.info("rebuild: aggregates and offsets reset; reconsuming %d messages", sum(ends.values()))
    consumer = StreamConsumer(settings, store)

    watcher = Store(settings.consumer_dsn(), settings.kafka_consumer_group)  # the consumer's own is busy

    def caught_up() -> bool:
        stored = watcher.stored_offsets()
        return all(stored.get(k, 0) >= end for k, end in ends.items())

    consumer.run(until=caught_up)
    watcher.close()
    logging.info("rebuild: done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_consumer", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "rebuild"],
        help="run: consume until stopped (default); rebuild: reset the aggregates and "
        "offsets in one transaction, then reconsume the topics from the start",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    settings = load_settings()
    if args.command == "rebuild":
        return rebuild(settings)
    StreamConsumer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
