"""`python -m stream_consumer dead-letters list|show|replay|purge` and DEAD_LETTER_RETENTION_DAYS,
on a real broker and Postgres with the real consumer."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time

from tests.integration.pipeline_harness import Pipeline
from tests.integration.test_hostile_input import event, owner, wait_for
from tests.support.ephemeral import ROOT


def tool(pipeline: Pipeline, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_consumer", "dead-letters", *args],
        env={**pipeline.env, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def dead_letters(pipeline: Pipeline) -> list[tuple]:
    return pipeline.query(
        'SELECT id, "offset", reason FROM streaming.dead_letter_events WHERE topic = %s ORDER BY "offset"',
        pipeline.topic,
    )


def test_list_counts_by_topic_and_reason_and_show_gives_the_raw_message(pipeline: Pipeline):
    pipeline.start_consumer()
    pipeline.produce_raw([(b"1", b"{not json", False), (b"1", b"[1]", False), (b"2", b"{also not", False)])
    pipeline.wait_until_consumed()
    listed = tool(pipeline, "list", "--topic", pipeline.topic)
    assert re.search(rf"\b2\s+{pipeline.topic}\s+malformed", listed.stdout), listed.stdout
    assert re.search(rf"\b1\s+{pipeline.topic}\s+contract", listed.stdout), listed.stdout
    only = tool(pipeline, "list", "--topic", pipeline.topic, "--reason", "contract")
    assert only.stdout.startswith("1 dead letters"), only.stdout
    first_id = dead_letters(pipeline)[0][0]
    shown = tool(pipeline, "show", str(first_id))
    assert shown.returncode == 0 and shown.stdout.rstrip().endswith("{not json")


def test_replay_counts_what_the_current_contract_accepts_exactly_once_and_keeps_the_rest(pipeline: Pipeline):
    pipeline.start_consumer()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)  # past the default 5 minutes of skew
    early = event(7, soon)
    pipeline.produce_raw([(b"7", early, False), (b"8", b"{broken", False)])
    pipeline.produce(events=1_000, seed=31)
    pipeline.wait_until_consumed()
    (early_id, early_offset, reason), (broken_id, _, _) = dead_letters(pipeline)[:2]
    assert reason == "event_time"
    # The operator widens the skew (the producer's clock runs 20 minutes ahead) and replays both, twice at once.
    wider = {"CONSUMER_MAX_FUTURE_SKEW": "3600"}
    replays = [
        subprocess.Popen(
            [sys.executable, "-m", "stream_consumer", "dead-letters", "replay", "--topic", pipeline.topic],
            env={**pipeline.env, **wider},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in replays]
    counted = sum(int(re.search(r"replayed: (\d+) now counted", out).group(1)) for out in outputs)
    assert counted == 1, outputs
    pipeline.sent.now_counted(0, early_offset, early)
    pipeline.assert_exactly_once()
    [(still, error)] = pipeline.query("SELECT reason, error FROM streaming.dead_letter_events WHERE id = %s", broken_id)
    assert still == "malformed" and error.startswith("replayed: ")
    again = tool(pipeline, "replay", str(early_id), str(broken_id), **wider)
    assert "replayed: 0 now counted" in again.stdout


def test_replay_asks_which_dead_letters(pipeline: Pipeline):
    refused = tool(pipeline, "replay")
    assert refused.returncode != 0 and "say which dead letters to replay" in refused.stderr


def test_purge_deletes_only_dead_letters_older_than_the_retention(pipeline: Pipeline):
    pipeline.start_consumer()
    pipeline.produce_raw([(b"1", b"{old", False), (b"1", b"{new", False)])
    pipeline.wait_until_consumed()
    [(old_id, _, _), (new_id, _, _)] = dead_letters(pipeline)
    owner(
        pipeline,
        "UPDATE streaming.dead_letter_events SET received_at = now() - interval '40 days' WHERE id = %s",
        old_id,
    )
    purged = tool(pipeline, "purge", "--topic", pipeline.topic)
    assert purged.stdout.startswith("purged 1 dead letters older than 30 days"), purged.stdout + purged.stderr
    assert [d[0] for d in dead_letters(pipeline)] == [new_id]


def test_the_consumer_applies_the_retention_by_itself(pipeline: Pipeline):
    pipeline.start_consumer()
    pipeline.produce_raw([(b"1", b"{stale", False), (b"1", b"{fresh", False)])
    pipeline.wait_until_consumed()
    pipeline.close()
    [(stale_id, _, _), (fresh_id, _, _)] = dead_letters(pipeline)
    owner(
        pipeline,
        "UPDATE streaming.dead_letter_events SET received_at = now() - interval '3 days' WHERE id = %s",
        stale_id,
    )
    pipeline.env["DEAD_LETTER_RETENTION_DAYS"] = "2"
    pipeline.start_consumer()
    wait_for(lambda: [d[0] for d in dead_letters(pipeline)] == [fresh_id], 30, "the consumer to purge the stale one")
    time.sleep(1)
    assert [d[0] for d in dead_letters(pipeline)] == [fresh_id]
