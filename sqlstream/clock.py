"""The one time helper: wall-clock seconds to the integer microseconds sqlstream stores.

Every stored time (record timestamps, deadlines, retention and dedup windows, object
ages) is integer microseconds since the epoch. Code that has a clock to honour (a
``Database``'s ``_clock``, which tests replace) converts its reading with :func:`us`;
code without one uses :func:`now_us`.
"""

from __future__ import annotations

import time

__all__ = ["us", "now_us"]


def us(seconds: float) -> int:
    """Seconds (a float such as ``time.time()``) to integer microseconds, rounded."""
    return int(round(seconds * 1_000_000))


def now_us() -> int:
    """The current wall-clock time in integer microseconds."""
    return time.time_ns() // 1000
