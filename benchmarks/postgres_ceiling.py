"""The Postgres primary's ceiling: N writers committing the consumer's transactions side by side,
as N consumer-group members do (docs/scaling.md, "A capacity model").

    .venv/bin/python -m benchmarks.postgres_ceiling [--writers 1 2 4] [--batch 10000] [--users 100000] [--seconds 20]

Starts its own throwaway Postgres on a free port. Each writer is a process with its own Store (one
connection), as a member is, and its own partition and users, as Kafka's keying gives a member.
It decodes its batches from kafka_producer's generator before the clock starts, then commits them
in turn with Store.commit for `--seconds`: the consumer's whole transaction (the offsets' fence,
the aggregates' upserts, streaming.event_log's COPY, user_last_seen, sessions' first touch). So
what is timed is Postgres taking batches, plus each writer's sending of them, not Kafka or
decoding. One writer is the baseline, in the same run. Figures: events/s committed by all writers
together, that over the baseline, and the CPU-seconds Postgres and the writers spent per million
events. On a machine of C cores the writers and Postgres share them: the figure is the ceiling of
this machine, and where it stops growing with N says whether Postgres or the cores ran out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import queue
import time
from pathlib import Path

import psutil
import psycopg

from benchmarks.report import report
from common.settings import Settings
from kafka_producer.events import EventGenerator
from stream_consumer.batch import Batch, Record
from stream_consumer.store import Store
from stream_consumer.writer import Health, Writer
from tests.support.ephemeral import EphemeralStack
from tests.support.events import STREAMING_TABLES

TOPIC = "ceiling_events"
GROUP = "ceiling"
BATCHES = 8  # decoded per writer, committed in turn


def batches(writer: int, writers: int, size: int, users: int) -> list[Batch]:
    """`BATCHES` batches of `size` events of this writer's users, offsets following each other."""
    settings = Settings(kafka_topic=TOPIC)  # the bounds and window .env gives the consumer
    gen = EventGenerator(users, seed=writer)
    now = time.time()
    appended = dt.datetime.now(dt.UTC)
    out, offset = [], 0
    for _ in range(BATCHES):
        records = []
        while len(records) < size:
            key, value = gen.event(now)
            if int(key) % writers == writer:
                records.append(Record(TOPIC, writer, offset, key, value, appended))
                offset += 1
        batch = Batch.for_settings(settings)
        batch.add(records)
        out.append(batch)
    return out


def write(dsn: str, writer: int, writers: int, size: int, users: int, seconds: float, ready, go, results, measured):
    """One writer: decode, wait for the others, commit for `seconds`; puts (events, cpu seconds),
    and keeps its connection (its backend's CPU time) until Postgres' CPU time was read."""
    todo = batches(writer, writers, size, users)
    store = Store(dsn, GROUP)
    # as the consumer commits: retried through a deadlock (writers meet on event_minutes' rows)
    committer = Writer(store, Health(), lambda: False)
    key = (TOPIC, writer)
    stored = store.load_offsets([key], {key: 0})[key]
    ready.release()
    go.wait()
    me = psutil.Process()
    cpu = sum(me.cpu_times()[:2])
    events, i = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = todo[i % len(todo)]
        landed = committer.commit(batch, {key: stored}, {key: batch.next_offsets[key]})
        assert landed is not None and not landed.dead_letters
        stored = batch.next_offsets[key]
        events += landed.events
        i += 1
    results.put((events, sum(me.cpu_times()[:2]) - cpu))
    measured.wait()
    store.close()


def postgres_cpu(stack: EphemeralStack) -> float:
    """CPU-seconds so far of the stack's postmaster and every backend under it."""
    data = str(stack.state / "postgres" / "data")
    for proc in psutil.process_iter(["cmdline"]):
        if data in (proc.info["cmdline"] or []):
            procs = [proc, *proc.children(recursive=True)]
            return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
    raise SystemExit(f"no postgres running on {data}")


def phase(stack: EphemeralStack, dsn: str, writers: int, size: int, users: int, seconds: float):
    """(events/s, Postgres CPU-s per 1M events, writers' CPU-s per 1M events) of `writers` writers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join((*STREAMING_TABLES, "streaming.consumer_offsets")))
    ctx = multiprocessing.get_context("spawn")
    ready, go, results, measured = ctx.Semaphore(0), ctx.Event(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=write, args=(dsn, w, writers, size, users, seconds, ready, go, results, measured))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    pg_before = postgres_cpu(stack)
    started = time.monotonic()
    go.set()
    done = []
    while len(done) < len(procs):
        try:
            done.append(results.get(timeout=5))
        except queue.Empty:
            if any(p.exitcode for p in procs):
                raise SystemExit("a writer failed: see its traceback above") from None
    took = time.monotonic() - started
    pg = postgres_cpu(stack) - pg_before
    measured.set()
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a writer failed (exit {p.exitcode})")
    events = sum(e for e, _ in done)
    return events / took, pg / events * 1e6, sum(c for _, c in done) / events * 1e6


def main(argv: list[str] | None = None, stack: EphemeralStack | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, default=10_000, help="events per batch (a busy consumer's)")
    parser.add_argument("--seconds", type=float, default=20.0, help="committing, per phase")
    parser.add_argument(
        "--users", type=int, default=100_000, help="over all writers (fewer users: more events per upserted row)"
    )
    args = parser.parse_args(argv)
    if min(*args.writers, args.batch, args.users) < 1 or args.seconds <= 0:
        parser.error("--writers, --batch, --users and --seconds must be positive")
    if args.users < max(args.writers):
        parser.error("--users must be at least the largest --writers: each writer needs users of its own")
    own = stack is None
    stack = stack or EphemeralStack(["postgres"])
    try:
        if own:
            stack.up()
        dsn = stack.owner_dsn()
        rows = len(batches(0, 1, args.batch, args.users)[0].user_events)
        print(
            f"{Path(__file__).stem}: batches of {args.batch:,} events of {args.users:,} users ({rows:,} user_events "
            f"rows each), {args.seconds:.0f} s per phase",
            flush=True,
        )
        counts = sorted({1, *args.writers})
        baseline = 0.0
        for n in counts:
            rate, pg, own_cpu = phase(stack, dsn, n, args.batch, args.users, args.seconds)
            baseline = baseline or rate
            label = "baseline: 1 writer" if n == 1 else f"{n} writers"
            report(f"{label}, events/s committed", f"{rate:,.0f} ({rate / baseline:.2f}x the baseline)")
            report(f"{label}, Postgres CPU-seconds per 1M events", f"{pg:.1f}")
            report(f"{label}, writers' CPU-seconds per 1M events", f"{own_cpu:.1f}")
        print(f"  cores: {psutil.cpu_count()}", flush=True)
    finally:
        if own:
            stack.down()


if __name__ == "__main__":
    main()
