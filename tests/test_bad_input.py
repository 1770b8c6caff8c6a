"""Bad input is refused with a SqlstreamError, and nothing already stored changes.

Every refusal here is checked the same way (:func:`refused`): the call raises the
expected ``sqlstream.errors`` class, which is a ``SqlstreamError`` and not an apsw
exception, with a message; and a full dump of the file (every table, every row, the
schema version) taken through a separate connection is identical before and after.

What counts as bad input (decisions):

* a record value that is None, a set, an arbitrary object, complex, or JSON that JSON
  cannot represent faithfully: NaN/infinity, circular or absurdly deep nesting, ints
  beyond Python's int-to-str limit, and dicts with non-str keys (JSON would turn ``1``
  into ``"1"`` and could merge ``{1: a, "1": b}`` into one key: silent change, refused);
* text that is not valid Unicode (lone surrogates) in a value, key or header;
* a key that is not a str, headers that are not a dict of str to str;
* an argument out of range or of the wrong type: offsets/limits that are not ints >= 0
  (bools included) or beyond SQLite's 64-bit integers, timeouts that are negative, NaN,
  bools or not numbers (huge ones, ``inf`` included, mean "no limit"), durations beyond
  10**9 s, counts beyond 10**9, retention limits that are not positive or beyond 2**62
  (the rules: ``sqlstream/validation.py``);
* a name that breaks the naming rule (the message states the rule).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sqlstream
from sqlstream import errors
from sqlstream.records import NAME_RULE

Dump = list[tuple[str, list[tuple[Any, ...]]]]


def dump(path: str) -> Dump:
    """Every row of every table, and user_version, read through a fresh connection."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out: Dump = [("user_version", list(conn.execute("PRAGMA user_version")))]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
        for table in tables:
            # Identifiers cannot be bound; these come from sqlite_schema, not from input.
            out.append((table, sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)))
        return out
    finally:
        conn.close()


def check_error(err: BaseException, expected: type[errors.SqlstreamError]) -> None:
    """The error is the expected sqlstream error, carries a message, and is no apsw error."""
    assert isinstance(err, expected), f"expected {expected.__name__}, got {type(err).__name__}: {err}"
    assert isinstance(err, errors.SqlstreamError)
    assert not isinstance(err, apsw.Error)
    assert str(err)


def refused(
    path: str, expected: type[errors.SqlstreamError], call: Callable[[], object], match: str | None = None
) -> errors.SqlstreamError:
    """Run ``call``, which must raise ``expected`` and leave the stored data unchanged."""
    before = dump(path)
    with pytest.raises(BaseException) as info:
        call()
    err = info.value
    check_error(err, expected)
    assert isinstance(err, errors.SqlstreamError)
    if match is not None:
        assert match in str(err), str(err)
    assert dump(path) == before, "a refused call changed the stored data"
    return err


@dataclass
class Fixture:
    db: sqlstream.Database
    path: str
    plain: sqlstream.Stream
    sealed: sqlstream.Stream
    secret: sqlstream.Stream  # the writable handle (holds the secret)
    gone: sqlstream.Stream  # a handle to a stream that was deleted


@pytest.fixture
def fx(db: sqlstream.Database) -> Fixture:
    plain = db.create_stream("plain")
    plain.append({"id": 1}, key="k", headers={"h": "v"})
    plain.extend([b"\x00\xff", "été", [1, 2.5, None]])
    sealed = db.create_stream("sealed")
    sealed.extend([b"a", b"b"])
    sealed.seal()
    secret = db.create_stream("secret", secret=True)
    secret.extend([b"log ", b"bytes"])
    gone = db.create_stream("gone")
    gone.append(b"x")
    db.delete_stream("gone")
    return Fixture(db, db.path, plain, sealed, secret, gone)


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _circular() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


BAD_VALUES: list[tuple[str, Callable[[], Any]]] = [
    ("None", lambda: None),
    ("set", lambda: {1, 2}),
    ("frozenset", lambda: frozenset()),
    ("object", lambda: object()),
    ("complex", lambda: 1 + 2j),
    ("nan", lambda: float("nan")),
    ("infinity", lambda: float("inf")),
    ("nan in dict", lambda: {"x": float("nan")}),
    ("infinity in list", lambda: [1, float("-inf")]),
    ("set in dict", lambda: {"a": {1}}),
    ("bytes in list", lambda: [b"raw"]),
    ("int key", lambda: {1: "a"}),
    ("colliding keys", lambda: {1: "a", "1": "b"}),
    ("nested None key", lambda: {"a": [{None: 1}]}),
    ("tuple key", lambda: {("t",): 1}),
    ("circular", _circular),
    ("too deep", lambda: _deep(200_000)),
    ("huge int", lambda: 10**5000),
    ("lone surrogate", lambda: "abc\ud800"),
    ("surrogate in JSON", lambda: {"k": "\udfff"}),
    ("surrogate JSON key", lambda: {"\udc00": 1}),
]


