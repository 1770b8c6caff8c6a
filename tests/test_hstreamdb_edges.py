"""sqlstream.compat.hstreamdb at its edges: records written by other code, producer batch
sizes as hstreamdb-py makes them, key-ordered subscriptions, and bad arguments."""

from __future__ import annotations

import asyncio
import gzip
import math
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream import aio
from sqlstream.compat import hstreamdb
from sqlstream.compat.hstreamdb import ForeignRecord, HStreamDBClient
from sqlstream.errors import SqlstreamError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def url(db_path: str) -> str:
    return f"sqlstream://{db_path}"


# --------------------------------------------------------------------------- producer batches

class Batches(hstreamdb.AppendCallback):
    def __init__(self) -> None:
        self.sizes: list[list[int]] = []
        self.failed: list[Exception] = []

    def on_success(self, stream_name: str, payloads: Any, stream_keyid: int) -> None:
        self.sizes.append([len(p.payload) for p in payloads])

    def on_fail(self, stream_name: str, payloads: Any, stream_keyid: int, e: Exception) -> None:
        self.failed.append(e)


async def _batches(db_path: str, sizes: list[int], size_trigger: int) -> list[list[int]]:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        if "s" not in [s.name for s in await client.list_streams()]:
            await client.create_stream("s")
        cb = Batches()
        # A time trigger far away: only size_trigger and the final flush make batches.
        producer = client.new_producer(append_callback=cb, size_trigger=size_trigger, time_trigger=3600)
        for n in sizes:
            await producer.append("s", b"x" * n)
        await producer.wait_and_close()
        assert cb.failed == []
        return cb.sizes


async def test_producer_flushes_before_a_payload_that_would_pass_size_trigger(db_path: str) -> None:
    # hstreamdb-py: 10 payloads of 10 bytes with size_trigger=35 are batches of 3, 3, 3, 1.
    assert [len(b) for b in await _batches(db_path, [10] * 10, 35)] == [3, 3, 3, 1]
    # Reaching size_trigger exactly does not flush; the next payload does.
    assert [len(b) for b in await _batches(db_path, [10] * 10, 30)] == [3, 3, 3, 1]
    # A payload larger than size_trigger: what was buffered, then it alone.
    assert await _batches(db_path, [10, 10, 50, 10], 35) == [[10, 10], [50], [10]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=30), trigger=st.integers(1, 60))
def test_producer_batches_are_greedy_and_never_pass_size_trigger(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], trigger: int
) -> None:
    path = str(tmp_path_factory.mktemp("p") / "p.db")
    batches = asyncio.run(_batches(path, sizes, trigger))
    assert [n for b in batches for n in b] == sizes  # every payload once, in order
    for i, batch in enumerate(batches):
        if len(batch) > 1:
            assert sum(batch) <= trigger
        if i + 1 < len(batches):  # flushed only because the next payload did not fit
            assert sum(batch) + batches[i + 1][0] > trigger or sum(batch) > trigger


# --------------------------------------------------------------------------- foreign records

BOMB_MB = 64


def _foreign(db: sqlstream.Database) -> dict[int, str]:
    """Records in stream "s" (made by the client, 1 shard) that other code wrote; offset -> reason."""
    s = db.stream("s")
    bomb = gzip.compress(b"\0" * (BOMB_MB << 20), 9)
    assert len(bomb) < 100_000  # ~65 KB stored, 64 MiB inflated
    zbomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (BOMB_MB << 20))
    written = {
        s.append(b"a", key="user-1"): "is not a shard id",
        s.append(b"b", key="0", headers={"hstream-i": "x"}): "bad hstream-i",
        s.append(b"c", key="0", headers={"hstream-i": "-1"}): "bad hstream-i",
        s.append(b"d", key="0", headers={"hstream-i": "999"}): "bad hstream-i",
        s.append(b"e", key="0", headers={"hstream-z": "lzma-raw"}): "bad hstream-z",
        s.append(b"e", key="0", headers={"hstream-z": "gzip"}): "bad hstream-z",
        s.append(b"not gzip", key="0", headers={"hstream-z": "gzip-raw"}): "does not inflate",
        s.append(gzip.compress(b"x")[:-3], key="0", headers={"hstream-z": "gzip-raw"}): "truncated",
        s.append(b"not zstd", key="0", headers={"hstream-z": "zstd-raw"}): "does not decompress",
        s.append(gzip.compress(b"[1]"), key="0", headers={"hstream-z": "gzip-json"}): "not an object",
        s.append(gzip.compress(b"{"), key="0", headers={"hstream-z": "gzip-json"}): "does not parse",
        s.append("text", key="0", headers={"hstream-z": "gzip-raw"}): "stored as bytes",
        s.append(bomb, key="0", headers={"hstream-z": "gzip-raw"}): "past max_record_bytes",
        s.append(zbomb, key="0", headers={"hstream-z": "zstd-raw"}): "past max_record_bytes",
    }
    return written


