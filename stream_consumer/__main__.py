"""python -m stream_consumer [COMMAND]: the stream consumer and its operator tools.

run                      one member of the consumer group (the default; run it N times for N)
rebuild [--force]        replay: reset the aggregates and offsets, reconsume the topics
offsets show             each partition's stored offset against its log
offsets reset --to earliest|latest [--topic T] [--partition N] [--yes]
                         move stored offsets, after saying what is skipped or read twice
dead-letters list|show|replay|purge
                         the messages the contract refused
users delete [--suppress] USER_ID...
                         forget users: every streaming row of theirs, their dead letters, a
                         tombstone on user_profiles; --suppress also drops their later events
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from common.settings import load_settings

if TYPE_CHECKING:
    from stream_consumer.dead_letters import Selection


def _selection(args) -> Selection:
    from stream_consumer.dead_letters import Selection, parse_time

    try:
        return Selection(
            ids=getattr(args, "ids", None),
            reason=args.reason,
            topic=args.topic,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stream_consumer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run", help="consume until stopped (default)")
    rb = sub.add_parser("rebuild", help="reset the aggregates and offsets in one transaction, then reconsume")
    rb.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if retention deleted the start of a log (its counts are lost)",
    )

    off = sub.add_parser("offsets", help="stored offsets against the logs").add_subparsers(dest="action", required=True)
    off.add_parser("show", help="each partition: stored offset, the log's range, lag; exit 1 if one is outside")
    reset = off.add_parser(
        "reset",
        help="move stored offsets to the start or the end of their log",
        description="Without --partition: the partitions whose stored offset is outside their log (the ones the "
        "consumer refuses to read). Says what is skipped or read twice, then asks (or --yes).",
    )
    reset.add_argument("--to", choices=["earliest", "latest"], required=True)
    reset.add_argument("--topic", help="default: KAFKA_TOPIC")
    reset.add_argument("--partition", type=int)
    reset.add_argument("--yes", action="store_true", help="do not ask")

    dl = sub.add_parser("dead-letters", help="the refused messages").add_subparsers(dest="action", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--reason", help="e.g. contract, malformed, event_time, oversize, key_mismatch")
    filters.add_argument("--topic")
    filters.add_argument("--since", help="received at or after: ISO 8601 or an age (30m, 12h, 7d)")
    filters.add_argument("--until", help="received before: ISO 8601 or an age")
    ls = dl.add_parser("list", parents=[filters], help="counts by topic and reason, then the newest")
    ls.add_argument("--limit", type=int, default=20)
    dl.add_parser("show", help="one dead letter whole, raw message included").add_argument("id", type=int)
    rp = dl.add_parser(
        "replay",
        parents=[filters],
        help="run dead letters through the current contract: the ones that pass are counted (once) and removed",
    )
    rp.add_argument("ids", nargs="*", type=int, help="dead letter ids (default: every one the filters select)")
    rp.add_argument("--all", action="store_true", help="replay every dead letter (needed when nothing else selects)")
    pg = dl.add_parser("purge", parents=[filters], help="delete dead letters received more than N days ago")
    pg.add_argument("--older-than", type=int, metavar="DAYS", help="default: DEAD_LETTER_RETENTION_DAYS")

    from stream_consumer.users import user_id

    us = sub.add_parser("users", help="forget users").add_subparsers(dest="action", required=True)
    de = us.add_parser(
        "delete",
        help="delete users from every streaming table, their dead letters, and their profile from Kafka",
        description="In one transaction: a tombstone per user on the profiles topic, the users (and the anonymous "
        "ids identified as them) recorded in streaming.deleted_users, and every row of theirs deleted from every "
        "streaming table that holds a user id. The marts drop them on their next build.",
    )
    de.add_argument("ids", nargs="+", type=user_id, metavar="USER_ID")
    de.add_argument(
        "--suppress", action="store_true", help="also drop every later event of theirs (default: later events count)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    settings = load_settings()
    command = args.command or "run"
    if command == "run":
        from stream_consumer.consumer import StreamConsumer

        StreamConsumer(settings).run()
        return 0
    if command == "rebuild":
        from stream_consumer.offsets import rebuild

        return rebuild(settings, args.force)
    if command == "offsets":
        from stream_consumer import offsets

        if args.action == "show":
            return offsets.show(settings)
        return offsets.reset(settings, args.to, args.topic, args.partition, args.yes)
    if command == "users":
        from stream_consumer.users import delete

        return delete(settings, args.ids, args.suppress)
    from stream_consumer import dead_letters

    if args.action == "show":
        return dead_letters.show(settings, args.id)
    sel = _selection(args)
    if args.action == "list":
        return dead_letters.list_dead_letters(settings, sel, args.limit)
    if args.action == "replay":
        if sel.empty and not args.all:
            raise SystemExit("error: say which dead letters to replay: ids, --reason/--topic/--since/--until, or --all")
        return dead_letters.replay(settings, sel)
    days = settings.dead_letter_retention_days if args.older_than is None else args.older_than
    if not days:
        raise SystemExit("error: DEAD_LETTER_RETENTION_DAYS is 0 (keep forever): give --older-than DAYS")
    print(f"purged {dead_letters.purge(settings.consumer_dsn(), days, sel)} dead letters older than {days} days")
    return 0


if __name__ == "__main__":
    sys.exit(main())
