"""One test's slice of the pipeline: its own topics and consumer group, real consumer processes,
a producer that remembers exactly what it sent, and checks of the `streaming` tables against it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Producer

from common.contract import MAY_REPEAT_HEADER
from common.topics import ensure_topics
from kafka_producer.events import EventGenerator
from tests.support.ephemeral import ARTIFACTS, ROOT, EphemeralStack, free_port
from tests.support.events import STREAMING_TABLES

PARTITIONS = 6
AGGREGATES = ", ".join((*STREAMING_TABLES, "streaming.dead_letter_events", "streaming.event_ids"))


def malformed(rng: random.Random, valid: bytes) -> tuple[bytes | None, bytes | None, str]:
    """A message that breaks the contract in one of many ways: (key, value, what is wrong)."""
    event = json.loads(valid)
    kind = rng.randrange(12)
    key = str(event["user_id"]).encode()
    if kind == 0:
        return key, b"{not json", "not json"
    if kind == 1:
        return key, b"[1, 2, 3]", "not an object"
    if kind == 2:
        del event["event_id"]
    elif kind == 3:
        event["user_id"] = str(event["user_id"])
    elif kind == 4:
        event["user_id"] = -event["user_id"]
        key = str(event["user_id"]).encode()
    elif kind == 5:
        event["session_id"] = "not-a-uuid"
    elif kind == 6:
        event["occurred_at"] = event["occurred_at"].rstrip("Z")
    elif kind == 7:
        return key, b'{"pad": "' + b"x" * 70_000 + b'"}', "oversize"
    elif kind == 8:
        return key, None, "null value"
    elif kind == 9:
        key = b"not-the-user"
    elif kind == 10:
        event["event_type"], event["amount"] = "view", 12.5
    else:
        return key, b"\xff\xfe\xfa garbage", "not utf-8"
    return key, json.dumps(event).encode(), f"kind {kind}"


class Background:
    """`work()` on a thread; `join()` waits for it and raises what it raised."""

    def __init__(self, work) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
        if self.error is not None:
            raise AssertionError(f"the background producer failed: {self.error!r}") from self.error


@dataclass
class Sent:
    """What the producer delivered, as the tables must show it."""

    counts: Counter = field(default_factory=Counter)  # (user_id, event_type) -> events
    revenue_cents: int = 0
    events: int = 0
    dead_letters: set = field(default_factory=set)  # (partition, offset) of malformed messages
    messages: int = 0
    profiles: int = 0
    # (partition, offset) -> (user_id, event_type, cents) of every valid event: what a test that
    # loses or re-reads a range of a partition on purpose expects instead (`without`)
    at: dict = field(default_factory=dict)
    # (partition, offset) -> Fields of every valid event: the product-analytics tables' oracle
    fields: dict = field(default_factory=dict)

    def without(self, lost) -> Sent:
        """What the tables must show if the events at the (partition, offset)s `lost(p, o)` picks are not counted."""
        kept = Sent(dead_letters={k for k in self.dead_letters if not lost(*k)})
        for (p, o), (user, etype, cents) in self.at.items():
            if not lost(p, o):
                kept.counts[(user, etype)] += 1
                kept.revenue_cents += cents
                kept.events += 1
                kept.fields[(p, o)] = self.fields[(p, o)]
        return kept

    def now_counted(self, partition: int, offset: int, value: bytes) -> None:
        """The message at (partition, offset), a dead letter until now, is counted (a replay)."""
        event = json.loads(value)
        cents = 0 if event.get("amount") is None else round(event["amount"] * 100)
        self.dead_letters.discard((partition, offset))
        self.at[(partition, offset)] = (event["user_id"], event["event_type"], cents)
        self.fields[(partition, offset)] = Fields.of(event)
        self.counts[(event["user_id"], event["event_type"])] += 1
        self.events += 1
        self.revenue_cents += cents


@dataclass(frozen=True)
class Fields:
    """What the product-analytics tables keep of an event (streaming.event_log, user_last_seen,
    identities, sessions' first touch), the referrer as the host the consumer must store."""

    user_id: int
    occurred_at: dt.datetime
    event_type: str
    page: str | None
    session_id: uuid.UUID
    referrer_host: str | None
    utm: tuple[str | None, str | None, str | None]
    identified_user_id: int | None

    @classmethod
    def of(cls, event: dict) -> Fields:
        referrer = event.get("referrer")
        return cls(
            event["user_id"],
            dt.datetime.fromisoformat(event["occurred_at"]),
            event["event_type"],
            event.get("page"),
            uuid.UUID(event["session_id"]),
            None if referrer is None else REFERRER_HOSTS.get(referrer, _host_by_rule(referrer)),
            (event.get("utm_source"), event.get("utm_medium"), event.get("utm_campaign")),
            event.get("identified_user_id"),
        )


#: The referrers the harness sends, with the host the consumer must store (lowercase, no port).
REFERRER_HOSTS = {
    "https://www.Google.com/search?q=coffee": "www.google.com",
    "http://news.example:8080/a/b#c": "news.example",
    "https://[2001:DB8::1]/x": "2001:db8::1",
}


def _host_by_rule(referrer: str) -> str:
    """A referrer's host as the contract describes it: between `//` and the first `/?#` or `:`."""
    netloc = referrer.partition("://")[2]
    for end in "/?#:":
        netloc = netloc.split(end, 1)[0]
    return netloc.lower()


#: The known users the generator's identify events name: 1,000,001 to 1,000,005.
KNOWN_USERS_FROM = 1_000_000


def enrich(rng: random.Random, event: dict) -> bool:
    """Gives a share of the generator's events the product-analytics fields: a referrer and utm_*
    on some, an identify of a known user instead on a few. Whether it changed the event."""
    x = rng.random()
    if x < 0.1:
        event["referrer"] = rng.choice(list(REFERRER_HOSTS))
        event["utm_source"] = rng.choice(["newsletter", "google", None])
        event["utm_campaign"] = rng.choice(["spring sale", None])
        return True
    if x < 0.11:
        # known users apart from the generator's (anonymous) ones: deleting one of those must not
        # take another generated user with it as an id identified as them
        known = KNOWN_USERS_FROM + rng.randint(1, 5)
        event.update(event_type="identify", identified_user_id=known, amount=None, product_id=None)
        return True
    return False


class Pipeline:
    def __init__(self, stack: EphemeralStack, name: str) -> None:
        self.stack = stack
        slug = "".join(c if c.isalnum() else "_" for c in name)[-40:]
        suffix = f"{slug}_{int(time.time() * 1000) % 10**8}"
        self.env = {
            **stack.env,
            "KAFKA_TOPIC": f"ev_{suffix}",
            "KAFKA_PROFILES_TOPIC": f"pr_{suffix}",
            "KAFKA_CONSUMER_GROUP": f"g_{suffix}",
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "CONSUMER_BATCH_MAX_MS": "100",
            # Each consumer of the test serves /metrics and /healthz on its own port from here.
            "CONSUMER_METRICS_PORT": str(free_port(span=8)),
            "CONSUMER_REPLICAS": "8",
        }
        self.topic, self.profiles_topic = self.env["KAFKA_TOPIC"], self.env["KAFKA_PROFILES_TOPIC"]
        self.group = self.env["KAFKA_CONSUMER_GROUP"]
        self.bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
        self.logs = ARTIFACTS / "consumers" / suffix
        self.logs.mkdir(parents=True, exist_ok=True)
        self.consumers: list[subprocess.Popen] = []
        self.sent = Sent()
        self.dsn = stack.owner_dsn()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {AGGREGATES}")
        ensure_topics(self.bootstrap, self.topic, self.profiles_topic, PARTITIONS)

    # --- consumers ---------------------------------------------------------------------------
    def start_consumer(self, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"consumer_{len(self.consumers)}.log", "wb")  # noqa: SIM115 - lives with the process
        # TEST_CONSUMER_MODULE=benchmarks.naive_consumer runs these tests against the reference
        # README's consumer, to see them fail (docs/architecture.md, "The baseline that fails").
        module = os.environ.get("TEST_CONSUMER_MODULE", "stream_consumer")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.consumers.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.consumers if p.poll() is None]

    def close(self) -> None:
        for proc in self.alive():
            proc.send_signal(signal.SIGTERM)
        for proc in self.consumers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    # --- producing ---------------------------------------------------------------------------
    def produce(
        self,
        events: int,
        malformed_share: float = 0.0,
        rate: float = 0,
        seed: int = 1,
        users: int = 100,
        profiles: bool = True,
        partitions: list[int] | None = None,
    ) -> Sent:
        """Sends `events` messages (a share of them malformed) and waits until all are delivered;
        to `partitions` only if given (else by key, as any producer)."""
        rng = random.Random(seed)
        touches = random.Random(seed + 1)  # its own sequence: the malformed messages stay those of the seed
        gen = EventGenerator(users, seed)
        sent = self.sent
        failures: list[str] = []
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
            }
        )

        def delivered(err, msg, good: tuple | None, fields: Fields | None) -> None:
            if err is not None:
                failures.append(str(err))
            elif good is None:
                sent.dead_letters.add((msg.partition(), msg.offset()))
            else:
                sent.at[(msg.partition(), msg.offset())] = good
                sent.fields[(msg.partition(), msg.offset())] = fields

        if profiles:
            for key, value in gen.profiles(dt.datetime.now(dt.UTC)):
                producer.produce(self.profiles_topic, value, key)
                sent.profiles += 1
        t0 = time.monotonic()
        for i in range(events):
            if rate:
                ahead = i / rate - (time.monotonic() - t0)
                if ahead > 0.01:
                    producer.poll(0)
                    time.sleep(ahead)
            key, value = gen.event(time.time())
            good = fields = None
            if rng.random() < malformed_share:
                key, value, _ = malformed(rng, value)
            else:
                event = json.loads(value)
                if enrich(touches, event):
                    value = json.dumps(event).encode()
                fields = Fields.of(event)
                cents = 0 if event["amount"] is None else round(event["amount"] * 100)
                good = (event["user_id"], event["event_type"], cents)
                sent.counts[good[:2]] += 1
                sent.events += 1
                sent.revenue_cents += cents
            where = {} if partitions is None else {"partition": rng.choice(partitions)}
            # Every other event as the collector sends it: the crash tests cover recording ids too.
            headers = [MAY_REPEAT_HEADER] if i % 2 else None
            while True:
                try:
                    producer.produce(
                        self.topic,
                        value,
                        key,
                        headers=headers,
                        on_delivery=lambda e, m, g=good, f=fields: delivered(e, m, g, f),
                        **where,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            sent.messages += 1
            producer.poll(0)
        assert producer.flush(60) == 0, "messages left undelivered"
        assert not failures, failures[:3]
        return sent

    def produce_raw(self, messages: list[tuple[bytes | None, bytes | None, bool]], partition: int = 0) -> None:
        """Sends hand-made (key, value, counted) messages to one partition, in order; `counted`
        says whether the contract accepts it (it is counted) or not (a dead letter)."""
        sent = self.sent
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        offsets: list = []
        for key, value, _ in messages:
            producer.produce(
                self.topic, value, key, partition=partition, on_delivery=lambda e, m: offsets.append((e, m))
            )
            sent.messages += 1
        assert producer.flush(30) == 0
        assert all(err is None for err, _ in offsets), offsets
        for (_, msg), (_, value, counted) in zip(offsets, messages):
            if not counted:
                sent.dead_letters.add((msg.partition(), msg.offset()))
                continue
            event = json.loads(value)
            cents = 0 if event.get("amount") is None else round(event["amount"] * 100)
            sent.at[(msg.partition(), msg.offset())] = (event["user_id"], event["event_type"], cents)
            sent.fields[(msg.partition(), msg.offset())] = Fields.of(event)
            sent.counts[(event["user_id"], event["event_type"])] += 1
            sent.events += 1
            sent.revenue_cents += cents

    def health(self, consumer: int = 0) -> tuple[int, str]:
        """GET /healthz of a consumer (its port is in its log): (status, body)."""
        return self._consumer_get(consumer, "/healthz")

    def consumer_metrics(self, consumer: int = 0) -> str:
        """GET /metrics of a consumer."""
        status, body = self._consumer_get(consumer, "/metrics")
        assert status == 200, (status, body)
        return body

    def _consumer_get(self, consumer: int, path: str) -> tuple[int, str]:
        import re
        import urllib.error
        import urllib.request

        found = re.search(
            r"metrics on http://[\d.]+:(\d+)/metrics", (self.logs / f"consumer_{consumer}.log").read_text()
        )
        if found is None:
            return 0, "not serving yet"
        port = found.group(1)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    @contextlib.contextmanager
    def commits_held(self) -> Iterator[None]:
        """While open, every commit of the group waits: a transaction holds its offset rows."""
        with psycopg.connect(self.dsn) as blocker:
            blocker.execute(
                "SELECT * FROM streaming.consumer_offsets WHERE consumer_group = %s FOR UPDATE", (self.group,)
            )
            yield

    def produce_in_background(self, **kwargs) -> Background:
        return Background(lambda: self.produce(**kwargs))

    # --- checking ----------------------------------------------------------------------------
    def stored_offsets(self) -> dict[str, int]:
        if os.environ.get("TEST_CONSUMER_MODULE"):
            return self.kafka_committed_offsets()
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT topic, sum(next_offset) FROM streaming.consumer_offsets "
                "WHERE consumer_group = %s GROUP BY topic",
                (self.group,),
            ).fetchall()
        return {t: int(n) for t, n in rows}

    def kafka_committed_offsets(self) -> dict[str, int]:
        """The group's Kafka-side committed offsets (all the reference consumer keeps)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "log_level": 0})
        try:
            tps = c.committed([TopicPartition(self.topic, p) for p in range(PARTITIONS)], timeout=10)
            # The reference consumer never reads the profiles topic: count it as done.
            return {self.topic: sum(max(tp.offset, 0) for tp in tps), self.profiles_topic: self.sent.profiles}
        finally:
            c.close()

    def wait_until_consumed(self, timeout: float = 180) -> None:
        if os.environ.get("TEST_CONSUMER_MODULE"):
            timeout *= 4  # the reference consumer is ~50x slower
        """Until the stored offsets cover every message sent (offsets of a fresh topic have no gaps)."""
        deadline = time.monotonic() + timeout
        want = {self.topic: self.sent.messages, self.profiles_topic: self.sent.profiles}
        while time.monotonic() < deadline:
            got = self.stored_offsets()
            if all(got.get(t, 0) >= n for t, n in want.items() if n):
                return
            time.sleep(0.25)
        raise AssertionError(
            f"not consumed within {timeout} s: stored {self.stored_offsets()}, sent {want}\n{self.describe_consumers()}"
        )

    def describe_consumers(self) -> str:
        """Each consumer's state and the end of its log, for a failure message."""
        parts = []
        for i, proc in enumerate(self.consumers):
            code = proc.poll()
            state = "running" if code is None else f"exited with {code}"
            tail = (self.logs / f"consumer_{i}.log").read_text(errors="replace").splitlines()[-15:]
            parts.append(f"consumer {i} ({state}), last lines of its log:\n" + "\n".join(tail))
        return "\n".join(parts)

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def counts(self) -> Counter:
        return Counter(
            {(u, e): n for u, e, n in self.query("SELECT user_id, event_type, event_count FROM streaming.user_events")}
        )

    def dead_letter_offsets(self) -> list[tuple[int, int]]:
        return [
            (p, o)
            for p, o in self.query(
                'SELECT "partition", "offset" FROM streaming.dead_letter_events WHERE topic = %s', self.topic
            )
        ]

    def assert_exactly_once(self, sent: Sent | None = None) -> None:
        """Every aggregate shows each delivered event exactly once, and each malformed message once
        (or what `sent` says instead)."""
        sent = sent or self.sent
        counts = self.counts()
        assert counts == sent.counts, (
            f"user_events counts {sum(counts.values()):,} events for {sent.events:,} delivered; "
            f"{sum(1 for k in sent.counts if counts[k] > sent.counts[k])} pairs over-counted, "
            f"{sum(1 for k in sent.counts if counts[k] < sent.counts[k])} under-counted"
        )
        dead = self.dead_letter_offsets()
        assert len(dead) == len(set(dead)) == len(sent.dead_letters)
        assert set(dead) == sent.dead_letters
        [(minutes, revenue)] = self.query("SELECT sum(event_count), sum(revenue) FROM streaming.event_minutes")
        assert (int(minutes or 0), int(round((revenue or 0) * 100))) == (sent.events, sent.revenue_cents)
        [(sessions, session_revenue)] = self.query("SELECT sum(event_count), sum(revenue) FROM streaming.sessions")
        assert (int(sessions or 0), int(round((session_revenue or 0) * 100))) == (sent.events, sent.revenue_cents)
        self.assert_product_tables(sent)

    def assert_product_tables(self, sent: Sent) -> None:
        """streaming.event_log holds one row per delivered event, and user_last_seen, identities and
        sessions' first touch are what the events say (a session's earliest event; of events at the
        same time, any one: several partitions may hold a session's events, in no order between them)."""
        events = list(sent.fields.values())
        log = Counter(self.query("SELECT user_id, occurred_at, event_type, page FROM streaming.event_log"))
        want = Counter((f.user_id, f.occurred_at, f.event_type, f.page) for f in events)
        assert log == want, (
            f"event_log holds {sum(log.values()):,} rows for {len(events):,} events: "
            f"{sum((log - want).values())} too many, {sum((want - log).values())} missing"
        )
        last_seen: dict[int, dt.datetime] = {}
        identities: dict[tuple[int, int], dt.datetime] = {}
        firsts: dict[tuple[uuid.UUID, int], list[Fields]] = {}
        for f in events:
            last_seen[f.user_id] = max(last_seen.get(f.user_id, f.occurred_at), f.occurred_at)
            if f.identified_user_id is not None:
                pair = (f.user_id, f.identified_user_id)
                identities[pair] = max(identities.get(pair, f.occurred_at), f.occurred_at)
            first = firsts.setdefault((f.session_id, f.user_id), [f])
            if f.occurred_at < first[0].occurred_at:
                firsts[(f.session_id, f.user_id)] = [f]
            elif f.occurred_at == first[0].occurred_at and f is not first[0]:
                first.append(f)
        assert dict(self.query("SELECT user_id, last_seen_at FROM streaming.user_last_seen")) == last_seen
        rows = self.query("SELECT anonymous_id, user_id, identified_at FROM streaming.identities")
        assert {(a, u): at for a, u, at in rows} == identities
        touch = self.query(
            "SELECT session_id, user_id, landing_page, referrer_host, utm_source, utm_medium, utm_campaign "
            "FROM streaming.sessions"
        )
        wrong = [
            (s, u, *rest)
            for s, u, *rest in touch
            if tuple(rest) not in {(f.page, f.referrer_host, *f.utm) for f in firsts.get((s, u), [])}
        ]
        assert len(touch) == len(firsts) and not wrong, f"{len(wrong)} sessions' first touch wrong: {wrong[:3]}"


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
