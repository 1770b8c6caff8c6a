"""What a Kafka Fetch reads from a partition (``KafkaStore.read``), against a model.

The read path finds the rows a Kafka batch covers by bisection, restores them with one
comprehension per run, and cuts the page at the byte budget by bisecting summed costs.
These tests hold it to what a consumer relies on, on partitions that mix records of Kafka
producers (producer timestamps, binary keys, repeated or null headers, null values) with
records appended through the Python API (append time, text keys, headers, text and JSON
values), read from any offset with any budget.
"""

from __future__ import annotations

import pytest

pytest.importorskip("kio", reason="the kafka extra (kio needs Python 3.11+)")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import sqlstream  # noqa: E402
from sqlstream.kafka.records import Batch, KafkaRecord  # noqa: E402
from sqlstream.kafka.store import KafkaStore  # noqa: E402

OVERHEAD = 64  # what a record counts for besides its stored value, key and headers (KafkaStore.read's budget rule)

_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
_kafka_batch = st.lists(st.builds(
    KafkaRecord,
    st.integers(1_600_000_000_000, 1_700_000_000_000),
    st.none() | st.binary(max_size=8) | _texts.map(str.encode),
    st.none() | st.binary(max_size=300),
    st.lists(st.tuples(_texts, st.none() | st.binary(max_size=4) | _texts.map(str.encode)), max_size=3).map(tuple),
), min_size=1, max_size=8).map(lambda rs: ("kafka", rs))
_api_records = st.lists(st.tuples(
    st.binary(max_size=300) | _texts | st.dictionaries(_texts, st.integers(), max_size=2),
    st.none() | _texts,
    st.dictionaries(_texts, _texts, max_size=2),
), min_size=1, max_size=5).map(lambda rs: ("api", rs))


def _model(db: sqlstream.Database, ops: list[tuple[str, list]]) -> list[KafkaRecord]:  # type: ignore[type-arg]
    """Write ``ops`` to topic ``t``; return what a Kafka consumer must get at each offset:
    a Kafka producer's record exactly; a Python API record with its append time (ms), its
    key and header values as UTF-8 and its value as stored (text and JSON as UTF-8)."""
    store = KafkaStore(db)
    store.topic("t", create=True)
    stream = db.stream("t")
    expected: list[KafkaRecord | tuple[str | None, dict[str, str]]] = []
    for kind, records in ops:
        if kind == "kafka":
            store.produce("t", Batch(-1, -1, -1, False, False, 0, records))
            expected += records
        else:
            for value, key, headers in records:
                stream.append(value, key=key, headers=headers)
                expected.append((key, headers))
    stored = db.query("SELECT timestamp / 1000, CAST(data AS BLOB) FROM chunks c JOIN streams s "
                      "ON s.id = c.stream_id WHERE s.name = 't' ORDER BY offset").rows
    out: list[KafkaRecord] = []
    for want, (ms, data) in zip(expected, stored, strict=True):
        if not isinstance(want, KafkaRecord):
            key, headers = want
            want = KafkaRecord(ms, None if key is None else key.encode("utf-8"), data,
                               tuple((name, v.encode("utf-8")) for name, v in headers.items()))
        out.append(want)
    return out


def _hidden(record: object) -> int:
    """The bytes of a Kafka record's key and headers that its row cannot hold (a key that is
    not UTF-8; headers repeated, null or not UTF-8): kept aside, they count all the same."""
    if not isinstance(record, KafkaRecord):
        return 0
    n = 0
    if record.key is not None:
        try:
            record.key.decode("utf-8")
        except UnicodeDecodeError:
            n += len(record.key)
    names = [name for name, _ in record.headers]
    try:
        native = len(set(names)) == len(names) and all(v is not None and v.decode("utf-8") is not None
                                                       for _, v in record.headers)
    except UnicodeDecodeError:
        native = False
    if not native:
        n += sum(len(name.encode("utf-8")) + len(v or b"") for name, v in record.headers)
    return n


def _stored_len(db: sqlstream.Database) -> list[int]:
    """Each record's stored bytes: value, key and headers (what a fetch sends of it)."""
    return [n for (n,) in db.query("SELECT length(CAST(data AS BLOB)) + coalesce(length(CAST(key AS BLOB)), 0) "
                                   "+ coalesce(length(CAST(headers AS BLOB)), 0) FROM records c JOIN streams s "
                                   "ON s.id = c.stream_id WHERE s.name = 't' ORDER BY offset").rows]


