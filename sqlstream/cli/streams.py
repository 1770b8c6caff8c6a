"""Stream commands of the ``sqlstream`` command line: create, append, read, tail, streams,
info, seal, delete and sql.

They follow the output contract in :mod:`sqlstream.cli.main`'s docstring.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import apsw

from ..errors import OffsetOutOfRange, StreamExists, StreamNotFound
from .args import (
    CommandFactory,
    open_db,
    parse_header,
    parse_offset,
    parse_positive_int,
    parse_positive_seconds,
    parse_seconds,
    parse_start,
    parse_stream_offset,
    parse_value,
    stdin_lines,
    writable_stream,
)
from .output import (
    EXIT_OK,
    CliError,
    csv_cell,
    dump,
    info_json,
    isatty,
    iso_time,
    json_cell,
    print_records,
    record_json,
    record_line,
    render_table,
)

# The core is imported by the handlers that use it, not here: `sqlstream --version` and
# `-h` build the whole parser but open no database (tests/test_startup.py).
if TYPE_CHECKING:
    from ..append import PreparedRecord
    from ..records import Record
    from ..streams import Stream

_PAGE = 1000  # records fetched per read: bounds memory without a query per record


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


# --------------------------------------------------------------------------- commands


def cmd_create(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Create a stream; print its write secret for --secret."""
    with open_db(args, write=True, create=True) as db:
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
        out.write(dump({"stream": args.name, "created": created, "write_secret": secret}) + "\n")
    elif secret is not None:
        out.write(secret + "\n")  # alone on stdout so `S=$(sqlstream create x --secret)` works
    elif created:
        out.write(f"created stream {args.name!r}\n")
    else:
        out.write(f"stream {args.name!r} already exists\n")
    if not created and args.secret:
        err.write(f"note: stream {args.name!r} already existed; its write secret is not shown again\n")
    return EXIT_OK


def _record_row(text: str, where: str) -> PreparedRecord:
    """One line of ``read --json`` output as a row to append, with its own key, headers
    and content type (``--records``); ``CliError`` naming ``where`` if it is not one."""
    from ..records import encode_headers, encode_key, encode_value  # noqa: PLC0415 - the core, when used

    try:
        obj = json.loads(text, parse_constant=lambda c: _reject_constant(c))
    except (ValueError, RecursionError) as exc:
        raise CliError(f"{where} is not valid JSON: {exc}",
                       hint="--records reads the lines `sqlstream read --json` prints") from exc
    if not isinstance(obj, dict) or "value" not in obj:
        raise CliError(f"{where} is not a record object (a JSON object with a \"value\")",
                       hint="--records reads the lines `sqlstream read --json` prints; use --json for plain values")
    value, ctype, encoding = obj["value"], obj.get("type"), obj.get("encoding")
    if ctype is None:  # a hand-written line: infer the type as append does
        ctype = "bytes" if encoding == "base64" else "text" if isinstance(value, str) else "json"
    key, headers = obj.get("key"), obj.get("headers")
    if key is not None and not isinstance(key, str):
        raise CliError(f"{where}: \"key\" must be a string or null, not {type(key).__name__}")
    if headers is not None and not (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())):
        raise CliError(f"{where}: \"headers\" must be an object of strings")
    data: bytes | str
    if ctype == "bytes":
        if encoding != "base64" or not isinstance(value, str):
            raise CliError(f"{where}: a bytes record's value is base64 text with \"encoding\": \"base64\"")
        data = _b64decode(value, where)
        return (encode_key(key), encode_headers(headers or None), "bytes", data, len(data))
    if encoding is not None:
        raise CliError(f"{where}: \"encoding\": {encoding!r} is only for bytes records")
    if ctype == "text":
        if not isinstance(value, str):
            raise CliError(f"{where}: a text record's value must be a string")
        data = value
    elif ctype == "json":
        if value is None:
            raise CliError(f"{where} is JSON null, which a record cannot hold")
        if isinstance(value, str):
            # A JSON string stays a JSON record (append() would store a str as text).
            data = json.dumps(value, ensure_ascii=False)
        else:
            _, data, _ = encode_value(value)
    else:
        raise CliError(f"{where}: unknown record type {ctype!r}", hint="a record's type is json, text or bytes")
    try:
        size = len(data.encode("utf-8") if isinstance(data, str) else data)
    except UnicodeEncodeError:
        raise CliError(f"{where}: the value is not valid Unicode (a lone surrogate)") from None
    return (encode_key(key), encode_headers(headers or None), ctype, data, size)


