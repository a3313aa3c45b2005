"""Airflow, untouched, keeps the marts fresh: its scheduler runs `dbt build` every minute on its
own (nobody triggers a run here), new events reach analytics.user_event_summary and the timeline
within a minute plus the run, and a failing dbt test fails a run, visibly and without a retry."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from dataclasses import dataclass

import psycopg
import pytest

from tests.support.known_events import event, produce
from tests.support.pipeline_waits import query, wait_for

DAG = "analytics_dbt_build"


class AirflowApi:
    def __init__(self, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{env['AIRFLOW_PORT']}"
        body = {"username": env["AIRFLOW_ADMIN_USER"], "password": env["AIRFLOW_ADMIN_PASSWORD"]}
        self.token = self._call("POST", "/auth/token", body)["access_token"]

    def _call(self, method: str, path: str, body=None, token: str | None = None):
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def get(self, path: str):
        return self._call("GET", path, token=self.token)

    def runs(self) -> list[dict]:
        return self.get(f"/api/v2/dags/{DAG}/dagRuns?order_by=-run_after&limit=100")["dag_runs"]

    def tries(self, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]


@pytest.fixture(scope="module")
def airflow(stack, env) -> AirflowApi:
    return AirflowApi(env)


def test_dags_are_unpaused_on_start(airflow):
    assert airflow.get(f"/api/v2/dags/{DAG}")["is_paused"] is False


def test_scheduler_refreshes_the_marts_after_new_events_arrive(stack, env, airflow):
    dsn = stack.owner_dsn()
    users = {9_500_001: 7, 9_500_002: 4}  # user -> events (views), ids no other test uses
    now = dt.datetime.now(dt.UTC)
    events = [
        event(user, "view", f"00000000-0000-4000-8000-00000{user}", now - dt.timedelta(seconds=i))
        for user, n in users.items()
        for i in range(n)
    ]
    sent = time.time()
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"], events)

    def summary() -> dict[int, int]:
        rows = query(
            dsn,
            "SELECT user_id, total_events FROM analytics.user_event_summary WHERE user_id = ANY(%s)",
            (list(users),),
        )
        return {u: int(n) for u, n in rows}

    def timeline_counts_every_event() -> bool:
        # the timeline (an incremental mart) counts every event streaming counts; a build that
        # read the timeline's source just before the consumer's commit catches up on the next run
        ((timeline, minutes),) = query(
            dsn,
            "SELECT (SELECT sum(total_events) FROM analytics.event_timeline),"
            " (SELECT sum(event_count) FROM streaming.event_minutes)",
        )
        return timeline == minutes

    wait_for(lambda: summary() == users, 240, "the scheduled dbt build to count the new events")
    print(f"event -> analytics.user_event_summary in {time.time() - sent:.0f} s")
    wait_for(timeline_counts_every_event, 240, "a scheduled dbt build to count them in analytics.event_timeline")
    print(f"event -> analytics.event_timeline in {time.time() - sent:.0f} s")
    # the run that refreshed them (its tests may still be running) succeeds; every run was scheduled
    wait_for(
        lambda: any(r["state"] == "success" and started_after(r, sent - 60) for r in airflow.runs()),
        60,
        "the refreshing run to succeed",
    )
    assert {r["run_type"] for r in airflow.runs()} == {"scheduled"}, "somebody triggered a run"


@dataclass
class FailedRun:
    run: dict  # the scheduled run that failed on the planted row
    cleaned: float  # when the row was removed again


@pytest.fixture(scope="package")
def failed_run(stack, env) -> FailedRun:
    """A user_events row with a zero count (the consumer never writes one) breaks the mart's
    `total_events >= 1` test until the first scheduled run that reads it fails; then it is removed.
    Package-scoped: the run after it is checked at the end of the tier (after_the_other_tests),
    so that the minute it waits for passes under the other tests instead of on its own."""
    airflow = AirflowApi(env)
    dsn = stack.owner_dsn()
    bad_user = 9_500_099
    query_autocommit(dsn, "INSERT INTO streaming.user_events VALUES (%s, 'view', 0, now(), now())", (bad_user,))
    planted = time.time()
    try:
        failed = wait_for(
            lambda: next((r for r in airflow.runs() if r["state"] == "failed" and started_after(r, planted)), None),
            150,
            "a scheduled run to fail on the planted row",
            interval=2,
        )
    finally:
        query_autocommit(dsn, "DELETE FROM streaming.user_events WHERE user_id = %s", (bad_user,))
    return FailedRun(failed, time.time())


def test_failing_dbt_test_fails_the_run_without_retry(failed_run, airflow):
    (task,) = airflow.tries(failed_run.run["dag_run_id"])
    assert (task["task_id"], task["state"], task["try_number"]) == ("dbt_build", "failed", 1)
    assert failed_run.run["run_type"] == "scheduled"


@pytest.mark.after_the_other_tests
def test_the_first_scheduled_run_after_the_failing_row_is_gone_succeeds(failed_run, airflow):
    def first_run_after() -> dict | None:
        after = [r for r in airflow.runs() if started_after(r, failed_run.cleaned)]
        runs = sorted(after, key=lambda r: r["start_date"])
        return runs[0] if runs and runs[0]["state"] in ("success", "failed") else None

    run = wait_for(first_run_after, 150, "the first scheduled run after the failing row to end", interval=2)
    assert (run["state"], run["run_type"]) == ("success", "scheduled"), run


def query_autocommit(dsn: str, sql: str, params) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)


def started_after(run: dict, epoch: float) -> bool:
    return bool(run["start_date"]) and dt.datetime.fromisoformat(run["start_date"]).timestamp() >= epoch
