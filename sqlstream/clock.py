"""The one time helper: wall-clock seconds to the integer microseconds sqlstream stores,
and stored times back to the text people read.

Every stored time (record timestamps, deadlines, retention and dedup windows, object
ages) is integer microseconds since the epoch. Code that has a clock to honour (a
``Database``'s ``_clock``, which tests replace) converts its reading with :func:`us`;
code without one uses :func:`now_us`.

**One rule for showing a time** (:func:`iso_time`): ISO 8601 UTC with milliseconds,
``2026-12-07T03:45:26.395Z``, rounded to the nearest millisecond exactly as SQLite's
``strftime('%Y-%m-%dT%H:%M:%fZ', us / 1e6, 'unixepoch')`` rounds, because the SQL views
(``stream_stats``...) and Datasette's canned queries render times with that expression
and must agree to the digit with the CLI and Datasette's cells.
"""

from __future__ import annotations

import datetime as _dt
import time

__all__ = ["us", "now_us", "iso_time", "iso_time_us"]

# SQLite's 'unixepoch' modifier works in Julian-day milliseconds: it computes
# ms = (sqlite3_int64)(seconds * 1000.0 + JD_EPOCH_MS + 0.5) in doubles (date.c), valid
# for 0 <= that sum < JD_MAX_MS (years 0000-9999). The same double operations here give
# the same millisecond, float rounding included.
_JD_EPOCH_MS = 210866760000000.0  # 1970-01-01T00:00:00Z as a Julian day number, in ms
_JD_MAX_MS = 464269060800000.0
_EPOCH = _dt.datetime(1970, 1, 1)


def us(seconds: float) -> int:
    """Seconds (a float such as ``time.time()``) to integer microseconds, rounded."""
    return int(round(seconds * 1_000_000))


def now_us() -> int:
    """The current wall-clock time in integer microseconds."""
    return time.time_ns() // 1000


def iso_time(seconds: float) -> str | None:
    """``seconds`` since the epoch (the double ``us / 1e6``) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Rounded to the millisecond as the SQL views round (see the module docstring); None
    where SQLite's ``strftime`` gives NULL or Python cannot represent the date (before
    year 1 or after 9999).
    """
    total = seconds * 1000.0 + _JD_EPOCH_MS
    if not 0.0 <= total < _JD_MAX_MS:  # NaN falls out here too
        return None
    ms = int(total + 0.5) - int(_JD_EPOCH_MS)
    try:
        moment = _EPOCH + _dt.timedelta(milliseconds=ms)
    except OverflowError:
        return None
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond // 1000:03d}Z")


def iso_time_us(micros: int) -> str | None:
    """Stored integer microseconds as :func:`iso_time` shows them (``micros / 1e6``, as the views divide)."""
    return iso_time(micros / 1e6)
