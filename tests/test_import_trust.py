"""Import trusts nothing in the archive: write secrets, value ranges, and the CLI's file rules.

An archive names the stream its records go to, so a file from anywhere could append to
a secret stream; the import must ask for that stream's secret (or be told where to put
the records). Values an archive carries must fit what the database can store and what
``check()`` accepts, or the import refuses them with a SqlstreamError and stores nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import sqlstream
from sqlstream.archive import importing
from sqlstream.archive import import_archives, pack
from sqlstream.cli import main
from sqlstream.errors import AccessDenied, ArchiveError, InvalidArgument, SqlstreamError, StreamNotFound


def record(stream: str, offset: int, payload: bytes = b"x", **extra: str) -> bytes:
    meta = {"stream": stream, "offset": str(offset), "position": str(offset), "timestamp": "1.000000",
            "content_type": "bytes"}
    meta.update(extra)
    return pack(meta, payload)


def write_archive(path: Path, *records: bytes) -> Path:
    path.write_bytes(b"".join(records))
    return path


def snapshot(db: sqlstream.Database) -> list[tuple[str, int, int]]:
    return [(i.name, i.first_offset, i.next_offset) for i in db.streams()]


# --------------------------------------------------------------------------- secrets


def test_import_into_a_secret_stream_without_its_secret_is_refused_and_stores_nothing(
    db: sqlstream.Database, tmp_path: Path
) -> None:
    db.create_stream("build/1/stdout", secret=True)
    # An innocent-looking file whose records name the secret stream.
    write_archive(tmp_path / "innocent-1.events", record("build/1/stdout", 0, b"evil"))
    with pytest.raises(AccessDenied, match="build/1/stdout"):
        import_archives(db, "innocent-*.events", tmp_path)
    assert db.stream("build/1/stdout").info().next_offset == 0
    # A wrong secret is refused too.
    with pytest.raises(AccessDenied):
        import_archives(db, "innocent-*.events", tmp_path, secrets={"build/1/stdout": "not-it"})
    assert db.stream("build/1/stdout").info().next_offset == 0


def test_import_spanning_several_streams_is_refused_before_anything_is_stored(
    db: sqlstream.Database, tmp_path: Path
) -> None:
    """The public stream's records come first in the file; they must not be committed either."""
    db.create_stream("secret", secret=True)
    public = [record("public", i) for i in range(1500)]  # more than one import batch
    write_archive(tmp_path / "mixed-1.events", *public, record("secret", 0))
    before = snapshot(db)
    with pytest.raises(AccessDenied):
        import_archives(db, "mixed-*.events", tmp_path)
    assert snapshot(db) == before


def test_import_into_a_secret_stream_with_its_secret_works(db: sqlstream.Database, tmp_path: Path) -> None:
    secret = db.create_stream("logs", secret=True).write_secret
    assert secret is not None
    write_archive(tmp_path / "a.events", record("logs", 0, b"line"))
    result = import_archives(db, "a.events", tmp_path, secrets={"logs": secret})
    assert result.imported == 1
    assert db.stream("logs").read()[0].value == b"line"


def test_import_can_rename_the_target_stream(db: sqlstream.Database, tmp_path: Path) -> None:
    db.create_stream("prod", secret=True)
    write_archive(tmp_path / "a.events", record("prod", 0, b"one"), record("prod", 1, b"two", position="3"))
    result = import_archives(db, "a.events", tmp_path, rename={"prod": "restored/prod"})
    assert result.streams == {"restored/prod": 2}
    assert [r.value for r in db.stream("restored/prod").read()] == [b"one", b"two"]
    assert db.stream("prod").info().next_offset == 0
    with pytest.raises(InvalidArgument):
        import_archives(db, "a.events", tmp_path, rename={"prod": 5})  # type: ignore[dict-item]


