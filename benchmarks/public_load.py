"""The public dashboard under load: anonymous viewers beside abusive clients, on loopback only.

    .venv/bin/python -m benchmarks.public_load [--viewers 200] [--abusers 50] [--seconds 300]
        [--baseline-seconds 60] [--refresh 10] [--rate 100] [--abuse filter,markers]

Starts its own throwaway native stack (the e2e services plus the producer at --rate events/s) on
free loopback ports, waits for the first dbt build, lets the viewers go once through the
dashboard unmeasured (warm caches), then runs two phases:

1. baseline: the viewers alone, for --baseline-seconds;
2. load: the same viewers beside the abusers, for --seconds.

A viewer is an anonymous browser at an address of its own (X-Forwarded-For, as the tunnel would
report it): every --refresh seconds, from a random start, it asks for each chart of the dashboard
as the page does (the charts' saved queries, dashboard and chart ids in form_data), one after
the other on one connection, offering gzip (an answer in any other encoding counts as
unreadable). An abuser, at its own address too, sends chart-data requests as fast as it gets
answers; --abuse names the kinds, given to the abusers in turn:

- filter: valid dashboard-filter requests with ever-new values (IN on the filter's column, a
  value no one sent before), which no cache can answer;
- markers: the dashboard's own requests and ever-new filter requests in turn, each with one of
  the markers that used to skip the replay (Cookie: remember_token=x, Authorization: Bearer
  junk, X-GuestToken: junk, all three) and an odd Accept-Encoding (zstd, br, gzip;q=0, zstd+br);
- refused: a forced refresh and an ad-hoc SQL metric (a new expression each time) in turn.

Printed for each phase: the viewers' chart-data latency (p50 / p95 / max) and answers by status;
Trino queries per minute from user superset (system.runtime.queries, read every 5 s so its
100-query history drops none), and in the load phase their ratio to the baseline's; CPU (cores
used) and peak RSS of Superset, Trino and this client; how the abusive requests were answered, by
kind and status; and whether the targets were met (viewers' p95 under 1 s, every viewer answered
200, Trino queries at most twice the baseline). Bounded in count and time: nothing runs past
the phase's seconds (plus the requests in flight), and no address but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil

import trino
from benchmarks.report import report
from benchmarks.serving import pct
from native.context import Context
from native.stack import Supervisor
from tests.support.ephemeral import EphemeralStack, running_stack
from tests.support.pipeline_waits import SERVICE_NAMES, marts_exist, wait_for_marts
from tests.support.superset_api import SupersetClient, dashboard_request

SERVICES = [*SERVICE_NAMES, "kafka_producer"]
#: Chart-data requests wait at most this long (a browser gives up too).
REQUEST_TIMEOUT = 60


@dataclass
class Tally:
    """Thread-safe counts and samples of one phase."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    viewer_status: Counter = field(default_factory=Counter)
    abuser_status: dict[str, Counter] = field(default_factory=dict)

    def viewer(self, status: int | str, seconds: float) -> None:
        with self.lock:
            self.viewer_status[status] += 1
            self.latencies.append(seconds)

    def abuser(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.abuser_status.setdefault(kind, Counter())[status] += 1


#: What the viewers offer; the benchmark reads the status only, but checks the encoding.
VIEWER_ENCODING = "gzip"
#: The markers abusers carry (one each request, in turn), and the odd encodings they offer.
MARKERS = [
    {"Cookie": "remember_token=x"},
    {"Authorization": "Bearer junk"},
    {"X-GuestToken": "junk"},
    {"Cookie": "remember_token=x", "Authorization": "Bearer junk", "X-GuestToken": "junk"},
]
ODD_ENCODINGS = ["zstd", "br", "gzip;q=0", "zstd, br"]
ABUSES = ("filter", "markers", "refused")


def post(conn: http.client.HTTPConnection, body: bytes, address: str, headers: dict | None = None) -> int | str:
    """Posts a chart-data request; its status, or "unreadable" for an encoding the viewer did not offer."""
    conn.request(
        "POST",
        "/api/v1/chart/data",
        body,
        {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Forwarded-For": address,
            **(headers or {"Accept-Encoding": VIEWER_ENCODING}),
        },
    )
    resp = conn.getresponse()
    resp.read()
    if headers is None and resp.getheader("Content-Encoding") not in (None, VIEWER_ENCODING):
        return "unreadable"
    return resp.status


@dataclass
class Abuse:
    """What the abusers send: the forced and ad-hoc requests, the dashboard's own requests, and a
    template of a valid dashboard-filter request (its value replaced by an ever-new one)."""

    refused: list[bytes]
    saved: list[bytes]
    filter_template: bytes

    def ever_new_filter(self, address: str, i: int) -> bytes:
        return self.filter_template.replace(b"__VALUE__", f"v-{address}-{i}-{time.time_ns()}".encode())


def viewer(port: int, bodies: list[bytes], address: str, refresh: float, until: float, tally: Tally) -> None:
    time.sleep(random.uniform(0, refresh))
    while time.monotonic() < until:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            for body in bodies:
                t0 = time.perf_counter()
                try:
                    status: int | str = post(conn, body, address)
                except (OSError, http.client.HTTPException) as exc:
                    status = type(exc).__name__
                    conn.close()
                tally.viewer(status, time.perf_counter() - t0)
        finally:
            conn.close()
        time.sleep(max(0.0, refresh - (time.monotonic() - started)))


def abuser(port: int, abuse: Abuse, kind: str, address: str, until: float, tally: Tally) -> None:
    """Sends requests of its kind as fast as it gets answers (see the module docstring). Every
    ad-hoc expression and filter value is new: a repeated one would be answered from the replay."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    i = 0
    while time.monotonic() < until:
        headers = {"Accept-Encoding": "gzip"}
        if kind == "refused":
            fresh = f"count(*) * {i} + 0 * {address.replace('.', '')}".encode()
            body = abuse.refused[0] if i % 2 == 0 else abuse.refused[1].replace(b"count(*) * 1000", fresh)
        elif kind == "filter":
            body = abuse.ever_new_filter(address, i)
        else:
            body = abuse.saved[(i // 2) % len(abuse.saved)] if i % 2 == 0 else abuse.ever_new_filter(address, i)
            # every marker and encoding with both kinds of body, in turn
            marker, encoding = MARKERS[(i // 2) % len(MARKERS)], ODD_ENCODINGS[(i // 8) % len(ODD_ENCODINGS)]
            headers = {**marker, "Accept-Encoding": encoding}
        try:
            tally.abuser(kind, post(conn, body, address, headers))
        except (OSError, http.client.HTTPException) as exc:
            tally.abuser(kind, type(exc).__name__)
            conn.close()
        i += 1
    conn.close()


class Meter:
    """CPU seconds and peak RSS of process trees, and Trino's queries from user superset."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.trees = {"Superset": "superset", "Trino": "trino"}
        self.conn = trino.dbapi.connect(host="127.0.0.1", port=int(ctx["TRINO_PORT"]), user="bench")
        self.queries: set[str] = set()
        self.peak_rss: Counter = Counter()

    def processes(self, name: str) -> list[psutil.Process]:
        if name == "client":
            return [psutil.Process()]
        procs = []
        for info in Supervisor(self.ctx).processes(self.trees[name]):
            root = psutil.Process(info["pid"])
            procs += [root, *root.children(recursive=True)]
        return procs

    def cpu(self) -> dict[str, float]:
        seconds = {}
        for name in [*self.trees, "client"]:
            total = 0.0
            for proc in self.processes(name):
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            seconds[name] = total
        return seconds

    def sample(self, since: float) -> None:
        for name in [*self.trees, "client"]:
            rss = 0
            for proc in self.processes(name):
                try:
                    rss += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_rss[name] = max(self.peak_rss[name], rss)
        cur = self.conn.cursor()
        cur.execute(
            "SELECT query_id FROM system.runtime.queries WHERE \"user\" = 'superset' AND created >= from_unixtime(?)",
            [since],
        )
        self.queries |= {row[0] for row in cur.fetchall()}


def run_phase(
    name: str, port: int, meter: Meter, viewer_bodies, abuse: Abuse, args, abusers: int, seconds: float
) -> dict[str, float]:
    """Runs one phase; prints its figures and returns those the targets judge."""
    tally = Tally()
    meter.queries, meter.peak_rss = set(), Counter()
    wall0, cpu0 = time.time(), meter.cpu()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=viewer,
            args=(port, viewer_bodies, f"10.1.{i // 250}.{i % 250 + 1}", args.refresh, until, tally),
            daemon=True,
        )
        for i in range(args.viewers)
    ]
    kinds = args.abuse.split(",")
    threads += [
        threading.Thread(
            target=abuser, args=(port, abuse, kinds[i % len(kinds)], f"10.2.{i // 250}.{i % 250 + 1}", until, tally)
        )
        for i in range(abusers)
    ]
    for thread in threads:
        thread.start()
    while time.monotonic() < until:
        meter.sample(wall0)
        time.sleep(5)
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + args.refresh)
    meter.sample(wall0)
    wall, cpu1 = time.time() - wall0, meter.cpu()

    lat = tally.latencies or [0.0]
    figures = {
        "p95": pct(lat, 0.95),
        "not_200": sum(n for status, n in tally.viewer_status.items() if status != 200),
        "trino_per_minute": len(meter.queries) / wall * 60,
    }
    if name == "warm-up":
        return figures

    def line(label: str, value: str) -> None:
        report(f"{name}: {label}", value)

    line(
        f"{args.viewers} viewers' chart data, p50 / p95 / max",
        f"{pct(lat, 0.5) * 1000:,.0f} ms / {pct(lat, 0.95) * 1000:,.0f} ms / {max(lat) * 1000:,.0f} ms"
        f" (n={len(tally.latencies):,})",
    )
    line("viewers' answers by status", fmt(tally.viewer_status))
    if abusers:
        line(f"{abusers} abusive clients' answers by status", fmt(sum(tally.abuser_status.values(), Counter())))
        for kind, counts in sorted(tally.abuser_status.items()):
            line(f"  {kind} abusers' answers by status", fmt(counts))
    line("Trino queries from user superset per minute", f"{figures['trino_per_minute']:,.1f}")
    for tree in [*meter.trees, "client"]:
        line(
            f"{tree} CPU (cores) / peak RSS",
            f"{(cpu1[tree] - cpu0[tree]) / wall:.2f} / {meter.peak_rss[tree] / 2**20:,.0f} MiB",
        )
    return figures


