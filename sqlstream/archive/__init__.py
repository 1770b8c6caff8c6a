"""The archive wing: shoebox-compatible archive files, roll managers, callbacks, export and import.

``sqlstream.archive`` keeps every name shoebox users and configuration strings rely on
(``sqlstream.archive:GzipCallback``, ``WritingRollManager``, ``ArchiveReader``...); the code
lives in the modules of this package:

- :mod:`.format`: the record format, :class:`ArchiveWriter`, :class:`ArchiveReader`
- :mod:`.rolling`: roll managers and roll checkers
- :mod:`.callbacks`: what happens to an archive file once it is closed
- :mod:`.export`: ``db.export`` (streams to archives), ``trim_exported``, ``export_status``
- :mod:`.importing`: :func:`import_archives` (archives back into streams)

This module only re-exports; it holds no logic. (``fsync_directory``, ``working_name`` and
``is_working_name`` stay importable from here as before, outside ``__all__``.)
"""

from __future__ import annotations

from ..errors import (
    ArchiveError,
    BadMagic,
    ChecksumMismatch,
    CorruptArchive,
    EndOfArchive,
    NoMoreFiles,
    RecordTooLarge,
    TruncatedRecord,
    UnsupportedVersion,
)
from .callbacks import (
    ArchiveCallback,
    CallbackList,
    ChangeExtensionCallback,
    CompressCallback,
    DeleteFileCallback,
    GzipCallback,
    MoveFileCallback,
    UploadCallback,
    ZstdCallback,
)
from .format import (
    DEFAULT_MAX_RECORD_BYTES,
    FLAG_ZLIB,
    MAGIC,
    ArchiveReader,
    ArchiveWriter,
    fsync_directory,
    is_working_name,
    open_archive,
    pack,
    unpack,
    working_name,
)
from .importing import import_archives
from .rolling import (
    NeverRollChecker,
    ReadingRollManager,
    RollChecker,
    SizeRollChecker,
    TimeRollChecker,
    WritingRollManager,
)

__all__ = [
    "MAGIC",
    "FLAG_ZLIB",
    "pack",
    "unpack",
    "ArchiveWriter",
    "ArchiveReader",
    "RollChecker",
    "NeverRollChecker",
    "SizeRollChecker",
    "TimeRollChecker",
    "WritingRollManager",
    "ReadingRollManager",
    "ArchiveCallback",
    "CallbackList",
    "ChangeExtensionCallback",
    "MoveFileCallback",
    "DeleteFileCallback",
    "CompressCallback",
    "GzipCallback",
    "ZstdCallback",
    "UploadCallback",
    "import_archives",
    "open_archive",
    "ArchiveError",
    "EndOfArchive",
    "TruncatedRecord",
    "CorruptArchive",
    "BadMagic",
    "ChecksumMismatch",
    "UnsupportedVersion",
    "RecordTooLarge",
    "NoMoreFiles",
    "DEFAULT_MAX_RECORD_BYTES",
]
