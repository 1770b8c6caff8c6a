"""Attacks on the issue 9 fixes and on the surfaces added with them (serve, testing, :memory:).

Each test is a hole found by attacking the merged result the way issue 9's authors did;
each failed before its fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import sqlstream
from sqlstream.cli import main
from sqlstream.streaming import ConfigError, Runner, load_config


def _serve_config(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "sqlstream.toml"
    path.write_text(f'[store]\nstreamers = ["file"]\n\n[streamers.file]\nkeys = ["*"]\n'
                    f'write_dir = "out"\nprefix = {prefix!r}\n'.replace("'", '"'))
    return path


@pytest.mark.parametrize("prefix", [
    "/../../../../../../../../../../../..{tmp}/escaped",  # absolute after the join
    "../escaped",
    "sub/../../escaped",
    "a\\b" if os.sep == "\\" else "x/y",
])
def test_serve_prefix_can_never_place_a_file_outside_write_dir(tmp_path: Path, prefix: str) -> None:
    prefix = prefix.replace("{tmp}", str(tmp_path))
    config = _serve_config(tmp_path, prefix)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == "prefix"
    assert not list(tmp_path.glob("**/*escaped*"))


def test_serve_prefix_escape_attempt_from_the_cli_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    db_path = str(tmp_path / "app.db")
    with sqlstream.open(db_path) as db:
        db.create_stream("s").append(b"x")
    config = _serve_config(tmp_path, "/../../../../../../../../../../../.." + str(tmp_path) + "/escaped")
    assert main(["--db", db_path, "serve", "--config", str(config), "--once"]) == 1
    assert not list(tmp_path.glob("**/*escaped*"))


def test_serve_output_files_and_dirs_are_no_more_readable_than_the_database(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db_path = str(tmp_path / "app.db")
        with sqlstream.open(db_path) as db:
            db.create_stream("s").append(b"secret")
        os.chmod(db_path, 0o600)
        config = _serve_config(tmp_path, "p").parent / "sqlstream.toml"
        config.write_text('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\n'
                          'write_dir = "out/deeper"\n')
        with sqlstream.open(db_path) as db:
            assert Runner.from_config(db, load_config(config)).run(once=True) == {"file": 1}
    finally:
        os.umask(old)
    files = sorted((tmp_path / "out" / "deeper").iterdir())
    assert [f.name for f in files] == ["block-1-data", "block-1-meta"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    for d in (tmp_path / "out", tmp_path / "out" / "deeper"):
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, d


def test_serve_passes_a_damaged_record_through_as_its_stored_bytes_instead_of_crashing(tmp_path: Path) -> None:
    """A record whose text is not UTF-8 (written by another tool) must not stop `serve`
    with an internal error for ever: the file streamer's values are bytes, so it writes
    the stored bytes, as `read_bytes` and export do."""
    from test_damaged_records import damage

    db_path = tmp_path / "d.db"
    with sqlstream.open(db_path) as db:
        db.create_stream("s").extend([{"a": 1}, "abc", b"raw", "xyz", {"b": 2}])
    damage(db_path)
    config = tmp_path / "sqlstream.toml"
    config.write_text('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "out"\n')
    assert main(["--db", str(db_path), "serve", "--config", str(config), "--once"]) == 0
    data = (tmp_path / "out" / "block-1-data").read_bytes()
    assert b"a\xffc" in data and b"{bad'  " in data and b"xyz" in data


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_serve_config_that_is_a_fifo_is_refused_instead_of_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "sqlstream.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)  # before the fix: blocked for ever in open()


def test_serve_config_path_with_nul_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(str(tmp_path / "a\x00b.toml"))


def test_serve_write_dir_with_nul_is_refused_when_the_config_is_loaded(tmp_path: Path) -> None:
    config = tmp_path / "sqlstream.toml"
    config.write_text('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "out\\u0000x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == "write_dir"


@pytest.mark.parametrize("content", [None, b"\xff\xfe[store]\n"])
def test_serve_config_that_is_a_directory_or_not_utf8_is_a_config_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "sqlstream.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("start", [float("inf"), float("nan"), 1e300, -1.0, "abc", True,
                                   pytest.param(2**1100, id="2**1100")])
def test_fake_clock_refuses_a_start_the_database_cannot_store(start: object) -> None:
    """Accepted before, then every fetch raised a raw OverflowError/ValueError (a negative
    time gave timestamps that import refuses as out of range)."""
    from sqlstream import errors
    from sqlstream.testing import FakeClock

    with pytest.raises(errors.InvalidArgument):
        FakeClock(start)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [float("inf"), 1e300, pytest.param(2**1100, id="2**1100")])
def test_fake_clock_advance_refuses_a_time_the_database_cannot_store_and_keeps_working(seconds: float) -> None:
    from sqlstream import errors
    from sqlstream.testing import FakeClock

    clock = FakeClock(1_000.0)
    with sqlstream.open(":memory:") as db:
        clock.install(db)
        db.create_stream("s").append(b"x")
        db.create_subscription("sub", "s", ack_timeout=1)
        with pytest.raises(errors.InvalidArgument):
            clock.advance(seconds)
        assert clock.now == 1_000.0
        assert db.subscription("sub").fetch("c", 1).offsets == [0]


@pytest.mark.parametrize("pattern", [["a.events"], None, b"*.events", "x\x00y"])
def test_import_archives_with_a_pattern_that_is_not_a_str_raises_invalid_argument(tmp_path: Path, pattern: object) -> None:
    from sqlstream import errors
    from sqlstream.archive.importing import import_archives

    with sqlstream.open(tmp_path / "d.db") as db:
        with pytest.raises(errors.InvalidArgument):
            import_archives(db, pattern, tmp_path)  # type: ignore[arg-type]