async def test_a_consumer_sets_foreign_records_aside_named_and_goes_on(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s")
        await client.append("s", [b"first"])
        foreign = await asyncio.to_thread(_foreign, client.adb.sync)
        await client.append("s", [{"last": 1}], compresstype="gzip")
        await client.append("s", [b"zstd"], compresstype="zstd")
        await client.create_subscription("g", "s")
        got: list[Any] = []
        errors: list[ForeignRecord] = []

        async def process(ack_fun: Any, stop_fun: Any, records: Any) -> None:
            got.extend(r.payload for r in records)
            await ack_fun([r.id for r in records])
            if len(got) == 3:
                stop_fun()

        consumer = client.new_consumer("c", "g", process, on_error=errors.append)
        await asyncio.wait_for(consumer.start(), 60)
        assert got == [b"first", {"last": 1}, b"zstd"]
        assert sorted(e.offset for e in errors) == sorted(foreign)
        for e in errors:
            assert e.stream == "s" and foreign[e.offset] in e.reason, (e.offset, e.reason)
            assert isinstance(e, SqlstreamError)
        info = await (await client.adb.subscription("g")).info()
        assert (info.lag, info.pending) == (0, 0)  # set aside: nothing blocks the shard
        # The stored records are untouched.
        assert [r.offset for r in await (await client.adb.stream("s")).read(0, 100)] == list(range(17))


async def test_a_consumer_without_on_error_logs_and_goes_on(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s")
        s = await client.adb.stream("s")
        await s.append(b"foreign", key="user-1")
        await client.append("s", [b"mine"])
        await client.create_subscription("g", "s")
        got: list[Any] = []

        async def process(ack_fun: Any, stop_fun: Any, records: Any) -> None:
            got.extend(r.payload for r in records)
            await ack_fun([r.id for r in records])
            stop_fun()

        await asyncio.wait_for(client.new_consumer("c", "g", process).start(), 60)
        assert got == [b"mine"]
        assert "record 0 of stream 's' is not an HStreamDB record" in caplog.text


async def test_a_reader_passes_foreign_records_over(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s")
        await asyncio.to_thread(_foreign, client.adb.sync)
        await client.append("s", [b"mine"])
        reader = await client.create_reader("s", "r", hstreamdb.ShardOffset(), 0)
        assert [r.payload for r in await reader.read(100)] == [b"mine"]
        assert len(reader.foreign) == 14


async def test_inflation_is_bounded_by_max_record_bytes_exactly(db_path: str) -> None:
    client = HStreamDBClient(await aio.open(db_path, max_record_bytes=1000))
    async with client:
        await client.create_stream("s")
        for n in (1000, 1001):
            for kind in ("gzip", "zstd"):
                await client.append("s", [b"y" * n], compresstype=kind)
        reader = await client.create_reader("s", "r", hstreamdb.ShardOffset(), 0)
        assert [len(r.payload) for r in await reader.read(100)] == [1000, 1000]
        assert [e.offset for e in reader.foreign] == [2, 3]


class _CountingInflater:
    """zlib's inflater, counting the bytes handed to it (what it may copy)."""

    fed = 0

    def __init__(self, wbits: int) -> None:
        self.inner = _REAL_DECOMPRESSOBJ(wbits)

    def decompress(self, data: Any, max_length: int = 0) -> bytes:
        _CountingInflater.fed += len(data)
        return self.inner.decompress(data, max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


_REAL_DECOMPRESSOBJ = hstreamdb.zlib.decompressobj


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=40))
@settings(max_examples=50, deadline=None)
def test_gzip_payloads_of_many_members_inflate_to_their_concatenation(parts: list[bytes]) -> None:
    data = b"".join(gzip.compress(p) for p in parts)
    assert hstreamdb._gunzip(data, 200_000) == b"".join(parts)
    with pytest.raises(hstreamdb._Unmappable, match="truncated"):
        hstreamdb._gunzip(data[:-1], 200_000)


def test_a_payload_of_many_gzip_members_is_inflated_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A foreign record of 20,000 empty gzip members (400 kB): each member used to be
    handed the whole rest of the payload (and the inflater copied that rest after it):
    about 4 GB of input for 400 kB, quadratic, so a 16 MiB record held a consumer for
    minutes. The work is counted here (bytes fed to zlib), not timed."""
    data = gzip.compress(b"") * 20_000 + gzip.compress(b"end")
    monkeypatch.setattr(hstreamdb.zlib, "decompressobj", _CountingInflater)
    _CountingInflater.fed = 0
    assert hstreamdb._gunzip(data, 1000) == b"end"
    assert _CountingInflater.fed <= 20 * len(data), _CountingInflater.fed


# --------------------------------------------------------------------------- key order

async def test_subscriptions_are_created_with_key_order(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s", shard_count=2)
        await client.create_subscription("g", "s")
        assert (await (await client.adb.subscription("g")).info()).ordering == "key"


async def test_a_second_consumer_gets_nothing_of_a_shard_another_consumer_holds(db_path: str) -> None:
    """Two consumers of one subscription, one shard: while A holds the shard's first
    records unacked, B's fetch must take nothing of it (without key order B would take
    the next records and process them before A's are done)."""
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s", shard_count=1)
        for i in range(150):
            await client.append("s", [{"i": i}])
        await client.create_subscription("g", "s", ack_timeout=600)
        sub = await client.adb.subscription("g")
        held: list[Any] = []
        order: list[int] = []

        async def a_process(ack_fun: Any, stop_fun: Any, records: Any) -> None:
            held.append((ack_fun, [r.id for r in records]))
            order.extend(r.payload["i"] for r in records)
            stop_fun()  # A stops holding its batch, unacked

        await asyncio.wait_for(client.new_consumer("A", "g", a_process).start(), 60)

        a_done = asyncio.Event()

        async def b_process(ack_fun: Any, stop_fun: Any, records: Any) -> None:
            await a_done.wait()  # B's acks cannot hide what B was given while A held the shard
            order.extend(r.payload["i"] for r in records)
            await ack_fun([r.id for r in records])
            if order[-1] == 149:
                stop_fun()

        b = asyncio.ensure_future(client.new_consumer("B", "g", b_process).start())
        # B has fetched once every record is taken by some claim (delivered or waiting).
        for _ in range(6000):
            info = await sub.info()
            if info.next_offset == 150:
                break
            await asyncio.sleep(0.01)
        assert info.next_offset == 150
        assert info.consumers == {"A": len(held[0][1])} and info.pending == len(held[0][1])
        ack_fun, ids = held[0]
        a_done.set()
        await ack_fun(ids)
        await asyncio.wait_for(b, 60)
        assert order == list(range(150))


# --------------------------------------------------------------------------- bad arguments

BAD = [None, "x", "", -1, 0, 1.5, math.nan, math.inf, True, b"\xff", [], {}, {"a": object()}, object(), 2**70]


async def _entry_points(client: HStreamDBClient, bad: Any) -> list[tuple[str, Any]]:
    """(name, coroutine-or-call) for each compat entry point with ``bad`` in one argument."""
    s = "s"
    return [
        ("create_stream name", lambda: client.create_stream(bad)),
        ("create_stream replication_factor", lambda: client.create_stream("n1", replication_factor=bad)),
        ("create_stream backlog", lambda: client.create_stream("n2", backlog=bad)),
        ("create_stream shard_count", lambda: client.create_stream("n3", shard_count=bad)),
        ("delete_stream", lambda: client.delete_stream(bad)),
        ("list_shards", lambda: client.list_shards(bad)),
        ("find_shard_id key", lambda: client.find_shard_id(s, bad)),
        ("append payloads", lambda: client.append(s, bad)),
        ("append payload", lambda: client.append(s, [bad])),
        ("append key", lambda: client.append(s, [b"x"], key=bad)),
        ("append compresstype", lambda: client.append(s, [b"x"], compresstype=bad)),
        ("append compresslevel gzip", lambda: client.append(s, [b"x"], compresstype="gzip", compresslevel=bad)),
        ("append compresslevel zstd", lambda: client.append(s, [b"x"], compresstype="zstd", compresslevel=bad)),
        ("create_subscription id", lambda: client.create_subscription(bad, s)),
        ("create_subscription ack_timeout", lambda: client.create_subscription("g1", s, ack_timeout=bad)),
        ("create_subscription max_unacks", lambda: client.create_subscription("g2", s, max_unacks=bad)),
        ("create_subscription offset", lambda: client.create_subscription("g3", s, offset=bad)),
        ("create_reader shard_offset", lambda: client.create_reader(s, "r1", bad, 0)),
        ("create_reader timeout", lambda: client.create_reader(s, "r2", hstreamdb.ShardOffset(), bad)),
        ("create_reader shard_id", lambda: client.create_reader(s, "r3", hstreamdb.ShardOffset(), 0, shard_id=bad)),
        ("create_reader stream_key", lambda: client.create_reader(s, "r4", hstreamdb.ShardOffset(), 0, stream_key=bad)),
        ("create_reader recordOffset",
         lambda: client.create_reader(s, "r5", hstreamdb.ShardOffset(recordOffset=bad), 0)),
        ("create_reader timestampOffset",
         lambda: client.create_reader(s, "r6", hstreamdb.ShardOffset(timestampOffset=bad), 0)),
        ("read_reader max_records", lambda: client.read_reader("r0", bad)),
        ("delete_subscription", lambda: client.delete_subscription(bad)),
        ("does_subscription_exist", lambda: client.does_subscription_exist(bad)),
        ("producer size_trigger", lambda: _producer(client, size_trigger=bad)),
        ("producer time_trigger", lambda: _producer(client, time_trigger=bad)),
        ("producer workers", lambda: _producer(client, workers=bad)),
        ("producer retry_count", lambda: _producer(client, retry_count=bad)),
        ("producer retry_max_delay", lambda: _producer(client, retry_max_delay=bad)),
        ("producer compresstype", lambda: _producer(client, compresstype=bad)),
        ("producer append payload", lambda: _producer_append(client, bad, None)),
        ("producer append key", lambda: _producer_append(client, b"x", bad)),
    ]


async def _producer(client: HStreamDBClient, **options: Any) -> None:
    p = client.new_producer(**options)
    await p.wait_and_close()


async def _producer_append(client: HStreamDBClient, payload: Any, key: Any) -> None:
    p = client.new_producer(size_trigger=0, time_trigger=0)
    try:
        await p.append("s", payload, key=key)
    finally:
        await p.wait_and_close()


async def test_compat_entry_points_refuse_bad_arguments_with_sqlstream_errors(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s")
        await client.create_reader("s", "r0", hstreamdb.ShardOffset(), 0)
        raw: list[str] = []
        for bad in BAD:
            for name, call in await _entry_points(client, bad):
                try:
                    result = call()
                    if asyncio.iscoroutine(result):
                        await asyncio.wait_for(result, 30)
                except SqlstreamError:
                    pass
                except Exception as exc:  # noqa: BLE001 - what the test looks for
                    raw.append(f"{name} with {bad!r}: {type(exc).__name__}: {exc}"[:200])
        assert raw == []
        # Only the calls whose "bad" value is valid stored anything (payloads "x", "", {},
        # b"\xff", or b"x" compressed at a valid level).
        stored = await (await client.adb.stream("s")).read(0, 1000)
        assert [r.value for r in stored
                if r.value not in (b"x", "x", "", b"\xff", {}) and "hstream-z" not in r.headers] == []


async def test_backlog_x_is_refused_and_creates_nothing(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        with pytest.raises(SqlstreamError, match="backlog"):
            await client.create_stream("s", backlog="x")  # type: ignore[arg-type]
        assert list(await client.list_streams()) == []
