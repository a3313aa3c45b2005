"""Monitoring without a running stack: the alert rules under promtool's own unit tests, Prometheus'
and Alertmanager's configurations as each mode renders them (promtool / amtool check them), and the
pipeline exporter's arithmetic (lag, freshness, DAG runs) and its log receiver."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from common.settings import REPO_ROOT as ROOT
from common.settings import env_file_values
from monitoring.alertmanager import render
from monitoring.pipeline_exporter.airflow import DagHistory, DagRun, consecutive_failures, parse_runs
from monitoring.pipeline_exporter.collector import PipelineCollector
from monitoring.pipeline_exporter.lag import StoredOffset, Watermarks, consumer_lag, freshness_seconds
from monitoring.pipeline_exporter.server import alert_lines
from native.compose import Compose
from native.context import Context
from native.services.prometheus import PrometheusService, native_prometheus_config

MONITORING = ROOT / "monitoring"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool and amtool come with Debian's prometheus and prometheus-alertmanager packages:
    installed here (as `./stack up prometheus` does) so that a fresh machine runs these tests too."""
    PrometheusService().install(Context())
    return "/usr/bin/promtool"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def native_context(**overrides: str) -> Context:
    return Context({**env_file_values(), **overrides})


# --- alert rules ------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool):
    proc = run(promtool, "check", "rules", str(MONITORING / "alerts.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("tests_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_tests_pass(promtool, tests_file):
    proc = run(promtool, "test", "rules", str(tests_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def alert_names() -> set[str]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def rule_test_cases() -> list[tuple[str, bool]]:
    """(alertname, expects it firing) for every alert_rule_test of monitoring/tests/."""
    cases = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append((case["alertname"], bool(case.get("exp_alerts"))))
    return cases


@pytest.mark.parametrize("alert", sorted(alert_names()))
def test_every_alert_has_a_test_that_trips_it(alert):
    assert (alert, True) in rule_test_cases()


@pytest.mark.parametrize("alert", sorted(alert_names()))
def test_every_alert_has_a_test_that_shows_it_quiet_on_a_healthy_pipeline(alert):
    assert (alert, False) in rule_test_cases()


def test_the_issues_alerts_all_exist():
    """Consumer down or stalled while events arrive, lag growing, freshness over 2 minutes, the dbt
    DAG failing twice in a row, a dead-letter rate over a threshold, a systemic stall."""
    assert {
        "StreamConsumerDown",
        "StreamConsumerNotConsuming",
        "ConsumerLagGrowing",
        "DataFreshnessOver2Minutes",
        "DbtBuildFailing",
        "DeadLetterRateHigh",
        "StreamConsumerStalled",
    } <= alert_names()


# --- Prometheus' configuration in both modes -----------------------------------------------------


def test_compose_prometheus_config_passes_promtool_check(promtool):
    proc = run(promtool, "check", "config", str(MONITORING / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_native_prometheus_config_passes_promtool_check(promtool, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(native_prometheus_config(native_context(CONSUMER_REPLICAS="3"))))
    proc = run(promtool, "check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_native_config_scrapes_the_same_jobs_on_loopback_ports_from_env():
    env = env_file_values()
    compose = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    native = native_prometheus_config(native_context())
    targets = {j["job_name"]: [t for s in j["static_configs"] for t in s["targets"]] for j in native["scrape_configs"]}
    assert [j["job_name"] for j in native["scrape_configs"]] == [j["job_name"] for j in compose["scrape_configs"]]
    assert targets["pipeline_exporter"] == [f"127.0.0.1:{env['PIPELINE_EXPORTER_PORT']}"]
    assert targets["postgres"] == [f"127.0.0.1:{env['POSTGRES_EXPORTER_PORT']}"]
    assert targets["trino"] == [f"{env['TRINO_HOST']}:{env['TRINO_PORT']}"]
    assert native["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{env['ALERTMANAGER_PORT']}"
    ]


def test_native_config_scrapes_one_port_per_consumer_member():
    native = native_prometheus_config(native_context(CONSUMER_REPLICAS="3", CONSUMER_METRICS_PORT="9111"))
    [job] = [j for j in native["scrape_configs"] if j["job_name"] == "stream_consumer"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9111", "127.0.0.1:9112", "127.0.0.1:9113"]}]


def test_native_config_reads_the_repositorys_rule_files():
    native = native_prometheus_config(native_context())
    assert native["rule_files"] == [str(MONITORING / "alerts.yml")]


def compose_services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_compose_targets_are_compose_services_on_the_ports_they_listen_on(tmp_path):
    """monitoring/prometheus.yml is mounted as is: every `host:port` in it must be a compose service
    that declares that port (`ports:` or `x-ports:`; `localhost` is Prometheus itself), the
    declaration native mode translates it by."""
    compose = Compose(env_file_values(), tmp_path)
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [t for j in config["scrape_configs"] for s in j.get("static_configs", []) for t in s["targets"]]
    targets += [f"{d['names'][0]}:{d['port']}" for j in config["scrape_configs"] for d in j.get("dns_sd_configs", [])]
    targets += [t for m in config["alerting"]["alertmanagers"] for s in m["static_configs"] for t in s["targets"]]
    undeclared = [
        target
        for target in targets
        if compose.port_variable(
            "prometheus" if target.startswith("localhost:") else target.split(":")[0], target.rsplit(":", 1)[1]
        )
        is None
    ]
    assert len(targets) >= 8 and undeclared == []


def test_pipeline_exporter_listens_in_compose_where_prometheus_scrapes_it():
    exporter = compose_services()["pipeline-exporter"]["environment"]
    assert (exporter["PIPELINE_EXPORTER_HOST"], exporter["PIPELINE_EXPORTER_PORT"]) == ("0.0.0.0", "9109")


# --- Alertmanager ------------------------------------------------------------------------------


def write_alertmanager(tmp_path: Path, webhook: str) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(render(yaml.safe_load((MONITORING / "alertmanager.yml").read_text()), webhook)))
    return path


@pytest.mark.parametrize(
    "webhook", ["", "https://hooks.example.com/services/T0/B0?token=a&b=c"], ids=["log", "webhook"]
)
def test_alertmanager_config_passes_amtool_check(promtool, tmp_path, webhook):
    proc = run("/usr/bin/amtool", "check-config", str(write_alertmanager(tmp_path, webhook)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def routed_to(config: Path) -> str:
    proc = run("/usr/bin/amtool", "config", "routes", "test", f"--config.file={config}", "alertname=StreamConsumerDown")
    return proc.stdout.strip()


def test_without_a_webhook_alerts_go_to_the_log_receiver_only(promtool, tmp_path):
    assert routed_to(write_alertmanager(tmp_path, "")) == "log"


def test_with_a_webhook_alerts_go_to_it_and_to_the_log(promtool, tmp_path):
    assert routed_to(write_alertmanager(tmp_path, "https://hooks.example.com/x")) == "webhook,log"


def test_native_alertmanager_logs_to_the_pipeline_exporter_on_loopback():
    config = render(yaml.safe_load((MONITORING / "alertmanager.yml").read_text()), "", "http://127.0.0.1:19109/alerts")
    assert config["receivers"][0]["webhook_configs"][0]["url"] == "http://127.0.0.1:19109/alerts"


def test_compose_alertmanager_log_receiver_is_the_pipeline_exporter():
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    assert config["receivers"][0]["webhook_configs"][0]["url"] == "http://pipeline-exporter:9109/alerts"


# --- the pipeline exporter's arithmetic ----------------------------------------------------------


def test_lag_is_the_end_offset_minus_the_stored_offset():
    assert consumer_lag({("e", 0): Watermarks(0, 1500)}, {("e", 0): 1200}) == {("e", 0): 300}


def test_a_partition_the_group_never_stored_lags_by_everything_kafka_keeps():
    assert consumer_lag({("e", 0): Watermarks(100, 1500)}, {}) == {("e", 0): 1400}


def test_messages_deleted_by_retention_before_being_read_do_not_count_as_lag():
    assert consumer_lag({("e", 0): Watermarks(1000, 1500)}, {("e", 0): 200}) == {("e", 0): 500}


def test_a_stored_offset_past_the_end_reads_as_no_lag():
    assert consumer_lag({("e", 0): Watermarks(0, 10)}, {("e", 0): 50}) == {("e", 0): 0}


def test_freshness_is_the_age_of_the_newest_stored_batch():
    rows = {("e", 0): StoredOffset(10, 1000.0), ("e", 1): StoredOffset(20, 1040.0)}
    assert freshness_seconds(rows, now=1100.0) == 60.0


def test_freshness_ignores_partitions_only_claimed_or_reset():
    rows = {("e", 0): StoredOffset(10, 1000.0), ("e", 1): StoredOffset(0, 1090.0)}
    assert freshness_seconds(rows, now=1100.0) == 100.0


def test_freshness_is_unknown_before_anything_was_stored():
    assert freshness_seconds({("e", 0): StoredOffset(0, 1000.0)}, now=1100.0) is None


def run_(state: str, run_id: str = "r", duration: float | None = 5.0) -> DagRun:
    return DagRun(run_id, state, duration, 1.0)


def test_consecutive_failures_count_back_from_the_newest_run():
    assert consecutive_failures([run_("failed"), run_("failed"), run_("success"), run_("failed")]) == 2


def test_a_success_resets_consecutive_failures():
    assert consecutive_failures([run_("success"), run_("failed"), run_("failed")]) == 0


def test_dag_history_counts_each_finished_run_once():
    history = DagHistory()
    history.update([run_("success", "b"), run_("failed", "a")])
    history.update([run_("success", "c"), run_("success", "b"), run_("failed", "a")])
    assert history.runs_total == {"success": 2, "failed": 1}


def test_dag_run_durations_fill_cumulative_buckets():
    history = DagHistory()
    history.update([run_("success", "a", 4.0), run_("success", "b", 12.0)])
    # buckets (1, 2.5, 5, 7.5, 10, 15, ...): 4 s is in every bucket from 5 up, 12 s from 15 up
    assert history.buckets[:7] == [0, 0, 1, 1, 1, 2, 2] and history.duration_count == 2


def test_dag_runs_parse_from_the_api_response():
    payload = {
        "dag_runs": [
            {
                "dag_run_id": "scheduled__1",
                "state": "failed",
                "duration": None,
                "start_date": "2026-12-02T10:00:00Z",
                "end_date": "2026-12-02T10:00:07.5Z",
            }
        ]
    }
    assert parse_runs(payload) == [DagRun("scheduled__1", "failed", 7.5, 1796205607.5)]


def test_alert_notifications_become_one_log_line_per_alert():
    payload = {
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "DbtBuildFailing", "severity": "critical", "dag_id": "analytics_dbt_build"},
                "annotations": {"summary": "The dbt DAG analytics_dbt_build failed 2 times in a row"},
            },
            {"status": "resolved", "labels": {"alertname": "StreamConsumerDown"}, "annotations": {}},
        ],
    }
    assert alert_lines(payload) == [
        "ALERT FIRING DbtBuildFailing [critical] dag_id=analytics_dbt_build: "
        "The dbt DAG analytics_dbt_build failed 2 times in a row",
        "ALERT RESOLVED StreamConsumerDown : ",
    ]


class _Failing:
    group = "stream_consumer"

    def watermarks(self):
        raise OSError("broker unreachable")

    def read(self):
        raise OSError("database unreachable")


def test_a_source_that_does_not_answer_is_reported_down_and_its_metrics_left_out():
    """Never a stale lag: with Kafka and Postgres unreachable there is no lag series at all."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(_Failing(), _Failing(), None))
    lines = [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]
    assert [line for line in lines if line.startswith(("pipeline_source_up", "pipeline_consumer"))] == [
        'pipeline_source_up{source="kafka"} 0.0',
        'pipeline_source_up{source="postgres"} 0.0',
    ]


def test_trino_lets_prometheus_read_its_metrics_and_keeps_every_catalog_read_only():
    """Trino's /metrics needs the system-information read right; the scrape job's user has it, alone."""
    rules = json.loads((ROOT / "trino/etc/access-control.json").read_text())
    [trino] = [
        j
        for j in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
        if j["job_name"] == "trino"
    ]
    assert (rules["catalogs"], rules["system_information"]) == (
        [{"allow": "read-only"}],
        [{"user": trino["basic_auth"]["username"], "allow": ["read"]}],
    )
