"""The ``sqlstream`` command line: create, append to, read, follow and inspect streams.

``sqlstream [--db PATH] COMMAND ...``; the database defaults to ``$SQLSTREAM_DB``, else
``./sqlstream.db``. Only ``create`` makes a new database file; every other command
refuses a missing file, and the reading commands open the file read-only.

Output contract (``--json``): one JSON object per line. Record lines carry ``stream``,
``offset``, ``timestamp`` (float seconds since the epoch, UTC), ``time`` (ISO 8601, UTC,
milliseconds), ``key`` (or null), ``headers`` (object of strings), ``type`` (``"json"``,
``"text"`` or ``"bytes"``), ``value``, ``position`` and ``txn``. A JSON record's value is
the JSON value itself, a text record's is the string, and a bytes record's is its base64
text with ``"encoding": "base64"`` beside it (the field is absent otherwise). Fields may
be added in later versions; consumers must ignore fields they do not know.

Exit codes: 0 success, 1 an error (``Error: ...`` on stderr, then ``Hint: ...`` when the
error says how to fix it), 2 a usage error, 130 interrupted (Ctrl-C, including the normal
end of ``tail -f``), 141 stdout closed early. A failure sqlstream did not foresee is still
one ``Error: internal error: ...`` line and status 1, never a traceback.

Numbers on the command line are checked when parsed (a usage error, status 2, otherwise):
seconds are finite, >= 0 and at most ``SECONDS_MAX`` (1e9, about 31 years); offsets are
0..2**63-1 (SQLite's INTEGER); counts and sizes are 1..``COUNT_MAX`` (2**62, leaving room
for the margins retention adds to a limit).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import apsw

from . import __version__
from .database import Database, open as open_database
from .errors import (
    AccessDenied,
    ConcurrencyError,
    LockTimeout,
    OffsetOutOfRange,
    PayloadTooLarge,
    ReadOnlyDatabase,
    SchemaVersionError,
    SqlstreamError,
    StreamExists,
    StreamNotFound,
)
from .records import Record, StreamInfo
from .streams import Stream

DEFAULT_DB = "sqlstream.db"
DB_ENV = "SQLSTREAM_DB"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it

_PAGE = 1000  # records fetched per read: bounds memory without a query per record

SECONDS_MAX = 1e9  # about 31 years: any longer wait is "forever" in practice
OFFSET_MAX = 2**63 - 1  # SQLite INTEGER
COUNT_MAX = 2**62  # counts and sizes: a limit plus retention's margin still fits an INTEGER


class CliError(SqlstreamError):
    """A problem the command line found itself (bad input, missing database file)."""


# Hints in the core name the Python API ("pass exist_ok=True"); at the command line the
# fix is a flag. Keyed by class, applied only when the core gave a hint, so an error the
# core left hint-less stays one line. None drops a hint with no command-line equivalent.
_CLI_HINTS: dict[type[SqlstreamError], str | None] = {
    StreamNotFound: None,
    StreamExists: "pass --exist-ok to reuse the existing stream",
    AccessDenied: "pass the stream's write secret with --secret",
    ConcurrencyError: "check `sqlstream info NAME` and retry with the new --expect-offset",
    PayloadTooLarge: "split the value into several smaller records",
    SchemaVersionError: (
        "run any writing command once (e.g. `sqlstream create NAME --exist-ok`) to upgrade the file"
    ),
    ReadOnlyDatabase: "sqlstream sql is read-only; change data with create/append/seal/delete",
    LockTimeout: "another process held the write lock too long; retry once it finishes",
}


def report_error(exc: SqlstreamError, err: IO[str]) -> None:
    """Write ``Error: <message>`` and, when there is one, ``Hint: <hint>`` to ``err``."""
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    hint = exc.hint
    if hint is not None:
        for cls, cli_hint in _CLI_HINTS.items():
            if isinstance(exc, cls):
                hint = cli_hint
                break
    # Keep the contract of one line per field even if a message embeds a newline.
    err.write(f"Error: {' '.join(message.splitlines())}\n")
    if hint:
        err.write(f"Hint: {hint}\n")


# --------------------------------------------------------------------------- rendering


def iso_time(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``, the form the SQL views use."""
    stamp = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