@pytest.mark.parametrize("make", [m for _, m in BAD_VALUES], ids=[i for i, _ in BAD_VALUES])
def test_bad_values_are_refused_and_store_nothing(fx: Fixture, make: Callable[[], Any]) -> None:
    """A value sqlstream cannot store faithfully is InvalidValue, alone, in a batch or a transaction."""
    value = make()
    refused(fx.path, errors.InvalidValue, lambda: fx.plain.append(value))
    refused(fx.path, errors.InvalidValue, lambda: fx.plain.extend([b"fine", value, "fine"]))
    refused(fx.path, errors.InvalidValue, lambda: fx.secret.append(value))

    def in_transaction() -> None:
        with fx.db.transaction():
            fx.plain.append(b"would be rolled back")
            fx.plain.append(value)

    refused(fx.path, errors.InvalidValue, in_transaction)
    # The stream still works and its offsets are not burned.
    assert fx.plain.append(b"next") == 4


BAD_KEYS: list[Any] = [1, b"key", ["k"], 1.5, object(), "k\ud800"]
BAD_HEADERS: list[Any] = [
    "h=v",
    [("h", "v")],
    {1: "v"},
    {"h": 1},
    {"h": None},
    {"h": b"v"},
    {"h": "\ud800"},
    {"\udfff": "v"},
]


def case_id(value: Any) -> str:
    """A parametrization id that is the same in every process: a bare ``object()``'s repr
    holds its address, which differs between pytest-xdist workers and stops the run."""
    return "object()" if type(value) is object else repr(value)


@pytest.mark.parametrize("key", BAD_KEYS, ids=case_id)
def test_bad_keys_are_refused(fx: Fixture, key: Any) -> None:
    """A key must be a str of valid Unicode (or None)."""
    refused(fx.path, errors.InvalidValue, lambda: fx.plain.append(b"v", key=key))
    refused(fx.path, errors.InvalidValue, lambda: fx.plain.extend([b"v", b"w"], key=key))


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=repr)
def test_bad_headers_are_refused(fx: Fixture, headers: Any) -> None:
    """Headers must be a dict of valid-Unicode str to str (or None)."""
    refused(fx.path, errors.InvalidValue, lambda: fx.plain.append(b"v", headers=headers))
    refused(fx.path, errors.InvalidValue, lambda: fx.plain.extend([b"v"], headers=headers))


def test_extend_needs_an_iterable_of_values(fx: Fixture) -> None:
    """extend() of one value or of a non-iterable is InvalidArgument, never a raw TypeError."""
    batches: list[Any] = [b"abc", "abc", {"a": 1}, bytearray(b"ab"), None, 5, object()]
    for batch in batches:
        refused(fx.path, errors.InvalidArgument, lambda: fx.plain.extend(batch))


BAD_NAMES: list[Any] = ["", "x" * 201, "a b", " a", "a\n", "-lead", ".lead", "été", "a*b", "a\x00", None, 1, b"bytes", ["a"]]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_state_the_rule(fx: Fixture, name: Any) -> None:
    """Every way of naming a stream refuses a bad name with InvalidName quoting the rule."""
    db = fx.db
    for call in (
        lambda: db.create_stream(name),
        lambda: db.create_stream(name, exist_ok=True),
        lambda: db.stream(name),
        lambda: db.stream_info(name),
        lambda: db.delete_stream(name),
    ):
        refused(fx.path, errors.InvalidName, call, match=NAME_RULE)


def test_name_length_limit_is_200(fx: Fixture) -> None:
    """A 200-character name is fine; 201 is refused."""
    assert fx.db.create_stream("n" * 200).name == "n" * 200
    refused(fx.path, errors.InvalidName, lambda: fx.db.create_stream("n" * 201), match=NAME_RULE)


