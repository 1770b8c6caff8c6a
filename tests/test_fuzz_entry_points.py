"""Fuzzing the entry points beside the core API: the streaming config, the testing
helpers, archives (format, import, export, rolling, compression), block files and backup.

The same properties as tests/test_fuzz_api.py, for every call: it returns or raises a
``SqlstreamError`` (the testing helpers may also fail an assertion: that is how they
report); it returns within seconds; and a call on the database that raised left every
table as it was. And one property of its own for the streaming config: a configuration
that loads is fully validated, so building its services never fails and running them
raises nothing but sqlstream errors.

Hostile file names are relative (every example runs in a temporary working folder) and
waiting times are drawn from 0..0.05 s and invalid values only, so no example writes
outside its folder or waits for long. ``FUZZ_EXAMPLES`` overrides the example counts
(e.g. ``FUZZ_EXAMPLES=1000`` for a longer search).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream import errors, testing
from sqlstream.archive import (
    ArchiveReader,
    ArchiveWriter,
    ReadingRollManager,
    SizeRollChecker,
    WritingRollManager,
    import_archives,
    pack,
    unpack,
)
from sqlstream.archive.callbacks import compress_file
from sqlstream.streaming import Runner, load_config
from sqlstream.streaming.config import parse_config
from sqlstream.streaming.file import decode_data, decode_meta, read_block
from sqlstream.storage import get_driver
from sqlstream.validation import show
from test_fuzz_api import snapshot

CALL_LIMIT = 60.0  # a hang guard, not a speed bound (a loaded machine is slow, not hung)

# Relative or not a path at all: nothing here may name a place outside the example's folder.
PATHS: list[Any] = ["a", "out", "a.events", "dir/x", "../up", ".", "", "x\x00y", "\udc80", "é", "x" * 300,
                    None, 5, True, b"a", ["a"], {"a": 1}, 1.5]
HOSTILE: list[Any] = [
    None, True, False, 0, 1, -1, 2**63, 2**64, -(2**64), 0.5, 1e300, float("inf"), float("-inf"), float("nan"),
    "", "s", "x" * 300, "\udc80", "a\x00b", "1", b"", b"\xff", [], [1], ["s"], {}, {"a": 1}, {1: 2},
    {"s": "t"}, (1, 2), {1, 2}, object(), "*.events", "s-*.events", "gzip", "zstd", "%Y", "%",
]
SMALL_WAITS: list[Any] = [0, 0.001, 0.02, -1, float("nan"), float("inf"), True, "0.1", None, []]

hostile = st.sampled_from(HOSTILE) | st.integers() | st.text(max_size=12)
paths = st.sampled_from(PATHS)
waits = st.sampled_from(SMALL_WAITS)


def _deep_toml(depth: int, kind: str) -> str:
    return "a = " + ("[" * depth + "]" * depth if kind == "array" else "{b = " * depth + "1" + "}" * depth)


def make_db(folder: Path) -> sqlstream.Database:
    db = sqlstream.open(folder / "f.db")
    s = db.create_stream("s")
    s.extend([{"id": 1}, "two", b"three"])
    db.create_subscription("sub", "s").fetch("w", 1)
    return db


def run_one(worker: concurrent.futures.ThreadPoolExecutor, name: str, call: Callable[..., object], args: list[Any],
            db_path: str | None, allowed: tuple[type[BaseException], ...] = ()) -> object:
    """Run ``call(*args)``; fail on a raw exception, a hang, or a refusal that changed the database."""
    before = snapshot(db_path) if db_path else None
    future = worker.submit(call, *args)
    try:
        return future.result(timeout=CALL_LIMIT)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"{name}{show(tuple(args))} did not return within {CALL_LIMIT} s")
    except errors.SqlstreamError as exc:
        assert str(exc)
        if db_path:
            assert snapshot(db_path) == before, f"refused {name} ({type(exc).__name__}: {exc}) changed the data"
    except allowed:
        pass
    except BaseException as exc:  # noqa: BLE001 - the property under test
        raise AssertionError(f"{name}{show(tuple(args))} raised a raw {type(exc).__name__}: {exc}") from exc
    return None


@pytest.fixture(scope="module")
def worker() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def fuzz(examples: int) -> settings:
    """Hypothesis settings: ``examples`` (sized to keep the default run short; the archive
    calls write and fsync files), or ``FUZZ_EXAMPLES`` when set."""
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", examples)), deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- the streaming config

SERVICE_OPTIONS = {
    "file": ["write_dir", "prefix", "output-metadata", "stop-node-on-error", "fsync"],
    "archive": ["dir", "template", "roll_size_mb", "roll_minutes", "compress", "storage", "storage_prefix",
                "format_version", "stop-node-on-error"],
}
option_values = (hostile | paths | st.sampled_from([
    {"driver": "filesystem", "root": "up"}, {"driver": "filesystem"}, {"driver": "nope"}, {"driver": 5},
    {"driver": "sqlite", "path": "objs.db"}, {"driver": "filesystem", "root": "\udc80"},
]))


@st.composite
def configs(draw: st.DrawFn) -> Any:
    names = draw(st.lists(st.sampled_from(["file", "archive", "two", "a b", "", "x" * 250, "\udc80"])
                          | st.text(max_size=5), max_size=3))
    tables: dict[str, Any] = {}
    for name in names:
        kind = draw(st.sampled_from(["file", "archive", None, "kafka", 5]), label="service")
        table: dict[str, Any] = {} if kind is None else {"service": kind}
        if draw(st.booleans(), label="has keys"):
            table["keys"] = draw(st.sampled_from([["*"], ["s"], [], ["s", "t*"]]) | hostile, label="keys")
        for option in SERVICE_OPTIONS.get(kind if isinstance(kind, str) else name, SERVICE_OPTIONS["file"]):
            if draw(st.booleans(), label=f"has {option}"):
                table[option] = draw(option_values, label=option)
        if draw(st.booleans(), label="unknown option"):
            table[draw(st.text(max_size=6), label="unknown")] = 1
        tables[name] = table if draw(st.integers(0, 9), label="table") else draw(hostile, label="not a table")
    doc: dict[str, Any] = {"store": {"streamers": names}, "streamers": tables}
    if draw(st.booleans(), label="sqlstream table"):
        doc["sqlstream"] = {"db": draw(paths, label="db")}
    if draw(st.integers(0, 4), label="damage") == 0:
        return draw(st.sampled_from([{"store": "x"}, {"nope": {}}, {"store": {"streamers": "file"}},
                                     {"streamers": []}, "x", None, [], 5, {1: {}}]))
    return doc


@fuzz(100)
@given(doc=configs())
def test_a_config_that_loads_builds_and_runs_and_one_that_does_not_is_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, worker: concurrent.futures.ThreadPoolExecutor, doc: Any
) -> None:
    folder = tmp_path_factory.mktemp("config")
    config_path = str(folder / "sqlstream.toml")
    try:
        config = parse_config(doc, config_path)
    except errors.SqlstreamError as exc:
        assert isinstance(exc, errors.InvalidArgument) and str(exc)
        return
    except BaseException as exc:  # noqa: BLE001
        raise AssertionError(f"parse_config({show(doc)}) raised a raw {type(exc).__name__}: {exc}") from exc
    services = config.build()  # validated at load: building never fails
    db = make_db(folder)
    try:
        run_one(worker, "run(once=True)", lambda: Runner(db, services).run(once=True), [], None)
    finally:
        db.close()


toml_texts = st.text(max_size=200) | st.sampled_from([
    _deep_toml(3000, "array"), _deep_toml(3000, "table"), '[store]\nstreamers = ["file"]\n', "a = 1\na = 2\n",
    "[store\n", "\ufeff[store]\n", "[streamers.file]\nkeys = [\"*\"]\n", 'x = "\\ud800"\n',
]) | st.binary(max_size=100)


@fuzz(100)
@given(text=toml_texts)
def test_any_config_file_loads_or_is_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                     text: str | bytes) -> None:
    path = tmp_path_factory.mktemp("toml") / "sqlstream.toml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    try:
        load_config(path).build()
    except errors.SqlstreamError as exc:
        assert str(path) in str(exc)


# --------------------------------------------------------------------------- testing helpers


def _helper_ops(db: sqlstream.Database) -> dict[str, tuple[Callable[..., object], list[st.SearchStrategy[Any]]]]:
    dbs = st.just(db) | hostile
    names = st.sampled_from(["s", "sub", "nope", "", "\udc80", 5, None])
    return {
        "assert_stream": (lambda d, n, e, start: testing.assert_stream(d, n, e, start=start),
                          [dbs, names, hostile | st.just([{"id": 1}, "two", b"three"]), hostile | st.none()]),
        "wait_for_stream": (lambda d, n, u, t: testing.wait_for_stream(d, n, u, timeout=t),
                            [dbs, names, hostile | st.integers(0, 5), waits]),
        "wait_for_subscription": (lambda d, n, t: testing.wait_for_subscription(d, n, timeout=t),
                                  [dbs, names, waits]),
        "wait_for": (lambda c, t, i: testing.wait_for(c, timeout=t, interval=i),
                     [hostile | st.just(lambda: None) | st.just(lambda: 1), waits, waits]),
        "snapshot": (lambda d, s: testing.snapshot(d, s), [dbs, hostile | st.none()]),
        "read_all": (lambda d, n, s: testing.read_all(d, n, s), [dbs, names, hostile | st.none()]),
        "use_clock": (lambda d, c: testing.use_clock(d, c), [dbs, hostile | st.none() | st.just(lambda: 1.7e9)]),
        "FakeClock": (lambda start, step: testing.FakeClock(start).advance(step), [hostile, hostile]),
        "FakeClock.install": (lambda d: testing.FakeClock(1.7e9).install(d), [dbs]),
    }


@fuzz(30)
@given(data=st.data())
def test_testing_helpers_given_anything_raise_sqlstream_errors_or_fail_an_assertion(
    tmp_path_factory: pytest.TempPathFactory, worker: concurrent.futures.ThreadPoolExecutor, data: st.DataObject
) -> None:
    db = make_db(tmp_path_factory.mktemp("helpers"))
    try:
        ops = _helper_ops(db)
        for _ in range(data.draw(st.integers(1, 4), label="calls")):
            name = data.draw(st.sampled_from(sorted(ops)), label="op")
            call, strategies = ops[name]
            args = [data.draw(s, label=f"{name} arg {i}") for i, s in enumerate(strategies)]
            run_one(worker, name, call, args, db.path, allowed=(AssertionError,))
    finally:
        testing.use_clock(db, None)
        db.close()


# --------------------------------------------------------------------------- archives, block files, backup


def _archive_ops(db: sqlstream.Database, folder: Path) -> dict[str, tuple[Callable[..., object],
                                                                             list[st.SearchStrategy[Any]]]]:
    blobs = st.binary(max_size=64) | st.sampled_from([
        pack({"stream": "s", "offset": "0", "position": "0"}, b"x"),
        pack({"a": "b"}, b"y", version=1) + b"\x00",
        gzip.compress(pack({"stream": "s", "offset": "9", "position": "0"}, b"z")),
        (3).to_bytes(8, "big") + b"\x01\x0a\x00",
    ])

    def write_file(name: Any, content: bytes) -> Path:
        plain = isinstance(name, str) and name not in ("", ".", "..") and not {"/", "\x00"} & set(name)
        target = folder / "files" / (name if plain else "f")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_bytes(content)
        except (OSError, UnicodeError):  # a name the filesystem refuses: the file is not the point
            target = folder / "files" / "f"
            target.write_bytes(content)
        return target

    def read_archive(name: Any, content: bytes, limit: Any) -> object:
        return list(ArchiveReader(write_file(name, content), max_record_bytes=limit))

    def write_archive(name: Any, meta: Any, payload: Any, version: Any) -> None:
        with ArchiveWriter(name, version=version) as writer:
            writer.write(meta, payload)

    def roll(template: Any, size: Any, meta: Any) -> None:
        manager = WritingRollManager(template, SizeRollChecker(roll_size_mb=size))
        try:
            manager.write(meta, b"payload")
        finally:
            manager.close()

    def read_rolled(pattern: Any) -> object:
        manager = ReadingRollManager(pattern)
        try:
            return manager.read()
        finally:
            manager.close()

    def storage_round_trip(config: Any, obj: Any) -> object:
        driver = get_driver(config)
        try:
            driver.put_object(obj, b"x")
            return driver.get_object(obj)
        finally:
            driver.close()

    return {
        "ArchiveReader": (read_archive, [paths, blobs, hostile | st.none()]),
        "ArchiveReader.fileobj": (lambda content: list(ArchiveReader(fileobj=io.BytesIO(content))), [blobs]),
        "ArchiveWriter": (write_archive, [paths, hostile | st.just({"k": "v"}), hostile | st.just(b"p"),
                                          hostile | st.sampled_from([1, 2])]),
        "pack": (lambda m, p, v: pack(m, p, version=v), [hostile, hostile, hostile | st.sampled_from([1, 2])]),
        "unpack": (lambda content: unpack(content), [blobs | hostile]),
        "WritingRollManager": (roll, [paths | st.just("roll-%Y.events"), hostile | st.just(1), hostile]),
        "ReadingRollManager": (read_rolled, [paths | hostile | st.just("*.events")]),
        "compress_file": (lambda name, c, content: compress_file(str(write_file(name, content)), c),
                          [paths, hostile | st.sampled_from(["gzip", "zstd"]), blobs]),
        "import_archives": (
            lambda pattern, directory, streams, secrets, rename, gap: import_archives(
                db, pattern, directory, streams=streams, secrets=secrets, rename=rename, allow_gap=gap),
            [hostile | st.just("*"), paths | st.just("files"), hostile | st.none(), hostile | st.none(),
             hostile | st.none(), hostile | st.just(False)],
        ),
        "export": (
            lambda streams, directory, name, compress, roll_mb, version: db.export(
                streams, directory, name=name, compress=compress, roll_size_mb=roll_mb, version=version),
            [hostile | st.just("s"), paths, hostile | st.none(), hostile | st.none(), hostile | st.just(1),
             hostile | st.just(2)],
        ),
        "backup": (lambda path, overwrite, progress: db.backup(path, overwrite=overwrite, progress=progress),
                   [paths, hostile | st.just(False), hostile | st.none()]),
        "get_driver": (storage_round_trip,
                       [hostile | st.sampled_from([{"driver": "filesystem", "root": "store"},
                                                   {"driver": "sqlite", "path": "objects.db"},
                                                   {"driver": "filesystem", "root": "\udc80"}]),
                        paths | hostile]),
        "decode_data": (lambda content: decode_data(content), [blobs]),
        "decode_meta": (lambda content: decode_meta(content), [blobs]),
        "read_block": (lambda d, h, p: read_block(d, h, p), [paths, hostile, hostile | st.just("")]),
    }


@fuzz(30)
@given(data=st.data())
def test_archive_block_and_backup_entry_points_raise_only_sqlstream_errors(
    tmp_path_factory: pytest.TempPathFactory, worker: concurrent.futures.ThreadPoolExecutor, data: st.DataObject,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path_factory.mktemp("archives")
    work = folder / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative hostile names land here (or one level up: still ours)
    db = make_db(folder)
    try:
        ops = _archive_ops(db, work)
        for _ in range(data.draw(st.integers(1, 4), label="calls")):
            name = data.draw(st.sampled_from(sorted(ops)), label="op")
            call, strategies = ops[name]
            args = [data.draw(s, label=f"{name} arg {i}") for i, s in enumerate(strategies)]
            # export and backup are refused without a change, or succeed and change only
            # their own bookkeeping: check the database only for the others.
            touches = name not in ("export", "import_archives")
            run_one(worker, name, call, args, db.path if touches else None)  # fails past CALL_LIMIT
    finally:
        db.close()
