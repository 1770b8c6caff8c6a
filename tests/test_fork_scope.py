"""A write transaction open when the process forks belongs to the parent.

The child inherits a copy of the write connection in the middle of the parent's
transaction. Committing that copy in the child (leaving the ``with`` block normally)
wrote the parent's uncommitted pages into the WAL at the position the copy believed was
its end, over transactions the parent had committed (and acknowledged) since: they were
lost. The child's exit from the block must leave the copy alone and say so.
"""

from __future__ import annotations

import os

import apsw
import pytest

import sqlstream
from sqlstream import errors
from sqlstream.engine import WriteScope

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _child_leaves_block(scopes: list[WriteScope], go: int, report: int, *, raise_inside: bool) -> None:
    """In the child: wait for the parent's word, leave the inherited blocks (innermost
    first, as ``with`` would), report what happened through a pipe, exit."""
    code = 9
    try:
        os.read(go, 1)
        error: BaseException | None = ValueError("the child's own error") if raise_inside else None
        for scope in reversed(scopes):
            try:
                if error is None:
                    scope.__exit__(None, None, None)
                elif not scope.__exit__(type(error), error, None):
                    raise error
            except BaseException as exc:
                error = exc
        if error is None:
            code = 0  # the blocks claimed to commit
        elif isinstance(error, errors.DatabaseError):
            code = 1 if "fork" in str(error) else 2
        elif isinstance(error, ValueError):
            code = 3  # the child's own exception, propagated unchanged
        else:
            code = 4
    finally:
        os.write(report, bytes([code]))
        os._exit(0)


@pytest.mark.parametrize("raise_inside", [False, True])
def test_a_transaction_inherited_by_a_forked_child_is_never_committed_there(db_path: str, raise_inside: bool) -> None:
    db = sqlstream.open(db_path)
    try:
        s = db.create_stream("s")
        s.append("before")
        go_r, go_w = os.pipe()
        rep_r, rep_w = os.pipe()
        scope = db.transaction()
        scope.__enter__()
        inner = db.transaction()
        inner.__enter__()
        s.append("parent's block")
        pid = os.fork()
        if pid == 0:
            _child_leaves_block([scope, inner], go_r, rep_w, raise_inside=raise_inside)
        inner.__exit__(None, None, None)
        scope.__exit__(None, None, None)
        acked = [s.append(f"acked {i}") for i in range(5)]
        os.write(go_w, b"x")
        code = os.read(rep_r, 1)[0]
        os.waitpid(pid, 0)
        assert code == (3 if raise_inside else 1)
        assert acked == [2, 3, 4, 5, 6]
        assert [r.value for r in s.read(0, 100)] == ["before", "parent's block"] + [f"acked {i}" for i in range(5)]
        s.append("after")  # the parent's connection still works
    finally:
        db.close()
    conn = apsw.Connection(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM chunks").fetchall() == [(8,)]
    finally:
        conn.close()


def test_the_child_reads_through_a_fresh_connection_after_leaving_an_inherited_block(db_path: str) -> None:
    """The child's error names the fork; its Database then reads on connections of its own.

    (It cannot write: SQLite's in-process lock bookkeeping, copied by fork, shows the
    parent's connection holding the WAL write lock; the error's hint says so.)"""
    db = sqlstream.open(db_path)
    try:
        s = db.create_stream("s")
        s.append("committed")
        rep_r, rep_w = os.pipe()
        scope = db.transaction()
        scope.__enter__()
        s.append("parent's block")
        pid = os.fork()
        if pid == 0:
            code = 9
            try:
                try:
                    scope.__exit__(None, None, None)
                    code = 0
                except errors.DatabaseError as exc:
                    code = 1 if exc.hint and "fork outside transactions" in exc.hint else 2
                if code == 1 and [r.value for r in s.read(0, 10)] == ["committed"]:
                    code = 5
            finally:
                os.write(rep_w, bytes([code]))
                os._exit(0)
        code = os.read(rep_r, 1)[0]  # the parent's block is still open: the child reads without it
        os.waitpid(pid, 0)
        scope.__exit__(None, None, None)
        assert code == 5
        assert [r.value for r in s.read(0, 100)] == ["committed", "parent's block"]
    finally:
        db.close()
