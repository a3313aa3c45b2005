"""`./stack up` behaves as `docker compose up` does: a second `up` restarts nothing (of a few
services, and of the whole stack: Airflow, Superset and Prometheus included), and a service whose
settings changed (in .env or the environment) is restarted with the new ones, alone. On the whole
stack, every target Prometheus scrapes is up, and an alert travels to Alertmanager's receiver."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from confluent_kafka.admin import AdminClient

from native.ephemeral import EphemeralStack, free_port
from native.services import SERVICES


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


# --- the whole stack: every service, Airflow, Superset and Prometheus included ----------------------


def prometheus(stack: EphemeralStack, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}{path}", timeout=10) as resp:
        return json.loads(resp.read())["data"]


def target_health(stack: EphemeralStack) -> dict[str, str]:
    """{job/instance: health} of every target Prometheus scrapes."""
    targets = prometheus(stack, "/api/v1/targets")["activeTargets"]
    return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in targets}


@pytest.fixture(scope="module")
def whole_stack():
    s = EphemeralStack(list(SERVICES), {"PRODUCER_RATE": "20", "PRODUCER_USERS": "50"})
    try:
        started = time.monotonic()
        s.up()
        print(f"\nfirst `./stack up` of the whole stack: {time.monotonic() - started:.1f} s")
        yield s
    finally:
        s.down()


def test_up_of_the_whole_stack_again_restarts_nothing(whole_stack):
    before = pids(whole_stack)
    started = time.monotonic()
    proc = whole_stack("up")
    print(f"\nsecond `./stack up` of the whole stack ({len(before)} processes): {time.monotonic() - started:.1f} s")
    assert ("restarting" not in proc.stderr, pids(whole_stack)) == (True, before)


def test_every_prometheus_target_is_up_on_a_fresh_stack(whole_stack):
    def all_up() -> bool:
        return set(target_health(whole_stack).values()) == {"up"}

    deadline = time.monotonic() + 120  # the first scrape of each target comes within its interval
    while not all_up() and time.monotonic() < deadline:
        time.sleep(2)
    assert target_health(whole_stack) == {k: "up" for k in target_health(whole_stack)}


def test_a_consumer_outage_is_alerted_and_logged_by_the_log_receiver(whole_stack):
    """StreamConsumerDown goes Prometheus -> Alertmanager -> the pipeline exporter's log receiver."""
    whole_stack("stop", "stream_consumer")
    log = whole_stack.state / "logs" / "prometheus_pipeline_exporter.log"
    try:
        deadline = time.monotonic() + 240  # `for: 1m`, rule evaluation and Alertmanager's group wait
        while "ALERT FIRING StreamConsumerDown" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(5)
        firing = [line for line in log.read_text().splitlines() if "ALERT FIRING StreamConsumerDown" in line]
    finally:
        whole_stack("start", "stream_consumer")
    assert len(firing) >= 1
