"""Soak: the whole native stack with the producer at a steady rate for a long time, and whether
anything drifts: lag, the consumer's memory, the upserted tables' size and dead rows, Airflow's
runs and dbt's build time, disk, and the alerts Prometheus fired.

    .venv/bin/python -m benchmarks.soak                          # 5,000 events/s for 30 minutes
    .venv/bin/python -m benchmarks.soak --rate 500 --minutes 3 --sample-seconds 10   # a short one

Starts its own throwaway native stack (every service of `./stack up`) on free ports. Every
`--sample-seconds` it records: lag (the pipeline exporter's, through Prometheus: Kafka's end
offsets minus the offsets stored in Postgres), the consumer's RSS, size / live / dead rows of the
upserted tables, and the disk used by the stack's state folder. At the end: the DAG runs of the
soak (states, durations) and their `dbt build` task times from Airflow's database, and every alert
that was firing at any time of the soak (Prometheus' ALERTS series).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import psutil
import psycopg

from benchmarks.report import report
from native.context import Context
from native.services import SERVICES
from native.stack import Supervisor
from tests.support.ephemeral import EphemeralStack, running_stack

#: the tables the consumer upserts on every batch
HOT_TABLES = ("user_events", "event_minutes", "sessions", "consumer_offsets")


@dataclass
class Sample:
    at: float
    lag: float
    rss_mib: float
    tables: dict[str, tuple[int, int, int]]  # table -> (bytes, live rows, dead rows)
    disk_mib: float


def prometheus(env: dict[str, str], promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def consumer_rss_mib(ctx: Context) -> float:
    return sum(psutil.Process(p["pid"]).memory_info().rss for p in Supervisor(ctx).processes("stream_consumer")) / 2**20


def disk_mib(path: str) -> float:
    out = subprocess.run(["du", "-sm", path], capture_output=True, text=True).stdout.split()
    return float(out[0]) if out else 0.0


def table_stats(dsn: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """SELECT relname, pg_total_relation_size(relid), n_live_tup, n_dead_tup
               FROM pg_stat_user_tables WHERE schemaname = 'streaming' AND relname = ANY(%s)""",
            (list(HOT_TABLES),),
        ).fetchall()
    return {name: (int(size), int(live), int(dead)) for name, size, live, dead in rows}


def sample(stack: EphemeralStack, ctx: Context, dsn: str) -> Sample:
    result = prometheus(ctx.env, "sum(pipeline_consumer_lag_messages)")
    lag = float(result[0]["value"][1]) if result else float("nan")
    return Sample(time.time(), lag, consumer_rss_mib(ctx), table_stats(dsn), disk_mib(str(stack.state)))


def dag_runs(stack: EphemeralStack, since: float) -> list[tuple[str, float, float | None]]:
    """(state, run seconds, dbt_build task seconds) of the dbt DAG's runs that started in the soak."""
    with psycopg.connect(stack.airflow_dsn()) as conn:
        rows = conn.execute(
            """SELECT r.state, extract(epoch FROM r.end_date - r.start_date), max(t.duration)
               FROM dag_run r LEFT JOIN task_instance t ON t.dag_id = r.dag_id AND t.run_id = r.run_id
               WHERE r.dag_id = 'analytics_dbt_build' AND r.end_date IS NOT NULL
                 AND r.start_date >= to_timestamp(%s)
               GROUP BY r.id, r.state, r.end_date, r.start_date ORDER BY r.start_date""",
            (since,),
        ).fetchall()
    return [(state, float(run), None if task is None else float(task)) for state, run, task in rows]


def alerts_fired(env: dict[str, str], seconds: float) -> list[str]:
    """Every alert that was firing at some evaluation during the last `seconds`."""
    window = f"{max(int(seconds), 60)}s"
    result = prometheus(env, f'max_over_time(ALERTS{{alertstate="firing"}}[{window}])')
    return sorted({r["metric"]["alertname"] + _where(r["metric"]) for r in result})


def _where(labels: dict[str, str]) -> str:
    keep = {k: v for k, v in labels.items() if k not in ("__name__", "alertname", "alertstate", "severity")}
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(keep.items())) + "}" if keep else ""


def spread(values: list[float]) -> str:
    return f"first {values[0]:,.0f}, last {values[-1]:,.0f}, max {max(values):,.0f}"


