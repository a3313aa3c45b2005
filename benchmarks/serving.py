"""Serving benchmarks: how fast the dashboard's charts answer, through Trino directly and through
Superset's chart-data API, and how long an event takes to reach the live timeline.

    .venv/bin/python -m benchmarks.serving [--rounds 20] [--rate 1000] [--warmup 60]

Starts its own throwaway native stack (Postgres, Kafka, consumer, producer at --rate, Airflow when
the stack has it, Trino, Superset) on free ports, lets the producer fill it for --warmup seconds,
then measures:
- each chart's SQL (as Superset generates it, `result_type: query`) run through Trino;
- each chart's data through Superset's API, uncached (`force`) and as a dashboard refresh asks
  for it (cache allowed);
- event to dashboard: one marker event produced, then the timeline chart's data polled every
  100 ms the way the dashboard's refresh asks for it, until the event is in it;
- click to dashboard: the same from a click in the demo shop in headless Chromium, through the
  tracker, the collector, Kafka and the consumer (a marked element of its own event type);
- Trino's and Superset's start-up time (`./stack up`) and resident memory (process trees).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time

import psutil

import trino
from benchmarks.report import report
from common.settings import Settings
from native.context import Context
from native.stack import Supervisor
from tests.support.ephemeral import EphemeralStack, running_stack
from tests.support.known_events import event, produce
from tests.support.pipeline_waits import marts_exist, wait_for, wait_for_marts
from tests.support.superset_api import SupersetClient

TIMELINE = "Real-time event timeline (events per minute)"
#: The stack serving runs: prometheus because the lag chart reads the pipeline exporter's lag from
#: it through Trino.
SERVICES = [
    "postgres",
    "kafka",
    "stream_consumer",
    "kafka_producer",
    "collector",
    "airflow",
    "trino",
    "superset",
    "prometheus",
]
#: The click measure's own event type, taken by the collector beside its default ones.
CLICK_TYPE = "clickprobe"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(samples: list[float]) -> str:
    return f"p50 {pct(samples, 0.5) * 1000:,.0f} ms / p95 {pct(samples, 0.95) * 1000:,.0f} ms (n={len(samples)})"


def rss_mib(ctx: Context, service: str) -> float:
    total = 0
    for info in Supervisor(ctx).processes(service):
        proc = psutil.Process(info["pid"])
        total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    return total / 2**20


class Bench:
    def __init__(self, stack: EphemeralStack, env: dict[str, str]) -> None:
        self.stack, self.env = stack, env
        self.superset = SupersetClient(f"http://127.0.0.1:{env['SUPERSET_PORT']}")
        self.superset.login(env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
        self.charts = self.superset.charts()

    def report(self, name: str, value: str) -> None:
        report(name, value)

    def chart_sql(self, chart: dict) -> str:
        context = json.loads(chart["query_context"])
        context["result_type"] = "query"
        result = self.superset.request("POST", "/api/v1/chart/data", context)[1]["result"]
        return result[0]["query"].strip().rstrip(";")  # as Superset shows it, one statement

    def lag_table_exists(self, cur) -> bool:
        """The lag panel's table: Trino lists it once Prometheus holds a sample (its list of tables
        is cached for prometheus.cache.ttl)."""
        try:
            cur.execute("SELECT count(*) FROM prometheus.default.pipeline_consumer_lag_messages")
            cur.fetchall()
        except trino.exceptions.TrinoUserError:
            return False
        return True

    def through_trino(self, rounds: int) -> None:
        conn = trino.dbapi.connect(host="127.0.0.1", port=int(self.env["TRINO_PORT"]), user="bench")
        cur = conn.cursor()
        wait_for(lambda: self.lag_table_exists(cur), 60, "the lag panel's table in Trino's prometheus catalog")
        every = []
        for title, chart in self.charts.items():
            sql = self.chart_sql(chart)
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                cur.execute(sql)
                cur.fetchall()
                samples.append(time.perf_counter() - started)
            every += samples
            self.report(f"Trino: {title[:50]}", ms(samples))
        self.report("Trino: every chart's query", ms(every))

    def through_superset(self, rounds: int) -> None:
        for force, label in ((True, "uncached"), (False, "as a refresh asks (cache allowed)")):
            every = []
            for chart in self.charts.values():
                for _ in range(rounds):
                    started = time.perf_counter()
                    self.superset.chart_data(chart, force=force)
                    every.append(time.perf_counter() - started)
            self.report(f"Superset chart-data API, {label}", ms(every))

    def seconds_to_timeline(self, event_type: str, count: int, started: float) -> float:
        """Polls the timeline's chart data as a dashboard refresh asks for it until it holds
        `count` events of `event_type`; the seconds since `started`."""
        chart = self.charts[TIMELINE]
        while True:
            rows = self.superset.chart_data(chart, force=False)
            if sum(int(r.get(event_type) or 0) for r in rows) >= count:
                return time.time() - started
            if time.time() - started > 60:
                raise SystemExit(f"benchmark: the {event_type} event never reached the timeline")
            time.sleep(0.1)

    def event_to_dashboard(self, rounds: int) -> None:
        samples = []
        for i in range(1, rounds + 1):
            marker = event(1, "probe", "9b8f4a10-0000-4000-8000-000000000001", dt.datetime.now(dt.UTC))
            started = time.time()
            produce(self.env["KAFKA_BOOTSTRAP_SERVERS"], self.env["KAFKA_TOPIC"], [marker])
            samples.append(self.seconds_to_timeline("probe", i, started))
            time.sleep(1)
        self.report(
            "event -> timeline chart data (a dashboard refresh sees it)", ms(samples) + f", max {max(samples):.2f} s"
        )

    def click_to_dashboard(self, rounds: int) -> None:
        from selenium.webdriver.common.by import By

        from tests.support.browser import chromium

        samples = []
        with chromium() as driver:
            driver.get(f"http://127.0.0.1:{self.env['COLLECTOR_PORT']}/shop/")
            # a button like the shop's own, of an event type nothing else sends
            driver.execute_script(
                "document.body.insertAdjacentHTML('beforeend', "
                f'\'<button id="probe" data-track="{CLICK_TYPE}">p</button>\')'
            )
            for i in range(1, rounds + 1):
                started = time.time()
                driver.find_element(By.ID, "probe").click()
                samples.append(self.seconds_to_timeline(CLICK_TYPE, i, started))
                time.sleep(1)
        self.report("click in the shop (Chromium) -> timeline chart data", ms(samples) + f", max {max(samples):.2f} s")


def main(argv: list[str] | None = None, stack: EphemeralStack | None = None) -> None:
    """Starts its own stack, or measures the running one given (tests/integration/test_stack.py's,
    whose `up` timed the start-ups)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=1000, help="producer events/s during the benchmark")
    parser.add_argument("--warmup", type=int, default=60, help="seconds of production before measuring")
    args = parser.parse_args(argv)
    Context().apt_install("chromium", "chromium-driver")  # the click-to-dashboard measure's browser
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"stack: {', '.join(SERVICES)}; producer {args.rate}/s",
        flush=True,
    )
    event_types = f"{Settings().collector_event_types},{CLICK_TYPE}"
    with running_stack(SERVICES, {"PRODUCER_RATE": str(args.rate), "COLLECTOR_EVENT_TYPES": event_types}, stack) as s:
        ctx = Context({**Context().env, **s.env})
        env = ctx.env
        time.sleep(args.warmup)
        dsn = s.owner_dsn()
        wait_for_marts(lambda: marts_exist(dsn), "the first scheduled dbt build")
        bench = Bench(s, env)
        print("serving:", flush=True)
        bench.report("Trino start-up (./stack up trino, to a real read)", f"{s.started['trino']:.1f} s")
        bench.report("Superset start-up (provisioning + gunicorn, to /health)", f"{s.started['superset']:.1f} s")
        bench.through_trino(args.rounds)
        bench.through_superset(args.rounds)
        bench.event_to_dashboard(args.rounds)
        bench.click_to_dashboard(args.rounds)
        bench.report("Trino RSS (launcher + JVM)", f"{rss_mib(ctx, 'trino'):,.0f} MiB")
        bench.report("Superset RSS (gunicorn master + 2 workers)", f"{rss_mib(ctx, 'superset'):,.0f} MiB")
        load = os.getloadavg()
        print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)


if __name__ == "__main__":
    main()