def test_unknown_streams_on_every_method(fx: Fixture) -> None:
    """Every method on a missing (or deleted) stream is StreamNotFound and changes nothing."""
    db, gone = fx.db, fx.gone
    calls: list[Callable[[], object]] = [
        lambda: db.stream("nope"),
        lambda: db.stream_info("nope"),
        lambda: db.delete_stream("nope"),
        lambda: db.delete_stream("gone"),
        lambda: db.writer("no-such-secret"),
        lambda: gone.append(b"x"),
        lambda: gone.append(b"x", expect_offset=0),
        lambda: gone.extend([b"x", b"y"]),
        lambda: gone.extend([]),
        lambda: gone.seal(),
        lambda: gone.info(),
        lambda: gone.read(),
        lambda: gone.read(5, 1),
        lambda: gone.read(0, 1, timeout=0.01),
        lambda: gone.read_at(0),
        lambda: gone.read_bytes(),
        lambda: gone.read_bytes(0, 1),
        lambda: gone.read_bytes(0, 1, timeout=0.01),
        lambda: next(gone.iter_bytes(4, timeout=0)),
        lambda: next(gone.follow()),
        lambda: next(gone.follow(start="latest")),
        lambda: next(gone.follow(start=0, timeout=0)),
    ]
    for call in calls:
        refused(fx.path, errors.StreamNotFound, call)


def test_secret_stream_deleted_under_its_writer(fx: Fixture) -> None:
    """A writer handle whose stream was deleted gets StreamNotFound, and its secret is dead."""
    secret = fx.secret.write_secret
    assert secret is not None
    fx.db.delete_stream("secret")
    refused(fx.path, errors.StreamNotFound, lambda: fx.secret.append(b"x"))
    refused(fx.path, errors.StreamNotFound, lambda: fx.db.writer(secret))


def test_oversized_records_are_refused(db_path: str) -> None:
    """Records over max_record_bytes (counted in stored bytes, UTF-8) are PayloadTooLarge."""
    with sqlstream.open(db_path, max_record_bytes=10) as db:
        s = db.create_stream("s")
        assert s.append(b"x" * 10) == 0  # exactly the limit is fine
        assert s.append("é" * 5) == 1  # 10 bytes of UTF-8
        for value in (b"x" * 11, "é" * 6, "x" * 11, {"k": "xxxxxx"}, list(range(10))):
            refused(db_path, errors.PayloadTooLarge, lambda: s.append(value))
            refused(db_path, errors.PayloadTooLarge, lambda: s.extend([b"ok", value]))
        assert s.append(b"ok") == 2


def test_sealed_streams_take_no_appends(fx: Fixture) -> None:
    """Appending to a sealed stream is StreamSealed in every form; sealing again is a no-op."""
    s = fx.sealed
    for call in (
        lambda: s.append(b"x"),
        lambda: s.append("x", key="k", headers={"a": "b"}),
        lambda: s.append(b"x", expect_offset=2),
        lambda: s.append(b"x", expect_offset=0),
        lambda: s.extend([b"x", b"y"]),
        lambda: fx.db.stream("sealed").append(b"x"),
    ):
        refused(fx.path, errors.StreamSealed, call)

    def in_transaction() -> None:
        with fx.db.transaction():
            fx.plain.append(b"rolled back with the block")
            s.append(b"x")

    refused(fx.path, errors.StreamSealed, in_transaction)
    before = dump(fx.path)
    assert s.seal() is False
    assert dump(fx.path) == before


def test_secret_streams_refuse_other_writers(fx: Fixture) -> None:
    """Without the right secret a secret stream cannot be appended to or sealed."""
    plain_handle = fx.db.stream("secret")
    assert plain_handle.write_secret is None
    wrong = sqlstream.Stream(fx.db, "secret", "not-the-secret")
    for call in (
        lambda: plain_handle.append(b"x"),
        lambda: plain_handle.extend([b"x"]),
        lambda: plain_handle.seal(),
        lambda: wrong.append(b"x"),
        lambda: wrong.seal(),
        lambda: fx.db.create_stream("secret", exist_ok=True).append(b"x"),
    ):
        refused(fx.path, errors.AccessDenied, call)
    refused(fx.path, errors.StreamNotFound, lambda: fx.db.writer("not-the-secret"))
    refused(fx.path, errors.InvalidValue, lambda: fx.db.writer(None))  # type: ignore[arg-type]
    secret = fx.secret.write_secret
    assert secret is not None
    assert fx.db.writer(secret).append(b"!") == 2


def test_expect_offset_mismatch_is_a_concurrency_error(fx: Fixture) -> None:
    """expect_offset other than the next offset is ConcurrencyError and stores nothing."""
    for expect in (0, 3, 5, 1000):
        refused(fx.path, errors.ConcurrencyError, lambda: fx.plain.append(b"x", expect_offset=expect))
        refused(fx.path, errors.ConcurrencyError, lambda: fx.plain.extend([b"x", b"y"], expect_offset=expect))
    assert fx.plain.append(b"x", expect_offset=4) == 4


