"""AsyncDatabase.run_sync and wait_for: the asyncio face the Kafka listener builds on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import sqlstream.aio


def test_run_sync_runs_on_the_worker_and_wait_for_wakes_on_another_process(tmp_path):
    path = str(tmp_path / "a.db")

    async def main():
        async with await sqlstream.aio.open(path) as adb:
            await adb.create_stream("s")
            loop_thread = threading.get_ident()
            worker = await adb.run_sync(threading.get_ident)
            assert worker != loop_thread
            assert await adb.run_sync(lambda: adb.sync.stream("s").info().next_offset) == 0

            def check():
                got = adb.sync.stream("s").read(0, 10)
                return got or None

            assert await adb.wait_for(check, 0) is None          # one try, nothing there
            waiting = asyncio.create_task(adb.wait_for(check, None))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            code = f"import sqlstream; db = sqlstream.open({path!r}); db.stream('s').append(b'x'); db.close()"
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], check=True)
            records = await asyncio.wait_for(waiting, 60)
            assert [r.value for r in records] == [b"x"]

    asyncio.run(main())
