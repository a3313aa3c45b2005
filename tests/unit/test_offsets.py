"""What `offsets reset` says it will do to a partition, before it does it."""

import pytest

from stream_consumer.offsets import PartitionState


def state(stored, low, high):
    return PartitionState("user_events", 0, stored, low, high)


@pytest.mark.parametrize(
    ("stored", "low", "high", "to", "new", "says"),
    [
        (100, 0, 100, "earliest", 0, "reads offsets 0..99 again (100 messages)"),
        (40, 0, 100, "latest", 100, "SKIPS offsets 40..99 (60 messages)"),
        (40, 0, 100, "earliest", 0, "COUNTED TWICE"),
        (10, 50, 100, "earliest", 50, "offsets 10..49 (40 messages) are gone from Kafka"),
        (10, 50, 100, "latest", 100, "SKIPS offsets 50..99 (50 messages)"),
        (150, 0, 100, "earliest", 0, "reads offsets 0..99 of the current log"),
        (150, 0, 100, "latest", 100, "SKIPS"),
        (100, 0, 100, "latest", 100, "stays where it is"),
        (None, 5, 100, "earliest", 5, "no stored offset yet"),
    ],
)
def test_the_plan_says_what_is_skipped_lost_or_read_twice(stored, low, high, to, new, says):
    offset, what = state(stored, low, high).plan(to)
    assert offset == new and says in what, what


@pytest.mark.parametrize(
    ("stored", "problem"),
    [(100, ""), (0, ""), (None, ""), (5, "below the log's start"), (101, "past the log's end")],
)
def test_a_stored_offset_outside_the_log_is_a_problem(stored, problem):
    s = state(stored, 0 if stored in (0, None) else 10, 100)
    assert (problem in s.problem) and (bool(s.problem) == bool(problem))