def test_cli_import_needs_the_secret_and_takes_it_and_a_rename(
    db_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlstream.open(db_path) as db:
        secret = db.create_stream("logs", secret=True).write_secret
    assert secret is not None
    write_archive(tmp_path / "a.events", record("logs", 0, b"line"))
    assert main(["--db", db_path, "import", "a.events", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "--secret" in err and "Traceback" not in err
    assert main(["--db", db_path, "import", "a.events", "--dir", str(tmp_path), "--secret", "nope"]) == 1
    assert "Error: " in capsys.readouterr().err
    assert main(["--db", db_path, "import", "a.events", "--dir", str(tmp_path), "--secret", secret]) == 0
    assert main(["--db", db_path, "import", "a.events", "--dir", str(tmp_path), "--rename", "logs=copy"]) == 0
    assert main(["--db", db_path, "import", "a.events", "--dir", str(tmp_path), "--rename", "logs"]) != 0
    capsys.readouterr()
    with sqlstream.open(db_path) as db:
        assert db.stream("logs").info().next_offset == 1
        assert db.stream("copy").read()[0].value == b"line"


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("field", "value"),
    [("offset", "9" * 25), ("position", "9" * 25), ("timestamp", "9" * 25), ("timestamp", "-" + "9" * 25)],
)
def test_import_of_out_of_range_numbers_raises_a_sqlstream_error_and_stores_nothing(
    db: sqlstream.Database, tmp_path: Path, field: str, value: str
) -> None:
    meta = {"stream": "s", "offset": "0", "position": "0", "timestamp": "1.0", "content_type": "bytes"}
    meta[field] = value
    write_archive(tmp_path / "a.events", pack(meta, b"x"))
    with pytest.raises(ArchiveError):
        import_archives(db, "a.events", tmp_path)
    assert snapshot(db) in ([], [("s", 0, 0)])
    assert db.check().ok


@pytest.mark.parametrize("payload", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"[" * 5000 + b"]" * 5000],
                         ids=["NaN", "Infinity", "-Infinity", "nested-5000"])
def test_import_of_json_that_check_would_reject_raises_and_stores_nothing(
    db: sqlstream.Database, tmp_path: Path, payload: bytes
) -> None:
    write_archive(tmp_path / "a.events", record("s", 0, payload, content_type="json"))
    with pytest.raises(ArchiveError):
        import_archives(db, "a.events", tmp_path)
    assert all(i.next_offset == 0 for i in db.streams())
    assert db.check().ok


def test_cli_import_of_a_huge_offset_prints_an_error_not_a_traceback(
    db_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("s")
    write_archive(tmp_path / "a.events", record("s", 10**24))
    assert main(["--db", db_path, "import", "a.events", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "Traceback" not in err


# --------------------------------------------------------------------------- CLI file rules


def test_cli_import_does_not_create_a_database_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_archive(tmp_path / "a.events", record("s", 0))
    missing = tmp_path / "new.db"
    assert main(["--db", str(missing), "import", "a.events", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: no database") and "--create-db" in err
    assert not missing.exists()
    assert main(["--db", str(missing), "import", "a.events", "--dir", str(tmp_path), "--create-db"]) == 0
    assert missing.exists()


def test_cli_import_of_a_pattern_matching_nothing_exits_non_zero(
    db_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("s")
    assert main(["--db", db_path, "import", "nothing-*.events", "--dir", str(tmp_path)]) == 1
    assert "Error: no archive matches" in capsys.readouterr().err


def test_import_from_storage_keeps_its_downloaded_copies_private(
    db: sqlstream.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary copy of a downloaded archive is readable by its owner only."""
    import tempfile

    store_root = tmp_path / "store"
    (store_root / "arch").mkdir(parents=True)
    write_archive(store_root / "arch" / "a.events", record("s", 0))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    seen: list[int] = []

    class Spy(importing.ArchiveReader):
        def __init__(self, filename: str, **kwargs: object) -> None:
            seen.append(stat.S_IMODE(os.stat(filename).st_mode))
            super().__init__(filename, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importing, "ArchiveReader", Spy)
    old_umask = os.umask(0o022)
    try:
        result = import_archives(db, "a.events", "arch", storage={"driver": "filesystem", "root": str(store_root)})
    finally:
        os.umask(old_umask)
    assert result.imported == 1
    assert seen and all(mode & 0o077 == 0 for mode in seen)
    assert list(tmp.iterdir()) == []


def test_errors_are_sqlstream_errors(db: sqlstream.Database, tmp_path: Path) -> None:
    with pytest.raises(SqlstreamError):
        import_archives(db, "a.events", tmp_path, secrets={"s": 1})  # type: ignore[dict-item]
    with pytest.raises(StreamNotFound):
        write_archive(tmp_path / "b.events", record("s", 0))
        import_archives(db, "b.events", tmp_path, create=False)
