"""The pytest plugin with the asyncio API (issue 15 part 1): ``await sqlstream_factory.aio()``
and ``sqlstream.aio.open(sqlstream_db.path)`` in async tests, run by ``pytester``."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_async_tests_get_an_async_database_closed_and_checked_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading
        import pytest
        import sqlstream.aio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_factory_aio(sqlstream_factory, sqlstream_clock):
            db = await sqlstream_factory.aio()
            orders = await db.create_stream("orders")
            await orders.append({"id": 1})
            assert [r.value for r in await orders.read(0)] == [{"id": 1}]
            sub = await db.create_subscription("w", "orders", ack_timeout=30)
            assert len(await sub.fetch("c1")) == 1
            sqlstream_clock.advance(31)  # the fake clock governs the async database too
            assert (await sub.fetch("c2")).attempts == {0: 2}
            # left open on purpose: teardown closes it

        @pytest.mark.anyio
        async def test_same_file_as_sqlstream_db(sqlstream_db):
            sqlstream_db.create_stream("s").append("from sync")
            async with await sqlstream.aio.open(sqlstream_db.path) as db:
                assert [r.value for r in await (await db.stream("s")).read(0)] == ["from sync"]

        @pytest.mark.anyio
        async def test_broken_invariant_fails_at_teardown(sqlstream_factory):
            db = await sqlstream_factory.aio("broken")
            await (await db.create_stream("s")).append("x")
            path = db.path
            await db.close()
            import apsw
            conn = apsw.Connection(path)
            conn.execute("UPDATE streams SET next_offset = 5")
            conn.close()

        def test_no_worker_threads_left():
            assert not [t for t in threading.enumerate() if t.name.startswith("sqlstream-aio")]
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "anyio")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*broken.db*gap*"])


def test_the_readme_async_testing_example_passes_under_pytest(pytester: pytest.Pytester) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
                if b.startswith("# test_orders_async.py\n")]
    pytester.makepyfile(test_orders_async=block)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "anyio")
    result.assert_outcomes(passed=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("sqlstream-aio")]
