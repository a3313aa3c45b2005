"""dbt against the integration tier's Postgres: events written to `streaming` through the
consumer's own aggregation and store (no Kafka needed), dbt run from its own virtualenv, and the
marts computed independently from the same events, in Python."""

from __future__ import annotations

import datetime as dt
import json
import random
import select
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from native.context import Context
from stream_consumer.batch import Batch, Record
from stream_consumer.store import Store
from tests.support.ephemeral import ROOT, EphemeralStack
from tests.support.events import STREAMING_TABLES, event_json

TOPIC, PROFILES = "dbt_events", "dbt_profiles"
KNOWN_TYPES = ("view", "click", "purchase")
STREAMING = ", ".join(STREAMING_TABLES)


# The product-analytics tables (postgres/init/sql/streaming.sql): the harness writes them itself
# where the consumer does not yet (Streaming.write_product_rows).
@dataclass(frozen=True)
class Event:
    user_id: int
    event_type: str
    session_id: uuid.UUID
    occurred_at: dt.datetime
    amount: Decimal | None = None
    page: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    identified_user_id: int | None = None

    def json(self) -> bytes:
        amount = None if self.amount is None else float(self.amount)
        optional = {f: getattr(self, f) for f in OPTIONAL_FIELDS if getattr(self, f) is not None}
        return event_json(
            self.user_id,
            self.event_type,
            session_id=self.session_id,
            occurred_at=self.occurred_at,
            amount=amount,
            timespec="milliseconds",
            **optional,
        )

    @property
    def touch(self) -> tuple:
        """What a session's first touch keeps of its earliest event: landing page, referrer host, utm."""
        host = urlsplit(self.referrer).hostname if self.referrer else None
        return (self.page, host, self.utm_source, self.utm_medium, self.utm_campaign)


OPTIONAL_FIELDS = ("page", "referrer", "utm_source", "utm_medium", "utm_campaign", "identified_user_id")


@dataclass(frozen=True)
class Profile:
    user_id: int
    country: str
    plan: str
    signup_date: dt.date
    updated_at: dt.datetime

    def json(self) -> bytes:
        return json.dumps(
            {
                "user_id": self.user_id,
                "name": f"User {self.user_id}",
                "email": f"user{self.user_id}@example.com",
                "country": self.country,
                "signup_date": self.signup_date.isoformat(),
                "plan": self.plan,
                "updated_at": self.updated_at.isoformat(),
            }
        ).encode()


def message(topic: str, offset: int, user_id: int, value: bytes) -> Record:
    """A Kafka message the broker stamped now (LogAppendTime), as the topics are: a deleted user's
    events written after the deletion count again (stream_consumer/batch.py `forgotten`)."""
    return Record(topic, 0, offset, str(user_id).encode(), value, appended=dt.datetime.now(dt.UTC))


