"""dbt on a real Postgres: the marts of `dbt build` equal what the test computes from the events
it wrote (through the consumer's own aggregation and store), after the first build and after
incremental ones: late and out-of-order events, rows committed while a build ran, a profile that
changed. The tests run in order on one `streaming` schema, each adding to what the last wrote."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import sys
import uuid

import psycopg
import pytest

from tests.integration.dbt_harness import (
    Event,
    Profile,
    Streaming,
    differences,
    events,
    marts,
    product_events,
)
from tests.support.ephemeral import ROOT

NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
USERS = range(1, 31)
MARTS = {
    "user_event_summary",
    "event_type_distribution",
    "purchase_conversion_by_user",
    "event_timeline",
    "sessions",
    "user_engagement",
    "top_pages",
    "traffic_sources",
}
# Product analytics (test_dbt_product_marts.py): built here too, on no event_log rows.
PRODUCT_MODELS = {
    "int_user_activity_days",
    "funnel_progress",
    "funnel_conversion",
    "daily_active_users",
    "retention_cohorts",
}
KNOWN = range(101, 106)  # known users the anonymous ones identify as


def profile(user_id: int, plan: str = "free", updated_at: dt.datetime = NOW) -> Profile:
    return Profile(user_id, ("US", "DE", "FR", "IN", "BR")[user_id % 5], plan, dt.date(2025, 1, user_id), updated_at)


@pytest.fixture(scope="module")
def streaming(dsn) -> Streaming:
    s = Streaming(dsn)
    yield s
    s.store.close()


@pytest.fixture(scope="module")
def rng() -> random.Random:
    return random.Random(7)


@pytest.fixture(scope="module")
def sessions() -> dict:
    return {}


def assert_marts_match(dsn: str, streaming: Streaming) -> None:
    diff = differences(marts(dsn), streaming.expected())
    assert diff == {}, diff


def test_first_build_computes_every_mart_from_the_events(dsn, dbt, streaming, rng, sessions):
    # users 1-25 have profiles; 26-30 send events before theirs (a warning, not an error)
    streaming.write(
        events(rng, 3000, USERS, NOW - dt.timedelta(hours=3), dt.timedelta(hours=2), sessions),
        [profile(u, ("free", "pro", "enterprise")[u % 3]) for u in range(1, 26)],
    )
    dbt("build", "--full-refresh")
    assert_marts_match(dsn, streaming)


def test_build_runs_every_model_and_its_tests(dbt):
    results = dbt.results()
    models = {uid.split(".")[-1] for uid in results if uid.startswith("model.")}
    assert models == {
        "stg_streaming__user_events",
        "stg_streaming__event_minutes",
        "stg_streaming__sessions",
        "stg_streaming__users",
        "stg_streaming__identities",
        "stg_streaming__event_log",
        "int_user_events_stitched",
        "int_sessions_stitched",
        *MARTS,
        *PRODUCT_MODELS,
    }
    assert set(results.values()) <= {"success", "pass", "warn"}
    manifest = json.loads((dbt.target / "manifest.json").read_text())
    tested = {
        dep
        for node in manifest["nodes"].values()
        if node["resource_type"] == "test"
        for dep in node["depends_on"]["nodes"]
    }
    assert {f"model.rt_analytics.{m}" for m in models} <= tested
    # the new event type `share` and the users without a profile are flagged, not fatal
    warned = sorted(uid for uid, s in results.items() if s == "warn")
    assert any("accepted_values" in w and "event_type" in w for w in warned), warned
    assert any("relationships_user_engagement" in w for w in warned), warned


def test_incremental_build_counts_late_and_out_of_order_events(dsn, dbt, streaming, rng, sessions):
    # new events now, interleaved with late ones up to 3 hours old: old minutes and old sessions
    # change while no timestamp the tables keep moves forward
    fresh = events(rng, 800, USERS, NOW - dt.timedelta(minutes=5), dt.timedelta(minutes=5), sessions)
    late = events(rng, 400, USERS, NOW - dt.timedelta(hours=3), dt.timedelta(hours=2), dict(sessions))
    mixed = fresh + late
    rng.shuffle(mixed)
    streaming.write(mixed[:600])
    streaming.write(mixed[600:], [profile(1, "enterprise", NOW + dt.timedelta(seconds=1))])  # user 1 upgrades
    dbt("build")
    assert_marts_match(dsn, streaming)


def test_rows_committed_while_a_build_ran_reach_the_next_build(dsn, dbt, streaming, rng, sessions):
    before = marts(dsn)
    conn = streaming.store.connection()
    with conn.transaction():  # a consumer batch open across the whole build
        streaming.write(events(rng, 300, USERS, NOW - dt.timedelta(hours=2), dt.timedelta(hours=2), sessions))
        dbt("build")
        assert marts(dsn) == before, "the build saw an uncommitted batch"
    dbt("build")
    assert_marts_match(dsn, streaming)


def test_tests_hold_while_the_consumer_keeps_writing(dsn, dbt, streaming, rng, sessions):
    """Events committed after the build (every type, most users) leave the marts behind their
    source until the next build: the reconciliations wait for it instead of failing."""
    dbt("build")
    streaming.write(events(rng, 500, USERS, NOW - dt.timedelta(hours=3), dt.timedelta(hours=3), sessions))
    dbt("test")
    assert {s for uid, s in dbt.results().items() if uid.startswith("test.")} <= {"pass", "warn"}
    dbt("build")
    assert_marts_match(dsn, streaming)


def test_a_session_committed_between_the_sessions_build_and_user_engagement_is_not_taken_as_seen(
    dsn, dbt, streaming, rng, sessions
):
    """user_engagement reads the totals the sessions build kept: a session committed after that
    build but before user_engagement's own snapshot is not in them, so user_engagement's watermark
    is held to the sessions build's, and the reconciliation waits for the next build instead of
    failing (found by the soak: the ten-minute reconciliation failed once at 5,000 events/s)."""
    dbt("build", "--select", "sessions")
    streaming.write(events(rng, 200, USERS, NOW - dt.timedelta(hours=1), dt.timedelta(hours=1), sessions))
    dbt("build", "--select", "user_engagement")
    with psycopg.connect(dsn) as conn:
        marks = dict(conn.execute("SELECT model_name, source_xmin FROM analytics.dbt_build_watermarks").fetchall())
    assert marks["user_engagement"] <= marks["sessions"]
    dbt("test", "--select", "tag:reconciliation")
    assert set(dbt.results().values()) >= {"pass"} and "fail" not in dbt.results().values(), dbt.results()
    dbt("build")
    assert_marts_match(dsn, streaming)


def test_pages_sources_and_identities_stay_exact_through_late_events_and_reidentification(
    dsn, dbt, streaming, rng, sessions
):
    """Pages, first touches and identify events, then: a late event earlier than a session's first
    moves the session to another source; an anonymous id identified again as another known user
    moves its history (views, sessions, pages' distinct users) from the first to the second."""
    streaming.write(
        product_events(rng, 600, USERS, NOW - dt.timedelta(hours=2), dt.timedelta(hours=2), sessions, KNOWN)
    )
    dbt("build")
    assert_marts_match(dsn, streaming)

    # user 3's newest session: a late event, earlier than its first, arrives from a campaign
    session = max((e for e in streaming.events if e.user_id == 3), key=lambda e: e.occurred_at).session_id
    first = min(e.occurred_at for e in streaming.events if e.session_id == session and e.user_id == 3)
    late = Event(
        3,
        "view",
        session,
        first - dt.timedelta(minutes=1),
        page="/landing",
        utm_source="late_campaign",
        utm_medium="social",
        utm_campaign="moved",
    )
    # user 4 is identified as 101, then again (later) as 102: the latest wins
    at = NOW + dt.timedelta(minutes=1)
    streaming.write([late, Event(4, "identify", session, at, identified_user_id=101)])
    dbt("build")
    assert_marts_match(dsn, streaming)
    assert ("late_campaign", "social", "moved") in marts(dsn)["traffic_sources"]
    streaming.write(
        [Event(4, "identify", session, at + dt.timedelta(minutes=1), identified_user_id=102)]
        + product_events(rng, 100, range(1, 5), NOW - dt.timedelta(minutes=5), dt.timedelta(minutes=5), sessions)
    )
    dbt("build")
    assert_marts_match(dsn, streaming)
    summary = marts(dsn)["user_event_summary"]
    assert 4 not in summary and summary[102][3] > sum(1 for e in streaming.events if e.user_id == 102)


def test_a_deleted_user_leaves_every_mart_and_comes_back_only_with_new_events(dsn, dbt, streaming, rng, sessions):
    """Deleting a known user (whose identities go with it: its anonymous ids count as themselves
    again) and an anonymous id counted under another: every user-level row of theirs goes, and the
    users they were counted under are recounted. A deleted user who is not suppressed and sends
    new events is counted again from those only, and a later build does not delete them again."""
    streaming.write(
        product_events(rng, 300, USERS, NOW - dt.timedelta(hours=1), dt.timedelta(hours=1), sessions, KNOWN)
    )
    dbt("build")
    canonical = {a: k for (a, k) in streaming.identities}
    anonymous = next(a for a, k in canonical.items() if k != 102)
    streaming.delete_users([102, anonymous, 7])
    dbt("build")
    assert_marts_match(dsn, streaming)
    got = marts(dsn)
    for name in ("user_event_summary", "purchase_conversion_by_user", "user_engagement"):
        assert not {102, anonymous, 7} & set(got[name]), name
    assert not {102, anonymous, 7} & {u for _, u in got["sessions"]}
    with psycopg.connect(dsn) as conn:
        kept = conn.execute(
            """SELECT 'page_users', count(*) FROM analytics.page_users
                         WHERE %(ids)s::bigint[] && ARRAY[user_id, canonical_user_id]
               UNION ALL SELECT 'session_sources', count(*) FROM analytics.session_sources
                         WHERE %(ids)s::bigint[] && ARRAY[user_id, canonical_user_id]
               UNION ALL SELECT 'source_users', count(*) FROM analytics.source_users
                         WHERE canonical_user_id = ANY(%(ids)s)
               UNION ALL SELECT 'user_engagement_ids', count(*) FROM analytics.user_engagement_ids
                         WHERE %(ids)s::bigint[] && ARRAY[user_id, canonical_user_id]
               UNION ALL SELECT 'user_session_totals', count(*) FROM analytics.user_session_totals
                         WHERE user_id = ANY(%(ids)s)""",
            {"ids": [102, anonymous, 7]},
        ).fetchall()
    assert all(n == 0 for _, n in kept), kept
    streaming.write(events(rng, 50, range(7, 8), NOW - dt.timedelta(minutes=2), dt.timedelta(minutes=2), sessions))
    dbt("build")
    assert_marts_match(dsn, streaming)
    dbt("build")
    assert_marts_match(dsn, streaming)
    assert 7 in marts(dsn)["user_event_summary"]


def test_pages_and_sources_at_the_contracts_bounds(dsn, dbt, streaming, rng):
    """A page of 2,048 four-byte characters, a referrer whose host fills its 2,048 characters and
    utm values of 100 four-byte characters: longer than a btree entry may be, so the marts' keys
    are hashed; the build neither fails nor merges two keys that share a long prefix."""
    page = "\U0001d518" * 2048
    host = "a" * (2048 - len("https://") - 1)
    utm = "\U0001d518" * 100
    at = NOW - dt.timedelta(minutes=1)
    streaming.write(
        [
            Event(
                8, "view", uuid.UUID(int=rng.getrandbits(128), version=4), at, page=page, referrer=f"https://{host}/"
            ),
            Event(
                8,
                "view",
                uuid.UUID(int=rng.getrandbits(128), version=4),
                at,
                page=page[:-1] + "x",
                referrer=f"https://{host[:-1]}b/",
            ),
            Event(
                9,
                "view",
                uuid.UUID(int=rng.getrandbits(128), version=4),
                at,
                page=page,
                utm_source=utm,
                utm_medium=utm,
                utm_campaign=utm,
            ),
        ]
    )
    dbt("build")
    assert_marts_match(dsn, streaming)
    got = marts(dsn)
    assert got["top_pages"][page][:2] == (2, 2) and (host, "referral", "(none)") in got["traffic_sources"]


def test_incremental_marts_equal_a_full_refresh(dsn, dbt, streaming):
    incremental = marts(dsn)
    dbt("build", "--full-refresh")
    assert differences(marts(dsn), incremental) == {}


def test_build_without_new_events_changes_nothing(dsn, dbt, streaming):
    dbt("build")
    assert_marts_match(dsn, streaming)
    with psycopg.connect(dsn) as conn:
        rows = dict(conn.execute("SELECT model_name, source_xmin FROM analytics.dbt_build_watermarks").fetchall())
    assert set(rows) == MARTS | PRODUCT_MODELS


def test_the_every_minute_build_leaves_the_reconciliations_to_their_own_dag(dbt):
    """The DAGs' selector (airflow/dags/dbt_runner/tasks.py): analytics_dbt_build runs every model
    and every test but the reconciliations; analytics_reconciliation runs those, one per mart."""
    tasks = (ROOT / "airflow" / "dags" / "dbt_runner" / "tasks.py").read_text()
    selector = re.search(r'^RECONCILIATION = "([^"]+)"', tasks, re.M).group(1)
    dbt("build", "--exclude", selector)
    built = dbt.results()
    assert {uid.split(".")[-1] for uid in built if uid.startswith("model.")} >= MARTS
    assert [uid for uid in built if "reconciles_with_source" in uid] == []
    assert sum(uid.startswith("test.") for uid in built) > 30
    dbt("test", "--select", selector)
    reconciled = {uid: status for uid, status in dbt.results().items() if uid.startswith("test.")}
    assert len(reconciled) == len(MARTS) and all("reconciles_with_source" in uid for uid in reconciled), reconciled
    assert set(reconciled.values()) == {"pass"}


def test_reconciliation_fails_on_a_mart_that_drifted_from_its_source(dsn, dbt):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE analytics.sessions SET event_count = event_count + 1 "
            "WHERE session_id = (SELECT min(session_id::text)::uuid FROM analytics.sessions)"
        )
    proc = dbt("test", "--select", "sessions", check=False)
    failed = sorted(uid for uid, s in dbt.results().items() if s == "fail")
    assert proc.returncode == 1 and len(failed) == 1 and "reconciles_with_source_sessions" in failed[0], failed
    dbt("build", "--full-refresh", "--select", "sessions")


