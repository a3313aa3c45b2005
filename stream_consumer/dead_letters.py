"""`python -m stream_consumer dead-letters list|show|replay|purge`: the refused messages, for operators.

Replay runs the selected dead letters through the current contract: each one that passes now is
added to the aggregates and removed from the dead letters in the same transaction (rows locked, so
two replays at once count nothing twice); the rest stay, with the reason they fail for now.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from dataclasses import dataclass

import psycopg

from common.settings import Settings
from stream_consumer.batch import Batch, Record
from stream_consumer.store import (
    DELETION_LOCK,
    first_line,
    is_data_error,
    load_deleted_users,
    purge_dead_letters,
    write_aggregates,
)

REPLAY_CHUNK = 500


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time (UTC if no zone), or an age: 30m, 12h, 7d ago."""
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return dt.datetime.now(dt.UTC) - dt.timedelta(**{unit: int(m.group(1))})
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601, or an age such as 30m, 12h, 7d)") from None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


@dataclass
class Selection:
    """Which dead letters a command acts on; every condition given must hold."""

    ids: list[int] | None = None
    reason: str | None = None
    topic: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def where(self) -> tuple[str, dict]:
        conds = ["true"]
        params: dict[str, object] = {}
        if self.ids:
            conds.append("id = ANY(%(ids)s)")
            params["ids"] = self.ids
        if self.reason:
            conds.append("reason = %(reason)s")
            params["reason"] = self.reason
        if self.topic:
            conds.append("topic = %(topic)s")
            params["topic"] = self.topic
        if self.since:
            conds.append("received_at >= %(since)s")
            params["since"] = self.since
        if self.until:
            conds.append("received_at < %(until)s")
            params["until"] = self.until
        return " AND ".join(conds), params

    @property
    def empty(self) -> bool:
        return not (self.ids or self.reason or self.topic or self.since or self.until)


def list_dead_letters(settings: Settings, sel: Selection, limit: int, out=sys.stdout) -> int:
    where, params = sel.where()
    with psycopg.connect(settings.consumer_dsn()) as conn:
        groups = conn.execute(
            f"""SELECT topic, reason, count(*), min(received_at), max(received_at)
                FROM streaming.dead_letter_events WHERE {where} GROUP BY 1, 2 ORDER BY 3 DESC""",
            params,
        ).fetchall()
        rows = conn.execute(
            f"""SELECT id, received_at, topic, "partition", "offset", reason, error
                FROM streaming.dead_letter_events WHERE {where} ORDER BY id DESC LIMIT %(limit)s""",
            {**params, "limit": limit},
        ).fetchall()
    total = sum(g[2] for g in groups)
    print(f"{total} dead letters", file=out)
    for topic, reason, n, first, last in groups:
        print(f"  {n:>8}  {topic:<24} {reason:<20} {first:%Y-%m-%d %H:%M:%S} .. {last:%Y-%m-%d %H:%M:%S}", file=out)
    if rows:
        print(f"newest {len(rows)} (dead-letters show ID for one whole):", file=out)
    for id_, at, topic, partition, offset, reason, error in rows:
        print(f"  {id_:>8}  {at:%Y-%m-%d %H:%M:%S}  {topic}[{partition}]@{offset}  {reason}: {error[:100]}", file=out)
    return 0


def show(settings: Settings, id_: int, out=sys.stdout) -> int:
    with psycopg.connect(settings.consumer_dsn()) as conn:
        cur = conn.execute("SELECT * FROM streaming.dead_letter_events WHERE id = %s", (id_,))
        row = cur.fetchone()
        assert cur.description is not None  # a SELECT's
        names = [c.name for c in cur.description]
    if row is None:
        print(f"error: no dead letter with id {id_}", file=sys.stderr)
        return 1
    for name, value in zip(names, row):
        if name != "raw_value":
            print(f"{name}: {value}", file=out)
    print("raw_value:", file=out)
    print(row[names.index("raw_value")], file=out)
    return 0