BAD_OFFSETS: list[Any] = [-1, 1.5, "0", None, True, 2**64]
BAD_LIMITS: list[Any] = [0, -1, 1.5, "10", True, 2**64]
BAD_TIMEOUTS: list[Any] = [-1, -0.001, "1", float("nan"), float("-inf"), [], object()]


def bind(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], object]:
    """A call to make later, with its arguments fixed now."""
    return lambda: function(*args, **kwargs)


def first_of(function: Callable[..., Iterator[Any]], *args: Any, **kwargs: Any) -> Callable[[], object]:
    """A call that starts a generator method and takes its first item."""
    return lambda: next(function(*args, **kwargs))


def test_bad_offsets_limits_and_timeouts(fx: Fixture) -> None:
    """Out-of-range or wrongly typed offsets, limits and timeouts are InvalidArgument."""
    s = fx.plain
    calls: list[Callable[[], object]] = []
    for bad in BAD_OFFSETS:
        calls += [bind(s.read, bad, 1), bind(s.read_bytes, bad, 1), first_of(s.iter_bytes, 4, bad, timeout=0)]
        if bad is not None:  # None is the default of these
            calls += [
                first_of(s.follow, start=bad, timeout=0),
                bind(s.append, b"x", expect_offset=bad),
                bind(s.extend, [b"x"], expect_offset=bad),
            ]
    for bad in BAD_LIMITS:
        calls += [bind(s.read, 0, bad), first_of(s.iter_bytes, bad), first_of(s.follow, batch=bad, timeout=0)]
        if bad != 0:  # read_bytes takes limit=0 (an empty chunk)
            calls.append(bind(s.read_bytes, 0, bad))
    for bad in BAD_TIMEOUTS:
        calls += [
            bind(s.read, 0, 1, timeout=bad),
            bind(s.read, 100, 1, timeout=bad),  # would wait: nothing there yet
            bind(s.read_bytes, 0, 1, timeout=bad),
            bind(s.read_bytes, 1000, 1, timeout=bad),  # would wait
        ]
    for start in ("middle", "", "EARLIEST"):
        calls.append(first_of(s.follow, start=start))
    for when in ("yesterday", None, float("nan"), float("inf"), True):
        calls.append(bind(s.read_at, when))
    for call in calls:
        refused(fx.path, errors.InvalidArgument, call)
    # A finite time far in the future is no error: no record is that new.
    assert s.read_at(1e300) == 4


def test_bad_stream_settings(fx: Fixture) -> None:
    """Retention limits must be positive numbers (not bools, NaN, or beyond 64 bits); metadata a JSON dict."""
    db = fx.db
    bad_counts: list[Any] = [0, -1, 1.5, "5", True, float("nan"), 2**64]
    for field_name in ("max_count", "max_bytes"):
        for bad in bad_counts:
            options: dict[str, Any] = {field_name: bad}
            refused(fx.path, errors.InvalidArgument, lambda: db.create_stream("new", **options))
    bad_ages: list[Any] = [0, -1.0, "5", True, float("nan"), float("-inf")]
    for bad in bad_ages:
        refused(fx.path, errors.InvalidArgument, lambda: db.create_stream("new", max_age=bad))
    bad_metadata: list[Any] = [[1], "x", {"a": float("nan")}, {"a": {1}}, {"a": "\ud800"}]
    for meta in bad_metadata:
        refused(fx.path, errors.InvalidValue, lambda: db.create_stream("new", metadata=meta))
    refused(fx.path, errors.StreamExists, lambda: db.create_stream("plain"))
    refused(fx.path, errors.StreamExists, lambda: db.create_stream("sealed", secret=True))


def _metadata_nested(levels: int, container: str) -> dict[str, Any]:
    """Stream metadata ``levels`` deep, counting the metadata object itself as level 1."""
    inner: Any = {} if container == "dict" else []
    for _ in range(levels - 2):
        inner = {"k": inner} if container == "dict" else [inner]
    return {"k": inner} if levels > 1 else {}


@pytest.mark.parametrize("container", ["dict", "list"])
def test_metadata_nesting_is_accepted_to_exactly_max_depth(fx: Fixture, container: str) -> None:
    """The documented rule, "nested at most 100 deep", at its boundary: 99 and 100 in, 101 out."""
    from sqlstream.validation import MAX_DEPTH

    assert MAX_DEPTH == 100  # the README states the number
    for levels in (1, 2, MAX_DEPTH - 1, MAX_DEPTH):
        meta = _metadata_nested(levels, container)
        name = f"depth-{container}-{levels}"
        assert fx.db.create_stream(name, metadata=meta).info().metadata == meta
    refused(fx.path, errors.InvalidValue, lambda: fx.db.create_stream("too-deep", metadata=_metadata_nested(
        MAX_DEPTH + 1, container)), match=f"more than {MAX_DEPTH} levels")


