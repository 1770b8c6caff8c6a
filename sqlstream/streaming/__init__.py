"""Streaming services: TOML-configured outputs fed by every commit (``sqlstream serve``).

Seed 003 (Cosmos SDK ADR-038) mapped onto sqlstream: a **block** is one commit, its
**height** the commit's ``txn`` number; a **store key** is a stream name. Services are
built by name from a registry (built-in ``file`` and ``archive``; other packages add
theirs through the ``sqlstream.streaming_services`` entry-point group), each keeps a
durable cursor in the database (``streaming_cursors``, view ``streaming_progress``), so a
restart -- after ``kill -9`` too -- resumes with the next block.

In-process use::

    config = sqlstream.streaming.load_config("sqlstream.toml")
    runner = sqlstream.streaming.Runner.from_config(db, config)
    runner.start()          # a background thread, woken by commits
    ...
    runner.stop(); runner.join()
"""

from __future__ import annotations

from .config import ConfigError, StreamerConfig, StreamingConfig, load_config, parse_config
from .runner import Runner, RunResult, ServiceError
from .services import ENTRY_POINT_GROUP, Option, Service, known_services, service_class
from .store import Block, BlockRecord, Cursor, RecordsTrimmed, Store

__all__ = [
    "Block",
    "BlockRecord",
    "ConfigError",
    "Cursor",
    "ENTRY_POINT_GROUP",
    "Option",
    "RecordsTrimmed",
    "RunResult",
    "Runner",
    "Service",
    "ServiceError",
    "Store",
    "StreamerConfig",
    "StreamingConfig",
    "known_services",
    "load_config",
    "parse_config",
    "service_class",
]
