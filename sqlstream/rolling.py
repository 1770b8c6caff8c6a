"""Compatibility path: roll managers and roll checkers live in :mod:`sqlstream.archive.rolling`.

``sqlstream.rolling`` keeps importing as before; new code imports from
:mod:`sqlstream.archive.rolling` (or :mod:`sqlstream.archive`).
"""

from __future__ import annotations

from .archive.rolling import (
    AnyRollChecker,
    NeverRollChecker,
    ReadingRollManager,
    RollChecker,
    SizeRollChecker,
    TimeRollChecker,
    WritingRollManager,
    candidate_names,
    claim_working_file,
    matching_files,
    publish,
    render_template,
)

__all__ = [
    "RollChecker",
    "NeverRollChecker",
    "SizeRollChecker",
    "TimeRollChecker",
    "AnyRollChecker",
    "WritingRollManager",
    "ReadingRollManager",
    "candidate_names",
    "claim_working_file",
    "matching_files",
    "publish",
    "render_template",
]