def events(
    rng: random.Random, n: int, users: range, start: dt.datetime, span: dt.timedelta, sessions: dict | None = None
) -> list[Event]:
    """`n` events of `users` between start and start + span; each user's current session changes now and then."""
    sessions = {} if sessions is None else sessions
    out = []
    for _ in range(n):
        user = rng.choice(users)
        if user not in sessions or rng.random() < 0.1:
            sessions[user] = uuid.UUID(int=rng.getrandbits(128), version=4)
        kind = rng.random()
        event_type = "view" if kind < 0.6 else "click" if kind < 0.85 else "purchase" if kind < 0.97 else "share"
        amount = Decimal(rng.randrange(100, 30000)) / 100 if event_type == "purchase" else None
        at = start + dt.timedelta(seconds=rng.uniform(0, span.total_seconds()))
        out.append(
            Event(user, event_type, sessions[user], at.replace(microsecond=at.microsecond // 1000 * 1000), amount)
        )
    return out


PAGES = ("/", "/products/1", "/products/2", "/cart", "/checkout")
REFERRERS = ("https://www.Example.com/blog?x=1", "https://news.ycombinator.com/item", "http://search.test/")
UTM = (("newsletter", "email", "spring sale"), ("ads", "cpc", None), ("partner", None, None))


def product_events(
    rng: random.Random,
    n: int,
    users: range,
    start: dt.datetime,
    span: dt.timedelta,
    sessions: dict | None = None,
    known: range = range(0),
) -> list[Event]:
    """Like `events`, with what product analytics reads: most events on a page, some with a
    referrer or utm parameters (a session's first touch), and now and then an `identify` of the
    user as one of `known` (a re-identification when it names another)."""
    out = []
    for e in events(rng, n, users, start, span, sessions):
        page = rng.choice(PAGES) if rng.random() < 0.9 else None
        referrer = rng.choice(REFERRERS) if rng.random() < 0.3 else None
        utm = rng.choice(UTM) if rng.random() < 0.2 else (None, None, None)
        fields = dict(page=page, referrer=referrer, utm_source=utm[0], utm_medium=utm[1], utm_campaign=utm[2])
        if known and rng.random() < 0.03:
            e = Event(e.user_id, "identify", e.session_id, e.occurred_at, identified_user_id=rng.choice(known))
        out.append(
            Event(
                e.user_id,
                e.event_type,
                e.session_id,
                e.occurred_at,
                e.amount,
                **fields,
                identified_user_id=e.identified_user_id,
            )
        )
    return out


class Streaming:
    """Writes events and profiles with the consumer's own code: Batch aggregates, Store commits
    (one transaction per batch, with the offsets), exactly as the running consumer would."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.store = Store(dsn, "dbt_tests")
        self.offsets = {TOPIC: 0, PROFILES: 0}
        self.events: list[Event] = []
        self.profiles: dict[int, Profile] = {}
        # (anonymous id, known user) -> the pair's latest identify time, as streaming.identities
        self.identities: dict[tuple[int, int], dt.datetime] = {}
        # events of deleted users: gone from every table but the minute totals
        self.forgotten: list[Event] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {STREAMING}")
            conn.execute("DELETE FROM streaming.consumer_offsets WHERE consumer_group = 'dbt_tests'")

    def batch(self, new_events: list[Event], profiles: list[Profile] = ()) -> Batch:
        batch = Batch(TOPIC, PROFILES, 65536)
        messages = []
        for p in profiles:
            messages.append(message(PROFILES, self.offsets[PROFILES], p.user_id, p.json()))
            self.offsets[PROFILES] += 1
        for e in new_events:
            messages.append(message(TOPIC, self.offsets[TOPIC], e.user_id, e.json()))
            self.offsets[TOPIC] += 1
        batch.add(messages)
        assert not batch.dead_letters, batch.dead_letters[:1]
        return batch

    def write(self, new_events: list[Event], profiles: list[Profile] = ()) -> None:
        """One consumer transaction; call inside `store.connection().transaction()` to hold it open."""
        batch = self.batch(new_events, profiles)
        start = self.store.load_offsets(list(batch.next_offsets))
        with self.store.connection().transaction():
            self.store.commit(batch, start, {})
            self.events += new_events
            self.write_product_rows(new_events)
        for p in profiles:
            current = self.profiles.get(p.user_id)
            if current is None or p.updated_at >= current.updated_at:
                self.profiles[p.user_id] = p

    def write_product_rows(self, new_events: list[Event]) -> None:
        """In the batch's transaction, what the consumer writes for product analytics, where it does
        not yet: the events into event_log, the identify pairs into identities (the pair's latest
        time), and each touched session's first touch (its earliest event's; on a tie in time, the
        first to arrive)."""
        conn = self.store.connection()
        [(logged,)] = conn.execute(
            "SELECT exists (SELECT FROM streaming.event_log WHERE written_xid = pg_current_xact_id())"
        ).fetchall()
        with conn.cursor() as cur:
            if not logged and new_events:
                with cur.copy("COPY streaming.event_log (user_id, occurred_at, event_type, page) FROM STDIN") as copy:
                    for e in new_events:
                        copy.write_row((e.user_id, e.occurred_at, e.event_type, e.page))
            for e in new_events:
                if e.identified_user_id is not None:
                    pair = (e.user_id, e.identified_user_id)
                    self.identities[pair] = max(self.identities.get(pair, e.occurred_at), e.occurred_at)
                    cur.execute(
                        """INSERT INTO streaming.identities AS t (anonymous_id, user_id, identified_at)
                           VALUES (%s, %s, %s)
                           ON CONFLICT (anonymous_id, user_id) DO UPDATE
                           SET identified_at = greatest(t.identified_at, excluded.identified_at),
                               written_xid = pg_current_xact_id()""",
                        (*pair, e.occurred_at),
                    )
            touched = {(e.session_id, e.user_id) for e in new_events}
            firsts = first_touches(self.events)
            for key in touched:
                cur.execute(
                    """UPDATE streaming.sessions
                       SET landing_page = %s, referrer_host = %s, utm_source = %s, utm_medium = %s, utm_campaign = %s
                       WHERE session_id = %s AND user_id = %s""",
                    (*firsts[key], *key),
                )

    def delete_users(self, user_ids: Iterable[int]) -> None:
        """What deleting users does (`python -m stream_consumer users delete`), in one transaction:
        their rows go from every streaming table holding a user id (identities on either side), the
        minute totals keep their counts, and deleted_users records them."""
        ids = sorted(set(user_ids))
        with psycopg.connect(self.dsn) as conn:
            for table in ("user_events", "sessions", "event_log", "users"):
                conn.execute(f"DELETE FROM streaming.{table} WHERE user_id = ANY(%s)", (ids,))
            conn.execute(
                "DELETE FROM streaming.identities WHERE anonymous_id = ANY(%s) OR user_id = ANY(%s)", (ids, ids)
            )
            conn.execute(
                """INSERT INTO streaming.deleted_users (user_id) SELECT unnest(%s::bigint[])
                   ON CONFLICT (user_id) DO UPDATE
                   SET deleted_at = clock_timestamp(), written_xid = pg_current_xact_id()""",
                (ids,),
            )
        gone = set(ids)
        self.forgotten += [e for e in self.events if e.user_id in gone]
        self.events = [e for e in self.events if e.user_id not in gone]
        self.identities = {p: t for p, t in self.identities.items() if not gone & set(p)}
        self.profiles = {u: p for u, p in self.profiles.items() if u not in gone}

    def expected(self) -> dict[str, dict]:
        return expected_marts(self.events, self.profiles, self.identities, self.forgotten)


class Dbt:
    """dbt on a stack's Postgres, its target and logs in `work`. Commands run one after another in
    one dbt process (dbt_worker.py), which saves each command dbt's start-up."""

    def __init__(self, stack: EphemeralStack, work: Path) -> None:
        self.python = Context().venv("dbt", ROOT / "dbt_project" / "requirements.lock.txt") / "bin" / "python"
        self.bin = self.python.with_name("dbt")  # the `dbt` command itself
        self.target = work / "target"
        self.env = {
            **Context().env,
            **stack.env,
            "DBT_TARGET_PATH": str(self.target),
            "DBT_LOG_PATH": str(work / "logs"),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        }
        self.stderr = work / "dbt_worker.stderr"
        self.worker: subprocess.Popen | None = None

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [*args, "--project-dir", str(ROOT / "dbt_project"), "--profiles-dir", str(ROOT / "dbt_project")]
        worker = self._worker()
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(json.dumps(argv) + "\n")
        worker.stdin.flush()
        if not select.select([worker.stdout], [], [], timeout)[0]:
            self.close()
            raise AssertionError(f"dbt {' '.join(args)} did not finish within {timeout:.0f} s")
        line = worker.stdout.readline()
        if not line:
            self.close()
            ended = self.stderr.read_text(errors="replace")[-6000:]
            raise AssertionError(f"the dbt worker ended during dbt {' '.join(args)}:\n{ended}")
        answer = json.loads(line)
        proc = subprocess.CompletedProcess(["dbt", *argv], answer["returncode"], answer["output"], "")
        if check and proc.returncode != 0:
            raise AssertionError(f"dbt {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
        return proc

    def _worker(self) -> subprocess.Popen:
        if self.worker is None or self.worker.poll() is not None:
            self.worker = subprocess.Popen(
                [str(self.python), str(Path(__file__).with_name("dbt_worker.py"))],
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr.open("ab"),
                text=True,
            )
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker.wait()
            self.worker = None

    def results(self) -> dict[str, str]:
        data = json.loads((self.target / "run_results.json").read_text())
        return {r["unique_id"]: r["status"] for r in data["results"]}


# --- the marts, computed from the events --------------------------------------------------------


def cents(x) -> Decimal:
    return Decimal(x).quantize(Decimal("0.01"))


def rounded(x: Decimal, places: int) -> Decimal:
    return x.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


Identities = dict[tuple[int, int], dt.datetime]


def canonical_users(identities: Identities | None) -> dict[int, int]:
    """Each anonymous id's current known user: its pair with the latest identify (ties: the larger
    user id). One level: a known user is not looked up again."""
    latest: dict[int, tuple[dt.datetime, int]] = {}
    for (anonymous, known), at in (identities or {}).items():
        latest[anonymous] = max(latest.get(anonymous, (at, known)), (at, known))
    return {anonymous: known for anonymous, (_, known) in latest.items()}


def per_user_types(evs: list[Event], identities: Identities | None = None) -> dict[int, dict[str, int]]:
    canonical = canonical_users(identities)
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in evs:
        out[canonical.get(e.user_id, e.user_id)][e.event_type] += 1
    return out


def expected_user_event_summary(evs: list[Event], identities: Identities | None = None) -> dict[int, tuple]:
    return {
        u: (t["click"], t["view"], t["purchase"], sum(t.values())) for u, t in per_user_types(evs, identities).items()
    }


def expected_event_type_distribution(evs: list[Event]) -> dict[str, tuple]:
    counts: dict[str, int] = defaultdict(int)
    users: dict[str, set] = defaultdict(set)
    for e in evs:
        counts[e.event_type] += 1
        users[e.event_type].add(e.user_id)
    total = sum(counts.values())
    return {t: (counts[t], len(users[t]), Decimal(counts[t]) / Decimal(total)) for t in counts}


def expected_purchase_conversion(evs: list[Event], identities: Identities | None = None) -> dict[int, tuple]:
    def rate(a: int, b: int):
        return rounded(Decimal(a) / Decimal(b), 4) if b else None

    return {
        u: (t["view"], t["click"], t["purchase"], rate(t["purchase"], t["view"]), rate(t["purchase"], t["click"]))
        for u, t in per_user_types(evs, identities).items()
    }


def expected_event_timeline(evs: list[Event]) -> dict[dt.datetime, tuple]:
    rows: dict[dt.datetime, list] = defaultdict(lambda: [0, 0, 0, 0, 0, Decimal(0)])
    for e in evs:
        row = rows[e.occurred_at.replace(second=0, microsecond=0)]
        row[0] += 1
        index = {"view": 1, "click": 2, "purchase": 3}.get(e.event_type, 4)
        row[index] += 1
        row[5] += e.amount or 0
    return {m: (*r[:5], cents(r[5])) for m, r in rows.items()}


def session_facts(evs: list[Event]) -> dict[tuple[uuid.UUID, int], dict]:
    out: dict[tuple[uuid.UUID, int], dict] = {}
    for e in evs:
        s = out.setdefault(
            (e.session_id, e.user_id),
            {"user": e.user_id, "first": e.occurred_at, "last": e.occurred_at, "n": 0, "p": 0, "r": Decimal(0)},
        )
        s["first"], s["last"] = min(s["first"], e.occurred_at), max(s["last"], e.occurred_at)
        s["n"] += 1
        s["p"] += e.event_type == "purchase"
        s["r"] += e.amount or 0
    return out


def duration(s: dict) -> Decimal:
    return rounded(Decimal(str((s["last"] - s["first"]).total_seconds())), 3)


def expected_sessions(evs: list[Event]) -> dict[tuple[uuid.UUID, int], tuple]:
    return {
        key: (s["first"], s["last"], duration(s), s["n"], s["p"], cents(s["r"]), s["p"] > 0)
        for key, s in session_facts(evs).items()
    }


def expected_user_engagement(
    evs: list[Event], profiles: dict[int, Profile], identities: Identities | None = None
) -> dict[int, tuple]:
    canonical = canonical_users(identities)
    by_user: dict[int, list[dict]] = defaultdict(list)
    for s in session_facts(evs).values():
        by_user[canonical.get(s["user"], s["user"])].append(s)
    out = {}
    for u, ss in by_user.items():
        n = len(ss)
        converted = sum(1 for s in ss if s["p"])
        durations = [Decimal(str((s["last"] - s["first"]).total_seconds())) for s in ss]
        p = profiles.get(u)
        out[u] = (
            p.country if p else None,
            p.plan if p else None,
            p.signup_date if p else None,
            n,
            sum(s["n"] for s in ss),
            sum(s["p"] for s in ss),
            converted,
            rounded(Decimal(converted) / n, 4),
            cents(sum(s["r"] for s in ss)),
            rounded(Decimal(sum(s["n"] for s in ss)) / n, 2),
            rounded(sum(durations) / n, 1),
            min(s["first"] for s in ss),
            max(s["last"] for s in ss),
        )
    return out


def first_touches(evs: list[Event]) -> dict[tuple[uuid.UUID, int], tuple]:
    """Per session: the first touch of its earliest event (on a tie in time, the first to arrive)."""
    first: dict[tuple[uuid.UUID, int], Event] = {}
    for e in evs:
        key = (e.session_id, e.user_id)
        if key not in first or e.occurred_at < first[key].occurred_at:
            first[key] = e
    return {key: e.touch for key, e in first.items()}


def traffic_source(touch: tuple) -> tuple[str, str, str]:
    """(source, medium, campaign) of a first touch: utm_source, else the referrer's host, else
    direct; utm_medium, else referral for a referrer, else (none); utm_campaign, else (none)."""
    _, host, source, medium, campaign = touch
    return (
        source or host or "direct",
        medium or ("referral" if not source and host else "(none)"),
        campaign or "(none)",
    )


def expected_top_pages(evs: list[Event], identities: Identities | None = None) -> dict[str, tuple]:
    canonical = canonical_users(identities)
    counts: dict[str, list] = defaultdict(lambda: [0, set(), 0, 0])
    for e in evs:
        if e.page is None:
            continue
        row = counts[e.page]
        row[0] += e.event_type == "view"
        row[1].add(canonical.get(e.user_id, e.user_id))
        row[2] += e.event_type == "click"
        row[3] += e.event_type == "purchase"
    return {page: (views, len(users), clicks, purchases) for page, (views, users, clicks, purchases) in counts.items()}


def expected_traffic_sources(evs: list[Event], identities: Identities | None = None) -> dict[tuple, tuple]:
    canonical = canonical_users(identities)
    touches = first_touches(evs)
    rows: dict[tuple, list] = defaultdict(lambda: [0, set(), 0, Decimal(0)])
    for key, s in session_facts(evs).items():
        row = rows[traffic_source(touches[key])]
        row[0] += 1
        row[1].add(canonical.get(s["user"], s["user"]))
        row[2] += s["p"] > 0
        row[3] += s["r"]
    return {
        k: (n, len(users), converted, rounded(Decimal(converted) / n, 4), cents(revenue))
        for k, (n, users, converted, revenue) in rows.items()
    }


MART_QUERIES = {
    "user_event_summary": "SELECT user_id, total_clicks, total_views, total_purchases, total_events "
    "FROM analytics.user_event_summary",
    "event_type_distribution": "SELECT event_type, event_count, user_count, share_of_events "
    "FROM analytics.event_type_distribution",
    "purchase_conversion_by_user": "SELECT user_id, total_views, total_clicks, total_purchases, "
    "purchase_conversion_rate, click_to_purchase_rate FROM analytics.purchase_conversion_by_user",
    "event_timeline": "SELECT event_minute, total_events, views, clicks, purchases, other_events, revenue "
    "FROM analytics.event_timeline",
    "sessions": "SELECT session_id, user_id, started_at, ended_at, duration_seconds, event_count, purchase_count, "
    "revenue, is_converted FROM analytics.sessions",
    "user_engagement": "SELECT user_id, country_code, plan, signed_up_on, session_count, total_events, "
    "total_purchases, converted_sessions, session_conversion_rate, revenue, avg_events_per_session, "
    "avg_session_duration_seconds, first_seen_at, last_seen_at FROM analytics.user_engagement",
    "top_pages": "SELECT page, views, users, clicks, purchases FROM analytics.top_pages",
    "traffic_sources": "SELECT source, medium, campaign, sessions, users, converted_sessions, conversion_rate, revenue "
    "FROM analytics.traffic_sources",
}


KEY_COLUMNS = {"sessions": 2, "traffic_sources": 3}  # a session is the session id and the user's


def marts(dsn: str, names: Iterable[str] | None = None) -> dict[str, dict]:
    """Every mart (or those named) as {key: the other columns}."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for name, sql in MART_QUERIES.items():
            if names is not None and name not in names:
                continue
            width = KEY_COLUMNS.get(name, 1)
            out[name] = {
                (row[0] if width == 1 else tuple(row[:width])): tuple(row[width:]) for row in conn.execute(sql)
            }
    return out


def expected_marts(
    evs: list[Event],
    profiles: dict[int, Profile],
    identities: Identities | None = None,
    forgotten: list[Event] = (),
) -> dict[str, dict]:
    """Every mart from the events in the tables; `forgotten`: deleted users' events, which only the
    minute totals keep."""
    return {
        "user_event_summary": expected_user_event_summary(evs, identities),
        "event_type_distribution": expected_event_type_distribution(evs),
        "purchase_conversion_by_user": expected_purchase_conversion(evs, identities),
        "event_timeline": expected_event_timeline([*evs, *forgotten]),
        "sessions": expected_sessions(evs),
        "user_engagement": expected_user_engagement(evs, profiles, identities),
        "top_pages": expected_top_pages(evs, identities),
        "traffic_sources": expected_traffic_sources(evs, identities),
    }


def differences(got: dict[str, dict], want: dict[str, dict]) -> dict[str, list]:
    """Per mart, the first few keys whose rows differ (empty when all marts match)."""
    out = {}
    for name in want:
        g, w = got[name], want[name]
        bad = [(k, g.get(k), w.get(k)) for k in sorted(set(g) | set(w), key=str) if _norm(g.get(k)) != _norm(w.get(k))]
        if bad:
            out[name] = [f"{len(bad)} of {len(w)} rows differ", *bad[:3]]
    return out


def _norm(row):
    """Numbers compared as Decimals at the mart's precision (share_of_events to 12 places)."""
    if row is None:
        return None
    return tuple(rounded(Decimal(v), 12) if isinstance(v, Decimal) else v for v in row)


# --- product analytics: event_log, identities, deleted users, and their marts' oracles ----------

FUNNELS = {"purchase": (("view", "click", "purchase"), dt.timedelta(minutes=30))}  # dbt_project.yml vars
RETENTION_DAYS = 30


class Product:
    """What the consumer writes for product analytics (streaming.event_log, identities), and a
    deletion as it leaves the tables, written directly; events also go through `Streaming` so that
    event_minutes and sessions hold them. Remembers everything for the oracles."""

    def __init__(self, dsn: str, streaming: Streaming) -> None:
        self.dsn, self.streaming = dsn, streaming
        self.live: list[Event] = []  # events still in event_log
        self.all_events: list[Event] = []  # every event written (event_minutes keeps deleted users')
        self.pairs: dict[tuple[int, int], dt.datetime] = {}
        self.deleted: set[int] = set()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {STREAMING}")

    def write(self, new_events: list[Event]) -> None:
        self.streaming.write(new_events)  # the consumer's code writes event_log too
        self.live += new_events
        self.all_events += new_events

    def identify(self, anonymous_id: int, user_id: int, at: dt.datetime) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                """INSERT INTO streaming.identities (anonymous_id, user_id, identified_at) VALUES (%s, %s, %s)
                   ON CONFLICT (anonymous_id, user_id) DO UPDATE SET
                       identified_at = greatest(streaming.identities.identified_at, excluded.identified_at),
                       written_xid = pg_current_xact_id()""",
                (anonymous_id, user_id, at),
            )
        key = (anonymous_id, user_id)
        self.pairs[key] = max(at, self.pairs.get(key, at))

    def delete(self, user_id: int) -> None:
        """As the deletion leaves streaming: the user's rows gone from every table that holds a user id."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute("DELETE FROM streaming.event_log WHERE user_id = %s", (user_id,))
            conn.execute("DELETE FROM streaming.identities WHERE anonymous_id = %s OR user_id = %s", (user_id, user_id))
            conn.execute("DELETE FROM streaming.sessions WHERE user_id = %s", (user_id,))
            conn.execute("DELETE FROM streaming.user_events WHERE user_id = %s", (user_id,))
            conn.execute(
                "INSERT INTO streaming.deleted_users (user_id) VALUES (%s) ON CONFLICT (user_id) DO UPDATE "
                "SET deleted_at = clock_timestamp(), written_xid = pg_current_xact_id()",
                (user_id,),
            )
        self.live = [e for e in self.live if e.user_id != user_id]
        self.pairs = {k: v for k, v in self.pairs.items() if user_id not in k}
        self.deleted.add(user_id)

    def sessions(self) -> list[Event]:
        """The events whose sessions are still in streaming.sessions."""
        return [e for e in self.all_events if e.user_id not in self.deleted or e in self.live]


def current_identities(pairs: dict[tuple[int, int], dt.datetime]) -> dict[int, int]:
    """anonymous id -> its known user: the pair with the latest identify, ties to the larger user id."""
    best: dict[int, tuple[dt.datetime, int]] = {}
    for (anonymous, user), at in pairs.items():
        if anonymous not in best or (at, user) > best[anonymous]:
            best[anonymous] = (at, user)
    return {a: u for a, (_, u) in best.items()}


def by_canonical_user(evs: list[Event], pairs: dict) -> dict[int, list[Event]]:
    current = current_identities(pairs)
    out: dict[int, list[Event]] = defaultdict(list)
    for e in evs:
        out[current.get(e.user_id, e.user_id)].append(e)
    return out


def funnel_progress_of(
    evs: list[Event], steps: tuple[str, ...], window: dt.timedelta
) -> tuple[int, list[dt.datetime | None]]:
    """One user's (furthest step, earliest time of each step), from the definition: every step-1
    event starts a sequence; each next step is the earliest event of its type strictly after the
    previous step and within the window from the start."""
    ordered = sorted(evs, key=lambda e: e.occurred_at)
    furthest, firsts = 0, [None] * len(steps)
    for start in ordered:
        if start.event_type != steps[0]:
            continue
        reached, at = [start.occurred_at], start.occurred_at
        for step in steps[1:]:
            nxt = next(
                (
                    e.occurred_at
                    for e in ordered
                    if e.event_type == step and at < e.occurred_at <= start.occurred_at + window
                ),
                None,
            )
            if nxt is None:
                break
            reached.append(nxt)
            at = nxt
        furthest = max(furthest, len(reached))
        for k, t in enumerate(reached):
            firsts[k] = t if firsts[k] is None else min(firsts[k], t)
    return furthest, firsts


def expected_funnel_progress(evs: list[Event], pairs: dict) -> dict[tuple[str, int], tuple]:
    width = max(len(s) for s, _ in FUNNELS.values())
    out = {}
    for user, mine in by_canonical_user(evs, pairs).items():
        for name, (steps, window) in FUNNELS.items():
            furthest, firsts = funnel_progress_of(mine, steps, window)
            out[(name, user)] = (furthest, *firsts, *[None] * (width - len(steps)))
    return out


def expected_funnel_conversion(progress: dict[tuple[str, int], tuple]) -> dict[tuple[str, int], tuple]:
    out = {}
    for name, (steps, _) in FUNNELS.items():
        rows = [r for (f, _), r in progress.items() if f == name]
        first = sum(1 for r in rows if r[0] >= 1)
        for k, step in enumerate(steps, 1):
            reached = [r for r in rows if r[0] >= k]
            gaps = [Decimal(str((r[k] - r[k - 1]).total_seconds())) for r in reached] if k > 1 else []
            median = rounded(_median(gaps), 3) if gaps else None
            share = rounded(Decimal(len(reached)) / first, 4) if first else None
            out[(name, k)] = (step, len(reached), share, median)
    return out


def _median(values: list[Decimal]) -> Decimal:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def utc_day(at: dt.datetime) -> dt.date:
    return at.astimezone(dt.UTC).date()


def active_days(evs: list[Event], pairs: dict) -> dict[int, set[dt.date]]:
    return {u: {utc_day(e.occurred_at) for e in mine} for u, mine in by_canonical_user(evs, pairs).items()}


def expected_daily_active_users(product: Product) -> dict[dt.date, tuple]:
    days = active_days(product.live, product.pairs)
    firsts = {u: min(d) for u, d in days.items()}
    sessions: dict[dt.date, int] = defaultdict(int)
    for s in session_facts(product.sessions()).values():
        sessions[utc_day(s["first"])] += 1
    events: dict[dt.date, int] = defaultdict(int)
    for e in product.all_events:
        events[utc_day(e.occurred_at)] += 1
    out = {}
    for day in {d for ds in days.values() for d in ds}:
        active = sum(1 for ds in days.values() if day in ds)
        new = sum(1 for f in firsts.values() if f == day)
        out[day] = (active, new, sessions[day], events[day])
    return out


def expected_retention_cohorts(evs: list[Event], pairs: dict) -> dict[tuple[dt.date, int], tuple]:
    days = active_days(evs, pairs)
    cohorts: dict[dt.date, list[set[dt.date]]] = defaultdict(list)
    for ds in days.values():
        cohorts[min(ds)].append(ds)
    out = {}
    for cohort, members in cohorts.items():
        for n in range(RETENTION_DAYS + 1):
            active = sum(1 for ds in members if cohort + dt.timedelta(days=n) in ds)
            out[(cohort, n)] = (len(members), active, rounded(Decimal(active) / len(members), 4))
    return out


PRODUCT_MART_QUERIES = {
    "funnel_progress": (
        "SELECT funnel, user_id, furthest_step, step_1_at, step_2_at, step_3_at FROM analytics.funnel_progress",
        2,
    ),
    "funnel_conversion": (
        "SELECT funnel, step_number, step, users, share_of_first_step, "
        "median_seconds_from_previous FROM analytics.funnel_conversion",
        2,
    ),
    "daily_active_users": (
        "SELECT activity_date, active_users, new_users, sessions, events FROM analytics.daily_active_users",
        1,
    ),
    "retention_cohorts": (
        "SELECT cohort_date, day_number, cohort_users, active_users, retention FROM analytics.retention_cohorts",
        2,
    ),
}


def product_marts(dsn: str) -> dict[str, dict]:
    out = {}
    with psycopg.connect(dsn) as conn:
        for name, (sql, width) in PRODUCT_MART_QUERIES.items():
            out[name] = {
                (row[0] if width == 1 else tuple(row[:width])): tuple(row[width:]) for row in conn.execute(sql)
            }
    return out


def expected_product_marts(product: Product) -> dict[str, dict]:
    progress = expected_funnel_progress(product.live, product.pairs)
    return {
        "funnel_progress": progress,
        "funnel_conversion": expected_funnel_conversion(progress),
        "daily_active_users": expected_daily_active_users(product),
        "retention_cohorts": expected_retention_cohorts(product.live, product.pairs),
    }
