"""python -m kafka_producer: synthetic user-behaviour events into Kafka (see --help)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from common.contract import DEFAULT_MAX_FUTURE_SKEW, EVENT_TIME_FLOOR
from common.settings import load_settings
from kafka_producer.producer import Options, run


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _timestamp(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a time zone, e.g. {text}Z or {text}+00:00")
    # The consumer dead-letters events dated outside the contract's bounds: refuse them here.
    if value < EVENT_TIME_FLOOR:
        raise argparse.ArgumentTypeError(
            f"is before {EVENT_TIME_FLOOR:%Y-%m-%d}, the earliest event time the contract takes"
        )
    if value > dt.datetime.now(dt.UTC) + DEFAULT_MAX_FUTURE_SKEW:
        raise argparse.ArgumentTypeError("is in the future: the consumer refuses events dated after their arrival")
    return value


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m kafka_producer", description=__doc__)
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=settings.producer_rate,
        help="events per second, held steadily; 0 = as fast as possible (default: PRODUCER_RATE)",
    )
    parser.add_argument(
        "--events", type=_non_negative_int, default=None, help="stop after N events (default: run until stopped)"
    )
    parser.add_argument(
        "--users", type=_positive_int, default=settings.producer_users, help="number of users (default: PRODUCER_USERS)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same events")
    parser.add_argument(
        "--start-time",
        type=_timestamp,
        default=None,
        help="fixed clock: occurred_at = START + i/rate instead of the wall clock (ISO 8601 with zone)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print JSON lines to stdout instead of producing (10 unless --events)"
    )
    parser.add_argument(
        "--no-profiles", dest="profiles", action="store_false", help="do not publish user profiles first"
    )
    args = parser.parse_args(argv)
    opts = Options(
        rate=args.rate,
        events=args.events,
        users=args.users,
        seed=args.seed,
        start_time=args.start_time,
        dry_run=args.dry_run,
        profiles=args.profiles,
    )
    return run(settings, opts)


if __name__ == "__main__":
    sys.exit(main())
