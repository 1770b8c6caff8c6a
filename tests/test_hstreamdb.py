"""sqlstream.compat.hstreamdb: HStreamDB client code on a local file."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import pytest

from sqlstream.compat import hstreamdb
from sqlstream.compat.hstreamdb import _KEY_ORDERING
from sqlstream.errors import DatabaseClosed, InvalidArgument

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def url(db_path: str) -> str:
    return f"sqlstream://{db_path}"


# HStreamDB's documented Python example flow, unchanged except for the import and the URL.
stream_name = "your_stream"
subscription = "your_subscription"


async def create_stream(client):  # type: ignore[no-untyped-def]
    await client.create_stream(stream_name, replication_factor=1, backlog=24 * 60 * 60, shard_count=1)


async def list_streams(client):  # type: ignore[no-untyped-def]
    ss = await client.list_streams()
    for s in ss:
        print(s)


async def append_records(client):  # type: ignore[no-untyped-def]
    payloads = [b"some_raw_binary_bytes", {"msg": "hi"}]
    rs = await client.append(stream_name, payloads)
    for r in rs:
        print("Append done, ", r)


async def buffered_append_records(client):  # type: ignore[no-untyped-def]
    class AppendCallback(hstreamdb.BufferedProducer.AppendCallback):
        count = 0

        def on_success(self, stream_name, payloads, stream_keyid):  # type: ignore[no-untyped-def]
            self.count += 1
            print(f"Batch {self.count}: Append success with {len(payloads)} payloads.")

        def on_fail(self, stream_name, payloads, stream_keyid, e):  # type: ignore[no-untyped-def]
            print("Append failed!")
            print(e)

    producer = client.new_producer(
        append_callback=AppendCallback(),
        size_trigger=10240,
        time_trigger=0.5,
        retry_count=2,
    )

    for i in range(50):
        await producer.append(stream_name, b"some_raw_binary_bytes")
        await producer.append(stream_name, {"msg": "hello"})

    await producer.wait_and_close()


async def create_subscription(client):  # type: ignore[no-untyped-def]
    await client.create_subscription(subscription, stream_name, ack_timeout=600, max_unacks=10000)


async def list_subscriptions(client):  # type: ignore[no-untyped-def]
    subscriptions = await client.list_subscriptions()
    for s in subscriptions:
        print(s)


class Processing:
    count = 0
    max_count: int

    def __init__(self, max_count):  # type: ignore[no-untyped-def]
        self.max_count = max_count

    async def __call__(self, ack_fun, stop_fun, rs_iter):  # type: ignore[no-untyped-def]
        print("subscriber: receive messages")
        rs = list(rs_iter)
        for r in rs:
            self.count += 1
            print(f"[{self.count}] Receive: {r}")
            if self.max_count > 0 and self.count >= self.max_count:
                await stop_fun()
                break
        await ack_fun([r.id for r in rs])


async def subscribe_records(client):  # type: ignore[no-untyped-def]
    consumer = client.new_consumer("new_consumer", subscription, Processing(10))
    await consumer.start()


async def read_reader(client):  # type: ignore[no-untyped-def]
    print("-> read_reader")
    offset = hstreamdb.ShardOffset()
    offset.specialOffset = hstreamdb.SpecialOffset.EARLIEST
    async with client.with_reader(stream_name, "your_reader_id", offset, 1000) as reader:
        records = await reader.read(10)
        i = 0
        for r in records:
            print(f"[{i}] payload: {r.payload}")
            i += 1


async def main(path, *funcs):  # type: ignore[no-untyped-def]
    async with await hstreamdb.insecure_client(url=path) as client:
        for f in funcs:
            await f(client)


async def test_hstreamdb_documented_example_flow_runs_unchanged_on_a_file(db_path: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        await asyncio.wait_for(main(url(db_path), create_stream, list_streams, append_records,
                                    buffered_append_records, create_subscription, list_subscriptions,
                                    subscribe_records, read_reader), 20)
    text = out.getvalue()
    assert "Stream(name='your_stream', replication_factor=1)" in text
    assert "RecordId(shard_id=0, batch_id=0, batch_index=1)" in text
    assert "Append success with" in text and "Append failed" not in text
    assert "Subscription(subscription_id='your_subscription'" in text
    assert "[10] Receive:" in text and "[11] Receive:" not in text
    assert "[0] payload: b'some_raw_binary_bytes'" in text and "[1] payload: {'msg': 'hi'}" in text


async def test_cluster_urls_and_secure_client_are_refused_clearly(db_path: str) -> None:
    with pytest.raises(InvalidArgument, match="local sqlstream files"):
        await hstreamdb.insecure_client(url="hstream://127.0.0.1:6570")
    with pytest.raises(InvalidArgument, match="local sqlstream files"):
        await hstreamdb.insecure_client(host="127.0.0.1", port=6570)
    with pytest.raises(InvalidArgument, match="local sqlstream files"):
        await hstreamdb.secure_client(url=url(db_path))


async def test_append_is_one_batch_and_a_key_always_lands_in_one_shard(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s", shard_count=4)
        shards = await client.list_shards("s")
        assert [s.shard_id for s in shards] == [0, 1, 2, 3]
        assert int(shards[0].start_hash_key) == 0 and int(shards[-1].end_hash_key) == 2**128 - 1
        for a, b in zip(shards, shards[1:]):
            assert int(a.end_hash_key) + 1 == int(b.start_hash_key)
        ids = list(await client.append("s", [b"a", "b", {"c": 1}], key="user-7"))
        assert [i.batch_index for i in ids] == [0, 1, 2]
        assert len({i.batch_id for i in ids}) == 1 and len({i.shard_id for i in ids}) == 1
        again = list(await client.append("s", [b"d"], key="user-7"))
        assert again[0].shard_id == ids[0].shard_id and again[0].batch_id == ids[0].batch_id + 3
        assert {hstreamdb.shard_for_key(f"k{i}", 4) for i in range(200)} == {0, 1, 2, 3}
        async with client.with_reader("s", "r", hstreamdb.ShardOffset(hstreamdb.SpecialOffset.EARLIEST), 100,
                                      stream_key="user-7") as reader:
            records = await reader.read(10)
        assert [r.payload for r in records] == [b"a", b"b", {"c": 1}, b"d"]
        assert [r.id for r in records[:3]] == ids and records[0].header.key == "user-7"


async def test_compressed_batches_read_back_transparently(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s")
        await client.append("s", [b"x" * 1000, {"k": "v"}], compresstype="gzip")
        await client.append("s", ["text"], compresstype=hstreamdb.CompressionType.ZSTD, compresslevel=3)
        stored = client.adb.sync.stream("s").read(0)
        assert len(stored[0].value) < 100  # stored compressed
        await client.create_reader("s", "r", hstreamdb.ShardOffset(recordOffset=hstreamdb.RecordId(0, 0, 1)), 0)
        assert [r.payload for r in await client.read_reader("r", 10)] == [{"k": "v"}, b"text"]
        await client.delete_reader("r")


async def test_producer_edge_cases_never_hang(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s")
        events: list[tuple[str, int]] = []

        class Callback(hstreamdb.AppendCallback):
            def on_success(self, stream_name: str, payloads: Any, stream_keyid: int) -> None:
                events.append(("ok", len(payloads)))

            def on_fail(self, stream_name: str, payloads: Any, stream_keyid: int, e: Exception) -> None:
                events.append(("fail", len(payloads)))

        # time_trigger=600: a close or flush that waited for the time trigger would hang
        # past the 60 s the test gives it, so returning at all means it did not wait.
        p = client.new_producer(append_callback=Callback, size_trigger=10, time_trigger=600)
        await asyncio.wait_for(p.wait_and_close(), 60)  # nothing pending: returns at once
        p = client.new_producer(append_callback=Callback, size_trigger=10, time_trigger=600, workers=2)
        await p.append("s", b"y" * 100)  # larger than size_trigger: flushed at once
        await p.wait()
        assert events == [("ok", 1)]
        with pytest.raises(hstreamdb.StreamNotFound):
            await p.append("missing", b"z")  # an unknown stream is refused at once
        await client.create_stream("gone")
        await p.append("gone", b"z")
        await client.delete_stream("gone")
        await p.flushall()  # a failing batch (its stream was deleted) ...
        await p.append("s", b"after")  # ... does not stop the producer
        await asyncio.wait_for(p.wait_and_close(), 60)  # flushes at once, not at the 600 s trigger
        assert events == [("ok", 1), ("fail", 1), ("ok", 1)]
        with pytest.raises(DatabaseClosed):
            await p.append("s", b"closed")
        p = client.new_producer(size_trigger=0, time_trigger=0.05)
        await p.append("s", b"timed")
        await asyncio.sleep(0.3)
        assert p._tasks == set() and (await client.adb.stream_info("s")).count == 3


@pytest.mark.skipif(not _KEY_ORDERING, reason="needs create_subscription(ordering='key') (issue 13 part 2)")
async def test_consumers_of_one_subscription_keep_per_shard_order(db_path: str) -> None:
    async with await hstreamdb.insecure_client(url=url(db_path)) as client:
        await client.create_stream("s", shard_count=3)
        for i in range(30):
            await client.append("s", [{"i": i}], key=f"k{i % 5}")
        await client.create_subscription("g", "s", ack_timeout=30)
        seen: dict[int, list[int]] = {}
        total = [0]

        def processor() -> Any:
            async def process(ack_fun: Any, stop_fun: Any, records: Any) -> None:
                for r in records:
                    seen.setdefault(r.id.shard_id, []).append(r.payload["i"])
                    await asyncio.sleep(0.001)
                total[0] += len(records)
                await ack_fun([r.id for r in records])
                if total[0] >= 30:
                    await stop_fun()
            return process

        consumers = [client.new_consumer(f"c{n}", "g", processor()) for n in range(3)]
        tasks = [asyncio.ensure_future(c.start()) for c in consumers]
        while total[0] < 30:
            await asyncio.sleep(0.01)
        for c in consumers:
            c._stopped = True
        client.adb.wake()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for values in seen.values():
            assert values == sorted(values)
        assert sorted(v for vs in seen.values() for v in vs) == list(range(30))