def test_airflow_task_fails_without_retry_on_a_failing_dbt_test(dsn, dbt, monkeypatch):
    """The DAG's runner (airflow/dags/dbt_runner) tells a failing data test from an error."""
    monkeypatch.syspath_prepend(str(ROOT / "airflow" / "dags"))
    sys.modules.pop("dbt_runner", None)
    from dbt_runner.run import DbtError, DbtTestFailure, run_dbt
    from dbt_runner.settings import DbtSettings

    settings = DbtSettings(
        executable=str(dbt.bin),
        project_dir=ROOT / "dbt_project",
        profiles_dir=ROOT / "dbt_project",
        target_path=dbt.target.parent / "runner",
        log_path=dbt.target.parent / "runner-logs",
    )
    for key, value in dbt.env.items():
        monkeypatch.setenv(key, value)
    assert run_dbt(["test", "--select", "user_event_summary"], "t", settings)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE analytics.user_event_summary SET total_events = total_events + 5 WHERE user_id = 1")
    with pytest.raises(DbtTestFailure, match="reconciles_with_source_user_event_summary"):
        run_dbt(["test", "--select", "user_event_summary"], "t", settings)
    monkeypatch.setenv("POSTGRES_PORT", "1")
    with pytest.raises(DbtError):
        run_dbt(["test", "--select", "user_event_summary"], "t", settings)
    monkeypatch.undo()
    dbt("build", "--select", "user_event_summary")


def test_docs_generate_describes_every_model_and_column(dbt):
    dbt("docs", "generate")
    manifest = json.loads((dbt.target / "manifest.json").read_text())
    catalog = json.loads((dbt.target / "catalog.json").read_text())
    undocumented = []
    for uid, node in manifest["nodes"].items():
        if node["resource_type"] != "model":
            continue
        if not node["description"]:
            undocumented.append(uid)
        columns = catalog["nodes"][uid]["columns"]
        undocumented += [f"{uid}.{c}" for c in columns if not node["columns"].get(c, {}).get("description")]
    assert undocumented == []
