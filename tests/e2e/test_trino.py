"""Trino federates the warehouse (Postgres, read-only) and the live Kafka topic."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

import pytest

import trino
from tests.support.ephemeral import ROOT
from tests.support.known_events import event, produce
from tests.support.pipeline_waits import query


def connect(env: dict[str, str]):
    return trino.dbapi.connect(host="127.0.0.1", port=int(env["TRINO_PORT"]), user="e2e", catalog="postgresql")


def trino_rows(env: dict[str, str], sql: str) -> list[list]:
    with connect(env) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()


def normal(value):
    """One representation for what the two drivers return for the same value."""
    if isinstance(value, decimal.Decimal | float):
        return round(float(value), 4)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def table(rows) -> list[tuple]:
    return sorted((tuple(normal(v) for v in row) for row in rows), key=repr)


def test_every_mart_reads_the_same_through_trino_as_in_postgres(stack, env, produced):
    dsn = stack.owner_dsn()
    # every mart of dbt_project/models/marts/ (not the state tables and queues their builds keep)
    marts = sorted(p.stem for p in (ROOT / "dbt_project" / "models" / "marts").glob("*.sql"))
    tables = {
        name
        for (name,) in query(dsn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'analytics'")
    }
    assert {"user_event_summary", "funnel_progress", "traffic_sources"} <= set(marts) <= tables
    differ = []
    for mart in marts:
        for _attempt in range(3):  # a dbt build may replace a table between the two reads
            columns = [
                c
                for (c,) in query(
                    dsn,
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'analytics' AND table_name = %s ORDER BY ordinal_position",
                    (mart,),
                )
            ]
            select = ", ".join(f'"{c}"' for c in columns)
            in_postgres = table(query(dsn, f"SELECT {select} FROM analytics.{mart}"))
            in_trino = table(trino_rows(env, f"SELECT {select} FROM postgresql.analytics.{mart}"))
            if in_postgres == in_trino:
                break
            time.sleep(2)
        else:
            differ.append(f"{mart}: postgres {in_postgres[:3]}... trino {in_trino[:3]}...")
        assert in_postgres, f"{mart} is empty"
    assert differ == []


def test_kafka_catalog_shows_the_events_just_produced(env):
    start = dt.datetime.now(dt.UTC)
    session = "7a1f0c55-0000-4000-8000-000000000001"
    sent = [
        event(8_000_001 + i % 3, ("view", "click", "purchase")[i % 3], session, start, 5.0 if i % 3 == 2 else None)
        for i in range(30)
    ]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"], sent)
    # _timestamp (the Kafka record time) is pushed down: Trino reads only the partitions' tails.
    since = (start - dt.timedelta(seconds=5)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    rows = trino_rows(
        env,
        "SELECT event_id, user_id, event_type, occurred_at, amount, message_key FROM kafka.default.user_events "
        f"WHERE _timestamp >= TIMESTAMP '{since} UTC' AND session_id = '{session}'",
    )
    got = {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}
    want = {
        e["event_id"]: (
            e["user_id"],
            e["event_type"],
            dt.datetime.fromisoformat(e["occurred_at"]),
            e["amount"],
            str(e["user_id"]),
        )
        for e in sent
    }
    assert got == want


def test_one_statement_joins_the_live_topic_with_the_warehouse(env, produced):
    rows = trino_rows(
        env,
        "SELECT s.user_id, s.total_events, count(k.event_id) AS in_topic "
        "FROM postgresql.analytics.user_event_summary s "
        # from the raw message: a contract-breaking message anyone produced can't fail the query
        "JOIN kafka.default.user_events k "
        "ON try_cast(json_extract_scalar(k._message, '$.user_id') AS bigint) = s.user_id "
        f"WHERE s.user_id IN ({', '.join(map(str, produced.known.user_ids))}) GROUP BY 1, 2",
    )
    assert sorted(rows) == sorted([u.user_id, u.total, u.total] for u in produced.known.users)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO postgresql.analytics.user_event_summary VALUES (1, 1, 1, 1, 3)",
        "DELETE FROM postgresql.streaming.user_events",
        "CREATE TABLE postgresql.analytics.trino_was_here (x int)",
        "DROP TABLE postgresql.analytics.user_event_summary",
    ],
    ids=["insert", "delete", "create", "drop"],
)
def test_writes_through_trino_are_refused(env, statement):
    with pytest.raises(trino.exceptions.TrinoUserError) as refused:
        trino_rows(env, statement)
    assert refused.value.error_name == "PERMISSION_DENIED"


# --- limits: run time, memory, and Superset's concurrency (trino/etc/, .env) ----------------------

RESOURCE_GROUPS = json.loads((ROOT / "trino" / "etc" / "resource-groups.json").read_text())
#: A query that would return 10^8 rows: it fills its output buffer in a moment and then waits for a
#: client that never reads, running without using a core (the limits below are tripped idle).
ENDLESS = (
    "SELECT '{marker}' AS marker, a.x FROM UNNEST(sequence(1, 10000)) a(x) CROSS JOIN UNNEST(sequence(1, 10000)) b(y)"
)


def submit(env: dict[str, str], sql: str, user: str) -> dict:
    """A query started and then never read: it stays running (or queued). Trino dispatches a
    statement when its client first follows nextUri, so that is followed once."""
    headers = {"X-Trino-User": user, "X-Trino-Source": "e2e-limits"}
    url = f"http://127.0.0.1:{env['TRINO_PORT']}/v1/statement"
    with urllib.request.urlopen(urllib.request.Request(url, sql.encode(), headers, method="POST"), timeout=30) as r:
        created = json.loads(r.read())
    with urllib.request.urlopen(urllib.request.Request(created["nextUri"], headers=headers), timeout=30) as r:
        return json.loads(r.read())


def cancel(env: dict[str, str], query_id: str, user: str) -> None:
    """Cancels a query as the user who started it (without the user Trino answers 401 and the query
    runs on to its time limit: a flood left so held Superset's queue for minutes after this module)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{env['TRINO_PORT']}/v1/query/{query_id}", headers={"X-Trino-User": user}, method="DELETE"
    )
    urllib.request.urlopen(req, timeout=30).close()


