"""Compatibility path: importing archives back into streams (``import_archives``) live in :mod:`sqlstream.archive.importing`.

``sqlstream.importing`` keeps importing as before; new code imports from
:mod:`sqlstream.archive.importing` (or :mod:`sqlstream.archive`).
"""

from __future__ import annotations

from .archive.importing import (
    ImportResult,
    import_archives,
)

__all__ = [
    "import_archives",
    "ImportResult",
]
