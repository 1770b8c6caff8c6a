"""Compatibility path: export archives (``db.export``, ``trim_exported``, ``export_status``) live in :mod:`sqlstream.archive.export`.

``sqlstream.export`` keeps importing as before; new code imports from
:mod:`sqlstream.archive.export` (or :mod:`sqlstream.archive`).
"""

from __future__ import annotations

from .archive.export import (
    DEFAULT_BATCH,
    DEFAULT_ROLL_SIZE_MB,
    ExportProgress,
    ExportResult,
    ExportStatus,
    MAX_BATCH,
    STAGING,
    create_file,
    dir_mode_for,
    export,
    export_status,
    file_mode_of,
    format_timestamp,
    make_dirs,
    os_error,
    parse_timestamp,
    record_metadata,
    trim_exported,
)

__all__ = [
    "export",
    "trim_exported",
    "export_status",
    "ExportResult",
    "ExportProgress",
    "ExportStatus",
    "create_file",
    "DEFAULT_BATCH",
    "DEFAULT_ROLL_SIZE_MB",
    "dir_mode_for",
    "file_mode_of",
    "format_timestamp",
    "make_dirs",
    "MAX_BATCH",
    "os_error",
    "parse_timestamp",
    "record_metadata",
    "STAGING",
]