def fmt(counts: Counter) -> str:
    return ", ".join(f"{status}: {n:,}" for status, n in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "-"


def main(argv: list[str] | None = None, stack: EphemeralStack | None = None) -> None:
    """Starts its own stack, or loads the running one given (tests/integration/test_stack.py's)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--abusers", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=300, help="length of the load phase")
    parser.add_argument("--baseline-seconds", type=int, default=60, help="length of the viewers-only phase")
    parser.add_argument("--refresh", type=float, default=10.0, help="seconds between a viewer's refreshes")
    parser.add_argument("--rate", type=int, default=100, help="producer events/s during the run")
    parser.add_argument("--abuse", default="filter,markers", help=f"abusers' kinds, in turn ({', '.join(ABUSES)})")
    args = parser.parse_args(argv)
    if not set(args.abuse.split(",")) <= set(ABUSES):
        parser.error(f"--abuse: kinds are {', '.join(ABUSES)}")
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"stack: {', '.join(SERVICES)}; producer {args.rate}/s; {args.viewers} viewers every {args.refresh:g} s, "
        f"{args.abusers} abusers ({args.abuse})",
        flush=True,
    )
    with running_stack(SERVICES, {"PRODUCER_RATE": str(args.rate)}, stack) as stack:
        ctx = Context({**Context().env, **stack.env})
        env = ctx.env
        wait_for_marts(lambda: marts_exist(stack.owner_dsn()), "the first scheduled dbt build")
        port = int(env["SUPERSET_PORT"])
        admin = SupersetClient(f"http://127.0.0.1:{port}")
        admin.login(env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
        dashboard, charts = admin.dashboard(), admin.charts()
        viewer_bodies = [json.dumps(dashboard_request(c, dashboard["id"])).encode() for c in charts.values()]
        forced = dashboard_request(next(iter(charts.values())), dashboard["id"])
        forced["force"] = True
        adhoc = dashboard_request(next(iter(charts.values())), dashboard["id"])
        for query in adhoc["queries"]:
            query["metrics"] = [{"expressionType": "SQL", "sqlExpression": "count(*) * 1000", "label": "x"}]
            query["row_limit"] = 100_000
        native = next(
            f
            for f in json.loads(dashboard["json_metadata"])["native_filter_configuration"]
            if f.get("filterType") == "filter_select"
        )
        target = native["targets"][0]
        in_scope = next(c for c in charts.values() if c["datasource_id"] == target["datasetId"])
        chosen = [{"col": target["column"]["name"], "op": "IN", "val": ["__VALUE__"]}]
        abuse = Abuse(
            refused=[json.dumps(forced).encode(), json.dumps(adhoc).encode()],
            saved=viewer_bodies,
            filter_template=json.dumps(dashboard_request(in_scope, dashboard["id"], chosen)).encode(),
        )
        # What Superset's cache allows at most: one Trino query per chart and cache period.
        default_timeout = int(env.get("SUPERSET_DATA_CACHE_TIMEOUT", "10"))
        periods = [
            admin.get(f"/api/v1/dataset/{c['datasource_id']}")["result"].get("cache_timeout") or default_timeout
            for c in charts.values()
        ]
        allowed = sum(60 / t for t in periods)
        print(f"Trino queries per minute the caches allow (one per chart and cache period): {allowed:,.0f}")
        print(
            f"limits (.env): chart data {env['SUPERSET_RATE_LIMIT_CHART_DATA']} per anonymous address, "
            f"anonymous answers replayed for {env['SUPERSET_PUBLIC_CACHE_SECONDS']} s, "
            f"Superset's cache {env.get('SUPERSET_DATA_CACHE_TIMEOUT', '10')} s (marts) / 2 s (live)",
            flush=True,
        )
        meter = Meter(ctx)
        # Unmeasured: the viewers once through every chart, so that both phases start warm.
        run_phase("warm-up", port, meter, viewer_bodies, abuse, args, 0, args.refresh)
        baseline = run_phase("baseline", port, meter, viewer_bodies, abuse, args, 0, args.baseline_seconds)
        under_load = run_phase("load", port, meter, viewer_bodies, abuse, args, args.abusers, args.seconds)
        ratio = under_load["trino_per_minute"] / max(baseline["trino_per_minute"], 1e-9)
        print(
            f"  load: Trino queries per minute against the baseline's {ratio:,.2f}x "
            f"({under_load['trino_per_minute']:,.1f} / {baseline['trino_per_minute']:,.1f})",
            flush=True,
        )
        met = {
            "viewers' p95 under 1 s": under_load["p95"] < 1.0,
            "every viewer answered 200": under_load["not_200"] == 0,
            "Trino queries at most twice the baseline": ratio <= 2.0,
        }
        print("targets: " + "; ".join(f"{what}: {'met' if ok else 'MISSED'}" for what, ok in met.items()), flush=True)
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)


if __name__ == "__main__":
    main()