def purge(dsn: str, older_than_days: int, sel: Selection | None = None) -> int:
    """Deletes the selected dead letters received more than `older_than_days` ago."""
    where, params = (sel or Selection()).where()
    return purge_dead_letters(dsn, older_than_days, where, params)


@dataclass
class ReplayResult:
    counted: int = 0
    refused: int = 0
    not_replayable: int = 0


def replay(settings: Settings, sel: Selection, out=sys.stdout) -> int:
    result = ReplayResult()
    where, params = sel.where()
    after = 0
    with psycopg.connect(settings.consumer_dsn()) as conn:
        while True:
            with conn.transaction():
                # as a batch's transaction: not while a user is being deleted (store.DELETION_LOCK)
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (DELETION_LOCK,))
                rows = conn.execute(
                    f"""SELECT id, topic, "partition", "offset", message_key, raw_value, kafka_timestamp,
                               raw_value_exact
                        FROM streaming.dead_letter_events WHERE {where} AND id > %(after)s
                        ORDER BY id LIMIT %(chunk)s FOR UPDATE SKIP LOCKED""",
                    {**params, "after": after, "chunk": REPLAY_CHUNK},
                ).fetchall()
                if not rows:
                    break
                after = rows[-1][0]
                try:
                    with conn.transaction():  # a savepoint: a chunk Postgres refuses is retried one by one
                        _replay_rows(conn, settings, rows, result)
                    continue
                except psycopg.Error as exc:
                    if not is_data_error(exc):
                        raise
                for row in rows:  # still under the chunk's row locks; the one Postgres refuses stays
                    try:
                        with conn.transaction():
                            _replay_rows(conn, settings, [row], result)
                    except psycopg.Error as exc:
                        if not is_data_error(exc):
                            raise
                        conn.execute(
                            "UPDATE streaming.dead_letter_events SET reason = 'refused_by_postgres', error = %s "
                            "WHERE id = %s",
                            (f"replayed: refused by Postgres (SQLSTATE {exc.sqlstate}): {first_line(exc)}", row[0]),
                        )
                        result.refused += 1
    print(
        f"replayed: {result.counted} now counted (moved from the dead letters into the aggregates), "
        f"{result.refused} still refused (their reason updated), {result.not_replayable} not replayable "
        "(raw value not kept whole: oversize, null or not UTF-8)",
        file=out,
    )
    return 0


def _replay_rows(conn: psycopg.Connection, settings: Settings, rows: list[tuple], result: ReplayResult) -> None:
    batch = Batch.for_settings(settings)
    with conn.cursor() as cur:
        batch.deleted = load_deleted_users(cur)  # a deleted user's dead letter is dropped, not counted
    ids = {}
    messages = []
    counts = ReplayResult()
    for id_, topic, partition, offset, key, raw, kafka_timestamp, exact in rows:
        if not exact:
            counts.not_replayable += 1
            continue
        ids[(topic, partition, offset)] = id_
        key_bytes = None if key is None else key.encode()
        messages.append(
            Record(topic, partition, offset, key_bytes, None if raw is None else raw.encode(), kafka_timestamp)
        )
    batch.add(messages)
    still = batch.dead_letters
    batch.dead_letters = []
    with conn.cursor() as cur:
        write_aggregates(cur, batch)
        for d in still:
            cur.execute(
                "UPDATE streaming.dead_letter_events SET reason = %s, error = %s WHERE id = %s",
                (str(d.reason), f"replayed: {d.error}", ids[(d.topic, d.partition, d.offset)]),
            )
        failed = {(d.topic, d.partition, d.offset) for d in still}
        passed = [id_ for k, id_ in ids.items() if k not in failed]
        cur.execute("DELETE FROM streaming.dead_letter_events WHERE id = ANY(%s)", (passed,))
    counts.counted, counts.refused = len(passed), len(still)
    # Only once the savepoint holds: a chunk retried one by one must not count twice.
    result.counted += counts.counted
    result.refused += counts.refused
    result.not_replayable += counts.not_replayable
