"""The command-line side of retention and upkeep: ``trim``, ``retention``, ``vacuum``, ``backup``, ``check``.

They follow the CLI's conventions (:mod:`sqlstream.cli.main`'s docstring is the output
contract):
``--json`` prints one object per line, errors are ``Error:``/``Hint:`` lines on stderr
with exit status 1. ``check`` also exits 1 when it finds a problem, so scripts can use
``sqlstream check || alert``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from .args import CommandFactory, open_db, parse_offset, parse_positive_int, strict_float, strict_int
from .output import EXIT_ERROR, EXIT_OK, Progress, as_dict, dump, info_json, progress_bar

# The core is imported by the handlers that use it, not here: `sqlstream --version` and
# `-h` build the whole parser but open no database (tests/test_startup.py).
if TYPE_CHECKING:
    from ..maintenance import CheckReport, MaintenanceReport
    from ..retention import TrimResult


def _limit(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type for a retention limit: a positive number, or ``none`` to remove it."""

    def parse(text: str) -> Any:
        if text.lower() == "none":
            return None
        value = strict_int(text, "an integer (or 'none')") if cast is int else strict_float(text, "a number (or 'none')")
        # (isfinite only for a float: of an int of 400 digits it raises OverflowError.)
        if not (isinstance(value, (int, float)) and value > 0 and (isinstance(value, int) or math.isfinite(value))):
            raise argparse.ArgumentTypeError(f"must be > 0 (or 'none'), not {text}")
        return value

    return parse


