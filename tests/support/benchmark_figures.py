"""What each benchmark script prints: a pattern per promised figure. Smoke runs in the tests check
that every figure is printed (tests/integration/test_benchmarks.py, and test_stack.py for those run
on its whole stack); their numbers are not judged (docs/benchmarks.md has the real runs)."""

from __future__ import annotations

import re

NUMBER = r"[\d,.]+"

BENCHMARKS = {
    "active_users": (
        ["--users", "100000", "--shares", "0.001", "0.01", "--runs", "3", "--no-trino"],
        [
            rf"active_users_now in Postgres, 100,000 users, 0\.1% active +{NUMBER} ms median, max {NUMBER} ms",
            rf"active_users_now in Postgres, 100,000 users, 1\.0% active +{NUMBER} ms median, max {NUMBER} ms",
        ],
    ),
    "streaming": (
        ["--events", "5000", "--rss-events", "10000", "--steady-seconds", "2"]
        + ["--latency-seconds", "2", "--baseline-seconds", "1"],
        [
            rf"kafka_producer, 5,000 events, events/s +{NUMBER}$",
            rf"baseline: Faker dict .* events/s +{NUMBER}$",
            rf"producer ratio +{NUMBER}x$",
            rf"--rate 1,000 for 2 s: .* {NUMBER} \(.*\) / {NUMBER} \(.*\)$",
            rf"--rate 10,000 for 2 s: .* {NUMBER} \(.*\) / {NUMBER} \(.*\)$",
            rf"stream_consumer \(exactly once\), 1 process, 5,000 events of kafka_producer, events/s +{NUMBER}$",
            rf"its events per CPU-second of the consumer process +{NUMBER}$",
            rf"as the collector sends them \(event-ids: may-repeat\), events/s +{NUMBER} "
            rf"\({NUMBER}x the events without the header\)$",
            rf"with the window off \(CONSUMER_DEDUP_WINDOW_SECONDS=0\), events/s +{NUMBER} "
            r"\(with the window: [+-]\d+%\)$",
            rf"baseline: per-event upsert \+ commit .* events/s +{NUMBER}$",
            rf"consumer ratio +{NUMBER}x$",
            rf"event → streaming table at 10,000/s, .* p50 / p99 / max +{NUMBER} ms / {NUMBER} ms / {NUMBER} ms$",
            rf"consumer RSS after 10,000 events +{NUMBER} MiB$",
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
            rf"20,000 events: `dbt build` after a minute of traffic +{NUMBER} s median, max {NUMBER} s",
            rf"20,000 events: the reconciliations \(analytics_reconciliation\) +{NUMBER} s$",
        ],
    ),
}

#: Benchmarks of a whole running stack, with their smoke-size arguments: tests/integration/
#: test_stack.py runs them on its stack (`main(argv, stack)`) instead of each starting its own.
ON_A_RUNNING_STACK = {
    "serving": (
        ["--rounds", "2", "--warmup", "0", "--rate", "100"],
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
        ["--rate", "100", "--minutes", "0.5", "--sample-seconds", "10", "--warmup", "0", "--users", "50"],
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

#: Benchmarks of Postgres alone: tests/integration/test_benchmarks.py runs them on the tier's.
ON_THE_TIERS_POSTGRES = {
    "postgres_ceiling": (
        ["--writers", "2", "--batch", "300", "--seconds", "1"],
        [
            rf"baseline: 1 writer, events/s committed +{NUMBER} \({NUMBER}x the baseline\)$",
            rf"baseline: 1 writer, Postgres CPU-seconds per 1M events +{NUMBER}$",
            rf"2 writers, events/s committed +{NUMBER} \({NUMBER}x the baseline\)$",
            rf"2 writers, Postgres CPU-seconds per 1M events +{NUMBER}$",
            rf"2 writers, writers' CPU-seconds per 1M events +{NUMBER}$",
        ],
    ),
}


def missing(stdout: str, figures: list[str]) -> list[str]:
    """The patterns no line of the output matches."""
    lines = stdout.splitlines()
    return [f for f in figures if not any(re.search(f, line) for line in lines)]