# Control characters would break the one-record-per-line layout of human output.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def _one_line(text: str) -> str:
    return text.translate(_ESCAPES)


def record_json(rec: Record) -> dict[str, Any]:
    """The stable JSON form of a record (see the module docstring for the contract)."""
    out: dict[str, Any] = {
        "stream": rec.stream,
        "offset": rec.offset,
        "timestamp": rec.timestamp,
        "time": iso_time(rec.timestamp),
        "key": rec.key,
        "headers": rec.headers,
        "type": rec.content_type,
        "value": rec.value,
        "position": rec.position,
        "txn": rec.txn,
    }
    if isinstance(rec.value, bytes):
        out["value"] = base64.b64encode(rec.value).decode("ascii")
        out["encoding"] = "base64"
    return out


def record_line(rec: Record) -> str:
    """Human form: offset, time, key (``-`` if none), value; tab-separated, one line."""
    if isinstance(rec.value, bytes):
        value = repr(rec.value)  # b'...' keeps bytes distinguishable from text
    elif rec.content_type == "json":
        value = json.dumps(rec.value, ensure_ascii=False)
    else:
        value = _one_line(str(rec.value))
    key = "-" if rec.key is None else _one_line(rec.key)
    return f"{rec.offset}\t{iso_time(rec.timestamp)}\t{key}\t{value}"


def info_json(info: StreamInfo) -> dict[str, Any]:
    """The stable JSON form of a stream's description; times are float seconds or null."""
    return {
        "name": info.name,
        "first_offset": info.first_offset,
        "next_offset": info.next_offset,
        "count": info.count,
        "byte_length": info.byte_length,
        "first_position": info.first_position,
        "retained_bytes": info.retained_bytes,
        "created_at": info.created_at,
        "last_append_at": info.last_append_at,
        "sealed": info.sealed,
        "sealed_at": info.sealed_at,
        "secret": info.secret,
        "max_count": info.max_count,
        "max_age": info.max_age,
        "max_bytes": info.max_bytes,
        "metadata": info.metadata,
        "keep_unacked": info.keep_unacked,
        "dedup_seconds": info.dedup_seconds,
        "dedup_records": info.dedup_records,
        "over_limit": info.over_limit,
    }


