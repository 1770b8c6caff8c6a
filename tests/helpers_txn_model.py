"""What the commit-number tests share: a plain-SQL connection (as the sqlite3 shell would
be) and the file a Hypothesis model attacks, two sqlstream handles and that connection."""

from __future__ import annotations

import os
import shutil
import tempfile

import apsw
from hypothesis.stateful import RuleBasedStateMachine, initialize

import sqlstream

NAMES = ("a", "b", "c")


def plain_sql(path: str) -> apsw.Connection:
    """A connection that is not sqlstream's, as the sqlite3 shell would be."""
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10_000)
    return conn


def lower_the_stream_id_floor(db: sqlstream.Database) -> None:
    """Let SQLite reuse a deleted stream's id, as a file whose counters row
    `stream_id_floor` was lowered by hand does (sqlstream gives a new stream an id never
    used before, schema version 20): the tests that use it keep that case defended."""
    conn = plain_sql(db.path)
    try:
        conn.execute("UPDATE counters SET value = 0 WHERE name = 'stream_id_floor'")
    finally:
        conn.close()


class TwoHandlesAndSql(RuleBasedStateMachine):
    """A fresh file with streams ``NAMES``, two sqlstream handles (``dbs``, two connections
    as two processes would be) and a plain-SQL connection (``sql``); ``given`` is the
    highest commit number the model has seen given out."""

    prefix = "txn-model-"

    def __init__(self) -> None:
        super().__init__()
        self.dbs: list[sqlstream.Database] = []
        self.given = 0
        self.dir = ""

    @initialize()
    def open_file(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=self.prefix)
        path = os.path.join(self.dir, "t.db")
        self.dbs = [sqlstream.open(path), sqlstream.open(path)]
        for name in NAMES:
            self.dbs[0].create_stream(name)
        self.sql = plain_sql(path)

    def teardown(self) -> None:
        for db in self.dbs:
            db.close()
        if self.dir:
            self.sql.close()
            shutil.rmtree(self.dir, ignore_errors=True)  # one folder per example, in RAM where the suite's temp is
