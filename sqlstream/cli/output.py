"""Output of the ``sqlstream`` command line: errors, exit statuses, records, tables, progress.

The output contract itself (``--json`` fields, exit codes) is in :mod:`sqlstream.cli.main`'s
docstring; every command module prints through these helpers so it holds everywhere.
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from .. import clock as _clock
from ..errors import SqlstreamError

if TYPE_CHECKING:  # the core is loaded by the commands that produce records
    from ..records import Record, StreamInfo

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


class CliError(SqlstreamError):
    """A problem the command line found itself (bad input, missing database file)."""


def report_error(exc: SqlstreamError, err: IO[str]) -> None:
    """Write ``Error: <message>`` and, when there is one, ``Hint: <hint>`` to ``err``
    (the error's :attr:`~sqlstream.errors.SqlstreamError.command_line_hint`)."""
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    hint = exc.command_line_hint  # the command line's form of the advice (errors.py)
    # Keep the contract of one line per field even if a message embeds a newline.
    err.write(f"Error: {' '.join(message.splitlines())}\n")
    if hint:
        err.write(f"Hint: {hint}\n")


# --------------------------------------------------------------------------- rendering


def iso_time(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``, by the one rule the SQL views and
    Datasette use too (:func:`sqlstream.clock.iso_time`); ``-`` for a time no calendar
    date can show (only a hand-edited file holds one)."""
    return _clock.iso_time(seconds) or "-"


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


def json_cell(value: Any) -> Any:
    """A SQL result cell as JSON: a BLOB becomes ``{"base64": ...}`` (no other cell is an object)."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # SQLite can hold ±inf; JSON cannot
    return value


def csv_cell(value: Any) -> Any:
    """A SQL result cell for CSV/TSV: NULL is empty, a BLOB its base64 text (lossless and
    one field, which raw bytes could not be), anything else as Python prints it."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
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


def dump(obj: Any) -> str:
    # ASCII-only JSON is valid whatever the terminal's or pipe's encoding.
    return json.dumps(obj, ensure_ascii=True, allow_nan=False)


def as_dict(report: Any) -> dict[str, Any]:
    """A result dataclass (report, info) as a plain dict for ``--json``.

    dataclasses is imported here, not at the top: the module imports inspect, a good part
    of what `sqlstream --version` would otherwise pay (the core has it loaded by then)."""
    import dataclasses  # noqa: PLC0415

    return dataclasses.asdict(report)


def print_records(records: Sequence[Record], as_json: bool, out: IO[str]) -> None:
    render: Callable[[Record], str] = (lambda r: dump(record_json(r))) if as_json else record_line
    out.write("".join(render(r) + "\n" for r in records))


def isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class ProgressLine:
    """A one-line progress display on a terminal, redrawn at most ten times a second.

    The standard library is enough for one self-overwriting line, so no progress-bar
    package is needed.
    """

    def __init__(self, err: IO[str], label: str) -> None:
        self.err = err
        self.label = label
        self.last = 0.0
        self.shown = False

    def __call__(self, p: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        if p.total:
            width = 24
            done = min(p.records, p.total)
            filled = width * done // p.total
            bar = "[" + "#" * filled + "." * (width - filled) + f"] {done:,}/{p.total:,}"
        else:
            bar = f"{p.records:,} records"
        self.err.write(f"\r{self.label}: {bar}, {p.files} archive(s)\x1b[K")
        self.err.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.err.write("\n")
            self.err.flush()


class Progress:
    """A progress bar on stderr with rate and ETA; build it with :func:`progress_bar`.

    Drawn by ``tqdm`` when it is installed (the optional ``progress`` extra: a small,
    dependency-free, well-kept library that handles terminal widths, rates and ETAs);
    without it, a plain self-overwriting line with the same figures, so the CLI needs
    no hard dependency for a cosmetic feature.
    """

    def __init__(self, err: IO[str], label: str, unit: str) -> None:
        self.err, self.label, self.unit = err, label, unit
        self.start = time.monotonic()
        self.last = 0.0
        self._latest: tuple[int, int | None, str] | None = None
        self.shown = False
        self._tqdm: Any = None
        try:
            tqdm = importlib.import_module("tqdm")
        except ImportError:
            return
        self._tqdm = tqdm.tqdm(total=None, desc=label, unit=unit, unit_scale=True, file=err,
                               dynamic_ncols=True, mininterval=0.1, leave=True)

    def update(self, done: int, total: int | None = None, note: str = "", *, force: bool = False) -> None:
        """Show ``done`` of ``total`` (None: unknown) units, with ``note`` after the figures."""
        if self._tqdm is not None:
            bar = self._tqdm
            if total != bar.total:
                bar.total = total
            if note:
                bar.set_postfix_str(note, refresh=False)
            bar.update(done - bar.n)
            return
        self._latest = (done, total, note)
        now = time.monotonic()
        if now - self.last < 0.1 and not force:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        figures = f"{done:,}/{total:,} {self.unit}s" if total else f"{done:,} {self.unit}s"
        if total and 0 < done <= total:
            eta = (total - done) / rate if rate else 0.0
            figures = f"{100 * done // total}% {figures}, ETA {eta:.0f}s"
        figures += f", {rate:,.0f} {self.unit}s/s"
        self.err.write(f"\r{self.label}: {figures}{', ' + note if note else ''}\x1b[K")
        self.err.flush()
        self.shown = True

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            return
        if self._latest is not None:  # the last figures, which the redraw limit may have held back
            self.update(*self._latest, force=True)
        if self.shown:
            self.err.write("\n")
            self.err.flush()


def progress_bar(err: IO[str], label: str, unit: str = "record") -> Progress | None:
    """A :class:`Progress` on ``err`` if it is a terminal, else None: never draw into a pipe
    or a log file, where the redraws would be noise."""
    return Progress(err, label, unit) if isatty(err) else None