def test_query_refuses_writes_and_bad_sql(fx: Fixture) -> None:
    """db.query() converts every SQLite complaint and refuses writes."""
    db = fx.db
    refused(fx.path, errors.ReadOnlyDatabase, lambda: db.query("DELETE FROM chunks"))
    refused(fx.path, errors.ReadOnlyDatabase, lambda: db.query("DROP TABLE chunks"))
    refused(fx.path, errors.DatabaseError, lambda: db.query("SELEC 1"))
    refused(fx.path, errors.DatabaseError, lambda: db.query("SELECT * FROM no_such_table"))
    refused(fx.path, errors.DatabaseError, lambda: db.query("SELECT ?, ?", (1,)))
    refused(fx.path, errors.InvalidArgument, lambda: db.query("SELECT ?", (object(),)))
    refused(fx.path, errors.InvalidArgument, lambda: db.query("SELECT 1", 5))  # type: ignore[arg-type]
    refused(fx.path, errors.InvalidValue, lambda: db.query(b"SELECT 1"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"synchronous": "off"},
        {"synchronous": None},
        {"wakeup": "sometimes"},
        {"busy_timeout": -1},
        {"busy_timeout": "30"},
        {"busy_timeout": float("nan")},
        {"poll_interval": 0},
        {"poll_interval": -0.5},
        {"max_record_bytes": 0},
        {"max_record_bytes": 10**12},
        {"max_record_bytes": 1.5},
        {"vfs": 5},
    ],
    ids=repr,
)
def test_bad_open_options(fx: Fixture, options: dict[str, Any]) -> None:
    """sqlstream.open() with an option out of range is InvalidArgument and touches nothing."""
    refused(fx.path, errors.InvalidArgument, lambda: sqlstream.open(fx.path, **options))


def test_bad_paths(tmp_path: Path) -> None:
    """Paths that cannot name a database file are refused with a SqlstreamError, creating nothing."""
    for bad in ("", "file:x.db?mode=memory", 123, None, b"bytes.db"):
        with pytest.raises(BaseException) as info:
            sqlstream.open(bad)  # type: ignore[arg-type]
        check_error(info.value, errors.InvalidArgument)
    for unusable in (tmp_path / "no" / "such" / "dir.db", tmp_path):  # missing directory; a directory
        with pytest.raises(BaseException) as info:
            sqlstream.open(unusable)
        check_error(info.value, errors.DatabaseError)
    with pytest.raises(BaseException) as info:
        sqlstream.open(tmp_path / "absent.db", create=False)
    check_error(info.value, errors.DatabaseError)
    with pytest.raises(BaseException) as info:
        sqlstream.open(tmp_path / "absent.db", readonly=True)
    check_error(info.value, errors.DatabaseError)
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(BaseException) as info:
        sqlstream.open(tmp_path / "x.db", vfs="no-such-vfs")
    check_error(info.value, errors.DatabaseError)
    # The file is created (empty, private) before SQLite is asked to open it; a failed
    # first open leaves only that empty file, which a later open takes as a new database.
    assert sorted(os.listdir(tmp_path)) == ["x.db"] and (tmp_path / "x.db").stat().st_size == 0
    with sqlstream.open(tmp_path / "x.db") as db:
        assert db.streams() == []


NOT_SQLITE: list[tuple[str, bytes]] = [
    ("random bytes", bytes(range(256)) * 20),
    ("text", b"hello, this is a text file\n"),
    ("one byte", b"\x00"),
    ("SQLite header, garbage after", b"SQLite format 3\x00" + bytes(range(256)) * 20),
]


@pytest.mark.parametrize("content", [c for _, c in NOT_SQLITE], ids=[i for i, _ in NOT_SQLITE])
@pytest.mark.parametrize("readonly", [False, True])
def test_not_sqlite_file_is_corrupt_and_untouched(tmp_path: Path, content: bytes, readonly: bool) -> None:
    """Opening a file that is not a SQLite database is CorruptDatabase; the file is not touched."""
    path = tmp_path / "not.db"
    path.write_bytes(content)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(BaseException) as info:
        sqlstream.open(path, readonly=readonly)
    check_error(info.value, errors.CorruptDatabase)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == ["not.db"], "sqlstream created files next to it"


