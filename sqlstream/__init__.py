"""sqlstream: a stream database in one SQLite file.

>>> import sqlstream
>>> db = sqlstream.open("app.db")
>>> orders = db.create_stream("orders", exist_ok=True)
>>> orders.append({"id": 1})

The public names are loaded on first use (PEP 562): ``import sqlstream`` costs next to
nothing, and the first ``sqlstream.open`` (or any other name) imports the core and apsw.
A program that imports the package but takes another path (the ``sqlstream`` command's
``--version`` and ``-h``, a plugin entry point scanned by Datasette or pytest, a library
that only names sqlstream in a branch) does not pay for it. ``from sqlstream import X``,
``sqlstream.X``, ``dir(sqlstream)`` and ``from sqlstream import *`` see the same objects as
an eager import would: each name is resolved once, from the module that defines it.
"""

from __future__ import annotations

import importlib

# Not `typing.TYPE_CHECKING`: importing typing is a good part of what laziness saves.
# mypy treats any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import errors
    from .consumer import Consumer
    from .database import Database, QueryResult, open
    from .errors import SqlstreamError
    from .maintenance import CheckReport, MaintenanceReport, Problem
    from .producer import Producer, ProducerRecord
    from .raw import RawRecords
    from .readers import Reader, ReaderInfo
    from .records import Chunk, Record, StreamInfo
    from .retention import TrimResult
    from .streams import Stream
    from .subscriptions import AckResult, Batch, PendingEntry, Subscription, SubscriptionInfo

__version__ = "0.1.0"

# Public name -> the submodule (relative to this package) that defines it.
_WHERE = {
    "AckResult": "subscriptions",
    "Batch": "subscriptions",
    "CheckReport": "maintenance",
    "Chunk": "records",
    "Consumer": "consumer",
    "Database": "database",
    "MaintenanceReport": "maintenance",
    "PendingEntry": "subscriptions",
    "Problem": "maintenance",
    "Producer": "producer",
    "ProducerRecord": "producer",
    "QueryResult": "database",
    "RawRecords": "raw",
    "Reader": "readers",
    "ReaderInfo": "readers",
    "Record": "records",
    "SqlstreamError": "errors",
    "Stream": "streams",
    "StreamInfo": "records",
    "Subscription": "subscriptions",
    "SubscriptionInfo": "subscriptions",
    "TrimResult": "retention",
    "open": "database",
}

__all__ = [*sorted(_WHERE), "errors", "__version__"]


# Hidden from mypy: a module-level __getattr__ would make every misspelt name type-check.
# The TYPE_CHECKING imports above declare the real names instead.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Load a public name on first use and keep it in the package namespace."""
        if name == "errors":
            value = importlib.import_module(".errors", __name__)
        elif name in _WHERE:
            value = getattr(importlib.import_module("." + _WHERE[name], __name__), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # later look-ups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
