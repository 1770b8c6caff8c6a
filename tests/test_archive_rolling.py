"""Roll managers, roll checkers and callbacks (shoebox's classes), on real files."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from sqlstream import archive
from sqlstream.archive import (
    ArchiveCallback,
    ArchiveReader,
    CallbackList,
    NeverRollChecker,
    ReadingRollManager,
    SizeRollChecker,
    TimeRollChecker,
    WritingRollManager,
    pack,
)
from sqlstream.errors import ChecksumMismatch, InvalidArgument, NoMoreFiles
from sqlstream.storage.filesystem import FilesystemDriver


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def read_all(pattern: str, directory: Path) -> list[tuple[dict[str, str], bytes]]:
    with ReadingRollManager(pattern, directory=str(directory)) as manager:
        return list(manager)


def test_the_shoebox_readme_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checker = SizeRollChecker(roll_size_mb=100)
    x = WritingRollManager("test_%c.events", checker)
    for index in range(10):
        x.write({"index": str(index)}, "payload_%d" % index)
    x.close()
    (name,) = os.listdir(".")
    assert name.startswith("test_") and name.endswith(".events") and not set(" /:") & set(name)

    manager = ReadingRollManager("test_*.events")
    got = []
    while True:
        try:
            metadata, json_payload = manager.read()
        except archive.NoMoreFiles:
            break
        got.append((metadata["index"], json_payload))
    assert got == [(str(i), b"payload_%d" % i) for i in range(10)]


def test_roll_by_size_files_end_just_past_the_limit(tmp_path: Path) -> None:
    limit_mb = 0.01  # 10,485 bytes
    limit = int(limit_mb * 1024 * 1024)
    payload = b"x" * 700
    record = len(pack({"i": "000"}, payload))
    with WritingRollManager("s_%Y%m%dT%H%M%S.events", SizeRollChecker(roll_size_mb=limit_mb),
                            directory=str(tmp_path)) as m:
        for i in range(100):
            m.write({"i": f"{i:03d}"}, payload)
    files = sorted(tmp_path.glob("s_*.events"))
    assert len(files) > 5
    for f in files[:-1]:
        size = f.stat().st_size
        assert limit <= size < limit + record, (f.name, size)
    assert files[-1].stat().st_size <= limit + record
    # Several rolls within one second got distinct names that sort in write order.
    got = read_all("s_*.events", tmp_path)
    assert [m["i"] for m, _ in got] == [f"{i:03d}" for i in range(100)]


def test_roll_by_time(tmp_path: Path) -> None:
    checker = TimeRollChecker(roll_minutes=0.15 / 60)  # 150 ms
    with WritingRollManager("t_%Y%m%dT%H%M%S.%f.events", checker, directory=str(tmp_path)) as m:
        for i in range(3):
            m.write({"i": str(i)}, b"a")
            m.write({"i": str(i)}, b"b")  # same archive: well inside the time
            time.sleep(0.2)
            m.write({"i": str(i)}, b"c")  # past the time: written, then the archive rolls
    files = sorted(tmp_path.glob("t_*.events"))
    assert len(files) == 3
    assert [[p for _, p in ArchiveReader(f)] for f in files] == [[b"a", b"b", b"c"]] * 3


def test_never_roll_and_many_files_in_order(tmp_path: Path) -> None:
    with WritingRollManager("n.events", NeverRollChecker(), directory=str(tmp_path)) as m:
        for i in range(10):
            m.write({"i": str(i)}, b"")
    assert names(tmp_path) == ["n.events"]
    # Many files written by successive managers with a coarse template still read in order.
    for batch in range(1, 25):
        with WritingRollManager("n.events", NeverRollChecker(), directory=str(tmp_path)) as m:
            for i in range(3):
                m.write({"i": str(10 * batch + i)}, b"")
    got = [int(m["i"]) for m, _ in read_all("n*.events", tmp_path)]
    assert got == list(range(10)) + [10 * b + i for b in range(1, 25) for i in range(3)]


def test_no_more_files(tmp_path: Path) -> None:
    manager = ReadingRollManager("none_*.events", directory=str(tmp_path))
    with pytest.raises(NoMoreFiles):
        manager.read()
    (tmp_path / "one_1.events").write_bytes(pack({}, b"only"))
    manager = ReadingRollManager("one_*.events", directory=str(tmp_path))
    assert manager.read() == ({}, b"only")
    with pytest.raises(NoMoreFiles):
        manager.read()
    with pytest.raises(NoMoreFiles):
        manager.read()


def test_empty_and_truncated_files_are_skipped_corrupt_ones_reported(tmp_path: Path) -> None:
    rec = [pack({"i": str(i)}, b"p%d" % i) for i in range(6)]
    (tmp_path / "a_1.events").write_bytes(rec[0])
    (tmp_path / "a_2.events").write_bytes(b"")  # empty
    (tmp_path / "a_3.events").write_bytes(b"")  # several empty files in a row
    (tmp_path / "a_4.events").write_bytes(b"")
    (tmp_path / "a_5.events").write_bytes(rec[1] + rec[2][:-3])  # torn tail
    (tmp_path / "a_6.events").write_bytes(rec[3])
    manager = ReadingRollManager("a_*.events", directory=str(tmp_path))
    assert [m["i"] for m, _ in manager] == ["0", "1", "3"]
    assert [os.path.basename(f) for f, _ in manager.skipped] == ["a_5.events"]

    bad = bytearray(rec[5])
    bad[-1] ^= 0xFF
    (tmp_path / "a_7.events").write_bytes(rec[4] + bytes(bad))
    manager = ReadingRollManager("a_*.events", directory=str(tmp_path))
    with pytest.raises(ChecksumMismatch) as info:
        list(manager)
    assert "a_7.events" in str(info.value)
    manager.close()


def test_half_written_archives_are_invisible(tmp_path: Path) -> None:
    m = WritingRollManager("w.events", NeverRollChecker(), directory=str(tmp_path))
    m.write({}, b"one")
    m.get_active_archive().flush()
    assert names(tmp_path) == [".w.events.part"]
    assert read_all("*", tmp_path) == []  # the working file never matches
    assert m.close() == str(tmp_path / "w.events")
    assert names(tmp_path) == ["w.events"]
    assert read_all("*", tmp_path) == [({}, b"one")]


def test_pattern_with_directory_part(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.events").write_bytes(pack({}, b"x"))
    assert read_all("sub/*.events", tmp_path) == [({}, b"x")]


# --------------------------------------------------------------------------- callbacks


class Recorder(ArchiveCallback):
    """A plugin loaded by name in the tests (keyword construction, like shoebox's)."""

    def __init__(self, log_to: list[str] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.log = log_to if log_to is not None else []

    def on_open(self, filename: str) -> None:
        self.log.append("open " + os.path.basename(filename))

    def on_close(self, filename: str) -> str | None:
        self.log.append("close " + os.path.basename(filename))
        return filename


def test_callback_list_from_a_string_with_keywords(tmp_path: Path) -> None:
    log: list[str] = []
    dest = tmp_path / "done"
    callbacks = CallbackList(
        callback_list=f"{__name__}:Recorder, sqlstream.archive:ChangeExtensionCallback, "
        "sqlstream.archive:GzipCallback, sqlstream.archive:MoveFileCallback",
        log_to=log, new_extension=".closed", destination_folder=str(dest),
    )
    with WritingRollManager("c.events", NeverRollChecker(), directory=str(tmp_path / "work"),
                            archive_callback=callbacks) as m:
        m.write({"k": "v"}, b"data")
    assert log == ["open c.events", "close c.events"]
    assert m.closed_files == [str(dest / "c.closed.gz")]
    assert names(tmp_path / "work") == []
    assert gzip.decompress((dest / "c.closed.gz").read_bytes()) == pack({"k": "v"}, b"data")
    assert list(ArchiveReader(dest / "c.closed.gz")) == [({"k": "v"}, b"data")]


def test_delete_and_upload_callbacks(tmp_path: Path) -> None:
    store = FilesystemDriver(root=str(tmp_path / "store"))
    callbacks = CallbackList(
        callback_list="sqlstream.archive:UploadCallback, sqlstream.archive:DeleteFileCallback",
        storage=store, storage_prefix="archives/",
    )
    with WritingRollManager("u_%Y.events", SizeRollChecker(roll_size_mb=0.0001), directory=str(tmp_path / "w"),
                            archive_callback=callbacks) as m:
        for i in range(3):
            m.write({"i": str(i)}, b"x" * 200)
    assert m.closed_files == [None, None, None]
    assert names(tmp_path / "w") == []
    objects = [o.path for o in store.list_objects("archives")]
    assert len(objects) == 3
    got = [unpack_all(store.get_object(p)) for p in objects]
    assert [m["i"] for recs in got for m, _ in recs] == ["0", "1", "2"]


def test_upload_from_config_and_zstd(tmp_path: Path) -> None:
    pytest.importorskip("zstandard", reason="zstd is the optional `zstd` extra")
    callbacks = CallbackList(
        callback_list="sqlstream.archive:ZstdCallback, sqlstream.archive:UploadCallback",
        storage={"driver": "sqlite", "path": str(tmp_path / "objects.db")},
    )
    with WritingRollManager("z.events", NeverRollChecker(), directory=str(tmp_path), archive_callback=callbacks) as m:
        m.write({}, b"compressed")
    assert m.closed_files == [str(tmp_path / "z.events.zst")]
    assert list(ArchiveReader(tmp_path / "z.events.zst")) == [({}, b"compressed")]
    from sqlstream.storage import get_driver

    with get_driver({"driver": "sqlite", "path": str(tmp_path / "objects.db")}) as store:
        assert store.get_object("z.events.zst") == (tmp_path / "z.events.zst").read_bytes()


def test_bad_plugin_names_are_clear() -> None:
    with pytest.raises(InvalidArgument, match="module:Class"):
        CallbackList(callback_list="no_colon_here")
    with pytest.raises(InvalidArgument, match="cannot import"):
        CallbackList(callback_list="no.such.module:Thing")
    with pytest.raises(InvalidArgument, match="has no"):
        CallbackList(callback_list="sqlstream.archive:NoSuchCallback")
    with pytest.raises(InvalidArgument, match="not an ArchiveCallback"):
        CallbackList(callback_list="sqlstream.archive:ArchiveWriter")
    with pytest.raises(InvalidArgument):
        SizeRollChecker(roll_size_mb=0)
    with pytest.raises(InvalidArgument):
        TimeRollChecker(roll_minutes=-1)


def unpack_all(data: bytes | None) -> list[tuple[dict[str, str], bytes]]:
    import io

    assert data is not None
    return list(ArchiveReader(fileobj=io.BytesIO(data)))
