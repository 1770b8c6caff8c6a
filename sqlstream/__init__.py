"""sqlstream: a stream database in one SQLite file.

>>> import sqlstream
>>> db = sqlstream.open("app.db")
>>> orders = db.create_stream("orders", exist_ok=True)
>>> orders.append({"id": 1})
"""

from __future__ import annotations

from . import errors
from .database import Database, QueryResult, open
from .errors import SqlstreamError
from .records import Chunk, Record, StreamInfo
from .retention import TrimResult
from .maintenance import CheckReport, MaintenanceReport, Problem
from .streams import Stream
from .consumer import Consumer
from .producer import Producer, ProducerRecord
from .raw import RawRecords
from .readers import Reader, ReaderInfo
from .subscriptions import AckResult, Batch, PendingEntry, Subscription, SubscriptionInfo

__version__ = "0.1.0"

__all__ = [
    "AckResult",
    "Batch",
    "CheckReport",
    "Chunk",
    "Consumer",
    "Database",
    "MaintenanceReport",
    "PendingEntry",
    "Problem",
    "Producer",
    "ProducerRecord",
    "QueryResult",
    "RawRecords",
    "Reader",
    "ReaderInfo",
    "Record",
    "SqlstreamError",
    "Stream",
    "StreamInfo",
    "Subscription",
    "SubscriptionInfo",
    "TrimResult",
    "errors",
    "open",
    "__version__",
]