def main(argv: list[str] | None = None, stack: EphemeralStack | None = None) -> None:
    """Starts its own stack, or soaks the running one given (tests/integration/test_stack.py's)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5_000, help="producer events/s")
    parser.add_argument("--minutes", type=float, default=30, help="how long the soak lasts (after the warm-up)")
    parser.add_argument("--users", type=int, default=10_000, help="producer's users")
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=90, help="seconds of traffic before the soak starts")
    args = parser.parse_args(argv)
    services = list(SERVICES)
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"stack: {', '.join(services)}; producer {args.rate:,}/s, {args.users:,} users; {args.minutes:g} minutes",
        flush=True,
    )
    started = time.monotonic()
    env = {"PRODUCER_RATE": str(args.rate), "PRODUCER_USERS": str(args.users)}
    given = stack is not None
    with running_stack(services, env, stack) as stack:
        if not given:
            print(f"./stack up (every service): {time.monotonic() - started:.0f} s", flush=True)
        ctx = Context({**Context().env, **stack.env})
        dsn = stack.owner_dsn()
        time.sleep(args.warmup)
        t0 = time.time()
        samples: list[Sample] = []
        header = f"{'min':>6} {'lag msgs':>9} {'lag s':>6} {'RSS MiB':>8}"
        header += "".join(f" {t[:14] + ' MiB/dead':>24}" for t in HOT_TABLES) + f" {'disk MiB':>9}"
        print(header, flush=True)
        while True:
            s = sample(stack, ctx, dsn)
            samples.append(s)
            row = f"{(s.at - t0) / 60:>6.1f} {s.lag:>9,.0f} {s.lag / args.rate:>6.2f} {s.rss_mib:>8.0f}"
            for t in HOT_TABLES:
                size, _, dead = s.tables.get(t, (0, 0, 0))
                row += f" {size / 2**20:>13,.1f} / {dead:>8,}"
            print(row + f" {s.disk_mib:>9,.0f}", flush=True)
            if s.at - t0 >= args.minutes * 60:
                break
            time.sleep(max(0.0, min(args.sample_seconds, t0 + args.minutes * 60 - time.time())))
        elapsed = samples[-1].at - samples[0].at
        runs = dag_runs(stack, t0)
        alerts = alerts_fired(ctx.env, time.time() - t0)
        print(f"\nload average {os.getloadavg()[0]:.1f}; {len(samples)} samples over {elapsed / 60:.1f} minutes")
        lags = [s.lag for s in samples if s.lag == s.lag]  # NaN: Prometheus had no sample yet
        rows = [
            (
                "lag (messages): median / max",
                f"{statistics.median(lags):,.0f} / {max(lags):,.0f} ({max(lags) / args.rate:.2f} s of traffic at most)"
                if lags
                else "not measured",
            ),
            ("consumer RSS (MiB)", spread([s.rss_mib for s in samples])),
        ]
        for t in HOT_TABLES:
            sizes = [s.tables.get(t, (0, 0, 0))[0] / 2**20 for s in samples]
            dead = [s.tables.get(t, (0, 0, 0))[2] for s in samples]
            live = samples[-1].tables.get(t, (0, 0, 0))[1]
            rows.append(
                (
                    f"streaming.{t}: size MiB / dead rows",
                    f"{sizes[0]:,.1f} -> {sizes[-1]:,.1f} MiB; dead rows max {max(dead):,}, "
                    f"last {dead[-1]:,} ({live:,} live)",
                )
            )
        durations = [r for _, r, _ in runs]
        builds = [b for _, _, b in runs if b is not None]
        failed = sum(1 for state, _, _ in runs if state != "success")
        rows.append(
            (
                "analytics_dbt_build runs: count, failed, duration median / max",
                f"{len(runs)} runs, {failed} failed; "
                + (f"{statistics.median(durations):.1f} s / {max(durations):.1f} s" if durations else "none finished"),
            )
        )
        if builds:
            half = len(builds) // 2 or 1
            rows.append(
                (
                    "dbt build (the task): median / max; median of 1st / 2nd half",
                    f"{statistics.median(builds):.1f} s / {max(builds):.1f} s; "
                    f"{statistics.median(builds[:half]):.1f} s / {statistics.median(builds[half:] or builds):.1f} s",
                )
            )
        growth = (samples[-1].disk_mib - samples[0].disk_mib) / max(elapsed, 1) * 3600
        rows.append(("disk growth of the stack's state folder", f"{growth:,.0f} MiB per hour"))
        rows.append(("alerts that fired during the soak", ", ".join(alerts) or "none"))
        for name, value in rows:
            report(name, value)


if __name__ == "__main__":
    main()