def _reject_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not valid JSON")


def _b64decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CliError(f"{where} is not valid base64: {exc}", hint="--base64 values are standard base64 "
                       "(A-Z a-z 0-9 + /, padded with =)") from exc


def cmd_append(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Append the arguments, stdin lines or files as records, all in one transaction."""
    modes = [flag for flag, on in (("--json", args.json), ("--base64", args.base64), ("--records", args.records))
             if on]
    if len(modes) > 1:
        raise CliError(f"{' and '.join(modes)} read values differently; give one")
    if args.file and (args.values or modes):
        raise CliError("--file appends each file's bytes as one record; give no VALUE, --json, --base64 "
                       "or --records with it")
    if args.records and args.dedup_id is not None:
        raise CliError("--dedup-id names one value; it cannot be combined with --records")
    if args.file:
        texts: list[tuple[str, str]] = []
    elif args.values:
        texts = [(t, f"value {i}") for i, t in enumerate(args.values, 1)]
    else:
        if sys.stdin is None:  # started without a stdin (a service, pythonw)
            raise CliError("no values given and there is no stdin to read them from")
        if isatty(sys.stdin):
            err.write("reading records from stdin, one per line; end with Ctrl-D\n")
        texts = [(t, f"stdin line {i}") for i, t in enumerate(stdin_lines(sys.stdin), 1)]
        # A blank line is almost always a log's spacing or a trailing newline, not a record
        # (JSON Lines readers skip them too); --keep-blank keeps them as text records.
        if modes or not args.keep_blank:
            texts = [(t, w) for t, w in texts if t.strip()]
    # Parse everything before opening a transaction: one bad value stores nothing.
    headers = dict(args.header) if args.header else None
    rows: list[PreparedRecord] | None = None
    values: list[Any] = []
    if args.records:
        from ..records import encode_headers, encode_key  # noqa: PLC0415 - the core, when used

        rows = []
        for text, where in texts:
            k, h, ctype, data, size = _record_row(text, where)
            if args.key is not None:
                k = encode_key(args.key)
            if headers:  # --header adds to (or replaces) the record's own headers
                merged = {**(json.loads(h) if h else {}), **headers}
                h = encode_headers(merged)
            rows.append((k, h, ctype, data, size))
    elif args.file:
        for path in args.file:
            try:
                with open(path, "rb") as f:
                    values.append(f.read())
            except OSError as exc:
                raise CliError(f"cannot read --file {path}: {exc.strerror or exc}") from exc
    elif args.base64:
        values = [_b64decode(t, where) for t, where in texts]
    else:
        values = [parse_value(t, args.json, where) for t, where in texts]
    with open_db(args, write=True) as db:
        try:
            stream = writable_stream(db, args.name, args.secret)
        except StreamNotFound as exc:
            if args.secret is not None:  # an unknown secret, not a missing stream
                raise
            raise CliError(str(exc.args[0]), hint=f"create it with `sqlstream create {args.name}`") from exc
        if rows is not None:
            if not rows:
                return EXIT_OK
            # Rows already carry each record's own key, headers and type, which
            # Stream.extend (one key and headers for the batch) cannot express.
            offsets: Sequence[int] = db.engine.append_rows(args.name, args.secret, rows, args.expect_offset)
        elif not values:
            return EXIT_OK
        elif args.dedup_id is not None:
            if len(values) != 1:
                raise CliError(f"--dedup-id names one record, but {len(values)} values were given")
            offsets = [stream.append(values[0], key=args.key, headers=headers,
                                     expect_offset=args.expect_offset, dedup_id=args.dedup_id)]
        else:
            offsets = stream.extend(values, key=args.key, headers=headers, expect_offset=args.expect_offset)
    if not args.quiet:
        out.write("".join(f"{o}\n" for o in offsets))
    return EXIT_OK


def cmd_read(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print up to --limit records from --offset (default: the first retained record)."""
    with open_db(args, write=False) as db:
        stream = db.stream(args.name)
        if args.reverse:  # --offset is then the exclusive upper bound
            print_records(stream.read_reverse(args.offset, args.limit), args.json, out)
            return EXIT_OK
        start = stream.info().first_offset if args.offset is None else args.offset
        if args.timeout:
            # Block only for the first record; the rest is read as it stands then.
            first = stream.read(start, min(_PAGE, args.limit), timeout=args.timeout)
            print_records(first, args.json, out)
            if not first:
                return EXIT_OK
            start, left = first[-1].offset + 1, args.limit - len(first)
        else:
            left = args.limit
        for page in _read_range(stream, start, None, left):
            print_records(page, args.json, out)
    return EXIT_OK


def cmd_read_many(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print records from several streams at once (XREAD STREAMS): STREAM=OFFSET pairs."""
    positions: dict[str, int] = dict(args.positions)
    with open_db(args, write=False) as db:
        got = db.read_many(positions, limit=args.limit, timeout=args.timeout)
    for name, records in got.items():
        if args.json:
            print_records(records, True, out)
        else:
            out.write("".join(f"{name}\t{record_line(r)}\n" for r in records))
    return EXIT_OK


def cmd_tail(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print the last -n records; with -f keep printing new ones until the stream is sealed."""
    with open_db(args, write=False) as db:
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
                print_records(page, args.json, out)
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
        print_records(page, as_json, out)
        out.flush()
        offset = page[-1].offset + 1


def cmd_streams(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """List every stream with its counters."""
    with open_db(args, write=False) as db:
        infos = db.streams()
    if args.json:
        out.write("".join(dump(info_json(i)) + "\n" for i in infos))
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
    with open_db(args, write=False) as db:
        info = db.stream_info(args.name)
    if args.json:
        out.write(dump(info_json(info)) + "\n")
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
    with open_db(args, write=True) as db:
        sealed_now = writable_stream(db, args.name, args.secret).seal()
    if args.json:
        out.write(dump({"stream": args.name, "sealed": True, "already_sealed": not sealed_now}) + "\n")
    else:
        done = "sealed stream {!r}" if sealed_now else "stream {!r} was already sealed"
        out.write(done.format(args.name) + "\n")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Delete a stream and all its records."""
    with open_db(args, write=True) as db:
        db.delete_stream(args.name, force=args.force)
    if args.json:
        out.write(dump({"stream": args.name, "deleted": True}) + "\n")
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
                           hint="pass a nested value as a JSON string and wrap its placeholder in json(?) in the query")
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
    fmt = _sql_format(args)
    with open_db(args, write=False) as db:
        # Without --max-bytes, Database.query's own default applies (its one home).
        limits = {} if args.max_bytes is None else {"max_bytes": args.max_bytes}
        result = db.query(args.query, params, timeout=args.timeout or None, max_rows=args.max_rows, **limits)
    if fmt in ("nl", "array"):
        columns = _unique_columns(result.columns)
        objects = [dump({c: json_cell(v) for c, v in zip(columns, row)}) for row in result.rows]
        if fmt == "nl":
            out.write("".join(line + "\n" for line in objects))
        else:  # an empty result is still a valid document: []
            out.write("[" + ",\n ".join(objects) + "]\n")
    elif fmt in ("csv", "tsv"):
        writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        if result.columns:  # the header even with no rows, when the query reports its columns
            writer.writerow(result.columns)
        writer.writerows([csv_cell(v) for v in row] for row in result.rows)
    elif result.rows:
        out.write("".join(line + "\n" for line in render_table(result.columns, result.rows)))
    elif isatty(out):
        header = render_table(result.columns, []) if result.columns else []
        out.write("".join(line + "\n" for line in header) + "(0 rows)\n")
    return EXIT_OK


DEFAULT_SQL_TIMEOUT = 30.0
"""`sqlstream sql`'s time limit in seconds (Datasette's default is 1 s, for a web page)."""

_SQL_FORMATS = {"table": "--table", "csv": "--csv", "tsv": "--tsv", "nl": "--nl", "array": "--json-array"}


def _sql_format(args: argparse.Namespace) -> str:
    """The one output format asked for: table (the default), csv, tsv, nl or array.

    ``--json`` is JSON lines here as in every other command (the CLI's one ``--json``
    contract), so it is the same as ``--nl``; ``--json-array`` prints one JSON array.
    """
    chosen = [f for f in _SQL_FORMATS if getattr(args, f"format_{f}")]
    if args.json and "nl" not in chosen:
        chosen.append("nl")
    if len(chosen) > 1:
        flags = " and ".join(_SQL_FORMATS[f] for f in chosen)
        raise CliError(f"{flags} ask for different output formats; give one",
                       hint="--table, --csv, --tsv, --nl (same as --json) or --json-array")
    return chosen[0] if chosen else "table"


def _sql_named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.lstrip(":@$")  # accept the placeholder as written in the query
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a parameter is NAME=VALUE, not {text!r}")
    return name, value


# --------------------------------------------------------------------------- parser


def register(command: CommandFactory) -> None:
    """Add create, append, read, tail, streams, info, seal, delete and sql through ``command``."""
    p = command(
        "create", cmd_create, "Create a stream.",
        "sqlstream create orders --max-count 100000\nLOG_SECRET=$(sqlstream create build-log --secret)",
        details="With --secret the stream takes writes only through the write secret, which is\n"
        "printed (alone) on stdout; keep it, it is shown only once.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--max-count", type=parse_positive_int, metavar="N", help="retain at most N records")
    p.add_argument("--max-age", type=parse_positive_seconds, metavar="SECONDS", help="retain records this young")
    p.add_argument("--max-bytes", type=parse_positive_int, metavar="N", help="retain at most N bytes")
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
        "each appended record, one per line (use `--` before values that start with -).\n"
        "Copy records with their keys, headers and bytes:\n"
        "  sqlstream read orders --json | sqlstream append orders-copy --records",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("values", metavar="VALUE", nargs="*", help="record values (default: stdin lines)")
    p.add_argument("--json", action="store_true", help="parse each value as JSON (blank stdin lines skipped)")
    p.add_argument("--records", action="store_true",
                   help="each value or stdin line is a record object as `read --json` prints it: its key, "
                   "headers, type and value (bytes as base64) are kept")
    p.add_argument("--base64", action="store_true", help="each value or stdin line is base64: append the bytes")
    p.add_argument("--file", action="append", metavar="PATH",
                   help="append the bytes of PATH as one record; repeatable")
    p.add_argument("--keep-blank", action="store_true",
                   help="store blank stdin lines as empty text records (default: skip them)")
    p.add_argument("--key", help="record key for every appended record")
    p.add_argument(
        "--header", type=parse_header, action="append", metavar="NAME=VALUE", help="record header; repeatable"
    )
    p.add_argument("--secret", metavar="S", help="the stream's write secret (for streams made with --secret)")
    p.add_argument("--expect-offset", type=parse_offset, metavar="N",
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
    p.add_argument("--offset", type=parse_offset, metavar="N", help="first offset (default: first retained)")
    p.add_argument(
        "--limit", type=parse_positive_int, default=100, metavar="N", help="at most N records (default 100)"
    )
    p.add_argument("--timeout", type=parse_seconds, default=0.0, metavar="S",
                   help="wait up to S seconds for a first record (default 0: do not wait)")
    p.add_argument("--reverse", action="store_true",
                   help="newest first, from below --offset (default: the end); never waits")

    p = command(
        "read-many", cmd_read_many, "Print records from several streams at once, waiting for any.",
        "sqlstream read-many orders=100 payments=0 --timeout 5 --json",
        details="Each STREAM=OFFSET names a stream and the offset to read it from (like Redis\n"
        "XREAD STREAMS). Prints the records of every stream that has some (at most --limit\n"
        "each); with --timeout waits up to S seconds until one has. Human output prefixes\n"
        "each record line with its stream; --json objects carry \"stream\".",
    )
    p.add_argument("positions", metavar="STREAM=OFFSET", nargs="+", type=parse_stream_offset)
    p.add_argument("--limit", type=parse_positive_int, default=100, metavar="N",
                   help="at most N records per stream (default 100)")
    p.add_argument("--timeout", type=parse_seconds, default=0.0, metavar="S",
                   help="wait up to S seconds for a record (default 0: do not wait)")

    p = command(
        "tail", cmd_tail, "Print the last records; with -f keep printing new ones.",
        "sqlstream tail -f orders --from latest",
        details="With -f it prints records as they are committed, and exits 0 once the stream\n"
        "is sealed, or 130 on Ctrl-C. --from overrides -n.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing records as they arrive")
    p.add_argument("--from", dest="start", type=parse_start, metavar="earliest|latest|OFFSET",
                   help="where to start instead of the last -n records")
    p.add_argument(
        "-n", "--lines", type=parse_offset, default=10, metavar="N", help="print the last N records (default 10)"
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

    p = command(
        "delete", cmd_delete, "Delete a stream and all its records.", "sqlstream delete orders",
        details="Refused while a subscription of the stream has pending (delivered, unacked)\n"
        "records, which a consumer is still working on; --force deletes anyway.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="delete even while records are pending")

    p = command(
        "sql", cmd_sql, "Run one read-only SQL query and print the rows.",
        "sqlstream sql \"SELECT offset, json_extract(data, '$.id') AS id FROM records "
        "WHERE stream_id = (SELECT id FROM streams WHERE name = ?)\" orders",
        details="The database is opened read-only, so statements that write are refused: raw\n"
        "writes could break the offsets and byte positions sqlstream keeps in step. Use\n"
        "the other commands to change data. One statement per call.\n\n"
        "PARAMs bind to ? placeholders, typed as the sqlite3 shell does: NULL is NULL,\n"
        "0, -42 are INTEGERs, 1.5, 2e3 are REALs, anything else (007, inf, x) is TEXT.\n"
        "--param NAME=VALUE binds :NAME the same way; --json-params '[\"007\", 1]' (or an\n"
        "object for :name) gives exact types. An empty result prints nothing, or\n"
        "(0 rows) on a terminal.\n"
        "Output: --table (the default, aligned columns; a BLOB as x'hex'), --csv, --tsv\n"
        "(a header row, then the rows; NULL is an empty cell, a BLOB its base64 text),\n"
        "--nl or --json (one JSON object per row, as --json is for every command) and\n"
        "--json-array (the same objects in one JSON array, [] when empty). In JSON,\n"
        "duplicate column names get _2, _3, ... and a BLOB is {\"base64\": ...}.\n\n"
        "Bounds: a query running past --timeout (default 30 s; 0: no limit) is stopped,\n"
        "one returning more than --max-rows rows (default: no limit) or --max-bytes bytes\n"
        "(default 256 MiB, also the longest value it may build) is refused; exit 1.\n\n"
        "Views for people: stream_stats, subscription_stats, pending_deliveries, and\n"
        "records (every record with its value in data, wherever it is stored).\n"
        "Tables: streams, chunks and payloads (records as stored: values larger than\n"
        "about 900 bytes are in payloads), counters, subscriptions, deliveries, cursors, dedup,\n"
        "exports, export_streams, export_files, export_ranges, storage_objects,\n"
        "storage_segments. docs/sql.md describes them, with example queries.",
    )
    p.add_argument("query", metavar="QUERY")
    p.add_argument("params", metavar="PARAM", nargs="*", help="values for ? placeholders (typed)")
    p.add_argument("--timeout", type=parse_seconds, default=DEFAULT_SQL_TIMEOUT, metavar="S",
                   help=f"stop the query after S seconds (default {DEFAULT_SQL_TIMEOUT:g}; 0: no limit)")
    p.add_argument("--max-rows", type=parse_positive_int, default=None, metavar="N",
                   help="refuse a result of more than N rows (default: no limit)")
    p.add_argument("--max-bytes", type=parse_positive_int, default=None, metavar="N",
                   help="refuse a result (or a value) of more than N bytes (default 256 MiB)")
    p.add_argument("--param", type=_sql_named, action="append", metavar="NAME=VALUE",
                   help="value for a :NAME placeholder (typed like PARAM); repeatable")
    p.add_argument("--json-params", metavar="JSON",
                   help="exact-typed values: a JSON array for ?, an object for :name")
    for fmt, help_text in (
        ("table", "aligned columns (the default)"),
        ("csv", "comma-separated values with a header row"),
        ("tsv", "tab-separated values with a header row"),
        ("nl", "one JSON object per row (JSON lines; the same as --json)"),
        ("array", "one JSON array of row objects"),
    ):
        p.add_argument(_SQL_FORMATS[fmt], dest=f"format_{fmt}", action="store_true", help=help_text)