def test_truncated_database_is_corrupt_and_untouched(tmp_path: Path) -> None:
    """A sqlstream file cut in half is CorruptDatabase (on open or on read), and left as it was."""
    good = str(tmp_path / "good.db")
    with sqlstream.open(good) as db:
        db.create_stream("s").extend([bytes([i]) * 3000 for i in range(60)])
    # close() checkpointed the WAL into the file (issue 9, item 7)
    data = Path(good).read_bytes()
    path = tmp_path / "cut.db"
    path.write_bytes(data[: len(data) // 2])

    def open_and_read() -> None:
        with sqlstream.open(path) as db:
            db.stream("s").read(0, 1000)

    with pytest.raises(BaseException) as info:
        open_and_read()
    check_error(info.value, errors.CorruptDatabase)
    assert path.read_bytes() == data[: len(data) // 2]


def test_other_programs_sqlite_file_is_refused_unchanged(tmp_path: Path) -> None:
    """A SQLite database of another program is SchemaVersionError, and its bytes stay as they were."""
    path = str(tmp_path / "other.db")
    conn = apsw.Connection(path)
    conn.execute("CREATE TABLE things (x); INSERT INTO things VALUES (1), (2)")
    conn.close()
    content = Path(path).read_bytes()
    for readonly in (False, True):
        with pytest.raises(BaseException) as info:
            sqlstream.open(path, readonly=readonly)
        check_error(info.value, errors.SchemaVersionError)
        assert Path(path).read_bytes() == content


def test_newer_schema_is_refused_and_unchanged(db_path: str) -> None:
    """A file from a newer sqlstream is SchemaVersionError, read-write or read-only; data unchanged."""
    with sqlstream.open(db_path) as db:
        db.create_stream("s").extend([b"a", "b", {"c": 1}])
    conn = apsw.Connection(db_path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = dump(db_path)
    for readonly in (False, True):
        with pytest.raises(BaseException) as info:
            sqlstream.open(db_path, readonly=readonly)
        check_error(info.value, errors.SchemaVersionError)
        assert "999" in str(info.value)
        assert dump(db_path) == before


def test_use_after_close(fx: Fixture) -> None:
    """Every call on a closed Database or its handles is DatabaseClosed; close() is idempotent."""
    db, s = fx.db, fx.plain
    follower = s.follow(timeout=0)
    db.close()
    db.close()
    assert db.closed
    calls: list[Callable[[], object]] = [
        lambda: db.create_stream("new"),
        lambda: db.stream("plain"),
        lambda: db.stream_info("plain"),
        lambda: db.streams(),
        lambda: db.delete_stream("plain"),
        lambda: db.writer("x"),
        lambda: db.query("SELECT 1"),
        lambda: db.transaction().__enter__(),
        lambda: s.append(b"x"),
        lambda: s.extend([b"x"]),
        lambda: s.extend([]),
        lambda: s.seal(),
        lambda: s.info(),
        lambda: s.read(),
        lambda: s.read(0, 1, timeout=0.01),
        lambda: s.read_at(0),
        lambda: s.read_bytes(0, 1),
        lambda: next(s.iter_bytes(4, timeout=0)),
        lambda: next(s.follow(timeout=0)),
        lambda: next(follower),
        lambda: fx.secret.append(b"x"),
    ]
    for call in calls:
        refused(fx.path, errors.DatabaseClosed, call)


# --------------------------------------------------------------------------- fuzzing

# Arguments of every kind; positive timeouts are left out so that no call blocks.
WEIRD: list[Any] = [
    None, 0, 1, -1, 2**63, 2**64, -(2**64), 1.5, float("nan"), float("inf"), float("-inf"), True, False,
    "", "x", "plain", "\ud800", b"", b"x", [], [1], [b"a", "b"], {}, {"a": "b"}, {1: 2}, set(), object(),
]
NON_BLOCKING_TIMEOUTS: list[Any] = [0, -1, float("nan"), "x", [], object()]
weird = st.sampled_from(WEIRD)


def test_no_raw_exception_escapes_the_api(fx: Fixture) -> None:
    """Whatever the arguments, a call returns or raises a SqlstreamError (never apsw, TypeError...)."""
    db = fx.db
    counter = itertools.count()

    def calls(a: Any, b: Any, c: Any, t: Any) -> list[Callable[[], object]]:
        s = sqlstream.Stream(db, "plain")
        fresh = f"fuzz{next(counter)}"
        return [
            lambda: db.create_stream(fresh, max_count=a, max_age=b, max_bytes=c),
            lambda: db.create_stream(fresh, metadata=a),
            lambda: db.create_stream(a),
            lambda: db.stream(a),
            lambda: db.stream_info(a),
            lambda: db.writer(a),
            lambda: db.query("SELECT ?", (a,)),
            lambda: db.query("SELECT 1", a),
            lambda: s.append(a, key=b, headers=c),
            lambda: s.append(b"v", expect_offset=a),
            lambda: s.extend(a),
            lambda: s.extend([a, b], key=c),
            lambda: s.extend([b"v"], expect_offset=a),
            lambda: s.read(a, b, timeout=t),
            lambda: s.read(0, 1, timeout=t),
            lambda: s.read_at(a),
            lambda: s.read_bytes(a, b, timeout=t),
            lambda: s.read_bytes(0, None, timeout=t),
            lambda: list(itertools.islice(s.iter_bytes(a, b, timeout=0), 3)),
            lambda: list(itertools.islice(s.follow(start=a, batch=b, timeout=0), 3)),
        ]

    def run(a: Any, b: Any, c: Any, t: Any) -> None:
        for call in calls(a, b, c, t):
            try:
                call()
            except errors.SqlstreamError as exc:
                assert not isinstance(exc, apsw.Error)

    # Every odd value in every argument position, the others plain (None, then 1)...
    for value, position, filler, timeout in itertools.product(WEIRD, range(3), (None, 1), (0, "x")):
        args = [filler, filler, filler]
        args[position] = value
        run(args[0], args[1], args[2], timeout)

    # ...and random mixtures of them.
    @given(a=weird, b=weird, c=weird, t=st.sampled_from(NON_BLOCKING_TIMEOUTS))
    def check(a: Any, b: Any, c: Any, t: Any) -> None:
        run(a, b, c, t)

    check()
    # Whatever the fuzzing stored, the records that were there are still there.
    assert [r.value for r in fx.plain.read(0, 4)] == [{"id": 1}, b"\x00\xff", "été", [1, 2.5, None]]
    assert math.isfinite(fx.plain.info().byte_length)


# --------------------------------------------------------------------------- issue 9 item 12


def test_issue_9_hostile_numbers_texts_and_metadata_are_sqlstream_errors(fx: Fixture) -> None:
    """Each call the API fuzzer found raising a raw OverflowError/ValueError/UnicodeEncodeError/
    KeyError/RecursionError now raises a SqlstreamError and changes nothing (sqlstream.validation)."""
    import datetime

    db, s = fx.db, fx.plain
    sub = db.create_subscription("sub", "plain")
    reader = db.reader("r", "plain")
    sub.fetch("c", 1)  # offset 0 pending: nack/extend have something to apply to
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    calls: list[tuple[type[errors.SqlstreamError], Callable[[], object]]] = [
        (errors.InvalidArgument, lambda: db.create_stream("n1", max_count=2**63 - 1)),
        (errors.InvalidArgument, lambda: db.create_stream("n2", max_bytes=2**63 - 1)),
        (errors.InvalidArgument, lambda: db.create_stream("n3", max_age=9e18)),
        (errors.InvalidArgument, lambda: db.set_retention("plain", max_count=2**63 - 1)),
        (errors.InvalidArgument, lambda: db.set_retention("plain", max_age=9e18)),
        (errors.InvalidArgument, lambda: db.set_retention("plain", dedup_seconds=float("inf"))),
        (errors.InvalidArgument, lambda: db.create_subscription("s2", "plain", ack_timeout=1e13)),
        (errors.InvalidArgument, lambda: db.create_subscription("s3", "plain", max_unacked=2**64)),
        (errors.InvalidArgument, lambda: db.create_subscription("s4", "plain", max_deliveries=2**64, dead_letter="d")),
        (errors.InvalidArgument, lambda: sub.nack(0, delay=1e300)),
        (errors.InvalidArgument, lambda: sub.extend_deadline(0, seconds=1e300)),
        (errors.InvalidArgument, lambda: sub.fetch("c", 2**64)),
        (errors.InvalidArgument, lambda: sub.fetch("c", 1, timeout=True)),
        (errors.InvalidArgument, lambda: sub.pending(limit=2**64)),
        (errors.InvalidArgument, lambda: sub.ack(2**64)),
        (errors.InvalidArgument, lambda: reader.read(2**64)),
        (errors.InvalidArgument, lambda: reader.read(1, timeout=True)),
        (errors.InvalidArgument, lambda: s.read(0, timeout=True)),  # the drift: read took it, fetch did not
        (errors.InvalidArgument, lambda: s.read_bytes(0, 1, timeout=False)),
        (errors.InvalidArgument, lambda: s.read_at(datetime.datetime(1, 1, 1))),
        (errors.InvalidArgument, lambda: db.maintain(checkpoint_timeout=float("inf"))),
        (errors.InvalidArgument, lambda: db.query("SELECT :a", {"b": 1})),
        (errors.InvalidValue, lambda: db.create_stream("n4", metadata=deep)),
        (errors.InvalidArgument, lambda: db.delete_stream("plain", force=1)),  # type: ignore[arg-type]
    ]
    for expected, call in calls:
        refused(fx.path, expected, call)


def test_issue_9_huge_and_infinite_timeouts_wait_without_limit_like_none(fx: Fixture) -> None:
    """timeout=inf/1e300 used to raise OverflowError; they now mean None (documented)."""
    s = fx.plain
    sub = fx.db.create_subscription("sub", "plain")
    reader = fx.db.reader("r", "plain")
    for forever in (float("inf"), 1e300, 10**30):
        assert len(s.read(0, 1, timeout=forever)) == 1  # records there: returns at once
        assert s.read_bytes(0, 1, timeout=forever).length == 1
        assert len(sub.fetch("c", 1, timeout=forever)) == 1
        assert len(reader.read(1, timeout=forever)) == 1


def test_issue_9_a_nack_error_with_lone_surrogates_is_stored_cleaned(fx: Fixture) -> None:
    """An error text must never make the nack carrying it fail: surrogates become U+FFFD."""
    sub = fx.db.create_subscription("sub", "plain")
    sub.fetch("c", 1)
    assert sub.nack(0, error="bad \udc80 name" + "x" * 20_000).applied == (0,)
    error = sub.pending()[0].last_error or ""
    assert error.startswith("bad \ufffd name") and len(error) == 10_000


def test_issue_9_a_subscription_stored_with_a_huge_ack_timeout_still_fetches(fx: Fixture) -> None:
    """Files written before the cap may hold ack_timeout=1e13: fetch must not overflow on it."""
    sub = fx.db.create_subscription("sub", "plain")
    conn = apsw.Connection(fx.path)
    try:
        conn.execute("UPDATE subscriptions SET ack_timeout = 1e13")
    finally:
        conn.close()
    assert len(sub.fetch("c", 2)) == 2


def test_issue_9_huge_stored_windows_do_not_break_dedup_appends_or_retention(fx: Fixture) -> None:
    """dedup_seconds up to 2**63 used to be accepted and stored; every dedup append then
    overflowed. Stored durations are capped where they are used (sqlstream.validation)."""
    conn = apsw.Connection(fx.path)
    try:
        conn.execute("UPDATE streams SET dedup_seconds = 9e18, max_age = 9e18 WHERE name = 'plain'")
    finally:
        conn.close()
    first = fx.plain.append(b"x", dedup_id="once")
    assert fx.plain.append(b"x", dedup_id="once") == first
    assert fx.db.trim("plain").trimmed == 0 and fx.db.maintain().checkpoint


@pytest.mark.parametrize("value", [math.inf, 1e300, True, -1, math.nan, "5"])
def test_open_refuses_a_busy_timeout_that_is_not_a_finite_number_of_seconds(tmp_path: Path, value: Any) -> None:
    # inf/1e300 used to be accepted and fail later with a raw OverflowError (the lock
    # wait); True was taken as 1 second.
    with pytest.raises(errors.InvalidArgument, match="busy_timeout"):
        sqlstream.open(tmp_path / "b.db", busy_timeout=value)
    assert not (tmp_path / "b.db").exists()


def test_ints_too_large_for_a_float_are_refused_where_seconds_are_taken(tmp_path: Path) -> None:
    """math.isfinite() of an int of 400 digits raises OverflowError: check_seconds and
    timestamp_us let it out raw (extend_deadline, claim/autoclaim min_idle, read_at), as
    did export's roll_size_mb check (failed before)."""
    huge = 10**400
    with sqlstream.open(str(tmp_path / "big.db")) as db:
        s = db.create_stream("s")
        s.extend([b"a", b"b"])
        sub = db.create_subscription("sub", "s")
        assert len(sub.fetch("c", 2)) == 2
        with pytest.raises(errors.InvalidArgument):
            sub.extend_deadline(0, seconds=huge)
        with pytest.raises(errors.InvalidArgument):
            sub.claim("c2", 0, min_idle=huge)
        with pytest.raises(errors.InvalidArgument):
            sub.autoclaim("c2", min_idle=huge)
        assert s.read_at(huge) == 2 and s.read_at(-huge) == 0  # clamped: past every record / before
        db.export(["s"], str(tmp_path / "out"), roll_size_mb=huge)  # rolls never: a size no file reaches
        with pytest.raises(errors.InvalidArgument):
            db.export(["s"], str(tmp_path / "out2"), roll_size_mb=float("inf"))
        assert [r.offset for r in sub.pending()] == [0, 1]