def _positive(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = _limit(cast)(text)
        if value is None:
            raise argparse.ArgumentTypeError("the dedup window cannot be unbounded")
        return value

    return parse


def _trim_json(result: TrimResult) -> dict[str, Any]:
    return {"stream": result.stream, "trimmed": result.trimmed, "first_offset": result.first_offset,
            "held": result.held}


def _trim_line(result: TrimResult) -> str:
    line = f"trimmed {result.trimmed:,} record(s) from {result.stream!r}; first offset now {result.first_offset}"
    if result.held:
        line += f"\nheld back: {result.held}"
    return line + "\n"


def cmd_trim(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Trim records below an offset, or apply the retention limits now."""
    with open_db(args, write=True) as db:
        result = db.trim(args.name, args.before, force=args.force)
    out.write(dump(_trim_json(result)) + "\n" if args.json else _trim_line(result))
    return EXIT_OK


_SETTINGS = ("max_count", "max_age", "max_bytes", "keep_unacked", "dedup_seconds", "dedup_records")


def cmd_retention(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Show a stream's retention settings; with options, change them and trim at once."""
    changes = {k: getattr(args, k) for k in _SETTINGS if getattr(args, k) is not _UNCHANGED}
    result = None
    with open_db(args, write=bool(changes)) as db:
        if changes:
            result = db.set_retention(args.name, **changes)
        info = db.stream_info(args.name)
    if args.json:
        doc = {k: v for k, v in info_json(info).items()
               if k in ("name", "first_offset", "next_offset", "count", "retained_bytes", *_SETTINGS, "over_limit")}
        if result is not None:
            doc["trimmed"] = result.trimmed
        out.write(dump(doc) + "\n")
        return EXIT_OK
    if result is not None:
        out.write(_trim_line(result))

    def show(value: Any, unit: str = "") -> str:
        return "none" if value is None else f"{value:,}{unit}" if isinstance(value, int) else f"{value:g}{unit}"

    fields = [
        ("max count", show(info.max_count)),
        ("max age", show(info.max_age, " s")),
        ("max bytes", show(info.max_bytes)),
        ("keep unacked", "yes" if info.keep_unacked else "no"),
        ("dedup window", f"{info.dedup_seconds:g} s and the last {info.dedup_records:,} records"),
        ("retained", f"{info.count:,} records, {info.retained_bytes:,} bytes (offsets from {info.first_offset})"),
        ("over limit", info.over_limit or "no"),
    ]
    out.write("".join(f"{k + ':':<14}{v}\n" for k, v in fields))
    return EXIT_OK


def _maintenance_lines(report: MaintenanceReport) -> str:
    lines = []
    trimmed = sum(report.trimmed.values())
    lines.append(f"retention: trimmed {trimmed:,} record(s) in {len(report.trimmed)} stream(s) with limits")
    for stream, why in report.held.items():
        lines.append(f"  {stream}: kept over its limits: {why}")
    lines.append(f"dedup: forgot {report.dedup_pruned:,} id(s) outside their window")
    lines.append(f"vacuum: freed {report.pages_freed:,} page(s); {report.free_pages:,} free page(s) left in the file")
    lines.append(f"wal checkpoint: {report.checkpoint}")
    lines.append(f"optimize: {'done' if report.optimized else 'skipped'}")
    lines.append(f"size: {report.bytes_before:,} -> {report.bytes_after:,} bytes (database + WAL)")
    lines.extend(f"note: {n}" for n in report.notes)
    return "".join(line + "\n" for line in lines)


def cmd_vacuum(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Enforce retention, free pages, checkpoint the WAL and optimize."""
    bar = progress_bar(err, "vacuum", unit="step")
    with open_db(args, write=True) as db, _closing(bar):
        report = db.maintain(full=args.full, retention=not args.no_retention, checkpoint=not args.no_checkpoint,
                             progress=bar.update if bar is not None else None)
    out.write(dump(as_dict(report)) + "\n" if args.json else _maintenance_lines(report))
    return EXIT_OK


def _check_json(report: CheckReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "integrity": report.integrity,
        "problems": [as_dict(p) for p in report.problems],
        "truncated": report.truncated,
        "streams": report.streams,
        "records": report.records,
    }


def cmd_check(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Check the file and the stream invariants; exit 1 if anything is wrong."""
    bar = progress_bar(err, "check", unit="record")
    with open_db(args, write=False) as db, _closing(bar):
        report = db.check(quick=args.quick, max_problems=args.max_problems,
                          progress=bar.update if bar is not None else None)
    if args.json:
        out.write(dump(_check_json(report)) + "\n")
    else:
        for message in report.integrity:
            out.write(f"integrity: {message}\n")
        for problem in report.problems:
            out.write(f"{problem}\n")
        if report.truncated:
            out.write(f"(only the first {len(report.problems)} problems are listed)\n")
        verdict = "ok" if report.ok else "PROBLEMS FOUND"
        out.write(f"{verdict}: {report.streams} stream(s), {report.records:,} record(s) checked\n")
    if not report.ok:
        err.write("Error: the database has problems (listed on stdout)\n"
                  "Hint: restore from a backup, or export what reads correctly and re-import it\n")
        return EXIT_ERROR
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Copy the live database to DEST with SQLite's online backup API."""
    bar = progress_bar(err, "backup", unit="page")
    with open_db(args, write=False) as db, _closing(bar):
        dest = db.backup(args.dest, overwrite=args.force, progress=bar.update if bar is not None else None)
        source = db.path
    size = os.path.getsize(dest)
    if args.json:
        out.write(dump({"source": source, "backup": dest, "bytes": size}) + "\n")
    else:
        out.write(f"backed up {source} to {dest} ({size:,} bytes)\n")
    return EXIT_OK


@contextlib.contextmanager
def _closing(bar: Progress | None) -> Iterator[None]:
    """Finish the progress bar's line (if one is drawn) before the command prints its result."""
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


_UNCHANGED: Any = object()


def register(command: CommandFactory) -> None:
    """Add trim, retention, vacuum, backup and check through ``command`` (see :mod:`sqlstream.cli.main`)."""
    p = command(
        "trim", cmd_trim, "Delete a stream's oldest records, or apply its retention limits now.",
        "sqlstream trim orders --before 1000\nsqlstream trim orders          # apply max_count/max_age/max_bytes",
        details="Offsets are never reused: reads below the new first offset fail, appends go on at\n"
        "the next offset. With keep_unacked (see `sqlstream retention`) records a\n"
        "subscription has not acked are kept unless --force.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--before", type=parse_offset, metavar="OFFSET", help="trim the records below OFFSET")
    p.add_argument("--force", action="store_true", help="trim even records a subscription has not acked")

    p = command(
        "retention", cmd_retention, "Show or change a stream's retention limits and dedup window.",
        "sqlstream retention orders\n"
        "sqlstream retention orders --max-count 100000 --max-age 604800\n"
        "sqlstream retention orders --max-bytes none --keep-unacked",
        details="Changing a limit trims at once. Appends then trim in batches (up to a sixteenth\n"
        "past a limit, at most 1,024 records / 1 MiB / 60 s); `sqlstream vacuum` trims\n"
        "exactly. 'none' removes a limit. 'over limit' says why a stream holds more.",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(**{k: _UNCHANGED for k in _SETTINGS})
    p.add_argument("--max-count", type=_limit(int), metavar="N|none", help="retain at most N records")
    p.add_argument("--max-age", type=_limit(float), metavar="SECONDS|none", help="retain records this young")
    p.add_argument("--max-bytes", type=_limit(int), metavar="N|none", help="retain at most N payload bytes")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep-unacked", dest="keep_unacked", action="store_const", const=True,
                      help="never trim records a subscription has not acked")
    keep.add_argument("--no-keep-unacked", dest="keep_unacked", action="store_const", const=False,
                      help="trim by the limits alone")
    p.add_argument("--dedup-seconds", type=_positive(float), metavar="S", help="remember dedup ids this long")
    p.add_argument("--dedup-records", type=_positive(int), metavar="N",
                   help="remember dedup ids for the stream's last N records")

    p = command(
        "vacuum", cmd_vacuum, "Give space back: retention, free pages, WAL checkpoint, optimize.",
        "sqlstream vacuum\nsqlstream vacuum --full     # rewrite the whole file (blocks writers)",
        details="Runs db.maintain(): applies every stream's retention limits exactly, forgets dedup\n"
        "ids outside their window, returns free pages to the filesystem (incremental\n"
        "vacuum, a short transaction at a time), checkpoints and truncates the WAL when no\n"
        "reader needs it, and runs PRAGMA optimize. Safe while other processes use the file.",
    )
    p.add_argument("--full", action="store_true",
                   help="VACUUM the whole file (also converts files without incremental auto_vacuum)")
    p.add_argument("--no-retention", action="store_true", help="do not trim or prune dedup ids")
    p.add_argument("--no-checkpoint", action="store_true", help="leave the WAL alone")

    p = command(
        "backup", cmd_backup, "Copy the database to a new file, safely, while it is in use.",
        "sqlstream backup /backups/app-$(date +%F).db\nsqlstream backup --force copy.db",
        details="Uses SQLite's online backup API: DEST is a consistent snapshot of what was\n"
        "committed when the backup started, one self-contained file with mode 0600; writers\n"
        "and readers keep going meanwhile. Copying a live .db with cp can miss the records\n"
        "still in its -wal file. An existing DEST is refused unless --force.",
    )
    p.add_argument("dest", metavar="DEST", help="the new file")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")

    p = command(
        "check", cmd_check, "Check the file and every stream's invariants; exit 1 on a problem.",
        "sqlstream check\nsqlstream check --quick --json",
        details="Runs PRAGMA integrity_check and foreign_key_check, then verifies each stream:\n"
        "offsets gap-free from first to next offset, byte positions adding up, timestamps\n"
        "never decreasing, payload types, txn numbers; and that pending deliveries, reader\n"
        "positions and dedup ids point at offsets that exist. Each problem names the stream\n"
        "and offset. Read-only; other processes may keep writing.",
    )
    p.add_argument("--quick", action="store_true", help="PRAGMA quick_check, and no JSON validation")
    p.add_argument("--max-problems", type=parse_positive_int, default=100, metavar="N", help="list at most N problems (default 100)")
