"""Airflow's DAG runs through its REST API v2 (token from POST /auth/token), as counters and gauges.

Airflow 3 has no Prometheus endpoint of its own (StatsD or OpenTelemetry only); its API already
knows every run's state and duration, and it answers the same way natively and in compose.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import quote

FINISHED = ("success", "failed")
#: seconds; a dbt build takes ~5-10 s, a run is capped at 58 s by its DAG
DURATION_BUCKETS = (1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0)


@dataclass(frozen=True)
class DagRun:
    run_id: str
    state: str
    duration: float | None
    end: float | None


def consecutive_failures(runs_newest_first: list[DagRun]) -> int:
    """Finished runs that failed in a row, counting back from the newest finished one."""
    count = 0
    for run in runs_newest_first:
        if run.state != "failed":
            break
        count += 1
    return count


@dataclass
class DagHistory:
    """What the exporter has seen of one DAG: each finished run counted once, by run id."""

    runs_total: dict[str, int] = field(default_factory=lambda: {s: 0 for s in FINISHED})
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0
    latest: list[DagRun] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _order: deque = field(default_factory=deque)

    def update(self, runs_newest_first: list[DagRun]) -> None:
        self.latest = runs_newest_first
        for run in reversed(runs_newest_first):
            if run.run_id in self._seen or run.state not in FINISHED:
                continue
            self._seen.add(run.run_id)
            self._order.append(run.run_id)
            if len(self._order) > 1000:  # ids kept to recognise runs already counted, bounded
                self._seen.discard(self._order.popleft())
            self.runs_total[run.state] += 1
            if run.duration is not None:
                self.duration_count += 1
                self.duration_sum += run.duration
                for i, bound in enumerate(DURATION_BUCKETS):
                    if run.duration <= bound:
                        self.buckets[i] += 1


def parse_runs(payload: dict) -> list[DagRun]:
    runs = []
    for r in payload.get("dag_runs", []):
        duration = r.get("duration")
        if duration is None and r.get("start_date") and r.get("end_date"):
            duration = _epoch(r["end_date"]) - _epoch(r["start_date"])
        runs.append(DagRun(r["dag_run_id"], r["state"], duration, _epoch(r["end_date"]) if r.get("end_date") else None))
    return runs


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class AirflowClient:
    """Reads DAGs and their latest finished runs, as a read-only (viewer) user, in a thread of its
    own every `interval` seconds: a slow Airflow API never slows a scrape (and with it the lag
    measurement), and Prometheus' 5 s scrapes cost Airflow one look every `interval`."""

    def __init__(
        self, base_url: str, username: str, password: str, interval: float = 10.0, timeout: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.interval = interval
        self.timeout = timeout
        self.history: dict[str, DagHistory] = {}
        self.error: str | None = "not polled yet"
        self._token: str | None = None
        self._lock = threading.Lock()

    def _request(self, path: str, method: str = "GET", body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            if self._token is None:
                self._token = self._login()
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and auth:  # the token expired (24 h by default): log in again once
                self._token = None
                headers["Authorization"] = f"Bearer {self._login()}"
                with urllib.request.urlopen(
                    urllib.request.Request(request.full_url, method=method, data=request.data, headers=headers),
                    timeout=self.timeout,
                ) as resp:
                    return json.loads(resp.read() or b"{}")
            raise

    def _login(self) -> str:
        token = self._request(
            "/auth/token", method="POST", body={"username": self.username, "password": self.password}, auth=False
        )["access_token"]
        self._token = token
        return token

    def poll(self) -> None:
        """One look at every DAG's latest finished runs; raises when Airflow does not answer."""
        dags = [d["dag_id"] for d in self._request("/api/v2/dags?limit=100").get("dags", [])]
        fetched = {}
        for dag_id in dags:
            fetched[dag_id] = parse_runs(
                self._request(
                    f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns?order_by=-run_after&limit=20"
                    + "".join(f"&state={s}" for s in FINISHED)
                )
            )
        with self._lock:
            for dag_id, runs in fetched.items():
                self.history.setdefault(dag_id, DagHistory()).update(runs)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll()
                self.error = None
            except Exception as exc:  # noqa: BLE001 - reported as source_up 0 until a poll succeeds
                self.error = f"{type(exc).__name__}: {exc}"
            stop.wait(self.interval)

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self.run, args=(stop,), name="airflow-poller", daemon=True).start()

    def current(self) -> dict[str, DagHistory]:
        """The histories as of the last poll; raises while the last poll failed."""
        if self.error is not None:
            raise RuntimeError(self.error)
        with self._lock:
            return dict(self.history)
