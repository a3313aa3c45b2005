"""The benchmark scripts run to the end and print every figure they promise. Tiny sizes: a smoke run
that keeps the scripts working; its numbers are not judged (docs/benchmarks.md has the real runs)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.ephemeral import ROOT

NUMBER = r"[\d,.]+"

BENCHMARKS = {
    "active_users": (
        ["--users", "100000", "--shares", "0.001", "0.01", "--runs", "3", "--no-trino"],
        [
            rf"active_users_now in Postgres, 100,000 users, 0\.1% active +median {NUMBER} ms, max {NUMBER} ms",
            rf"active_users_now in Postgres, 100,000 users, 1\.0% active +median {NUMBER} ms, max {NUMBER} ms",
        ],
    ),
    "streaming": (
        ["--events", "20000", "--rss-events", "40000", "--steady-seconds", "3"]
        + ["--latency-seconds", "3", "--baseline-seconds", "2"],
        [
            rf"kafka_producer, 20,000 events, events/s +{NUMBER}$",
            rf"baseline: Faker dict .* events/s +{NUMBER}$",
            rf"producer ratio +{NUMBER}x$",
            rf"--rate 1,000 for 3 s: .* {NUMBER} \(.*\) / {NUMBER} \(.*\)$",
            rf"--rate 10,000 for 3 s: .* {NUMBER} \(.*\) / {NUMBER} \(.*\)$",
            rf"stream_consumer \(exactly once\), 1 process, 20,000 events of kafka_producer, events/s +{NUMBER}$",
            rf"its events per CPU-second of the consumer process +{NUMBER}$",
            rf"as the collector sends them \(event-ids: may-repeat\), events/s +{NUMBER} "
            rf"\({NUMBER}x the events without the header\)$",
            rf"with the window off \(CONSUMER_DEDUP_WINDOW_SECONDS=0\), events/s +{NUMBER} "
            r"\(with the window: [+-]\d+%\)$",
            rf"baseline: per-event upsert \+ commit .* events/s +{NUMBER}$",
            rf"consumer ratio +{NUMBER}x$",
            rf"event → streaming table at 10,000/s, .* p50 / p99 / max +{NUMBER} ms / {NUMBER} ms / {NUMBER} ms$",
            rf"consumer RSS after 40,000 events +{NUMBER} MiB$",
        ],
    ),
    "collector": (
        ["--seconds", "2", "--connections", "4", "--batch", "5"],
        [
            rf"collector on granian: events/s \(4 connections x 5 events\) +{NUMBER} \(\{{202: \d+\}}\)$",
            rf"collector on granian: accept latency p50 / p99 / max +{NUMBER} ms / {NUMBER} ms / {NUMBER} ms",
            rf"collector on uvicorn: events/s \(4 connections x 5 events\) +{NUMBER} \(\{{202: \d+\}}\)$",
            rf"collector on uvicorn: accept latency p50 / p99 / max +{NUMBER} ms / {NUMBER} ms / {NUMBER} ms",
            rf"baseline: the same events produced straight to Kafka, events/s +{NUMBER}$",
        ],
    ),
    "transformations": (
        ["--sizes", "20000", "--builds", "1", "--skip-freshness"],
        [
            rf"20,000 events: first build \(--full-refresh\) +{NUMBER} s$",
            rf"20,000 events: `dbt build` after a minute of traffic +median {NUMBER} s, max {NUMBER} s",
            rf"20,000 events: the reconciliations \(analytics_reconciliation\) +{NUMBER} s$",
        ],
    ),
    "serving": (
        ["--rounds", "2", "--warmup", "5", "--rate", "100"],
        [
            rf"Trino start-up .* +{NUMBER} s$",
            rf"Superset start-up .* +{NUMBER} s$",
            rf"Trino: every chart's query +p50 {NUMBER} ms / p95 {NUMBER} ms \(n=16\)$",
            rf"Superset chart-data API, uncached +p50 {NUMBER} ms / p95 {NUMBER} ms",
            rf"Superset chart-data API, as a refresh asks .* +p50 {NUMBER} ms / p95 {NUMBER} ms",
            rf"event -> timeline chart data .* +p50 {NUMBER} ms / p95 {NUMBER} ms \(n=2\), max {NUMBER} s$",
            rf"click in the shop \(Chromium\) -> timeline chart data +p50 {NUMBER} ms / p95 {NUMBER} ms "
            rf"\(n=2\), max {NUMBER} s$",
            rf"Trino RSS .* +{NUMBER} MiB$",
            rf"Superset RSS .* +{NUMBER} MiB$",
        ],
    ),
    "public_load": (
        ["--viewers", "3", "--abusers", "2", "--seconds", "10", "--baseline-seconds", "5", "--refresh", "2"],
        [
            rf"baseline: 3 viewers' chart data, p50 / p95 / max +{NUMBER} ms / {NUMBER} ms / {NUMBER} ms",
            rf"load: 3 viewers' chart data, p50 / p95 / max +{NUMBER} ms / {NUMBER} ms / {NUMBER} ms",
            r"load: viewers' answers by status +\S",
            r"load: 2 abusive clients' answers by status +\S",
            r"load:   filter abusers' answers by status +\S",
            r"load:   markers abusers' answers by status +\S",
            rf"load: Trino queries per minute against the baseline's {NUMBER}x \({NUMBER} / {NUMBER}\)$",
            r"targets: viewers' p95 under 1 s: (met|MISSED); every viewer answered 200: (met|MISSED); "
            r"Trino queries at most twice the baseline: (met|MISSED)$",
            rf"load: Trino queries from user superset per minute +{NUMBER}$",
            rf"load: Superset CPU \(cores\) / peak RSS +{NUMBER} / {NUMBER} MiB$",
            rf"load: Trino CPU \(cores\) / peak RSS +{NUMBER} / {NUMBER} MiB$",
        ],
    ),
    "soak": (
        ["--rate", "200", "--minutes", "0.5", "--sample-seconds", "10", "--warmup", "5", "--users", "100"],
        [
            rf"lag \(messages\): median / max +{NUMBER} / {NUMBER} \({NUMBER} s of traffic at most\)$",
            rf"consumer RSS \(MiB\) +first {NUMBER}, last {NUMBER}, max {NUMBER}$",
            rf"streaming\.user_events: size MiB / dead rows +{NUMBER} -> {NUMBER} MiB; dead rows max {NUMBER}",
            rf"streaming\.sessions: size MiB / dead rows +{NUMBER} -> {NUMBER} MiB; dead rows max {NUMBER}",
            r"analytics_dbt_build runs: count, failed, duration median / max +\d+ runs, \d+ failed; ",
            r"disk growth of the stack's state folder +-?[\d,.]+ MiB per hour$",
            r"alerts that fired during the soak +\S",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_prints_every_figure(name):
    args, figures = BENCHMARKS[name]
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    missing = [f for f in figures if not any(re.search(f, line) for line in lines)]
    assert missing == [], proc.stdout


def test_ab_runs_each_commit_in_turn_and_compares_the_medians():
    """benchmarks.ab on one commit under two names: the machinery (a worktree, its virtualenv,
    interleaved runs, the figures read back) with a command whose figures are known."""
    demo = "from benchmarks.report import report; report('answer, 2 runs', '42 ms'); print('not a figure')"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "HEAD", "HEAD~0", "--rounds", "2", "--", "python", "-c", demo],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert rounds == ["round 1/2: HEAD", "round 1/2: HEAD~0", "round 2/2: HEAD~0", "round 2/2: HEAD"]
    assert proc.stdout.splitlines()[-1] == "| answer, 2 runs | 42 (42-42) | 42 (42-42) | 1.00 |"
