"""Transformation benchmarks: `dbt build` time with 1M and 10M events behind the models (as the
every-minute DAG runs it, and the reconciliations of the ten-minute one), and event-to-mart
freshness with the whole pipeline running at a steady rate under Airflow.

    .venv/bin/python -m benchmarks.transformations [--sizes 1e6 1e7] [--rate 1000] [--minutes 5]
    .venv/bin/python -m benchmarks.transformations --skip-freshness   # dbt build times only
    .venv/bin/python -m benchmarks.transformations --skip-builds      # freshness only

Starts its own throwaway native stacks on free ports and prints figures.

Build times: the `streaming` tables are seeded with SQL (generate_series) in the shape the
consumer leaves after N events at the reference README's rate of ~1,000 events/minute (that
README: docs/architecture.md; N/1,000 minutes of history, a session per 20 events with a first
touch (a tenth from a campaign, a fifth from a referrer, the rest direct), `--users` users;
streaming.event_log holds every event, a tenth of the user ids are anonymous ids identified as
known users), then `dbt build` runs: once in full (`--full-refresh`, the first build), then
`--builds` times after each time one more minute of traffic arrived (upserts into recent rows plus
late events into old minutes and sessions, as the consumer writes them, the minute's events
appended to event_log, and a few anonymous visitors who sign in): the build Airflow runs every
minute.

Freshness: postgres, kafka, stream_consumer, kafka_producer (at `--rate` events/s) and airflow,
untouched. Beside the producer, a probe sends one event a second of its own type for its own
user; the marts are polled every 250 ms, and each probe event's freshness is the time from its
send to the first poll that shows it in analytics.user_event_summary (that user's total_events)
and in analytics.event_timeline (the sum of other_events).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import threading
import time
import uuid

import psycopg
from confluent_kafka import Producer

from benchmarks.report import report
from native.context import Context
from tests.support.ephemeral import ROOT, EphemeralStack
from tests.support.events import STREAMING_TABLES as STREAMING
from tests.support.events import encode, key
from tests.support.events import event as build_event

EVENTS_PER_MINUTE = 1_000
EVENTS_PER_SESSION = 20
# Event type shares of the producer (kafka_producer/events.py)
SHARES = {"view": 0.70, "click": 0.25, "purchase": 0.05}
PROBE_USER = 987_654_321
PROBE_TYPE = "probe"
STREAMING_TABLES = ", ".join(STREAMING)
# What the product-analytics marts read (funnels, retention, DAU): every event, and the identities.
# A tenth of the seeded user ids are anonymous ids, each identified as one of the others.
ANONYMOUS_SHARE = 0.1
# Each minute of traffic: this many new visitors browse anonymously, then sign in (a first identify).
SIGN_INS_PER_MINUTE = 5
# The tests analytics_reconciliation runs instead of the every-minute build (dbt_runner/tasks.py).
RECONCILIATION = "tag:reconciliation"


def dbt_env(stack: EphemeralStack, work: str) -> dict[str, str]:
    env = {**Context().env, **stack.env}
    return {
        **env,
        "DBT_PROFILES_DIR": str(ROOT / "dbt_project"),
        "DBT_TARGET_PATH": f"{work}/target",
        "DBT_LOG_PATH": f"{work}/logs",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    }


def dbt_binary() -> str:
    return str(Context().venv("dbt", ROOT / "dbt_project" / "requirements.lock.txt") / "bin" / "dbt")


def run_dbt(env: dict[str, str], *args: str) -> tuple[float, dict]:
    """Wall time of one dbt invocation (the process, as Airflow runs it) and its run_results."""
    started = time.monotonic()
    proc = subprocess.run(
        [dbt_binary(), *args, "--project-dir", str(ROOT / "dbt_project")],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"dbt {' '.join(args)} failed:\n{proc.stdout[-4000:]}")
    results = json.loads((open(f"{env['DBT_TARGET_PATH']}/run_results.json")).read())
    return elapsed, results


def seed(dsn: str, events: int, users: int) -> None:
    """The streaming tables as the consumer leaves them after `events` events, history ending now."""
    minutes = max(1, events // EVENTS_PER_MINUTE)
    sessions = max(1, events // EVENTS_PER_SESSION)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {STREAMING_TABLES}")
        seed_event_log(conn, events, users, minutes)
        conn.execute(
            """INSERT INTO streaming.users
               SELECT u, 'User ' || u, 'user' || u || '@example.com', (ARRAY['US','GB','DE','FR','IN'])[1 + u %% 5],
                      DATE '2024-01-01' + u %% 700, (ARRAY['free','free','pro','enterprise'])[1 + u %% 4], now()
               FROM generate_series(1, %s) AS u""",
            (users,),
        )
        for event_type, share in SHARES.items():
            conn.execute(
                """INSERT INTO streaming.user_events
                   SELECT u, %s, greatest(1, round(%s * %s / %s))::bigint,
                          now() - make_interval(mins => %s), now()
                   FROM generate_series(1, %s) AS u""",
                (event_type, events, share, users, minutes, users),
            )
            conn.execute(
                """INSERT INTO streaming.event_minutes
                   SELECT date_trunc('minute', now()) - make_interval(mins => m), %s,
                          greatest(1, round(%s * %s))::bigint, CASE WHEN %s = 'purchase' THEN 5000.00 ELSE 0 END
                   FROM generate_series(0, %s - 1) AS m""",
                (event_type, EVENTS_PER_MINUTE, share, event_type, minutes),
            )
        # first touch: a tenth from a campaign, a fifth from a referrer, the rest direct
        conn.execute(
            """INSERT INTO streaming.sessions (session_id, user_id, first_event_at, last_event_at, event_count,
                                               purchase_count, revenue, landing_page, referrer_host,
                                               utm_source, utm_medium, utm_campaign)
               SELECT md5(i::text)::uuid, 1 + i %% %(users)s, t, t + make_interval(secs => i %% 1800),
                      %(per)s, i %% 2, (i %% 2) * 99.50, '/products/' || i %% 50,
                      CASE WHEN i %% 10 IN (1, 2) THEN 'news' || i %% 7 || '.example' END,
                      CASE WHEN i %% 10 = 0 THEN 'newsletter' END, CASE WHEN i %% 10 = 0 THEN 'email' END,
                      CASE WHEN i %% 10 = 0 THEN 'week ' || i %% 52 END
               FROM generate_series(1, %(sessions)s) AS i,
                    LATERAL (SELECT now() - make_interval(
                        secs => (%(sessions)s - i)::float8 * %(span)s / %(sessions)s)) AS s(t)""",
            {"users": users, "per": EVENTS_PER_SESSION, "sessions": sessions, "span": minutes * 60},
        )
        conn.execute(f"VACUUM ANALYZE {STREAMING_TABLES}")


def seed_event_log(conn: psycopg.Connection, events: int, users: int, minutes: int) -> None:
    """streaming.event_log as the consumer appends it: `events` rows in time order over `minutes`
    (a million per statement), random users, the producer's type shares; and the identities of the
    anonymous ids (the top ANONYMOUS_SHARE of the user ids, each identified as a known user)."""
    view, click = SHARES["view"], SHARES["view"] + SHARES["click"]
    chunk = 1_000_000
    for first in range(0, events, chunk):
        conn.execute(
            """INSERT INTO streaming.event_log (user_id, occurred_at, event_type)
               SELECT 1 + (hashint8(i) & 2147483647) %% %(users)s,
                      now() - make_interval(secs => (%(events)s - i)::float8 * %(span)s / %(events)s),
                      CASE WHEN r < %(view)s THEN 'view' WHEN r < %(click)s THEN 'click' ELSE 'purchase' END
               FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i,
                    LATERAL (SELECT ((hashint8(-i) & 65535) / 65536.0)::float8) AS x(r)""",
            {
                "users": users,
                "events": events,
                "span": minutes * 60,
                "view": view,
                "click": click,
                "first": first,
                "last": min(events, first + chunk) - 1,
            },
        )
    known = max(1, int(users * (1 - ANONYMOUS_SHARE)))
    conn.execute(
        """INSERT INTO streaming.identities (anonymous_id, user_id, identified_at)
           SELECT a, 1 + a %% %s, now() - make_interval(mins => (a %% %s)::int)
           FROM generate_series(%s::bigint, %s::bigint) AS a""",
        (known, minutes, known + 1, users),
    )


def one_more_minute(dsn: str, users: int, late_share: float = 0.02) -> None:
    """A minute of traffic as the consumer writes it: ~300 batches upserting the current minute,
    every user's counts, the users' current sessions plus new ones, and a few late events into
    old minutes and old sessions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        now = dt.datetime.now(dt.UTC)
        minute = now.replace(second=0, microsecond=0)
        for _ in range(300):  # ~5 batches a second
            with conn.transaction():
                conn.execute(
                    """INSERT INTO streaming.event_minutes AS t VALUES (%s, 'view', 2, 0), (%s, 'purchase', 1, 9.99)
                       ON CONFLICT (minute, event_type) DO UPDATE
                       SET event_count = t.event_count + excluded.event_count,
                           revenue = t.revenue + excluded.revenue""",
                    (minute, minute),
                )
        with conn.transaction():
            conn.execute(
                """UPDATE streaming.user_events SET event_count = event_count + 1, updated_at = %s
                   WHERE user_id <= %s""",
                (now, min(users, EVENTS_PER_MINUTE)),
            )
            new_sessions = EVENTS_PER_MINUTE // EVENTS_PER_SESSION
            conn.execute(
                """INSERT INTO streaming.sessions (session_id, user_id, first_event_at, last_event_at, event_count,
                                                   purchase_count, revenue, landing_page, utm_source)
                   SELECT gen_random_uuid(), 1 + i %% %s, %s, %s, 1, 0, 0, '/', CASE WHEN i %% 10 = 0 THEN 'ads' END
                   FROM generate_series(1, %s) AS i""",
                (users, now, now, new_sessions),
            )
            # events into the users' current (most recent) sessions
            conn.execute(
                """UPDATE streaming.sessions
                   SET event_count = event_count + 1, last_event_at = %s, written_xid = pg_current_xact_id()
                   WHERE session_id IN (SELECT session_id FROM streaming.sessions
                                        ORDER BY last_event_at DESC LIMIT %s)""",
                (now, min(users, 1000)),
            )
            # late events: old minutes and old sessions change, no timestamp moves
            late = max(1, int(EVENTS_PER_MINUTE * late_share))
            conn.execute(
                """UPDATE streaming.event_minutes SET event_count = event_count + 1
                   WHERE (minute, event_type) IN (SELECT minute, event_type FROM streaming.event_minutes
                                                  ORDER BY random() LIMIT %s)""",
                (late,),
            )
            conn.execute(
                """UPDATE streaming.sessions SET event_count = event_count + 1, written_xid = pg_current_xact_id()
                   WHERE session_id IN (SELECT session_id FROM streaming.sessions TABLESAMPLE SYSTEM (1) LIMIT %s)""",
                (late,),
            )
            # every event of the minute in event_log (the late ones up to 3 hours old), and a few
            # new visitors who browse anonymously then sign in (ids above the seeded ones)
            conn.execute(
                """INSERT INTO streaming.event_log (user_id, occurred_at, event_type)
                   SELECT 1 + (random() * (%(users)s - 1))::bigint,
                          CASE WHEN i <= %(late)s THEN %(now)s - random() * interval '3 hours'
                               ELSE %(now)s - random() * interval '1 minute' END,
                          (ARRAY['view','view','view','click','purchase'])[1 + (random() * 4)::int]
                   FROM generate_series(1, %(n)s) AS i""",
                {"users": users, "late": late, "now": now, "n": EVENTS_PER_MINUTE},
            )
            conn.execute(
                """WITH visitors AS (
                       SELECT coalesce((SELECT max(anonymous_id) FROM streaming.identities), %(users)s) + v AS id
                       FROM generate_series(1, %(visitors)s) AS v),
                   logged AS (
                       INSERT INTO streaming.event_log (user_id, occurred_at, event_type)
                       SELECT id, %(now)s - make_interval(secs => 3 - s), (ARRAY['view','click','purchase'])[s]
                       FROM visitors, generate_series(1, 3) AS s)
                   INSERT INTO streaming.identities (anonymous_id, user_id, identified_at)
                   SELECT id, 1 + id %% %(users)s, %(now)s FROM visitors""",
                {"users": users, "visitors": SIGN_INS_PER_MINUTE, "now": now},
            )