def states(env: dict[str, str], marker: str) -> list[tuple[str, str | None]]:
    """(state, error code) of each query carrying `marker`, from Trino's own table."""
    rows = trino_rows(
        env,
        "SELECT state, error_code FROM system.runtime.queries "
        f"WHERE query LIKE '%{marker}%' AND query NOT LIKE '%system.runtime.queries%'",
    )
    return [(state, error) for state, error in rows]


def test_query_running_longer_than_the_time_limit_is_killed(env):
    marker = f"time-limit-{uuid.uuid4()}"
    query_id = submit(env, ENDLESS.format(marker=marker), user="e2e")["id"]
    limit = float(env["TRINO_QUERY_MAX_EXECUTION_TIME"].rstrip("s"))
    try:
        deadline = time.monotonic() + limit + 60
        while states(env, marker)[0][0] not in ("FAILED", "FINISHED") and time.monotonic() < deadline:
            time.sleep(2)
    finally:
        cancel(env, query_id, "e2e")
    assert states(env, marker) == [("FAILED", "EXCEEDED_TIME_LIMIT")]


def test_query_needing_more_memory_than_a_node_allows_fails(env):
    with pytest.raises(trino.exceptions.TrinoQueryError) as failed:
        trino_rows(
            env,
            # 100,000 strings of 10 KB gathered in one array: ~1 GB for a 384 MB per-node limit
            "SELECT cardinality(array_agg(lpad('', 10000, 'x'))) "
            "FROM UNNEST(sequence(1, 10000)) a(x) CROSS JOIN UNNEST(sequence(1, 10)) b(y)",
        )
    assert failed.value.error_name == "EXCEEDED_LOCAL_MEMORY_LIMIT"


@pytest.fixture(scope="module")
def superset_flood(env):
    """As many of Superset's queries at once as its group runs, plus as many as it queues, plus
    two: what Trino does with each, once every one has been placed."""
    group = next(g for g in RESOURCE_GROUPS["rootGroups"] if g["name"] == "superset")
    marker = f"flood-{uuid.uuid4()}"
    count = group["hardConcurrencyLimit"] + group["maxQueued"] + 2
    ids = [submit(env, ENDLESS.format(marker=marker), user="superset")["id"] for _ in range(count)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = Counter(states(env, marker))
            if seen[("RUNNING", None)] == group["hardConcurrencyLimit"] and sum(seen.values()) == count:
                break
            time.sleep(1)
        yield group, seen
    finally:
        for query_id in ids:
            cancel(env, query_id, "superset")


def test_superset_queries_beyond_its_concurrency_limit_wait_in_the_queue(superset_flood):
    group, seen = superset_flood
    running, queued = seen[("RUNNING", None)], seen[("QUEUED", None)]
    assert (running, queued) == (group["hardConcurrencyLimit"], group["maxQueued"])


def test_superset_queries_beyond_its_queue_are_refused(superset_flood):
    _group, seen = superset_flood
    assert seen[("FAILED", "QUERY_QUEUE_FULL")] == 2
