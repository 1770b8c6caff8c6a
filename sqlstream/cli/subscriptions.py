"""The command-line side of subscriptions and readers.

``subscribe``, ``unsubscribe``, ``subscriptions``, ``fetch``, ``ack``, ``nack``,
``extend-deadline``, ``pending``, ``reader``, ``seek``, ``reset``, ``configure``, ``claim``,
``autoclaim`` and ``redrive``. They follow the CLI's conventions (:mod:`sqlstream.cli.main`'s
docstring is the output contract): ``--json`` prints one object per line, errors are ``Error:``
and ``Hint:`` lines on stderr with exit status 1. ``fetch --json`` prints the record
objects of ``read --json`` with two more fields, ``subscription`` and ``attempts``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
from typing import IO, TYPE_CHECKING, Any

from .args import (
    CommandFactory,
    open_db,
    parse_offset,
    parse_positive_int,
    parse_positive_seconds,
    parse_seconds,
    parse_start,
    strict_float,
)
from .output import EXIT_OK, CliError, as_dict, dump, iso_time, print_records, record_json, record_line, render_table

# The core is imported by the handlers that use it, not here: `sqlstream --version` and
# `-h` build the whole parser but open no database (tests/test_startup.py).
if TYPE_CHECKING:
    from ..subscriptions import AckResult, Batch, SubscriptionInfo

def _start_arg(text: str) -> int | str:
    value = parse_start(text)
    return value if value in ("earliest", "latest") else int(value)


def info_json(info: SubscriptionInfo) -> dict[str, Any]:
    """The stable JSON form of a subscription; times are float seconds."""
    return as_dict(info)


# --------------------------------------------------------------------------- commands


def cmd_subscribe(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Create a subscription."""
    with open_db(args, write=True) as db:
        before = {i.name for i in db.subscriptions()} if args.exist_ok else set()
        sub = db.create_subscription(
            args.name, args.stream, start=args.start, ack_timeout=args.ack_timeout,
            max_unacked=args.max_unacked, max_deliveries=args.max_deliveries,
            dead_letter=args.dead_letter, exist_ok=args.exist_ok, ordering=args.ordering,
        )
        info = sub.info()
    created = info.name not in before
    if args.json:
        out.write(dump({**info_json(info), "created": created}) + "\n")
    elif created:
        out.write(f"created subscription {info.name!r} on {info.stream!r} from offset {info.start_offset}\n")
    else:
        out.write(f"subscription {info.name!r} already exists\n")
    return EXIT_OK