def slowest(results: dict, n: int = 3) -> str:
    nodes = sorted(results["results"], key=lambda r: -r["execution_time"])[:n]
    return ", ".join(f"{r['unique_id'].split('.')[2][:40]} {r['execution_time']:.2f}s" for r in nodes)


def bench_builds(sizes: list[int], users: int, builds: int) -> list[tuple[str, str]]:
    figures = []
    stack = EphemeralStack(["postgres"])
    work = str(stack.state / "dbt")
    try:
        stack.up()
        dsn = stack.owner_dsn()
        env = dbt_env(stack, work)
        for events in sizes:
            started = time.monotonic()
            seed(dsn, events, users)
            print(f"seeded {events:,} events ({users:,} users) in {time.monotonic() - started:.0f} s", flush=True)
            full, results = run_dbt(env, "build", "--full-refresh")
            figures.append((f"{events:,} events: first build (--full-refresh)", f"{full:.1f} s"))
            print(f"  first build {full:.1f} s; slowest nodes: {slowest(results)}", flush=True)
            times = []
            for _ in range(builds):
                one_more_minute(dsn, users)
                # as analytics_dbt_build runs it (airflow/dags/dbt_runner/tasks.py)
                elapsed, results = run_dbt(env, "build", "--exclude", RECONCILIATION)
                times.append(elapsed)
                print(f"  minute build {elapsed:.1f} s; slowest nodes: {slowest(results)}", flush=True)
            figures.append(
                (
                    f"{events:,} events: `dbt build` after a minute of traffic",
                    f"{statistics.median(times):.1f} s median, max {max(times):.1f} s ({builds} builds)",
                )
            )
            elapsed, results = run_dbt(env, "test", "--select", RECONCILIATION)
            print(f"  reconciliations {elapsed:.1f} s; slowest nodes: {slowest(results)}", flush=True)
            figures.append((f"{events:,} events: the reconciliations (analytics_reconciliation)", f"{elapsed:.1f} s"))
    finally:
        stack.down()
    return figures


