"""Arguments of the ``sqlstream`` command line: the database path, number types, values.

Numbers are checked when parsed (a usage error, status 2, otherwise): seconds are finite,
>= 0 and at most ``SECONDS_MAX``; offsets are 0..``OFFSET_MAX``; counts and sizes are
1..``COUNT_MAX``. Every command module takes its argument types from here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from .output import CliError

# The core is imported by the handlers that use it, not here: `sqlstream --version` and
# `-h` build the whole parser but open no database (tests/test_startup.py).
if TYPE_CHECKING:
    from ..database import Database
    from ..streams import Stream

DEFAULT_DB = "sqlstream.db"
DB_ENV = "SQLSTREAM_DB"

SECONDS_MAX = 1e9  # about 31 years: any longer wait is "forever" in practice
OFFSET_MAX = 2**63 - 1  # SQLite INTEGER
COUNT_MAX = 2**62  # counts and sizes: a limit plus retention's margin still fits an INTEGER

CommandFactory = Callable[..., argparse.ArgumentParser]
"""``command(name, handler, summary, example, *, json_output=True, details="")``: adds one
command to the parser and returns its sub-parser (see :func:`sqlstream.cli.main.build_parser`).
Every command module's ``register(command)`` adds its commands through it."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples."""


class CommandParser(argparse.ArgumentParser):
    """The parser of one command: options may come before, between or after its values.

    ``sqlstream append t --key k1 hello`` is ``append t hello --key k1``: the command's
    arguments are parsed intermixed (argparse's ``parse_known_intermixed_args``: options
    first, then the values left, in order). Anything left over is this command's usage
    error, printed with this command's usage rather than the top-level one.
    """

    _nested = False  # inside our own intermixed parse, which calls parse_known_args again

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        # A command group (``archive cat``) has a PARSER positional, which intermixed
        # parsing cannot take: its sub-commands, parsers of this class, intermix instead.
        group = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        if self._nested or group:
            return super().parse_known_args(args, namespace)
        self._nested = True
        try:
            parsed, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._nested = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def db_path(args: argparse.Namespace) -> str:
    return args.db or os.environ.get(DB_ENV) or DEFAULT_DB


def open_db(args: argparse.Namespace, *, write: bool, create: bool = False) -> Database:
    """Open the database; only ``create`` may make a new file, readers open read-only."""
    path = db_path(args)
    if not create and not os.path.exists(path):
        raise CliError(
            f"no database at {os.path.abspath(path)}",
            hint=f"create one with `sqlstream --db {path} create NAME`, or set --db / ${DB_ENV}",
        )
    from ..database import open as open_database  # noqa: PLC0415 - see the imports

    return open_database(path, readonly=not write, create=create)


def writable_stream(db: Database, name: str, secret: str | None) -> Stream:
    """A handle that may write ``name``: through its write secret if one is given."""
    if secret is None:
        return db.stream(name)
    stream = db.writer(secret)
    if stream.name != name:
        raise CliError(f"that write secret belongs to stream {stream.name!r}, not {name!r}")
    return stream


def parse_value(text: str, as_json: bool, where: str) -> Any:
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


def stdin_lines(stdin: IO[str]) -> list[str]:
    """Lines of stdin without their line endings, decoded strictly as UTF-8."""
    raw = getattr(stdin, "buffer", None)
    lines: list[str] = []
    if raw is None:  # a text stream with no bytes underneath (tests, embedding)
        return [line.rstrip("\n").removesuffix("\r") for line in stdin]
    for number, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"stdin line {number} is not valid UTF-8: {exc.reason}") from exc
        lines.append(text.rstrip("\n").removesuffix("\r"))
    return lines


# What a number on the command line may look like: ASCII digits, an optional sign, and
# for reals a point and an exponent. Python's int()/float() also take "1_000", " 3",
# other scripts' digits, "nan" and "inf", so `--timeout 0_5` was 5 seconds.
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")
_REAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def strict_int(text: str, what: str = "an integer") -> int:
    """``text`` as an int if it is written as one (digits, optional sign), else a usage error."""
    if not _INT_TEXT.match(text):
        raise argparse.ArgumentTypeError(f"not {what}: {text!r} (write digits only, e.g. 100)")
    return int(text)


def strict_float(text: str, what: str = "a number") -> float:
    """``text`` as a finite float if written as a decimal number (``1``, ``0.5``, ``1e-3``),
    else a usage error: no ``nan``, ``inf``, underscores or spaces."""
    if not _REAL_TEXT.match(text):
        raise argparse.ArgumentTypeError(f"not {what}: {text!r} (write a decimal number, e.g. 0.5)")
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        raise argparse.ArgumentTypeError(f"{what} too large: {text}")
    return value


def parse_positive_int(text: str) -> int:
    value = strict_int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    if value > COUNT_MAX:
        raise argparse.ArgumentTypeError(f"must be at most 2**62 ({COUNT_MAX}), not {text}")
    return value


def parse_offset(text: str) -> int:
    value = strict_int(text, "an offset")
    if value < 0:
        raise argparse.ArgumentTypeError(f"an offset is >= 0, not {value}")
    if value > OFFSET_MAX:
        raise argparse.ArgumentTypeError(f"an offset is at most 2**63-1 ({OFFSET_MAX}), not {text}")
    return value


def parse_seconds(text: str, *, positive: bool = False) -> float:
    bounds = f"a finite number {'>' if positive else '>='} 0 and at most {SECONDS_MAX:.0e} seconds"
    if not _REAL_TEXT.match(text):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (write {bounds}, e.g. 0.5)")
    value = float(text)
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > SECONDS_MAX:
        raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
    return value


def parse_positive_seconds(text: str) -> float:
    return parse_seconds(text, positive=True)


def parse_start(text: str) -> str:
    if text in ("earliest", "latest"):
        return text
    return str(parse_offset(text))


def parse_stream_offset(text: str) -> tuple[str, int]:
    """``STREAM=OFFSET`` (the last ``=`` splits: a stream name may hold one)."""
    name, sep, offset = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected STREAM=OFFSET, not {text!r} (e.g. orders=0)")
    return name, parse_offset(offset)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a header is NAME=VALUE, not {text!r}")
    return name, value
