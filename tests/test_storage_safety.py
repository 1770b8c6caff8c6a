"""Storage drivers under hostile trees and hostile names (issue 9 items 4, 6, 12; issue 15 part 5).

* The filesystem driver never reads, writes or deletes outside its root: symlinks are
  never followed (a symlinked object is removed itself, not its target), and a directory
  swapped for a symlink while writes run cannot redirect them.
* Objects are created no more readable than the database they come from (0600).
* Over-long names and paths that collide with an existing object are ``StorageError``
  subclasses on every driver, never a raw ``OSError``.
* zuul-registry 1.3's extra upload id is accepted by ``put_object``, ``move_object`` and
  ``cat_objects`` and shows up in the drivers' log lines.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlstream.errors import InvalidArgument, InvalidObjectPath, ObjectPathConflict, StorageError
from sqlstream.storage import StorageDriver, get_driver

from test_storage import DRIVERS, make_config, s3_endpoint  # noqa: F401 - s3_endpoint is a fixture


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageDriver]:
    with get_driver(make_config(request.param, tmp_path, request)) as d:
        yield d


def filesystem(root: Path, **options: Any) -> StorageDriver:
    return get_driver({"driver": "filesystem", "root": str(root), **options})


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --------------------------------------------------------------------------- symlinks (item 4)


def test_filesystem_delete_of_a_symlink_removes_the_link_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside").write_bytes(b"keep me")
    (root / "to-outside").symlink_to(outside / "secret")
    (root / "to-inside").symlink_to(root / "inside")
    (root / "to-dir").symlink_to(outside)
    with filesystem(root) as d:
        for link in ("to-outside", "to-inside", "to-dir"):
            d.delete_object(link)
    assert sorted(os.listdir(root)) == ["inside"]
    assert (root / "inside").read_bytes() == b"keep me"
    assert (outside / "secret").read_bytes() == b"do not touch"


def test_filesystem_never_follows_a_symlink_to_read_write_or_move(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "file-link").symlink_to(outside / "secret")
    (root / "dir-link").symlink_to(outside)
    with filesystem(root) as d:
        for call in (
            lambda: d.get_object("file-link"),
            lambda: d.stream_object("file-link"),
            lambda: d.get_object_size("file-link"),
            lambda: d.move_object("file-link", "stolen"),
            lambda: d.cat_objects("stolen", ["file-link"]),
            lambda: d.get_object("dir-link/secret"),
            lambda: d.put_object("dir-link/new", b"x"),
            lambda: d.move_object("dir-link/secret", "stolen"),
            lambda: d.list_objects("dir-link"),
        ):
            with pytest.raises(InvalidObjectPath, match="symbolic link"):
                call()
        # Replacing the link is fine: the new object replaces the link, not its target.
        d.put_object("file-link", b"replaced")
        assert d.get_object("file-link") == b"replaced"
    assert not (root / "file-link").is_symlink()
    assert tree(outside) == ["secret"] and (outside / "secret").read_bytes() == b"secret"
    assert not (root / "stolen").exists()


def test_filesystem_does_not_hang_on_a_fifo_in_the_tree(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    results: list[object] = []

    def read() -> None:
        with filesystem(tmp_path) as d:
            results.append(d.get_object("fifo"))  # not a regular file: no object, and no blocking open
            results.append(d.stream_object("fifo"))
            results.append(d.get_object_size("fifo"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the stuck open() so the test process can end
        os.close(os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO in the tree blocked")
    assert results == [None, (None, None), None]


@pytest.mark.slow
def test_filesystem_writes_never_land_outside_the_root_while_a_directory_is_swapped_for_a_symlink(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "d" / "e").mkdir(parents=True)
    stop = threading.Event()
    swaps = [0]
    # A fresh name for every move: when a writer re-created the directory before it came
    # back, the moved one stays where it went, and moving the next one onto that name
    # would fail for ever (the swapper then stopped swapping: a flaky failure under load).
    aways = itertools.count()

    def swapper() -> None:
        # Swap root/d (and root/d/e) for symlinks to `outside` and back, as fast as possible.
        while not stop.is_set():
            for name in ("d", "d/e"):
                away = root / f"{name}-away{next(aways)}"
                try:
                    os.rename(root / name, away)
                except OSError:
                    continue
                try:
                    os.symlink(outside, root / name)
                    swaps[0] += 1
                    time.sleep(0)
                    os.unlink(root / name)
                except OSError:
                    pass  # a writer re-created the directory first
                try:
                    os.rename(away, root / name)
                except OSError:
                    pass  # ditto: the moved directory stays inside the root

    threads = [threading.Thread(target=swapper)]
    writes, refused = [0], [0]
    raw: list[BaseException] = []

    def writer(n: int) -> None:
        with filesystem(root) as d:
            # Enough swaps and writes to race, counted rather than timed (a loaded machine
            # does fewer per second); the deadline only guards against a hang.
            deadline = time.monotonic() + 120.0
            i = 0
            while (swaps[0] <= 150 or writes[0] <= 150) and time.monotonic() < deadline:
                for path in (f"d/w{n}-{i}", f"d/e/w{n}-{i}"):
                    try:
                        d.put_object(path, b"x")
                        writes[0] += 1
                    except StorageError:
                        refused[0] += 1  # a symlink was in the way: refused, not followed
                    except Exception as exc:  # noqa: BLE001 - reported below
                        raw.append(exc)
                    i += 1

    threads += [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert os.listdir(outside) == [], f"{len(os.listdir(outside))} of {writes[0]} writes escaped the root"
    assert not raw, f"{len(raw)} raw exceptions, e.g. {raw[0]!r}"
    assert swaps[0] > 100 and writes[0] > 100, (swaps, writes, refused)


# --------------------------------------------------------------------------- permissions (item 6)


def test_filesystem_objects_and_directories_are_private_by_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with filesystem(tmp_path / "root") as d:
            d.put_object("a/b/put", b"1")
            d.put_object("a/b/streamed", iter([b"1", b"2"]))
            d.put_object("x", b"1")
            d.put_object("y", b"2")
            d.cat_objects("a/cat", ["x", "y"])
            d.move_object("a/cat", "c/moved")
    finally:
        os.umask(old)
    root = tmp_path / "root"
    for name in ("a/b/put", "a/b/streamed", "c/moved"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    for name in ("a", "a/b", "c"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o700, name


def test_filesystem_mode_option_sets_the_object_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with filesystem(tmp_path / "root", mode=0o640) as d:
            d.put_object("a/obj", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "root" / "a" / "obj").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "root" / "a").stat().st_mode) == 0o750
    for bad in (0o4755, "0644", -1, True):
        with pytest.raises(InvalidArgument, match="mode"):
            filesystem(tmp_path / "r2", mode=bad)


def test_sqlite_driver_database_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with get_driver({"driver": "sqlite", "path": str(tmp_path / "objects.db")}) as d:
            d.put_object("a", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "objects.db").stat().st_mode) == 0o600


def test_download_file_creates_a_private_file(tmp_path: Path) -> None:
    from sqlstream.storage import download_file

    old = os.umask(0o022)
    try:
        with filesystem(tmp_path / "root") as d:
            d.put_object("a", b"1")
            download_file(d, "a", tmp_path / "local")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "local").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- bad names (item 12)


@pytest.mark.parametrize(
    "path", ["x" * 300, "dir/" + "y" * 256, "é" * 128 + "/z"], ids=["300-chars", "256-byte-component", "256-utf8-bytes"]
)
def test_over_long_names_are_invalid_object_paths_on_every_driver(driver: StorageDriver, path: str) -> None:
    for call in (
        lambda: driver.put_object(path, b"x"),
        lambda: driver.get_object(path),
        lambda: driver.get_object_size(path),
        lambda: driver.delete_object(path),
        lambda: driver.list_objects(path),
    ):
        with pytest.raises(InvalidObjectPath, match="255 bytes"):
            call()
    ok = "n" * 255
    driver.put_object(ok, b"fits")
    assert driver.get_object(ok) == b"fits"


def test_an_object_and_a_directory_cannot_share_a_path_on_filesystem_and_sqlite(driver: StorageDriver) -> None:
    if driver.name == "s3":
        pytest.skip("S3 keys are flat: 'a/b' and 'a/b/c' can both exist (documented)")
    driver.put_object("a/b", b"object")
    driver.put_object("d/e/f", b"deep")
    driver.put_object("src", b"src")
    for call in (
        lambda: driver.put_object("a/b/c", b"x"),
        lambda: driver.put_object("a/b/c/d", iter([b"x"])),
        lambda: driver.put_object("d/e", b"x"),
        lambda: driver.put_object("d", iter([b"x"])),
        lambda: driver.move_object("src", "a/b/c"),
        lambda: driver.move_object("src", "d/e"),
        lambda: driver.cat_objects("a/b/c", ["src"]),
        lambda: driver.cat_objects("d", ["src"]),
    ):
        with pytest.raises(ObjectPathConflict, match="'a/b'|'d/e'|'d'"):
            call()
    assert driver.get_object("a/b") == b"object" and driver.get_object("d/e/f") == b"deep"
    assert driver.get_object("src") == b"src"
    assert [o.path for o in driver.list_objects("")] == ["a", "d", "src"]
    # A conflict is also an InvalidObjectPath-free StorageError: callers catching StorageError see it.
    assert issubclass(ObjectPathConflict, StorageError)


# --------------------------------------------------------------------------- zuul 1.3 upload ids


def test_upload_id_is_accepted_and_logged(driver: StorageDriver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sqlstream.storage")
    driver.put_object("up/1", b"one", "upload-7f3a")
    driver.put_object("up/2", b"two", uuid="upload-7f3a")
    driver.cat_objects("joined", ["up/1", "up/2"], "upload-7f3a")
    driver.move_object("joined", "final", uuid="upload-7f3a")
    assert driver.get_object("final") == b"onetwo"
    lines = [r.getMessage() for r in caplog.records if "upload-7f3a" in r.getMessage()]
    assert any("put_object" in m for m in lines)
    assert any("cat_objects" in m for m in lines)
    assert any("move_object" in m for m in lines)
    driver.put_object("no-id", b"x")  # the id stays optional (zuul-registry < 1.3)
