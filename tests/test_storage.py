"""One contract suite for every storage driver (filesystem, sqlite, s3), plus each driver's own promises.

The s3 driver runs against moto's S3-compatible server, started by these tests on
127.0.0.1; its tests are skipped (with the reason) only when boto3 or moto is not
installed. ``pip install -e '.[test]'`` installs both.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream.errors import InvalidArgument, InvalidObjectPath, ObjectNotFound, StorageError
from sqlstream.storage import ObjectInfo, StorageDriver, get_driver
from sqlstream.storage import sqlite as sqlite_driver

DRIVERS = ["filesystem", "sqlite", "s3"]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("boto3", reason="the s3 driver needs boto3 (pip install 'sqlstream[s3]')")
    moto_server = pytest.importorskip("moto.server", reason="the s3 tests need moto with flask (the test extra)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_config(endpoint: str) -> dict[str, Any]:
    return {
        "driver": "s3", "bucket": f"test-{uuid.uuid4().hex[:12]}", "endpoint_url": endpoint,
        "region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "create_bucket": True,
    }


def make_config(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "filesystem":
        return {"driver": "filesystem", "root": str(tmp_path / "root")}
    if kind == "sqlite":
        return {"driver": "sqlite", "path": str(tmp_path / "objects.db")}
    return s3_config(request.getfixturevalue("s3_endpoint"))


@pytest.fixture(params=DRIVERS)
def config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    return make_config(request.param, tmp_path, request)


@pytest.fixture
def driver(config: dict[str, Any]) -> Iterator[StorageDriver]:
    with get_driver(config) as d:
        yield d


def pieces(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# --------------------------------------------------------------------------- the contract


def test_put_get_size_and_overwrite(driver: StorageDriver) -> None:
    assert driver.get_object("a/b") is None
    assert driver.get_object_size("a/b") is None
    driver.put_object("a/b", b"hello")
    assert driver.get_object("a/b") == b"hello"
    assert driver.get_object_size("a/b") == 5
    driver.put_object("a/b", bytearray(b"replaced"))
    assert driver.get_object("a/b") == b"replaced"
    driver.put_object("empty", b"")
    assert driver.get_object("empty") == b"" and driver.get_object_size("empty") == 0


def test_put_from_an_iterator(driver: StorageDriver) -> None:
    data = os.urandom(2_500_000)  # several 1 MiB pieces
    driver.put_object("big", pieces(data))
    assert driver.get_object_size("big") == len(data)
    assert driver.get_object("big") == data
    driver.put_object("from-empty-iterator", iter([]))
    assert driver.get_object("from-empty-iterator") == b""


def test_a_failing_iterator_changes_nothing(driver: StorageDriver) -> None:
    driver.put_object("x", b"original")

    def broken() -> Iterator[bytes]:
        yield b"partial " * 1000
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        driver.put_object("x", broken())
    with pytest.raises(RuntimeError):
        driver.put_object("never", broken())
    assert driver.get_object("x") == b"original"
    assert driver.get_object_size("never") is None


def test_stream_object(driver: StorageDriver) -> None:
    assert driver.stream_object("missing") == (None, None)
    data = os.urandom(1_500_000)
    driver.put_object("s", data)
    size, it = driver.stream_object("s")
    assert size == len(data) and it is not None
    first = next(it)
    # Replaced while being read: the reader still gets the object as it was.
    driver.put_object("s", b"new content")
    assert first + b"".join(it) == data
    assert driver.get_object("s") == b"new content"


def test_delete(driver: StorageDriver) -> None:
    driver.put_object("d/x", b"1")
    driver.delete_object("d/x")
    assert driver.get_object("d/x") is None
    driver.delete_object("d/x")  # deleting what is not there is fine
    driver.delete_object("never/was")


def test_move(driver: StorageDriver) -> None:
    driver.put_object("src/a", b"payload")
    driver.put_object("dst/b", b"to be replaced")
    driver.move_object("src/a", "dst/b")
    assert driver.get_object("dst/b") == b"payload"
    assert driver.get_object("src/a") is None
    driver.move_object("dst/b", "elsewhere/c/d")
    assert driver.get_object("elsewhere/c/d") == b"payload"
    with pytest.raises(ObjectNotFound):
        driver.move_object("src/a", "z")


def test_cat_objects(driver: StorageDriver) -> None:
    parts = [os.urandom(n) for n in (10, 0, 300_000, 7)]
    for i, p in enumerate(parts):
        driver.put_object(f"up/{i}", p)
    driver.cat_objects("blob", [f"up/{i}" for i in range(len(parts))])
    assert driver.get_object("blob") == b"".join(parts)
    assert driver.list_objects("up") == []  # sources deleted


def test_cat_objects_with_zuul_chunk_dicts(driver: StorageDriver) -> None:
    parts = [b"first part ", b"second part"]
    chunks = []
    for i, p in enumerate(parts):
        driver.put_object(f"c/{i}", p)
        chunks.append({"path": f"c/{i}", "md5": hashlib.md5(p).hexdigest(), "size": len(p)})
    driver.cat_objects("joined", chunks)
    assert driver.get_object("joined") == b"first part second part"


def test_cat_objects_refuses_missing_or_mismatched_sources_and_changes_nothing(driver: StorageDriver) -> None:
    driver.put_object("p/0", b"zero")
    driver.put_object("target", b"old")
    with pytest.raises(ObjectNotFound):
        driver.cat_objects("target", ["p/0", "p/missing"])
    with pytest.raises(StorageError, match="bytes"):
        driver.cat_objects("target", [{"path": "p/0", "size": 99}])
    with pytest.raises(StorageError, match="md5"):
        driver.cat_objects("target", [{"path": "p/0", "md5": "0" * 32}])
    assert driver.get_object("p/0") == b"zero" and driver.get_object("target") == b"old"
    with pytest.raises(InvalidArgument):
        driver.cat_objects("target", [{"no": "path"}])  # type: ignore[list-item]


def test_list_objects_one_level_deep(driver: StorageDriver) -> None:
    for path in ("a/1", "a/2", "a/b/3", "a/b/c/4", "top"):
        driver.put_object(path, b"x")
    root = driver.list_objects("")
    assert [(o.name, o.path, o.isdir) for o in root] == [("a", "a", True), ("top", "top", False)]
    under_a = driver.list_objects("a")
    assert [(o.name, o.path, o.isdir) for o in under_a] == [
        ("1", "a/1", False), ("2", "a/2", False), ("b", "a/b", True),
    ]
    assert driver.list_objects("a/") == under_a
    assert [o.path for o in driver.list_objects("a/b")] == ["a/b/3", "a/b/c"]
    assert driver.list_objects("nothing/here") == []
    for o in under_a:
        assert isinstance(o, ObjectInfo)
        if not o.isdir:
            assert isinstance(o.ctime, float) and o.ctime > 0


BAD_PATHS = ["../escape", "a/../../escape", "/etc/passwd", "", "a//b", "a/./b", "a/..", "a\\b", "nul\x00byte", "..",
             "x" * 2000]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_path_traversal_and_bad_paths_are_refused(driver: StorageDriver, bad: str, tmp_path: Path) -> None:
    driver.put_object("fine", b"ok")
    for call in (
        lambda: driver.put_object(bad, b"x"),
        lambda: driver.get_object(bad),
        lambda: driver.get_object_size(bad),
        lambda: driver.stream_object(bad),
        lambda: driver.delete_object(bad),
        lambda: driver.move_object("fine", bad),
        lambda: driver.move_object(bad, "fine"),
        lambda: driver.cat_objects(bad, ["fine"]),
        lambda: driver.cat_objects("out", [bad]),
    ):
        with pytest.raises(InvalidObjectPath):
            call()
    if bad not in ("", "a//b"):
        with pytest.raises(InvalidObjectPath):
            driver.list_objects(bad)
    assert driver.get_object("fine") == b"ok"
    assert not (tmp_path / "escape").exists()


def test_concurrent_cat_objects_to_one_target_leaves_one_whole_object(config: dict[str, Any]) -> None:
    writers = 4
    contents: list[bytes] = []
    with get_driver(config) as setup:
        for w in range(writers):
            parts = [bytes([65 + w]) * 50_000, os.urandom(20_000), bytes([97 + w]) * 30_000]
            contents.append(b"".join(parts))
            for i, p in enumerate(parts):
                setup.put_object(f"w{w}/{i}", p)
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def cat(w: int) -> None:
        try:
            with get_driver(config) as d:  # a driver (and connection) of its own per thread
                barrier.wait()
                d.cat_objects("target", [f"w{w}/{i}" for i in range(3)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=cat, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with get_driver(config) as d:
        result = d.get_object("target")
        assert result in contents  # exactly one writer's whole concatenation, never a mix
        assert d.get_object_size("target") == len(result)


# --------------------------------------------------------------------------- configuration


def test_get_driver_errors() -> None:
    with pytest.raises(InvalidArgument, match="driver"):
        get_driver({})
    with pytest.raises(InvalidArgument, match="no storage driver named 'nope'"):
        get_driver({"driver": "nope"})
    with pytest.raises(InvalidArgument, match="root"):
        get_driver({"driver": "filesystem"})
    with pytest.raises(InvalidArgument, match="path"):
        get_driver({"driver": "sqlite"})


PLUGIN = '''
from sqlstream.storage.filesystem import FilesystemDriver

class MemoDriver(FilesystemDriver):
    name = "memo"
'''


def test_drivers_from_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / "memo_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "memo_plugin.py").write_text(PLUGIN)
    (site / "memo_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: memo-plugin\nVersion: 1.0\n")
    (site / "memo_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[sqlstream.storage_drivers]\nmemo = memo_plugin:MemoDriver\n"
    )
    monkeypatch.syspath_prepend(str(site))
    with get_driver({"driver": "memo", "root": str(tmp_path / "r")}) as d:
        assert type(d).__name__ == "MemoDriver"
        d.put_object("k", b"v")
        assert (tmp_path / "r" / "k").read_bytes() == b"v"
    sys.modules.pop("memo_plugin", None)


# --------------------------------------------------------------------------- filesystem


def test_filesystem_refuses_symlink_escapes(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with get_driver({"driver": "filesystem", "root": str(root)}) as d:
        with pytest.raises(InvalidObjectPath, match="symbolic link"):
            d.put_object("link/new", b"x")
        with pytest.raises(InvalidObjectPath):
            d.get_object("link/secret")
        with pytest.raises(InvalidObjectPath):
            d.delete_object("link/secret")
    assert sorted(os.listdir(outside)) == ["secret"]


def test_filesystem_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    with get_driver({"driver": "filesystem", "root": str(tmp_path)}) as d:
        d.put_object("a/x", b"1")
        with pytest.raises(RuntimeError):
            d.put_object("a/y", (b"x" if i < 3 else (_ for _ in ()).throw(RuntimeError("boom")) for i in range(5)))
        assert os.listdir(tmp_path / "a") == ["x"]


# --------------------------------------------------------------------------- sqlite


def segment_rows(db: sqlstream.Database, path: str) -> list[tuple[int, ...]]:
    return db.query(
        "SELECT s.seq, s.stream_id FROM storage_segments s JOIN storage_objects o ON o.id = s.object_id "
        "WHERE o.path = ? ORDER BY s.seq", [path],
    ).rows


def test_sqlite_cat_relinks_without_copying(tmp_path: Path) -> None:
    with sqlstream.open(tmp_path / "o.db") as db, get_driver({"driver": "sqlite", "database": db}) as d:
        d.put_object("p/0", os.urandom(1_500_000))
        d.put_object("p/1", b"tail")
        streams = [sid for p in ("p/0", "p/1") for _, sid in segment_rows(db, p)]
        chunks_before = db.query("SELECT stream_id, offset, length(data) FROM chunks ORDER BY 1, 2").rows
        d.cat_objects("joined", ["p/0", "p/1"])
        assert [sid for _, sid in segment_rows(db, "joined")] == streams  # the same streams, re-linked
        assert db.query("SELECT stream_id, offset, length(data) FROM chunks ORDER BY 1, 2").rows == chunks_before
        object_id = db.query("SELECT id FROM storage_objects WHERE path = 'joined'").rows[0][0]
        d.move_object("joined", "renamed")
        assert db.query("SELECT id FROM storage_objects WHERE path = 'renamed'").rows[0][0] == object_id
        assert d.stats()["segment_streams"] == 2
        d.delete_object("renamed")
        assert d.stats() == {"objects": 0, "segments": 0, "segment_streams": 0, "bytes": 0}
        assert db.query("SELECT count(*) FROM chunks").rows == [(0,)]


def test_sqlite_objects_are_sealed_secret_streams(tmp_path: Path) -> None:
    with sqlstream.open(tmp_path / "o.db") as db, get_driver({"driver": "sqlite", "database": db}) as d:
        d.put_object("x", b"abc")
        (info,) = [i for i in db.streams() if i.name.startswith("_objects/")]
        assert info.sealed and info.secret and info.byte_length == 3
        assert db.stream(info.name).read_bytes(0).data == b"abc"
        with pytest.raises(sqlstream.SqlstreamError):
            db.delete_stream(info.name)  # a stored object's bytes cannot be deleted from under it
        assert d.get_object("x") == b"abc"


def test_sqlite_large_iterator_uploads_in_batches_and_garbage_is_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "_BATCH_BYTES", 1 << 20)
    data = os.urandom(3_300_000)
    with sqlstream.open(tmp_path / "o.db") as db, get_driver({"driver": "sqlite", "database": db}) as d:
        d.put_object("big", pieces(data, 250_000))
        assert d.get_object("big") == data
        # An upload whose process died leaves an unlinked segment stream behind.
        orphan = db.create_stream("_objects/orphan", secret=True, metadata=sqlite_driver.SEGMENT_METADATA)
        orphan.append(b"lost")
        assert d.collect_garbage(older_than=3600) == 0  # young: may be an upload in progress
        assert d.collect_garbage(older_than=0) == 1
        assert "_objects/orphan" not in [i.name for i in db.streams()]
        assert d.get_object("big") == data


# --------------------------------------------------------------------------- s3


def test_s3_cat_objects_copies_server_side_when_parts_are_large(s3_endpoint: str) -> None:
    with get_driver(s3_config(s3_endpoint)) as d:
        parts = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024 + 3), b"end"]
        for i, p in enumerate(parts):
            d.put_object(f"mp/{i}", p)
        d.cat_objects("whole", [f"mp/{i}" for i in range(3)])
        assert d.get_object("whole") == b"".join(parts)
        assert d.list_objects("mp") == []


def test_s3_reports_connection_problems_as_storage_errors() -> None:
    pytest.importorskip("boto3", reason="the s3 driver needs boto3")
    config = {"driver": "s3", "bucket": "nope-bucket", "endpoint_url": "http://127.0.0.1:9",
              "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "y",
              "max_attempts": 1, "connect_timeout": 2}
    with get_driver(config) as d:
        with pytest.raises(StorageError, match="s3"):
            d.get_object("k")