def _json_cell(value: Any) -> Any:
    """A SQL result cell as JSON: a BLOB becomes ``{"base64": ...}`` (no other cell is an object)."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # SQLite can hold ±inf; JSON cannot
    return value


def _table_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        shown = value[:32].hex()
        return f"x'{shown}'" if len(value) <= 32 else f"x'{shown}'... ({len(value):,} bytes)"
    return _one_line(str(value))


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Rows as an aligned text table under a header; numbers right-aligned, NULL empty."""
    cells = [[_table_cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        bool(rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return out


def _dump(obj: Any) -> str:
    # ASCII-only JSON is valid whatever the terminal's or pipe's encoding.
    return json.dumps(obj, ensure_ascii=True, allow_nan=False)


# --------------------------------------------------------------------------- helpers


def _db_path(args: argparse.Namespace) -> str:
    return args.db or os.environ.get(DB_ENV) or DEFAULT_DB


def _open(args: argparse.Namespace, *, write: bool, create: bool = False) -> Database:
    """Open the database; only ``create`` may make a new file, readers open read-only."""
    path = _db_path(args)
    if not create and not os.path.exists(path):
        raise CliError(
            f"no database at {os.path.abspath(path)}",
            hint=f"create one with `sqlstream --db {path} create NAME`, or set --db / ${DB_ENV}",
        )
    return open_database(path, readonly=not write, create=create)


def _writable_stream(db: Database, name: str, secret: str | None) -> Stream:
    """A handle that may write ``name``: through its write secret if one is given."""
    if secret is None:
        return db.stream(name)
    stream = db.writer(secret)
    if stream.name != name:
        raise CliError(f"that write secret belongs to stream {stream.name!r}, not {name!r}")
    return stream


def _print_records(records: Sequence[Record], as_json: bool, out: IO[str]) -> None:
    render: Callable[[Record], str] = (lambda r: _dump(record_json(r))) if as_json else record_line
    out.write("".join(render(r) + "\n" for r in records))


def _read_range(stream: Stream, start: int, end: int | None, limit: int | None) -> Iterator[list[Record]]:
    """Pages of records from ``start`` up to ``end`` (exclusive) or ``limit`` records."""
    offset, left = start, limit
    while (end is None or offset < end) and (left is None or left > 0):
        size = _PAGE if left is None else min(_PAGE, left)
        if end is not None:
            size = min(size, end - offset)
        page = stream.read(offset, size)
        if not page:
            return
        yield page
        offset = page[-1].offset + 1
        if left is not None:
            left -= len(page)


def _parse_value(text: str, as_json: bool, where: str) -> Any:
    if not as_json:
        return text

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=reject)
    except ValueError as exc:
        raise CliError(f"{where} is not valid JSON: {exc}", hint="drop --json to append it as text") from exc
    if value is None:
        raise CliError(f"{where} is JSON null, which a record cannot hold")
    return value


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _stdin_lines(stdin: IO[str]) -> list[str]:
    """Lines of stdin without their line endings, decoded strictly as UTF-8."""
    raw = getattr(stdin, "buffer", None)
    lines: list[str] = []
    if raw is None:  # a text stream with no bytes underneath (tests, embedding)
        return [line.rstrip("\n").removesuffix("\r") for line in stdin]
    for number, chunk in enumerate(raw, 1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"stdin line {number} is not valid UTF-8: {exc.reason}") from exc
        lines.append(text.rstrip("\n").removesuffix("\r"))
    return lines


# --------------------------------------------------------------------------- commands


def cmd_create(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Create a stream; print its write secret for --secret."""
    with _open(args, write=True, create=True) as db:
        try:
            stream = db.create_stream(
                args.name,
                max_count=args.max_count,
                max_age=args.max_age,
                max_bytes=args.max_bytes,
                secret=args.secret,
                keep_unacked=args.keep_unacked,
            )
            created = True
        except StreamExists:
            if not args.exist_ok:
                raise
            stream, created = db.stream(args.name), False
    secret = stream.write_secret
    if args.json:
        out.write(_dump({"stream": args.name, "created": created, "write_secret": secret}) + "\n")
    elif secret is not None:
        out.write(secret + "\n")  # alone on stdout so `S=$(sqlstream create x --secret)` works
    elif created:
        out.write(f"created stream {args.name!r}\n")
    else:
        out.write(f"stream {args.name!r} already exists\n")
    if not created and args.secret:
        err.write(f"note: stream {args.name!r} already existed; its write secret is not shown again\n")
    return EXIT_OK


def cmd_append(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Append the arguments (or stdin lines) as records, all in one transaction."""
    if args.values:
        texts = [(t, f"value {i}") for i, t in enumerate(args.values, 1)]
    else:
        if sys.stdin is None:  # started without a stdin (a service, pythonw)
            raise CliError("no values given and there is no stdin to read them from")
        if _isatty(sys.stdin):
            err.write("reading records from stdin, one per line; end with Ctrl-D\n")
        texts = [(t, f"stdin line {i}") for i, t in enumerate(_stdin_lines(sys.stdin), 1)]
        # A blank line is almost always a log's spacing or a trailing newline, not a record
        # (JSON Lines readers skip them too); --keep-blank keeps them as text records.
        if args.json or not args.keep_blank:
            texts = [(t, w) for t, w in texts if t.strip()]
    # Parse everything before opening a transaction: one bad value stores nothing.
    values = [_parse_value(t, args.json, where) for t, where in texts]
    headers = dict(args.header) if args.header else None
    with _open(args, write=True) as db:
        try:
            stream = _writable_stream(db, args.name, args.secret)
        except StreamNotFound as exc:
            if args.secret is not None:  # an unknown secret, not a missing stream
                raise
            raise CliError(str(exc.args[0]), hint=f"create it with `sqlstream create {args.name}`") from exc
        if not values:
            return EXIT_OK
        if args.dedup_id is not None:
            if len(values) != 1:
                raise CliError(f"--dedup-id names one record, but {len(values)} values were given")
            offsets: Sequence[int] = [stream.append(values[0], key=args.key, headers=headers,
                                                    expect_offset=args.expect_offset, dedup_id=args.dedup_id)]
        else:
            offsets = stream.extend(values, key=args.key, headers=headers, expect_offset=args.expect_offset)
    if not args.quiet:
        out.write("".join(f"{o}\n" for o in offsets))
    return EXIT_OK


def cmd_read(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print up to --limit records from --offset (default: the first retained record)."""
    with _open(args, write=False) as db:
        stream = db.stream(args.name)
        start = stream.info().first_offset if args.offset is None else args.offset
        if args.timeout:
            # Block only for the first record; the rest is read as it stands then.
            first = stream.read(start, min(_PAGE, args.limit), timeout=args.timeout)
            _print_records(first, args.json, out)
            if not first:
                return EXIT_OK
            start, left = first[-1].offset + 1, args.limit - len(first)
        else:
            left = args.limit
        for page in _read_range(stream, start, None, left):
            _print_records(page, args.json, out)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print the last -n records; with -f keep printing new ones until the stream is sealed."""
    with _open(args, write=False) as db:
        stream = db.stream(args.name)
        info = stream.info()
        if args.start == "earliest":
            offset = info.first_offset
        elif args.start == "latest":
            offset = info.next_offset
        elif args.start is not None:
            offset = int(args.start)
        else:
            offset = max(info.first_offset, info.next_offset - args.lines)
        if not args.follow:
            for page in _read_range(stream, offset, info.next_offset, None):
                _print_records(page, args.json, out)
            return EXIT_OK
        # Ctrl-C (KeyboardInterrupt) ends it with status 130 in main(), the shell convention
        # for "stopped by SIGINT", so a script can tell a sealed stream (0) from a user stop.
        _follow(stream, offset, args.json, out, err)
    return EXIT_OK


def _follow(stream: Stream, offset: int, as_json: bool, out: IO[str], err: IO[str]) -> None:
    """Print records from ``offset`` as they commit, until the stream is sealed and drained.

    Reads pages rather than ``Stream.follow`` so that output is flushed once per page:
    promptly for a live reader, without a system call per record while catching up.
    """
    while True:
        try:
            page = stream.read(offset, _PAGE, timeout=None)
        except OffsetOutOfRange:
            # Retention trimmed records before we printed them: say so and go on.
            first = stream.info().first_offset
            if offset >= first:
                raise
            err.write(f"note: skipped {first - offset} record(s) trimmed before they were printed\n")
            offset = first
            continue
        if not page:
            return  # read() returns nothing without a timeout only once the stream is sealed
        _print_records(page, as_json, out)
        out.flush()
        offset = page[-1].offset + 1


def cmd_streams(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """List every stream with its counters."""
    with _open(args, write=False) as db:
        infos = db.streams()
    if args.json:
        out.write("".join(_dump(info_json(i)) + "\n" for i in infos))
        return EXIT_OK
    columns = ["name", "records", "first", "next", "bytes", "sealed", "secret", "last_append"]
    rows = [
        (
            i.name,
            i.count,
            i.first_offset,
            i.next_offset,
            i.retained_bytes,
            "yes" if i.sealed else "no",
            "yes" if i.secret else "no",
            iso_time(i.last_append_at) if i.last_append_at is not None else None,
        )
        for i in infos
    ]
    out.write("".join(line + "\n" for line in render_table(columns, rows)))
    return EXIT_OK


def cmd_info(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Describe one stream."""
    with _open(args, write=False) as db:
        info = db.stream_info(args.name)
    if args.json:
        out.write(_dump(info_json(info)) + "\n")
        return EXIT_OK

    def when(t: float | None) -> str:
        return "-" if t is None else iso_time(t)

    def limit(v: float | None, unit: str = "") -> str:
        return "none" if v is None else f"{v}{unit}"

    fields = [
        ("name", info.name),
        ("records", f"{info.count} (offsets {info.first_offset}..{info.next_offset - 1})" if info.count
         else f"0 (next offset {info.next_offset})"),
        ("bytes", f"{info.retained_bytes} retained, {info.byte_length} ever appended"),
        ("created", when(info.created_at)),
        ("last append", when(info.last_append_at)),
        ("sealed", f"yes, {when(info.sealed_at)}" if info.sealed else "no"),
        ("secret", "yes (writes need the write secret)" if info.secret else "no"),
        ("max count", limit(info.max_count)),
        ("max age", limit(info.max_age, " s")),
        ("max bytes", limit(info.max_bytes)),
        ("unacked", "kept (keep_unacked: retention never trims what a subscription has not acked)"
         if info.keep_unacked else "may be trimmed by retention"),
        ("over limit", info.over_limit or "no"),
        ("metadata", json.dumps(info.metadata, ensure_ascii=False)),
    ]
    out.write("".join(f"{k + ':':<13}{v}\n" for k, v in fields))
    return EXIT_OK


def cmd_seal(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Seal a stream (idempotent)."""
    with _open(args, write=True) as db:
        sealed_now = _writable_stream(db, args.name, args.secret).seal()
    if args.json:
        out.write(_dump({"stream": args.name, "sealed": True, "already_sealed": not sealed_now}) + "\n")
    else:
        done = "sealed stream {!r}" if sealed_now else "stream {!r} was already sealed"
        out.write(done.format(args.name) + "\n")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Delete a stream and all its records."""
    with _open(args, write=True) as db:
        db.delete_stream(args.name)
    if args.json:
        out.write(_dump({"stream": args.name, "deleted": True}) + "\n")
    else:
        out.write(f"deleted stream {args.name!r}\n")
    return EXIT_OK


def _unique_columns(columns: Sequence[str]) -> list[str]:
    """Column names made unique (``a``, ``a_2``, ...) so each row can be one JSON object."""
    used: set[str] = set()
    out = []
    for name in columns:
        candidate, n = name, 1
        while candidate in used:
            n += 1
            candidate = f"{name}_{n}"
        used.add(candidate)
        out.append(candidate)
    return out


# A parameter that reads as a number is bound as one, as the sqlite3 shell's `.parameter
# set` does: `WHERE records > ?` with `0` must compare with an INTEGER, not the TEXT '0'
# (in SQLite every INTEGER sorts below every TEXT). Leading zeros keep text ("007" is an
# identifier more often than a number), as do numbers SQLite cannot hold exactly.
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_REAL = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
_INT64 = range(-(2**63), 2**63)


def sql_param(text: str) -> int | float | str | None:
    """A command-line SQL parameter, typed: NULL, INTEGER, REAL, else TEXT unchanged.

    ``NULL`` (any case) is NULL; a decimal integer without leading zeros that fits SQLite's
    INTEGER is an INTEGER; a decimal with a point or an exponent that is finite is a REAL;
    anything else is the TEXT as given. ``--json-params`` gives exact types instead.
    """
    if text.casefold() == "null":
        return None
    if _INTEGER.match(text):
        number = int(text)
        return number if number in _INT64 else text
    if _REAL.match(text) and ("." in text or "e" in text or "E" in text):
        real = float(text)
        return real if math.isfinite(real) else text
    return text


def _json_params(text: str) -> list[Any] | dict[str, Any]:
    """``--json-params``: a JSON array (for ``?``) or object (for ``:name``) of scalars."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        params = json.loads(text, parse_constant=reject)
    except (ValueError, RecursionError) as exc:
        raise CliError(f"--json-params is not valid JSON: {exc}",
                       hint="""give a JSON array for ? placeholders, e.g. '[1, "x", null]'""") from exc
    if isinstance(params, list):
        values: Sequence[Any] = params
    elif isinstance(params, dict):
        values = list(params.values())
    else:
        raise CliError("--json-params must be a JSON array (for ?) or object (for :name)",
                       hint="""e.g. --json-params '[1, "x"]' or --json-params '{"id": 1}'""")
    for value in values:
        if isinstance(value, (list, dict)):
            raise CliError("--json-params values must be numbers, strings, true/false or null",
                           hint="pass a nested value as a JSON string and use json() in the query")
        if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
            raise CliError(f"--json-params integer {value} does not fit SQLite's 64-bit INTEGER",
                           hint="pass it as a string or a float")
    return params if isinstance(params, dict) else list(params)


def _sql_params(args: argparse.Namespace) -> list[Any] | dict[str, Any]:
    """The bindings from positional PARAMs, ``--param NAME=VALUE`` or ``--json-params``."""
    given = [bool(args.params), bool(args.param), args.json_params is not None]
    if sum(given) > 1:
        raise CliError("give the parameters one way: PARAM values, --param NAME=VALUE, or --json-params",
                       hint="use ? placeholders with PARAM values, :name ones with --param")
    if args.json_params is not None:
        return _json_params(args.json_params)
    if args.param:
        named: dict[str, Any] = {}
        for name, value in args.param:
            if name in named:
                raise CliError(f"--param {name} is given twice")
            named[name] = sql_param(value)
        return named
    return [sql_param(p) for p in args.params]


def _skip_quoted(sql: str, i: int) -> int:
    """The index just past the quoted literal, identifier or comment starting at ``sql[i]``,
    or ``i`` if none starts there."""
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        return len(sql) if end < 0 else end + 2
    close = {"'": "'", '"': '"', "`": "`", "[": "]"}.get(sql[i])
    if close is None:
        return i
    j = i + 1
    while True:
        end = sql.find(close, j)
        if end < 0:
            return len(sql)
        if close != "]" and sql.startswith(close * 2, end):  # '' inside '...' is a quote
            j = end + 2
            continue
        return end + 1


def check_one_statement(sql: str) -> None:
    """Raise ``CliError`` if ``sql`` holds more than one statement.

    SQLite would run them all, one after another; `sql` promises one query and one result.
    A ``;`` inside a string, identifier, comment or trigger body does not end a statement,
    and a trailing ``;``, comments or blanks are not a second one.
    """
    i, n = 0, len(sql)
    while i < n:
        skipped = _skip_quoted(sql, i)
        if skipped != i:
            i = skipped
            continue
        if sql[i] == ";" and apsw.complete(sql[: i + 1]):  # not a ; inside a trigger body
            rest, j = sql[i + 1:], 0
            while j < len(rest):
                skipped = _skip_quoted(rest, j)
                if skipped != j and rest[j] in "-/":
                    j = skipped
                elif rest[j].isspace() or rest[j] == ";":
                    j += 1
                else:
                    raise CliError(
                        "sql runs one statement, but the query holds several",
                        hint="run each statement with its own `sqlstream sql` call",
                    )
            return
        i += 1


def cmd_sql(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Run one read-only SQL statement and print its rows.

    An empty result prints nothing (--json: no lines), except on a terminal, where it
    says ``(0 rows)`` so that a person can tell it from a command that did not run.
    """
    check_one_statement(args.query)
    params = _sql_params(args)
    with _open(args, write=False) as db:
        result = db.query(args.query, params)
    if args.json:
        columns = _unique_columns(result.columns)
        out.write(
            "".join(_dump({c: _json_cell(v) for c, v in zip(columns, row)}) + "\n" for row in result.rows)
        )
    elif result.rows:
        out.write("".join(line + "\n" for line in render_table(result.columns, result.rows)))
    elif _isatty(out):
        header = render_table(result.columns, []) if result.columns else []
        out.write("".join(line + "\n" for line in header) + "(0 rows)\n")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    if value > COUNT_MAX:
        raise argparse.ArgumentTypeError(f"must be at most 2**62 ({COUNT_MAX}), not {text}")
    return value


def _offset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an offset: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"an offset is >= 0, not {value}")
    if value > OFFSET_MAX:
        raise argparse.ArgumentTypeError(f"an offset is at most 2**63-1 ({OFFSET_MAX}), not {text}")
    return value


def _seconds(text: str, *, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > SECONDS_MAX:
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'>' if positive else '>='} 0 and at most {SECONDS_MAX:.0e} seconds, "
            f"not {text}"
        )
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, positive=True)


def _start(text: str) -> str:
    if text in ("earliest", "latest"):
        return text
    return str(_offset(text))


def _sql_named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.lstrip(":@$")  # accept the placeholder as written in the query
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a parameter is NAME=VALUE, not {text!r}")
    return name, value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a header is NAME=VALUE, not {text!r}")
    return name, value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command (exposed so tests can list the commands)."""
    parser = argparse.ArgumentParser(
        prog="sqlstream",
        formatter_class=_Formatter,
        description="A stream database in one SQLite file.",
        epilog=(
            "Example:\n"
            "  sqlstream --db app.db create orders\n"
            "  sqlstream --db app.db append orders '{\"id\": 1}' --json\n"
            "  sqlstream --db app.db tail -f orders\n\n"
            f"The database is --db, else ${DB_ENV}, else ./{DEFAULT_DB}.\n"
            "Run `sqlstream COMMAND -h` for a command's options."
        ),
    )
    parser.add_argument(
        "--db", metavar="PATH", help=f"database file (default: ${DB_ENV}, else ./{DEFAULT_DB})"
    )
    parser.add_argument("--version", action="version", version=f"sqlstream {__version__}")

    # Accept --db after the command too; SUPPRESS keeps an absent one from overwriting
    # the value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database file")
    json_out = argparse.ArgumentParser(add_help=False)
    json_out.add_argument("--json", action="store_true", help="print JSON (one object per line) for scripts")

    # Not required=True: argparse would then report a missing COMMAND before an unknown
    # option (`sqlstream --bogus`); main() checks for the command after parsing.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[..., int], summary: str, example: str, *, json_output: bool = True,
        details: str = "",
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary + (f"\n\n{details}" if details else ""),
            epilog="Example:\n" + "".join(f"  {line}\n" for line in example.splitlines()),
            formatter_class=_Formatter,
            parents=[common, json_out] if json_output else [common],
        )
        sub.set_defaults(handler=handler)
        return sub

    p = command(
        "create", cmd_create, "Create a stream.",
        "sqlstream create orders --max-count 100000\nLOG_SECRET=$(sqlstream create build-log --secret)",
        details="With --secret the stream takes writes only through the write secret, which is\n"
        "printed (alone) on stdout; keep it, it is shown only once.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--max-count", type=_positive_int, metavar="N", help="retain at most N records")
    p.add_argument("--max-age", type=_positive_seconds, metavar="SECONDS", help="retain records this young")
    p.add_argument("--max-bytes", type=_positive_int, metavar="N", help="retain at most N bytes")
    p.add_argument("--keep-unacked", action="store_true",
                   help="retention never trims records a subscription has not acked")
    p.add_argument("--secret", action="store_true", help="writes need the printed write secret")
    p.add_argument("--exist-ok", action="store_true", help="succeed if the stream already exists")

    p = command(
        "append", cmd_append, "Append records to a stream, all in one transaction.",
        "sqlstream append orders '{\"id\": 1}' '{\"id\": 2}' --json --key c1\n"
        "tail -n 100 app.log | sqlstream append logs --header host=web1",
        json_output=False,
        details="Each VALUE is one record; with no VALUE, each non-blank line of stdin is one\n"
        "(all read before anything is stored). Values are text unless --json. Prints the offset of\n"
        "each appended record, one per line (use `--` before values that start with -).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("values", metavar="VALUE", nargs="*", help="record values (default: stdin lines)")
    p.add_argument("--json", action="store_true", help="parse each value as JSON (blank stdin lines skipped)")
    p.add_argument("--keep-blank", action="store_true",
                   help="store blank stdin lines as empty text records (default: skip them)")
    p.add_argument("--key", help="record key for every appended record")
    p.add_argument(
        "--header", type=_header, action="append", metavar="NAME=VALUE", help="record header; repeatable"
    )
    p.add_argument("--secret", metavar="S", help="the stream's write secret (for streams made with --secret)")
    p.add_argument("--expect-offset", type=_offset, metavar="N",
                   help="append only if the stream's next offset is N (optimistic concurrency)")
    p.add_argument("--dedup-id", metavar="ID",
                   help="idempotent append of one value: if ID was appended inside the stream's dedup "
                   "window, store nothing and print the original offset")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the offsets")

    p = command(
        "read", cmd_read, "Print records from an offset.",
        "sqlstream read orders --offset 100 --limit 10 --json",
        details="Human output: offset, time (UTC), key, value, tab-separated. --json prints one\n"
        "record object per line: stream, offset, timestamp, time, key, headers, type,\n"
        "value (base64 with \"encoding\": \"base64\" for bytes), position, txn.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--offset", type=_offset, metavar="N", help="first offset (default: first retained)")
    p.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N records (default 100)"
    )
    p.add_argument("--timeout", type=_seconds, default=0.0, metavar="S",
                   help="wait up to S seconds for a first record (default 0: do not wait)")

    p = command(
        "tail", cmd_tail, "Print the last records; with -f keep printing new ones.",
        "sqlstream tail -f orders --from latest",
        details="With -f it prints records as they are committed, and exits 0 once the stream\n"
        "is sealed, or 130 on Ctrl-C. --from overrides -n.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing records as they arrive")
    p.add_argument("--from", dest="start", type=_start, metavar="earliest|latest|OFFSET",
                   help="where to start instead of the last -n records")
    p.add_argument(
        "-n", "--lines", type=_offset, default=10, metavar="N", help="print the last N records (default 10)"
    )

    command("streams", cmd_streams, "List the streams.", "sqlstream streams --json")

    p = command("info", cmd_info, "Describe a stream.", "sqlstream info orders")
    p.add_argument("name", metavar="NAME")

    p = command(
        "seal", cmd_seal, "Seal a stream: it takes no more appends and followers finish.",
        "sqlstream seal build-log --secret \"$LOG_SECRET\"",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--secret", metavar="S", help="the stream's write secret (for streams made with --secret)")

    p = command("delete", cmd_delete, "Delete a stream and all its records.", "sqlstream delete orders")
    p.add_argument("name", metavar="NAME")

    p = command(
        "sql", cmd_sql, "Run one read-only SQL query and print the rows.",
        "sqlstream sql \"SELECT offset, json_extract(data, '$.id') AS id FROM chunks "
        "WHERE stream_id = (SELECT id FROM streams WHERE name = ?)\" orders",
        details="The database is opened read-only, so statements that write are refused: raw\n"
        "writes could break the offsets and byte positions sqlstream keeps in step. Use\n"
        "the other commands to change data. One statement per call.\n\n"
        "PARAMs bind to ? placeholders, typed as the sqlite3 shell does: NULL is NULL,\n"
        "0, -42 are INTEGERs, 1.5, 2e3 are REALs, anything else (007, inf, x) is TEXT.\n"
        "--param NAME=VALUE binds :NAME the same way; --json-params '[\"007\", 1]' (or an\n"
        "object for :name) gives exact types. An empty result prints nothing, or\n"
        "(0 rows) on a terminal.\n"
        "--json prints one object per row (duplicate column names get _2, _3, ...; a BLOB\n"
        "is {\"base64\": ...}).\n\n"
        "Views for people: stream_stats, subscription_stats, pending_deliveries.\n"
        "Tables: streams, chunks, counters, subscriptions, deliveries, cursors, dedup,\n"
        "exports, export_streams, export_files, export_ranges, storage_objects,\n"
        "storage_segments. docs/sql.md describes them, with example queries.",
    )
    p.add_argument("query", metavar="QUERY")
    p.add_argument("params", metavar="PARAM", nargs="*", help="values for ? placeholders (typed)")
    p.add_argument("--param", type=_sql_named, action="append", metavar="NAME=VALUE",
                   help="value for a :NAME placeholder (typed like PARAM); repeatable")
    p.add_argument("--json-params", metavar="JSON",
                   help="exact-typed values: a JSON array for ?, an object for :name")

    from .cli_subscriptions import add_commands as add_subscription_commands  # noqa: PLC0415 (cycle)

    add_subscription_commands(command)

    from .cli_maintenance import add_commands as add_maintenance_commands  # noqa: PLC0415 (cycle)

    add_maintenance_commands(command)

    from . import cli_archive  # noqa: PLC0415 (cycle) - export, import, archive cat

    cli_archive.register(commands, command, _Formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (also used by ``python -m sqlstream``)."""
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else list(argv)
    for number, text in enumerate(arguments, 1):
        # A byte that is not UTF-8 reaches Python as a lone surrogate: it cannot be a stream
        # name, stored as text or even printed back strictly, so stop here with a clear line.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
            report_error(CliError(f"argument {number} ({shown!r}) is not valid UTF-8: {exc.reason}",
                                  hint="pass text arguments in UTF-8; append binary data another way"),
                         sys.stderr)
            return EXIT_USAGE
    try:
        args = parser.parse_args(arguments)
        if args.command is None:
            parser.error("the following arguments are required: COMMAND")
    except SystemExit as exc:  # -h, --version and usage errors: keep argparse's status
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        return int(args.handler(args, out, err))
    except SqlstreamError as exc:
        report_error(exc, err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`). Point stdout at /dev/null so the interpreter's
        # final flush does not raise again and print a traceback.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # e.g. a database path that is a directory or not readable
        report_error(CliError(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)), err)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug below us is still one line, not a traceback
        report_error(CliError(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="this is a bug in sqlstream; please report it with the command that caused it",
        ), err)
        return EXIT_ERROR
