"""The funnel oracle of the dbt harness (tests/integration/dbt_harness.py), which
test_dbt_product_marts holds funnel_progress to: its definition on hand-made cases, the same
answers as a brute force over every ordered choice of step events, and the incremental build's
premise (a new sequence lies within a window of a new event)."""

import datetime as dt
import itertools
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.dbt_harness import Event, funnel_progress_of

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
STEPS = ("view", "click", "purchase")
WINDOW = dt.timedelta(minutes=30)
S = uuid.UUID(int=1, version=4)


def at(minutes: float, event_type: str) -> Event:
    return Event(1, event_type, S, T0 + dt.timedelta(minutes=minutes))


def test_steps_count_only_in_order():
    assert funnel_progress_of([at(0, "view"), at(1, "purchase")], STEPS, WINDOW) == (1, [T0, None, None])
    assert funnel_progress_of([at(0, "click"), at(1, "purchase")], STEPS, WINDOW) == (0, [None, None, None])
    assert funnel_progress_of([at(2, "purchase"), at(1, "click"), at(0, "view")], STEPS, WINDOW)[0] == 3


def test_the_window_runs_from_the_first_step_and_includes_its_end():
    assert funnel_progress_of([at(0, "view"), at(10, "click"), at(30, "purchase")], STEPS, WINDOW)[0] == 3
    assert funnel_progress_of([at(0, "view"), at(10, "click"), at(30.01, "purchase")], STEPS, WINDOW)[0] == 2


def test_a_step_must_come_strictly_after_the_previous_one():
    assert funnel_progress_of([at(0, "view"), at(0, "click")], STEPS, WINDOW)[0] == 1


def test_each_step_time_is_the_earliest_over_every_start():
    # the first view's sequence stops at click (its purchase is out of its window), a later view's completes
    evs = [at(0, "view"), at(5, "click"), at(40, "view"), at(41, "click"), at(50, "purchase")]
    assert funnel_progress_of(evs, STEPS, WINDOW) == (
        3,
        [T0, T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(minutes=50)],
    )


def brute_force(evs: list[Event]) -> tuple[int, list]:
    """Every ordered choice of one event per step, strictly increasing in time, within the window
    from the first: the longest prefix reached, and each step's earliest time."""
    furthest, firsts = 0, [None] * len(STEPS)
    for k in range(1, len(STEPS) + 1):
        candidates = [[e.occurred_at for e in evs if e.event_type == s] for s in STEPS[:k]]
        for path in itertools.product(*candidates):
            if all(a < b for a, b in itertools.pairwise(path)) and path[-1] <= path[0] + WINDOW:
                furthest = max(furthest, k)
                firsts[k - 1] = path[-1] if firsts[k - 1] is None else min(firsts[k - 1], path[-1])
    return furthest, firsts


events = st.lists(
    st.builds(at, st.integers(0, 120).map(lambda m: m / 2), st.sampled_from([*STEPS, "share"])), max_size=9
)


@settings(max_examples=300)
@given(events)
def test_the_oracle_agrees_with_a_brute_force_over_every_sequence(evs):
    assert funnel_progress_of(evs, STEPS, WINDOW) == brute_force(evs)


def merge(a: tuple[int, list], b: tuple[int, list]) -> tuple[int, list]:
    return max(a[0], b[0]), [x if y is None else y if x is None else min(x, y) for x, y in zip(a[1], b[1])]


@settings(max_examples=300)
@given(events, events)
def test_old_progress_merged_with_the_windows_around_new_events_is_the_whole(old, new):
    """What an incremental build of funnel_progress does: the kept row (the old events' progress)
    merged with the progress over the events within a window of the new ones equals the progress
    over all events."""
    everything = old + new
    progress = funnel_progress_of(old, STEPS, WINDOW)
    for e in new:
        near = [x for x in everything if e.occurred_at - WINDOW <= x.occurred_at <= e.occurred_at + WINDOW]
        progress = merge(progress, funnel_progress_of(near, STEPS, WINDOW))
    assert progress == funnel_progress_of(everything, STEPS, WINDOW)
