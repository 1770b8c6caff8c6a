"""Compatibility path: archive callbacks live in :mod:`sqlstream.archive.callbacks`.

``sqlstream.callbacks`` keeps importing as before; new code imports from
:mod:`sqlstream.archive.callbacks` (or :mod:`sqlstream.archive`).
"""

from __future__ import annotations

from .archive.callbacks import (
    ArchiveCallback,
    COMPRESSIONS,
    CallbackList,
    ChangeExtensionCallback,
    CompressCallback,
    DeleteFileCallback,
    EXTENSIONS,
    GzipCallback,
    MoveFileCallback,
    UploadCallback,
    ZstdCallback,
    check_compression,
    compress_file,
    move_file,
)
from .plugins import load_object

__all__ = [
    "ArchiveCallback",
    "CallbackList",
    "ChangeExtensionCallback",
    "MoveFileCallback",
    "DeleteFileCallback",
    "CompressCallback",
    "GzipCallback",
    "ZstdCallback",
    "UploadCallback",
    "compress_file",
    "move_file",
    "check_compression",
    "COMPRESSIONS",
    "EXTENSIONS",
    "load_object",
]
