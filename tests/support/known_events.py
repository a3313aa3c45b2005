"""Known events for the end-to-end checks: built by hand on the event contract, produced to the
stack's topic, and the numbers every chart must show because of them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Producer

from tests.support.events import event as build_event


def event(user_id: int, event_type: str, session_id: str, at: dt.datetime, amount: float | None = None) -> dict:
    return build_event(
        user_id,
        event_type,
        session_id=session_id,
        occurred_at=at,
        amount=amount,
        timespec="milliseconds",
        page=f"/products/{user_id % 50}",
        product_id=user_id % 50 if event_type == "purchase" else None,
        device="desktop",
        country="DE",
    )


@dataclass
class UserPlan:
    """One test user: two sessions (30 s and 20 s long); all purchases in the first."""

    user_id: int
    views: int
    clicks: int
    purchases: int
    shares: int  # an event type the dashboards don't know: counted, not rejected
    price: float

    @property
    def total(self) -> int:
        return self.views + self.clicks + self.purchases + self.shares

    @property
    def revenue(self) -> float:
        return round(self.purchases * self.price, 2)

    def events(self, now: dt.datetime) -> list[dict]:
        types = (
            ["purchase"] * self.purchases + ["view"] * self.views + ["click"] * self.clicks + ["share"] * self.shares
        )
        half = (len(types) + 1) // 2
        out = []
        for session, chunk, span in ((str(uuid.uuid4()), types[:half], 30.0), (str(uuid.uuid4()), types[half:], 20.0)):
            for i, kind in enumerate(chunk):
                at = now - dt.timedelta(seconds=span * (1 - i / (len(chunk) - 1)))
                out.append(event(self.user_id, kind, session, at, self.price if kind == "purchase" else None))
        return out


@dataclass
class KnownEvents:
    users: list[UserPlan]
    by_type: Counter = field(default_factory=Counter)
    events: list[dict] = field(default_factory=list)

    @property
    def user_ids(self) -> list[int]:
        return [u.user_id for u in self.users]

    def build(self, now: dt.datetime) -> KnownEvents:
        for user in self.users:
            self.events += user.events(now)
        self.by_type = Counter(e["event_type"] for e in self.events)
        return self


def plan(first_user_id: int, above: int) -> KnownEvents:
    """Five users whose totals all exceed `above` (so they are the top users), in a known order."""
    users = []
    for k in range(5):
        total = above + 100 - 10 * k
        purchases, clicks, shares = 3 + k, 20, 2
        users.append(
            UserPlan(first_user_id + k, total - purchases - clicks - shares, clicks, purchases, shares, 10.0 + k)
        )
    return KnownEvents(users)


def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    failures: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for e in events:
        producer.produce(
            topic,
            json.dumps(e).encode(),
            str(e["user_id"]).encode(),
            on_delivery=lambda err, _msg: err and failures.append(str(err)),
        )
        producer.poll(0)
    assert producer.flush(60) == 0, "messages left undelivered"
    assert not failures, failures[:3]
