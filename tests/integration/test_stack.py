"""`./stack up` behaves as `docker compose up` does: a second `up` restarts nothing (of a few
services, and of the whole stack: Airflow, Superset and Prometheus included), and a service whose
settings changed (in .env or the environment) is restarted with the new ones, alone. On the whole
stack (the session's, shared with the e2e tier: tests/conftest.py), every target Prometheus scrapes
is up, and an alert travels to Alertmanager's receiver."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from benchmarks import public_load, serving, soak
from common.settings import REPO_ROOT
from native.context import merged_env
from tests.support.benchmark_figures import ON_A_RUNNING_STACK, missing
from tests.support.ephemeral import EphemeralStack, free_port


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


#: A second `up` of a running stack only checks each service's health (measured: a few seconds);
#: one that restarted anything, or waited for a start, takes minutes (Superset and Airflow alone ~1).
SECOND_UP_SECONDS = 60


def test_up_of_the_whole_stack_again_restarts_nothing(whole_stack):
    before = pids(whole_stack)
    started = time.monotonic()
    proc = whole_stack("up")
    took = time.monotonic() - started
    print(f"\nsecond `./stack up` of the whole stack ({len(before)} processes): {took:.1f} s")
    assert ("restarting" not in proc.stderr, pids(whole_stack)) == (True, before)
    assert took < SECOND_UP_SECONDS, f"a second `up` that restarts nothing took {took:.0f} s"


#: Every job of monitoring/prometheus.yml, written out: a job dropped from the config (or a stack
#: that scrapes nothing) fails here instead of passing with fewer targets.
EXPECTED_JOBS = {
    "prometheus",
    "alertmanager",
    "stream_consumer",
    "kafka_producer",
    "collector",
    "pipeline_exporter",
    "postgres",
    "trino",
}


def test_every_prometheus_target_is_up_on_a_fresh_stack(whole_stack):
    def health() -> dict[str, set[str]]:
        """{job: the health of each of its targets}."""
        jobs: dict[str, set[str]] = {}
        for target, state in target_health(whole_stack).items():
            jobs.setdefault(target.split("/", 1)[0], set()).add(state)
        return jobs

    deadline = time.monotonic() + 120  # the first scrape of each target comes within its interval
    while health() != {job: {"up"} for job in EXPECTED_JOBS} and time.monotonic() < deadline:
        time.sleep(2)
    assert health() == {job: {"up"} for job in EXPECTED_JOBS}
    consumers = [t for t in target_health(whole_stack) if t.startswith("stream_consumer/")]
    assert len(consumers) == int({**merged_env(), **whole_stack.env}["CONSUMER_REPLICAS"])


def compose_healthcheck(stack: EphemeralStack, service: str) -> str:
    """The shell command of a compose service's healthcheck, aimed at this stack's port."""
    test = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    return test[1].replace("127.0.0.1:9090", f"127.0.0.1:{stack.env['PROMETHEUS_PORT']}")


def test_composes_prometheus_healthcheck_passes_once_the_pipeline_exporter_was_scraped(whole_stack):
    command = compose_healthcheck(whole_stack, "prometheus")
    never_scraped = command.replace("pipeline_exporter", "no_such_job")
    results = [subprocess.run(["sh", "-c", c], timeout=10).returncode for c in (command, never_scraped)]
    assert results == [0, 1]


# The benchmarks of a whole stack, smoke-sized, on this one instead of a stack each (three starts
# of Airflow, Trino and Superset saved). Before the outage below: they measure a healthy stack.
BENCHMARK_MAINS = {"serving": serving.main, "soak": soak.main, "public_load": public_load.main}


@pytest.mark.parametrize("name", list(ON_A_RUNNING_STACK))
def test_benchmark_on_the_running_stack_prints_every_figure(whole_stack, capsys, name):
    args, figures = ON_A_RUNNING_STACK[name]
    BENCHMARK_MAINS[name](args, whole_stack)
    out = capsys.readouterr().out
    assert missing(out, figures) == [], out


@pytest.fixture(scope="module")
def consumer_outage(whole_stack, webhook) -> str:
    """Stops the consumer until StreamConsumerDown has reached both receivers (or 4 minutes passed:
    `for: 1m`, rule evaluation, Alertmanager's group wait); returns the log receiver's output."""
    whole_stack("stop", "stream_consumer")
    log = whole_stack.state / "logs" / "prometheus_pipeline_exporter.log"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if "ALERT FIRING StreamConsumerDown" in log.read_text() and "StreamConsumerDown" in webhook.alertnames(
                "firing"
            ):
                break
            time.sleep(5)
        return log.read_text()
    finally:
        whole_stack("start", "stream_consumer")


def test_a_consumer_outage_is_alerted_to_the_log_receiver(consumer_outage):
    """Prometheus -> Alertmanager -> the pipeline exporter's POST /alerts -> one log line."""
    assert "ALERT FIRING StreamConsumerDown [critical]" in consumer_outage


def test_a_consumer_outage_is_alerted_to_the_webhook_of_env(consumer_outage, webhook):
    assert "StreamConsumerDown" in webhook.alertnames("firing")
