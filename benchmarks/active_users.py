"""Active users now at scale: `SELECT * FROM streaming.active_users_now` (the distinct users with an
event in the last 5 minutes, issue 19's live figure) with millions of users behind it.

    .venv/bin/python -m benchmarks.active_users [--users 10000000] [--shares 0.001 0.01] [--runs 21] [--no-trino]

Starts its own throwaway native stack (Postgres, and Trino unless --no-trino) on free ports, fills
streaming.user_last_seen with generate_series as the consumer leaves it: `--users` users last seen
over the past 30 days, of whom a share (each of `--shares` in turn) was active in the last 5
minutes. For each share it prints the median (and max) time of the view's query in Postgres over
`--runs` runs, the plan's scan, and the same query through Trino's postgresql catalog, where the
view is read as one row (Postgres counts; Trino pushes nothing else down), beside a one-row table
read the same way (Trino's own cost of a query). The issue's target: under 100 ms at 10M users.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from benchmarks.report import report
from tests.support.ephemeral import EphemeralStack

QUERY = "SELECT * FROM streaming.active_users_now"
TRINO_QUERY = "SELECT * FROM postgresql.streaming.active_users_now"
# Trino's own cost of a query through the catalog: a one-row table read the same way.
TRINO_BASELINE = "SELECT * FROM postgresql.streaming.event_id_generation"
TARGET_MS = 100.0


def fill(dsn: str, users: int) -> None:
    """`users` users last seen between 5 minutes and 30 days ago (none active now)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.user_last_seen")
        conn.execute(
            """INSERT INTO streaming.user_last_seen (user_id, last_seen_at)
               SELECT u, now() - interval '6 minutes' - random() * interval '30 days'
               FROM generate_series(1, %s) AS u""",
            (users,),
        )
        conn.execute("VACUUM ANALYZE streaming.user_last_seen")


def activate(dsn: str, active: int) -> None:
    """Users 1..`active` had an event within the last 4 minutes (as batches upsert them)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """UPDATE streaming.user_last_seen SET last_seen_at = now() - random() * interval '4 minutes'
               WHERE user_id <= %s""",
            (active,),
        )
        conn.execute("VACUUM ANALYZE streaming.user_last_seen")


def timed(run, runs: int) -> tuple[list[float], object]:
    samples, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, result


def figure(samples: list[float]) -> str:
    median = statistics.median(samples)
    verdict = "met" if median < TARGET_MS else "MISSED"
    n = len(samples)
    return f"{median:,.1f} ms median, max {max(samples):,.1f} ms (n={n}; target < {TARGET_MS:.0f} ms: {verdict})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.001, 0.01], help="shares active now")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--no-trino", action="store_true", help="time the query in Postgres only")
    args = parser.parse_args()
    services = ["postgres"] if args.no_trino else ["postgres", "trino"]
    stack = EphemeralStack(services)
    try:
        stack.up()
        dsn = stack.owner_dsn()
        started = time.monotonic()
        fill(dsn, args.users)
        print(
            f"streaming.user_last_seen: {args.users:,} users filled in {time.monotonic() - started:.0f} s", flush=True
        )
        cur = None
        if not args.no_trino:
            import trino

            cur = trino.dbapi.connect(host="127.0.0.1", port=int(stack.env["TRINO_PORT"]), user="bench").cursor()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for share in sorted(args.shares):
                active = round(args.users * share)
                activate(dsn, active)
                label = f"{args.users:,} users, {share:.1%} active"
                samples, rows = timed(lambda: conn.execute(QUERY).fetchall(), args.runs)
                [(counted, _)] = rows  # type: ignore[misc]
                if counted != active:
                    raise SystemExit(f"active_users_now counted {counted:,} users, {active:,} are active")
                report(f"active_users_now in Postgres, {label}", figure(samples))
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (COSTS OFF) " + QUERY))
                scan = next((line.strip().lstrip("-> ") for line in plan.splitlines() if "Scan" in line), plan)
                print(f"  plan: {scan}", flush=True)
                if cur is not None:
                    samples, rows = timed(lambda: (cur.execute(TRINO_QUERY), cur.fetchall())[1], args.runs)
                    if rows[0][0] != active:  # type: ignore[index]
                        raise SystemExit(f"Trino's active_users_now says {rows[0][0]:,}, {active:,} are active")  # type: ignore[index]
                    report(f"active_users_now through Trino, {label}", figure(samples))
                    samples, _ = timed(lambda: (cur.execute(TRINO_BASELINE), cur.fetchall())[1], args.runs)
                    report("baseline: a one-row table through Trino", figure(samples))
        if cur is not None:
            cur.execute("EXPLAIN " + TRINO_QUERY)
            plan = cur.fetchall()[0][0]
            scans = [line.strip() for line in plan.splitlines() if "TableScan" in line or "table =" in line]
            print("  Trino plan: " + " | ".join(scans[:2]), flush=True)
    finally:
        stack.down()


if __name__ == "__main__":
    main()
