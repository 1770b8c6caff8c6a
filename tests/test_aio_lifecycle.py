"""sqlstream.aio: close() and cancellation are complete and atomic (issue 19 items 2, 3, 17)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

import sqlstream
import sqlstream.aio

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _fds_into(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(folder)):
            found.append(target)
    return found


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc/self/fd to count descriptors")
async def test_close_cancelled_during_a_long_extend_completes_on_the_next_call(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    threads = _threads()
    adb = await sqlstream.aio.open(path)
    s = await adb.create_stream("s")
    # Queued behind a long extend: the first close cannot have started when it is cancelled.
    extend = asyncio.ensure_future(s.extend([b"x" * 100] * 50_000))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(adb.close(), 0.001)
    await adb.close()
    assert len(await extend) == 50_000, "close() went ahead of a queued call"
    await adb.close()  # idempotent
    leaked = [t for t in _threads() - threads if t.is_alive()]
    assert leaked == [], f"threads left running after close(): {leaked}"
    assert _fds_into(tmp_path) == [], "file descriptors left open after close()"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.db"], "the -wal/-shm files stayed"
    assert adb.closed and adb.sync.closed
    with sqlstream.open(path) as sync:
        assert sync.stream("s").info().next_offset == 50_000


async def test_close_called_from_many_tasks_at_once_closes_once(tmp_path: Path) -> None:
    threads = _threads()
    adb = await sqlstream.aio.open(str(tmp_path / "m.db"))
    await adb.create_stream("s")
    closers = [asyncio.ensure_future(adb.close()) for _ in range(5)]
    closers[0].cancel()
    await asyncio.gather(*closers[1:])
    assert adb.sync.closed
    assert [t for t in _threads() - threads if t.is_alive()] == []
    with pytest.raises(sqlstream.errors.DatabaseClosed):
        await adb.streams()
