"""`./stack up` behaves as `docker compose up` does: a second `up` restarts nothing, and a service
whose settings changed (in .env or the environment) is restarted with the new ones, alone."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from native.ephemeral import EphemeralStack, free_port


def pids(stack: EphemeralStack) -> dict[str, int]:
    """`./stack ps` as {program: pid} for the running ones."""
    rows = [line.split() for line in stack("ps").stdout.splitlines()[1:]]
    return {row[0]: int(row[2]) for row in rows if row[1] == "RUNNING"}


@pytest.fixture(scope="module")
def small_stack():
    s = EphemeralStack(["postgres", "kafka", "kafka_producer"], {"PRODUCER_RATE": "5", "PRODUCER_USERS": "10"})
    try:
        s.up()
        yield s
    finally:
        s.down()


def test_up_again_restarts_nothing(small_stack):
    before = pids(small_stack)
    assert set(before) == {"postgres", "kafka", "kafka_producer"}
    proc = small_stack("up", *small_stack.services)
    assert "restarting" not in proc.stderr
    assert pids(small_stack) == before


def test_a_changed_setting_restarts_the_service_that_reads_it_only(small_stack):
    before = pids(small_stack)
    small_stack.env["PRODUCER_RATE"] = "7"
    proc = small_stack("up", "kafka_producer")
    assert "kafka_producer: its settings changed since it started; restarting it" in proc.stderr
    after = pids(small_stack)
    assert after["kafka_producer"] != before["kafka_producer"]
    assert (after["postgres"], after["kafka"]) == (before["postgres"], before["kafka"])


def test_a_new_broker_port_restarts_the_broker_there_and_its_clients_follow(small_stack):
    before = pids(small_stack)
    port = free_port()
    small_stack.env.update({"KAFKA_PORT": str(port), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    proc = small_stack("up", "kafka")
    assert "kafka: its settings changed" in proc.stderr
    after = pids(small_stack)
    assert after["postgres"] == before["postgres"]
    assert after["kafka"] != before["kafka"]
    # the producer reads KAFKA_BOOTSTRAP_SERVERS: restarted too, and running against the new port
    assert after["kafka_producer"] != before["kafka_producer"]
    brokers = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10).brokers
    assert [b.port for b in brokers.values()] == [port]