def cmd_unsubscribe(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Delete a subscription."""
    with open_db(args, write=True) as db:
        dropped = db.delete_subscription(args.name, force=args.force)
    if args.json:
        out.write(dump({"subscription": args.name, "deleted": True, "dropped_pending": dropped}) + "\n")
    else:
        extra = f" (dropped {dropped} pending record(s))" if dropped else ""
        out.write(f"deleted subscription {args.name!r}{extra}\n")
    return EXIT_OK


def cmd_subscriptions(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """List subscriptions with their progress."""
    with open_db(args, write=False) as db:
        infos = db.subscriptions()
    if args.json:
        out.write("".join(dump(info_json(i)) + "\n" for i in infos))
        return EXIT_OK
    columns = ["name", "stream", "lag", "pending", "expired", "acked", "dead", "frontier", "consumers"]
    rows = [
        (i.name, i.stream, i.lag, i.pending, i.expired, i.acked, i.dead_lettered, i.acked_frontier,
         ",".join(f"{c}:{n}" for c, n in i.consumers.items()) or None)
        for i in infos
    ]
    out.write("".join(line + "\n" for line in render_table(columns, rows)))
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Claim records for a consumer and print them."""
    with open_db(args, write=True) as db:
        sub = db.subscription(args.name)
        batch = sub.fetch(args.consumer, args.max, timeout=args.timeout)
        if args.ack and batch:
            sub.ack(*batch.offsets)
    if args.json:
        out.write("".join(
            dump({**record_json(r), "subscription": args.name, "attempts": batch.attempts[r.offset]}) + "\n"
            for r in batch
        ))
    else:
        for r in batch:
            n = batch.attempts[r.offset]
            out.write(record_line(r) + (f"\t(attempt {n})" if n > 1 else "") + "\n")
    return EXIT_OK


def _report(result: AckResult, verb: str, args: argparse.Namespace, out: IO[str], err: IO[str]) -> None:
    if args.json:
        body: dict[str, Any] = {"subscription": args.name, verb: list(result.applied), "ignored": list(result.ignored)}
        if verb == "nacked":
            body["dead_lettered"] = list(result.dead_lettered)
        out.write(dump(body) + "\n")
    else:
        out.write("".join(f"{o}\n" for o in result.applied))
    if result.ignored:
        err.write(f"note: not pending, ignored: {' '.join(map(str, result.ignored))}\n")
    if result.dead_lettered:
        err.write(f"note: moved to the dead-letter stream: {' '.join(map(str, result.dead_lettered))}\n")


def cmd_ack(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Acknowledge records."""
    with open_db(args, write=True) as db:
        result = db.subscription(args.name).ack(*args.offsets)
    _report(result, "acked", args, out, err)
    return EXIT_OK


def cmd_nack(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Hand records back for redelivery."""
    with open_db(args, write=True) as db:
        result = db.subscription(args.name).nack(*args.offsets, delay=args.delay, error=args.error)
    _report(result, "nacked", args, out, err)
    return EXIT_OK


def cmd_extend_deadline(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Push the ack deadline of records a consumer holds to --seconds from now."""
    with open_db(args, write=True) as db:
        result = db.subscription(args.name).extend_deadline(*args.offsets, seconds=args.seconds)
    _report(result, "extended", args, out, err)
    return EXIT_OK


def cmd_pending(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """List a subscription's pending records."""
    with open_db(args, write=False) as db:
        entries = db.subscription(args.name).pending(consumer=args.consumer, limit=args.limit)
    if args.json:
        out.write("".join(dump(e._asdict()) + "\n" for e in entries))
        return EXIT_OK
    columns = ["offset", "consumer", "attempts", "idle_s", "deadline", "expired", "last_error"]
    rows = [
        (e.offset, e.consumer or "(nacked)", e.attempts, round(e.idle, 3), iso_time(e.deadline),
         "yes" if e.expired else "no", e.last_error)
        for e in entries
    ]
    out.write("".join(line + "\n" for line in render_table(columns, rows)))
    return EXIT_OK


def cmd_reader(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Read from a named reader (advancing it), or list, seek or delete readers."""
    if args.list:
        with open_db(args, write=False) as db:
            readers = db.readers()
        if args.json:
            out.write("".join(dump(as_dict(r)) + "\n" for r in readers))
        else:
            rows = [(r.name, r.stream, r.position, r.lag, iso_time(r.updated_at)) for r in readers]
            out.write("".join(line + "\n" for line in render_table(
                ["name", "stream", "position", "lag", "updated"], rows)))
        return EXIT_OK
    if args.name is None:
        raise CliError("name the reader (or pass --list)", hint="sqlstream reader NAME STREAM")
    with open_db(args, write=True) as db:
        if args.delete:
            db.delete_reader(args.name)
            out.write(dump({"reader": args.name, "deleted": True}) + "\n" if args.json
                      else f"deleted reader {args.name!r}\n")
            return EXIT_OK
        reader = db.reader(args.name, args.stream, start=args.start)
        if args.seek is not None:
            position = reader.seek(args.seek)
            out.write(dump({"reader": args.name, "position": position}) + "\n" if args.json
                      else f"reader {args.name!r} is at offset {position}\n")
            return EXIT_OK
        records = reader.read(args.limit, timeout=args.timeout)
    print_records(records, args.json, out)
    return EXIT_OK


def _at_arg(text: str) -> float | _dt.datetime:
    """--at: seconds since the epoch, or an ISO 8601 time (naive means local time)."""
    with contextlib.suppress(argparse.ArgumentTypeError):
        return strict_float(text)
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds since the epoch or an ISO 8601 time, not {text!r}"
        ) from None


def _moved(args: argparse.Namespace, out: IO[str], position: int) -> int:
    out.write(dump({"subscription": args.name, "position": position}) + "\n" if args.json
              else f"subscription {args.name!r} delivers from offset {position}\n")
    return EXIT_OK


def cmd_seek(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Move a subscription's delivery position to an offset or a time."""
    if (args.offset is None) == (args.at is None):
        raise CliError("give an OFFSET or --at TIME (one of them)", hint="sqlstream seek billing 120")
    with open_db(args, write=True) as db:
        sub = db.subscription(args.name)
        position = sub.seek(args.offset) if args.offset is not None else sub.seek(at=args.at)
    return _moved(args, out, position)


def cmd_reset(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Move a subscription to the stream's first record or its end."""
    with open_db(args, write=True) as db:
        position = db.subscription(args.name).reset(args.where)
    return _moved(args, out, position)


def cmd_configure(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Change a subscription's settings."""
    changes: dict[str, Any] = {}
    if args.ack_timeout is not None:
        changes["ack_timeout"] = args.ack_timeout
    if args.max_unacked is not None:
        changes["max_unacked"] = args.max_unacked
    if args.max_deliveries is not None:
        changes["max_deliveries"] = args.max_deliveries
    if args.dead_letter is not None:
        changes["dead_letter"] = args.dead_letter
    if args.no_dead_letter:
        if "max_deliveries" in changes or "dead_letter" in changes:
            raise CliError("--no-dead-letter goes alone, without --max-deliveries or --dead-letter")
        changes.update(max_deliveries=None, dead_letter=None)
    with open_db(args, write=True) as db:
        info = db.subscription(args.name).configure(**changes)
    if args.json:
        out.write(dump(info_json(info)) + "\n")
    else:
        dead = f"{info.max_deliveries} deliveries, then {info.dead_letter!r}" if info.dead_letter else "none"
        out.write(f"subscription {info.name!r}: ack timeout {info.ack_timeout:g}s, max unacked "
                  f"{info.max_unacked}, dead letters: {dead}\n")
    return EXIT_OK


def _print_batch(batch: Batch, args: argparse.Namespace, out: IO[str]) -> None:
    if args.json:
        out.write("".join(
            dump({**record_json(r), "subscription": args.name, "attempts": batch.attempts[r.offset]}) + "\n"
            for r in batch
        ))
    else:
        out.write("".join(f"{record_line(r)}\t(attempt {batch.attempts[r.offset]})\n" for r in batch))


def cmd_claim(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Take over given pending records for a consumer (XCLAIM)."""
    with open_db(args, write=True) as db:
        batch = db.subscription(args.name).claim(args.consumer, *args.offsets, min_idle=args.min_idle)
    _print_batch(batch, args, out)
    missed = sorted(set(args.offsets) - set(batch.offsets))
    if missed:
        err.write(f"note: not claimed (not pending, or idle less than --min-idle): {' '.join(map(str, missed))}\n")
    return EXIT_OK


def cmd_autoclaim(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Take over the oldest idle pending records for a consumer (XAUTOCLAIM)."""
    with open_db(args, write=True) as db:
        batch = db.subscription(args.name).autoclaim(args.consumer, min_idle=args.min_idle, count=args.count)
    _print_batch(batch, args, out)
    return EXIT_OK


def cmd_redrive(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Move dead letters back into the subscription's stream."""
    with open_db(args, write=True) as db:
        offsets = db.subscription(args.name).redrive(args.max)
    if args.json:
        out.write(dump({"subscription": args.name, "redriven": len(offsets), "offsets": offsets}) + "\n")
    else:
        out.write(f"redrove {len(offsets)} dead letter(s) of {args.name!r}"
                  + (f" to offsets {offsets[0]}..{offsets[-1]}\n" if offsets else "\n"))
    return EXIT_OK


def _register_more(command: CommandFactory) -> None:
    """seek, reset, configure, claim, autoclaim, redrive."""
    p = command(
        "seek", cmd_seek, "Move a subscription's delivery position to an offset or a time.",
        "sqlstream seek billing 120\nsqlstream seek billing --at 2024-06-01T12:00:00",
        details="New records are delivered from the position on. Pending records before it stay\n"
        "pending (ack them as usual); pending records at or after it are delivered again.",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("offset", metavar="OFFSET", type=parse_offset, nargs="?")
    p.add_argument("--at", type=_at_arg, metavar="TIME",
                   help="the first record appended at or after TIME (epoch seconds or ISO 8601)")

    p = command(
        "reset", cmd_reset, "Move a subscription to the stream's first record or its end.",
        "sqlstream reset billing earliest",
        details="earliest: deliver every retained record again; latest: skip to new records.\n"
        "Pending records are treated as by `sqlstream seek`.",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("where", choices=["earliest", "latest"])

    p = command(
        "configure", cmd_configure, "Change a subscription's settings; others stay as they are.",
        "sqlstream configure billing --ack-timeout 120 --max-unacked 50\n"
        "sqlstream configure jobs --max-deliveries 5 --dead-letter jobs-dead",
        details="A new ack timeout applies from the next delivery. --max-deliveries and\n"
        "--dead-letter go together; --no-dead-letter stops dead-lettering.",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("--ack-timeout", type=parse_positive_seconds, metavar="S")
    p.add_argument("--max-unacked", type=parse_positive_int, metavar="N")
    p.add_argument("--max-deliveries", type=parse_positive_int, metavar="N")
    p.add_argument("--dead-letter", metavar="STREAM")
    p.add_argument("--no-dead-letter", action="store_true", help="stop dead-lettering")

    p = command(
        "claim", cmd_claim, "Take over given pending records for a consumer (like XCLAIM).",
        "sqlstream claim billing 17 18 --consumer w2 --min-idle 60",
        details="Records pending (held, nacked or expired) and idle at least --min-idle seconds\n"
        "are delivered again to --consumer and printed as by `sqlstream fetch`.",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("offsets", metavar="OFFSET", type=parse_offset, nargs="+")
    p.add_argument("--consumer", default="cli", metavar="NAME", help="consumer name (default cli)")
    p.add_argument("--min-idle", type=parse_seconds, default=0.0, metavar="S",
                   help="only records idle at least S seconds (default 0)")

    p = command(
        "autoclaim", cmd_autoclaim, "Take over the oldest idle pending records (like XAUTOCLAIM).",
        "sqlstream autoclaim billing --consumer w2 --min-idle 60 --count 10",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("--consumer", default="cli", metavar="NAME", help="consumer name (default cli)")
    p.add_argument("--min-idle", type=parse_seconds, default=0.0, metavar="S",
                   help="only records idle at least S seconds (default 0)")
    p.add_argument("--count", type=parse_positive_int, default=100, metavar="N", help="at most N (default 100)")

    p = command(
        "redrive", cmd_redrive, "Move a subscription's dead letters back into its stream.",
        "sqlstream redrive jobs --max 100",
        details="Each letter is appended again (header sqlstream.original_offset names its first\n"
        "offset) and delivered like a new record; a letter is never redriven twice.",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("--max", type=parse_positive_int, metavar="N", help="at most N letters (default all)")


# --------------------------------------------------------------------------- parser


def register(command: CommandFactory) -> None:
    """Add the subscription and reader commands through ``command`` (see :mod:`sqlstream.cli.main`)."""
    p = command(
        "subscribe", cmd_subscribe, "Create a subscription (consumer group) on a stream.",
        "sqlstream subscribe billing orders --ack-timeout 60\n"
        "sqlstream subscribe jobs tasks --max-deliveries 5 --dead-letter tasks-dead",
        details="Each record is delivered to one consumer at a time and redelivered if not acked\n"
        "within --ack-timeout seconds. With --max-deliveries a record delivered that many\n"
        "times without an ack moves to the --dead-letter stream (created if absent).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("--start", type=_start_arg, default="earliest", metavar="earliest|latest|OFFSET",
                   help="first record to deliver (default earliest)")
    p.add_argument("--ack-timeout", type=parse_positive_seconds, default=30.0, metavar="S",
                   help="seconds before an unacked record is redelivered (default 30)")
    p.add_argument("--max-unacked", type=parse_positive_int, default=1000, metavar="N",
                   help="most records pending at once (default 1000)")
    p.add_argument("--max-deliveries", type=parse_positive_int, metavar="N", help="deliveries before dead-lettering")
    p.add_argument("--dead-letter", metavar="STREAM", help="stream for records that used up --max-deliveries")
    p.add_argument("--exist-ok", action="store_true", help="succeed if it already exists on STREAM")
    p.add_argument("--ordering", choices=["none", "key"], default="none",
                   help="key: each key's records one at a time, in offset order (default none)")

    p = command(
        "unsubscribe", cmd_unsubscribe, "Delete a subscription.", "sqlstream unsubscribe billing --force",
        details="Refused while records are pending (delivered, unacked) unless --force.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="delete even with pending records")

    command(
        "subscriptions", cmd_subscriptions, "List subscriptions: lag, pending, acked, per consumer.",
        "sqlstream subscriptions --json",
        details="lag: records not delivered yet; frontier: every offset below it is acked or\n"
        "dead-lettered. The same figures are in the subscription_stats view (`sqlstream sql`).",
    )

    p = command(
        "fetch", cmd_fetch, "Claim records of a subscription for a consumer and print them.",
        "sqlstream fetch billing --consumer cli --max 10 --timeout 5 --json\n"
        "sqlstream fetch billing --ack   # claim, print and acknowledge at once",
        details="Claimed records stay pending until acked (`sqlstream ack`); unacked ones are\n"
        "redelivered after the subscription's ack timeout. --json adds \"subscription\" and\n"
        "\"attempts\" to each record object of `sqlstream read --json`.",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("--consumer", default="cli", metavar="NAME", help="consumer name (default cli)")
    p.add_argument("--max", type=parse_positive_int, default=100, metavar="N", help="at most N records (default 100)")
    p.add_argument("--timeout", type=parse_seconds, default=0.0, metavar="S",
                   help="wait up to S seconds for a record (default 0: do not wait)")
    p.add_argument("--ack", action="store_true", help="acknowledge the records once printed")

    for name, handler, summary, example in (
        ("ack", cmd_ack, "Acknowledge records of a subscription.", "sqlstream ack billing 17 18 19"),
        ("nack", cmd_nack, "Hand records back for redelivery.", "sqlstream nack billing 17 --delay 30 --error timeout"),
    ):
        p = command(
            name, handler, summary, example,
            details="Prints the offsets it applied to; offsets that were not pending are named on\n"
            "stderr and ignored (exit status 0).",
        )
        p.add_argument("name", metavar="SUBSCRIPTION")
        p.add_argument("offsets", metavar="OFFSET", type=parse_offset, nargs="+")
        if name == "nack":
            p.add_argument("--delay", type=parse_seconds, default=0.0, metavar="S", help="redeliver after S seconds")
            p.add_argument("--error", metavar="TEXT", help="why it failed (kept, and named in a dead letter)")

    p = command(
        "extend-deadline", cmd_extend_deadline,
        "Give a consumer more time: push the ack deadline of records it holds.",
        "sqlstream extend-deadline billing 17 18 --seconds 120",
        details="Each OFFSET held by a consumer is redelivered only if not acked within --seconds\n"
        "from now. Prints the offsets it applied to; offsets that no consumer holds (never\n"
        "delivered, acked, or nacked) are named on stderr and ignored (exit status 0).",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("offsets", metavar="OFFSET", type=parse_offset, nargs="+")
    p.add_argument("--seconds", type=parse_positive_seconds, required=True, metavar="S",
                   help="the new deadline, in seconds from now")

    p = command(
        "pending", cmd_pending, "List the pending (delivered, unacked) records of a subscription.",
        "sqlstream pending billing --consumer w1",
    )
    p.add_argument("name", metavar="SUBSCRIPTION")
    p.add_argument("--consumer", metavar="NAME", help="only this consumer's records")
    p.add_argument("--limit", type=parse_positive_int, metavar="N", help="at most N entries")

    p = command(
        "reader", cmd_reader, "Read from a named reader, advancing its stored position.",
        "sqlstream reader ui orders --limit 10\nsqlstream reader ui --seek 0\nsqlstream reader --list",
        details="A reader keeps its position in the database: each call prints the next records\n"
        "and moves past them. STREAM (and --from) are needed only to create it.",
    )
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("stream", metavar="STREAM", nargs="?")
    p.add_argument("--from", dest="start", type=_start_arg, default="earliest", metavar="earliest|latest|OFFSET",
                   help="where a new reader starts (default earliest)")
    p.add_argument("--limit", type=parse_positive_int, default=100, metavar="N", help="at most N records (default 100)")
    p.add_argument("--timeout", type=parse_seconds, default=0.0, metavar="S", help="wait up to S seconds for a record")
    p.add_argument("--seek", type=_start_arg, metavar="earliest|latest|OFFSET", help="move the position only")
    p.add_argument("--delete", action="store_true", help="delete the reader")
    p.add_argument("--list", action="store_true", help="list every reader")

    _register_more(command)