@given(st.lists(_kafka_batch | _api_records, min_size=1, max_size=5), st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_fetch_gives_the_exact_records_from_any_offset_within_the_byte_budget(tmp_path_factory, ops, data):
    path = tmp_path_factory.mktemp("fetch") / "f.db"
    with sqlstream.open(path) as db:
        expected = _model(db, ops)
        costs = [n + _hidden(want) + OVERHEAD for n, want in zip(_stored_len(db), expected, strict=True)]
        store = KafkaStore(db)
        for _ in range(4):
            offset = data.draw(st.integers(0, len(expected)), label="offset")
            budget = data.draw(st.integers(1, 2_000), label="max_bytes")
            got = store.read("t", offset, budget)
            assert got is not None
            assert (got.log_start, got.high_watermark) == (0, len(expected))
            # Kafka's rule: the longest prefix within the budget, and at least one record.
            k = 0
            while offset + k < len(expected) and (k == 0 or sum(costs[offset:offset + k + 1]) <= budget):
                k += 1
            assert [r[0] for r in got.records] == list(range(offset, offset + k))
            assert [KafkaRecord(*r[1:]) for r in got.records] == expected[offset:offset + k]
            assert got.size == sum(costs[offset:offset + k])


def test_a_fetch_across_many_pages_reads_every_record_once(tmp_path):
    """More records than one SQL page (1,000 rows) and batches that straddle pages: the
    pages are joined without a record lost or repeated, at the budget's cut."""
    with sqlstream.open(tmp_path / "p.db") as db:
        store = KafkaStore(db)
        store.topic("t", create=True)
        sent = []
        for b in range(7):
            records = [KafkaRecord(1_700_000_000_000 + i % 7, None, b"%d/%03d" % (b, i), ()) for i in range(450)]
            store.produce("t", Batch(-1, -1, -1, False, False, 0, records))
            sent += records
        db.stream("t").extend([b"api"] * 30)
        got = store.read("t", 3, 1 << 30)
        assert [r[0] for r in got.records] == list(range(3, len(sent) + 30))
        assert [KafkaRecord(*r[1:]) for r in got.records][:len(sent) - 3] == sent[3:]
        assert [r[3] for r in got.records][len(sent) - 3:] == [b"api"] * 30
        cut = store.read("t", 0, 100 * (OVERHEAD + 5))  # every value here is 5 bytes
        assert [r[0] for r in cut.records] == list(range(100))


def test_binary_keys_and_headers_kept_aside_count_toward_the_budget(tmp_path):
    """A key that is not UTF-8 (and headers that are not unique UTF-8 text) is kept hex in
    ``kafka_batches.extras`` and its row's column is NULL: such bytes were not counted, so
    records with 1,000-byte binary keys and 1-byte values answered ten at a time within a
    budget of 2,000 bytes (about 10 KB sent)."""
    with sqlstream.open(tmp_path / "k.db") as db:
        store = KafkaStore(db)
        store.topic("t", create=True)
        keyed = [KafkaRecord(1_700_000_000_000, b"\xff" * 1000, b"v", ()) for _ in range(10)]
        headed = [KafkaRecord(1_700_000_000_000, None, b"v", (("h", b"\xfe" * 500), ("h", None))) for _ in range(10)]
        store.produce("t", Batch(-1, -1, -1, False, False, 0, keyed))
        store.produce("t", Batch(-1, -1, -1, False, False, 0, headed))
        got = store.read("t", 0, 2_000)
        assert [r[0] for r in got.records] == [0] and got.size == 1 + 1000 + OVERHEAD
        got = store.read("t", 10, 2_000)
        assert [r[0] for r in got.records] == [10, 11, 12] and got.size == 3 * (1 + 502 + OVERHEAD)
        assert [KafkaRecord(*r[1:]) for r in got.records] == headed[:3]


def test_a_fetch_of_big_records_reads_about_its_budget_not_a_page_of_them(tmp_path):
    """The first page of rows was sized for small records (budget / 128, up to 1,000
    rows), and every row's value was read before the budget cut: a 1 MiB fetch of a
    partition of 1 MiB records read 60 of them (60 MiB) to answer one. Now a page never
    reaches past the rows whose values (their byte positions say) fit the budget."""
    import tracemalloc

    with sqlstream.open(tmp_path / "big.db") as db:
        store = KafkaStore(db)
        store.topic("t", create=True)
        for i in range(60):
            db.stream("t").append(bytes([i]) * (1 << 20))
        tracemalloc.start()
        try:
            got = store.read("t", 0, 1 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got is not None and [r[0] for r in got.records] == [0]
        assert peak < 8 << 20, f"{peak:,} bytes held to answer 1 MiB"
        got = store.read("t", 3, 3 << 20)  # two whole records, the third is over
        assert [r[0] for r in got.records] == [3, 4]
        got = store.read("t", 58, 100 << 20)
        assert [r[0] for r in got.records] == [58, 59]