class Probe:
    """One event a second of type `probe` for user PROBE_USER; remembers when each was sent."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
        self.topic = topic
        self.sent: list[float] = []
        self.stop = threading.Event()
        self.session = str(uuid.uuid4())

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            event = build_event(
                PROBE_USER,
                PROBE_TYPE,
                session_id=self.session,
                occurred_at=dt.datetime.fromtimestamp(now, dt.UTC),
                timespec="milliseconds",
            )
            self.producer.produce(self.topic, encode(event), key(event))
            self.producer.flush(10)
            self.sent.append(now)
            self.stop.wait(max(0.0, 1 - (time.time() - now)))


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def bench_freshness(rate: int, minutes: float) -> list[tuple[str, str]]:
    stack = EphemeralStack(
        ["postgres", "kafka", "stream_consumer", "kafka_producer", "airflow"], {"PRODUCER_RATE": str(rate)}
    )
    figures = []
    probes = {
        "user_event_summary": "SELECT total_events FROM analytics.user_event_summary WHERE user_id = %s",
        "event_timeline": "SELECT sum(other_events) FROM analytics.event_timeline",
    }
    seen: dict[str, list[float]] = {name: [] for name in probes}  # when each probe event was first seen
    try:
        started = time.monotonic()
        stack.up()
        print(f"stack with airflow up in {time.monotonic() - started:.0f} s", flush=True)
        env = {**Context().env, **stack.env}
        probe = Probe(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"])
        thread = threading.Thread(target=probe.run, daemon=True)
        thread.start()
        deadline = time.time() + minutes * 60
        with psycopg.connect(stack.owner_dsn(), autocommit=True) as conn:
            while time.time() < deadline:
                now = time.time()
                for name, sql in probes.items():
                    try:
                        row = conn.execute(sql, (PROBE_USER,) if "%s" in sql else None).fetchone()
                    except psycopg.errors.UndefinedTable:
                        continue
                    count = int(row[0]) if row and row[0] is not None else 0
                    while len(seen[name]) < min(count, len(probe.sent)):
                        seen[name].append(now)
                time.sleep(0.25)
        probe.stop.set()
        thread.join(5)
        probe.producer = None  # let librdkafka go before the broker does
        for name, times in seen.items():
            lags = [t - probe.sent[i] for i, t in enumerate(times)]
            # leave out the first two minutes: they waited for Airflow's first runs after start-up
            lags = lags[120:] if len(lags) > 240 else lags
            if not lags:
                figures.append((f"event -> analytics.{name}", "never seen"))
                continue
            figures.append(
                (
                    f"event -> analytics.{name} at {rate:,} events/s: p50 / p99 / max",
                    f"{percentile(lags, 50):.0f} s / {percentile(lags, 99):.0f} s / {max(lags):.0f} s "
                    f"({len(lags)} probe events)",
                )
            )
        figures.append(("analytics_dbt_build runs during the measurement", dag_run_summary(stack)))
    finally:
        stack.down()
    return figures


def dag_run_summary(stack: EphemeralStack) -> str:
    """States and durations of the analytics DAG's runs, from Airflow's metadata database."""
    with psycopg.connect(stack.airflow_dsn()) as conn:
        rows = conn.execute(
            """SELECT state, extract(epoch FROM end_date - start_date),
                      extract(epoch FROM start_date - coalesce(run_after, logical_date))
               FROM dag_run WHERE dag_id = 'analytics_dbt_build' AND end_date IS NOT NULL"""
        ).fetchall()
    if not rows:
        return "none finished"
    durations = [float(d) for _, d, _ in rows]
    states = {s: sum(1 for r in rows if r[0] == s) for s in {r[0] for r in rows}}
    return (
        f"{len(rows)} runs {states}; duration median {statistics.median(durations):.1f} s, max {max(durations):.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7], help="events behind the models")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--builds", type=int, default=3, help="incremental builds per size")
    parser.add_argument("--rate", type=int, default=1_000, help="producer events/s for the freshness run")
    parser.add_argument("--minutes", type=float, default=5, help="how long freshness is measured")
    parser.add_argument("--skip-builds", action="store_true")
    parser.add_argument("--skip-freshness", action="store_true")
    args = parser.parse_args()
    figures = []
    if not args.skip_builds:
        figures += bench_builds([int(s) for s in args.sizes], args.users, args.builds)
    if not args.skip_freshness:
        figures += bench_freshness(args.rate, args.minutes)
    print(f"\nload average {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores")
    for name, value in figures:
        report(name, value)


if __name__ == "__main__":
    main()
