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

Options may come before, between or after a command's values (each command's arguments
are parsed intermixed); a usage error prints that command's usage. Numbers are written
plainly (ASCII digits, for seconds a point and an exponent too: no ``1_000``, spaces,
``nan`` or ``inf``) and are checked when parsed (a usage error, status 2, otherwise):
seconds are finite, >= 0 and at most ``SECONDS_MAX`` (1e9, about 31 years); offsets are
0..2**63-1 (SQLite's INTEGER); counts and sizes are 1..``COUNT_MAX`` (2**62, leaving room
for the margins retention adds to a limit).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import SqlstreamError
from . import archive, maintenance, serve, streams, subscriptions
from .args import DB_ENV, DEFAULT_DB, CommandParser, HelpFormatter
from .output import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, CliError, report_error


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command (exposed so tests can list the commands)."""
    parser = argparse.ArgumentParser(
        prog="sqlstream",
        formatter_class=HelpFormatter,
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
    common = CommandParser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database file")
    json_out = CommandParser(add_help=False)
    json_out.add_argument("--json", action="store_true", help="print JSON (one object per line) for scripts")

    # Not required=True: argparse would then report a missing COMMAND before an unknown
    # option (`sqlstream --bogus`); main() checks for the command after parsing.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)

    def command(
        name: str, handler: Callable[..., int], summary: str, example: str, *, json_output: bool = True,
        details: str = "",
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary + (f"\n\n{details}" if details else ""),
            epilog="Example:\n" + "".join(f"  {line}\n" for line in example.splitlines()),
            formatter_class=HelpFormatter,
            parents=[common, json_out] if json_output else [common],
        )
        sub.set_defaults(handler=handler)
        return sub

    # One registration style: each command group adds its commands through `command`,
    # in this order (the order of `sqlstream -h`).
    streams.register(command)
    subscriptions.register(command)
    maintenance.register(command)
    archive.register(command)
    serve.register(command)
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion through argcomplete (the optional ``completion`` extra), if installed.

    It acts only when the shell's completion function runs the command (``_ARGCOMPLETE``
    set): it prints the candidates and exits the process. Checking the variable first
    keeps the import off every ordinary run.
    """
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        argcomplete = importlib.import_module("argcomplete")
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (also used by ``python -m sqlstream``)."""
    parser = build_parser()
    _complete(parser)
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
