"""Streaming services (issue 12): the Cosmos ADR-038 file streamer and `sqlstream serve`.

Expected file bytes are built here by hand from the format in docs/format.md, not with
sqlstream.streaming.protobuf, so an encoding mistake there cannot hide in both.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sqlstream
from helpers_txn_model import lower_the_stream_id_floor
from sqlstream.cli import main
from sqlstream.streaming import ConfigError, Runner, ServiceError, load_config

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def write_config(tmp_path: Path, body: str, name: str = "sqlstream.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def file_config(tmp_path: Path, keys: str = '["*"]', extra: str = "") -> Path:
    return write_config(tmp_path, f'[store]\nstreamers = ["file"]\n\n[streamers.file]\n'
                                  f'keys = {keys}\nwrite_dir = "out"\n{extra}\n')


def run_once(db: sqlstream.Database, config: Path) -> dict[str, int]:
    return dict(Runner.from_config(db, load_config(config)).run(once=True))


def pair(store: str, key: bytes, value: bytes) -> bytes:
    """A StoreKVPair by hand (every part shorter than 128 bytes: one-byte lengths)."""
    msg = b"\x0a" + bytes([len(store)]) + store.encode()
    if key:
        msg += b"\x1a" + bytes([len(key)]) + key
    if value:
        msg += b"\x22" + bytes([len(value)]) + value
    return bytes([len(msg)]) + msg


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(8, "big") + body


# --------------------------------------------------------------------------- the file format


def test_cosmos_scenario_data_file_is_byte_identical_to_the_golden_bytes(tmp_path: Path, db: sqlstream.Database) -> None:
    """Cosmos' file-service test: two stores, twelve interleaved writes in one block, a prefix."""
    s1, s2 = db.create_stream("mockStore1"), db.create_stream("mockStore2")
    writes = []
    for phase in range(4):  # BeginBlock, DeliverTx 1, DeliverTx 2, EndBlock: three writes each
        writes += [(s1, f"mockKey1-{phase}", bytes([1, 2, 3, phase])),
                   (s2, f"mockKey3-{phase}", bytes([7, 8, 9, phase])),
                   (s1, f"mockKey2-{phase}", bytes([3, 2, 1, phase]))]
    with db.transaction():
        for stream, key, value in writes:
            stream.append(value, key=key)
    config = file_config(tmp_path, '["mockStore1", "mockStore2"]', 'prefix = "testPrefix"')
    assert run_once(db, config) == {"file": 1}

    height = db.query("SELECT max(txn) FROM chunks").rows[0][0]
    golden = framed(
        b"".join(pair("mockStore1", k.encode(), v) for s, k, v in writes if s is s1)
        + b"".join(pair("mockStore2", k.encode(), v) for s, k, v in writes if s is s2)
    )
    assert (tmp_path / "out" / f"testPrefix-block-{height}-data").read_bytes() == golden
    assert sorted(os.listdir(tmp_path / "out")) == [f"testPrefix-block-{height}-data", f"testPrefix-block-{height}-meta"]


def test_meta_file_frames_height_commit_time_and_offset_ranges(tmp_path: Path, db: sqlstream.Database) -> None:
    a, b = db.create_stream("a"), db.create_stream("b")
    a.append("first")  # block 1: offset 0 of a
    with db.transaction():
        a.append("x")
        a.append("y")
        b.append("z")
    run_once(db, file_config(tmp_path))
    ts = max(r.timestamp for r in a.read(1, 10) + b.read(0, 10))
    ts_us = db.query("SELECT max(timestamp) FROM chunks WHERE txn = 2").rows[0][0]
    assert abs(ts_us / 1e6 - ts) < 1e-3

    def varint(n: int) -> bytes:
        out = b""
        while n >= 0x80:
            out += bytes([(n & 0x7F) | 0x80])
            n >>= 7
        return out + bytes([n])

    range_a = b"\x0a\x01a" + b"\x10\x01" + b"\x18\x02"  # offsets 1..2
    range_b = b"\x0a\x01b"  # offsets 0..0: proto3 omits zeros
    body = b"\x08\x02" + b"\x10" + varint(ts_us) + b"\x1a" + bytes([len(range_a)]) + range_a \
        + b"\x1a" + bytes([len(range_b)]) + range_b
    assert (tmp_path / "out" / "block-2-meta").read_bytes() == framed(body)
    assert (tmp_path / "out" / "block-1-data").read_bytes() == framed(pair("a", b"", b"first"))


def test_output_metadata_false_writes_only_data_files(tmp_path: Path, db: sqlstream.Database) -> None:
    db.create_stream("a").append("v")
    run_once(db, file_config(tmp_path, extra="output-metadata = false"))
    assert os.listdir(tmp_path / "out") == ["block-1-data"]


# --------------------------------------------------------------------------- keys


def test_keys_select_streams_by_name_and_glob_and_skip_blocks_without_them(tmp_path: Path, db: sqlstream.Database) -> None:
    orders, pay_eu, pay_us, logs = (db.create_stream(n) for n in ("orders", "pay.eu", "pay.us", "logs"))
    orders.append("o")       # 1
    logs.append("l")         # 2: no exposed stream -> no files at height 2
    pay_eu.append("e")       # 3
    with db.transaction():   # 4: only the exposed part is written
        pay_us.append("u")
        logs.append("l2")
    run_once(db, file_config(tmp_path, '["orders", "pay.*"]', "output-metadata = false"))
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["block-1-data", "block-3-data", "block-4-data"]
    assert (out / "block-4-data").read_bytes() == framed(pair("pay.us", b"", b"u"))


def test_star_exposes_every_stream(tmp_path: Path, db: sqlstream.Database) -> None:
    with db.transaction():
        db.create_stream("zeta").append(b"\x00\x01")
        db.create_stream("alpha").append({"k": [1, 2]}, key="id")
    run_once(db, file_config(tmp_path))
    assert (tmp_path / "out" / "block-1-data").read_bytes() == framed(
        pair("alpha", b"id", b'{"k":[1,2]}') + pair("zeta", b"", b"\x00\x01"))


def test_empty_key_list_turns_the_service_off(tmp_path: Path, db: sqlstream.Database) -> None:
    db.create_stream("a").append("v")
    assert run_once(db, file_config(tmp_path, "[]")) == {}
    assert not (tmp_path / "out").exists()
    assert db.query("SELECT count(*) FROM streaming_cursors").rows[0][0] == 0


# --------------------------------------------------------------------------- durability


def test_fsync_true_fsyncs_files_and_directory_before_the_cursor_moves(
        tmp_path: Path, db: sqlstream.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db.create_stream("a").append("v")
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        cursor = db.query("SELECT coalesce(max(height), 0) FROM streaming_cursors").rows[0][0]
        synced.append(f"{os.path.basename(target)}@{cursor}")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    run_once(db, file_config(tmp_path, extra="fsync = true"))
    monkeypatch.undo()
    names = [s.split("@")[0] for s in synced]
    assert any(n.startswith(".block-1-data.") for n in names)
    assert any(n.startswith(".block-1-meta.") for n in names)
    assert "out" in names
    assert all(s.endswith("@0") for s in synced)  # all before the block counted as done


def test_resume_continues_with_the_next_block(tmp_path: Path, db: sqlstream.Database) -> None:
    s = db.create_stream("a")
    s.append("1")
    config = file_config(tmp_path)
    assert run_once(db, config) == {"file": 1}
    s.append("2")
    s.append("3")
    first = (tmp_path / "out" / "block-1-data").stat().st_mtime_ns
    assert run_once(db, config) == {"file": 2}
    assert (tmp_path / "out" / "block-1-data").stat().st_mtime_ns == first  # not rewritten
    assert db.query("SELECT height, lag FROM streaming_progress").rows == [(3, 0)]


# --------------------------------------------------------------------------- errors


def test_stop_node_on_error_true_stops_naming_block_and_cause(tmp_path: Path, db: sqlstream.Database) -> None:
    db.create_stream("a").append("v")
    (tmp_path / "out").write_text("a file where the directory should be")
    with pytest.raises(ServiceError, match=r"'file' stopped at block 1: .*out"):
        run_once(db, file_config(tmp_path))
    assert db.query("SELECT height FROM streaming_cursors").rows == [(0,)]
    code = main(["--db", db.path, "serve", "--config", str(tmp_path / "sqlstream.toml"), "--once"])
    assert code == 1


def test_stop_node_on_error_false_retries_the_same_block_until_it_succeeds(tmp_path: Path, db: sqlstream.Database) -> None:
    s = db.create_stream("a")
    s.append("1")
    s.append("2")
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    runner = Runner.from_config(db, load_config(file_config(tmp_path, extra="stop-node-on-error = false")))
    runner.start()
    deadline = time.monotonic() + 30
    while not db.query("SELECT last_error FROM streaming_cursors").rows or \
            db.query("SELECT last_error FROM streaming_cursors").rows[0][0] is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "block 1" in db.query("SELECT last_error FROM streaming_cursors").rows[0][0]
    blocker.unlink()
    while db.query("SELECT height FROM streaming_cursors").rows[0][0] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runner.stop()
    runner.join(60)
    assert sorted(os.listdir(blocker)) == ["block-1-data", "block-1-meta", "block-2-data", "block-2-meta"]
    assert db.query("SELECT last_error FROM streaming_cursors").rows == [(None,)]


BAD_CONFIGS = [
    ('[store]\nstreamers = ["kafka"]\n', "store", "streamers", "unknown streaming service 'kafka'"),
    ('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "o"\nfsycn = true\n',
     "streamers.file", "fsycn", "did you mean 'fsync'"),
    ('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "o"\nfsync = "true"\n',
     "streamers.file", "fsync", "must be true or false"),
    ('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\n', "streamers.file", "write_dir", "missing"),
    ('[store]\nstreamers = ["file"]\n[streamers.file]\nwrite_dir = "o"\n', "streamers.file", "keys", "missing"),
    ('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = "orders"\nwrite_dir = "o"\n',
     "streamers.file", "keys", "list of strings"),
    ('[store]\nstreamers = []\n[streamers.file]\nkeys = []\nwrite_dir = "o"\n', "streamers.file", None, "not listed"),
    ('[sqlstream]\ndatabase = "x.db"\n', "sqlstream", "database", "known: db"),
    ('[store\n', "file", None, "not valid TOML"),
]


@pytest.mark.parametrize(("body", "table", "key", "problem"), BAD_CONFIGS)
def test_bad_config_names_file_table_and_key(tmp_path: Path, body: str, table: str, key: str | None, problem: str) -> None:
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.path, info.value.table, info.value.key) == (str(path), table, key)
    assert problem in str(info.value) and str(path) in str(info.value)


def two_streamers(one: str, two: str) -> str:
    return f'[store]\nstreamers = ["one", "two"]\n[streamers.one]\n{one}\n[streamers.two]\n{two}\n'


OVERLAPPING = {
    "file services, one write_dir": ('service = "file"\nkeys = ["a"]\nwrite_dir = "out"',
                                     'service = "file"\nkeys = ["b"]\nwrite_dir = "out"'),
    "file services, same prefix, two spellings": ('service = "file"\nkeys = ["a"]\nwrite_dir = "out"\nprefix = "p"',
                                                  'service = "file"\nkeys = ["b"]\nwrite_dir = "x/../out/"\n'
                                                  'prefix = "p"'),
    "file services, through a symlink": ('service = "file"\nkeys = ["a"]\nwrite_dir = "out"',
                                         'service = "file"\nkeys = ["b"]\nwrite_dir = "link"'),
    "archive services, one template": ('service = "archive"\nkeys = ["a"]\ndir = "arch"\ntemplate = "x-%H.events"',
                                       'service = "archive"\nkeys = ["b"]\ndir = "arch"\ntemplate = "x-%H.events"'),
    "an archive service uploading where another writes": (
        'service = "archive"\nkeys = ["a"]\ndir = "arch"\ntemplate = "x-%H.events"',
        'service = "archive"\nkeys = ["b"]\ndir = "stage"\ntemplate = "%H.events"\nstorage_prefix = "x-"\n'
        'storage = { driver = "filesystem", root = "arch" }'),
}


@pytest.mark.parametrize("case", sorted(OVERLAPPING))
def test_two_streamers_writing_to_the_same_place_are_refused_naming_both(tmp_path: Path, case: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    path = write_config(tmp_path, two_streamers(*OVERLAPPING[case]))
    with pytest.raises(ConfigError, match=r"\[streamers\.one\]") as info:
        load_config(path)
    assert (info.value.table, info.value.key) == ("streamers.two", None)
    assert "same place" in str(info.value)


@pytest.mark.parametrize("case", ["different prefixes", "file and archive", "default templates", "one is off"])
def test_streamers_sharing_a_directory_without_sharing_names_run_side_by_side(
    tmp_path: Path, db: sqlstream.Database, case: str
) -> None:
    one, two = {
        "different prefixes": ('service = "file"\nkeys = ["*"]\nwrite_dir = "out"\nprefix = "a"',
                               'service = "file"\nkeys = ["*"]\nwrite_dir = "out"\nprefix = "b"'),
        "file and archive": ('service = "file"\nkeys = ["*"]\nwrite_dir = "out"',
                             'service = "archive"\nkeys = ["*"]\ndir = "out"'),
        "default templates": ('service = "archive"\nkeys = ["*"]\ndir = "out"',
                              'service = "archive"\nkeys = ["*"]\ndir = "out"'),
        "one is off": ('service = "file"\nkeys = ["*"]\nwrite_dir = "out"',
                       'service = "file"\nkeys = []\nwrite_dir = "out"'),
    }[case]
    db.create_stream("s").extend([b"x", b"y"])
    run_once(db, write_config(tmp_path, two_streamers(one, two)))
    names = sorted(os.listdir(tmp_path / "out"))
    expected = {
        "different prefixes": ["a-block-1-data", "a-block-1-meta", "b-block-1-data", "b-block-1-meta"],
        "one is off": ["block-1-data", "block-1-meta"],
    }
    if case in expected:
        assert names == expected[case]
    else:
        assert len([n for n in names if n.endswith(".events")]) == (2 if case == "default templates" else 1)


def test_bad_config_from_the_cli_is_one_error_line_and_exit_1(tmp_path: Path, db_path: str) -> None:
    sqlstream.open(db_path).close()
    path = write_config(tmp_path, BAD_CONFIGS[1][0])
    done = subprocess.run([sys.executable, "-m", "sqlstream", "--db", db_path, "serve", "--config", str(path)],
                          capture_output=True, text=True, env=env(), timeout=30)
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: {path}: [streamers.file] fsycn: unknown option")
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- running


def test_runner_thread_wakes_on_commits_and_stops_on_the_event(tmp_path: Path, db: sqlstream.Database) -> None:
    s = db.create_stream("a")
    stop = threading.Event()
    runner = Runner(db, load_config(file_config(tmp_path)).build(), stop_event=stop)
    runner.start()
    for n in range(1, 4):
        s.append(str(n))
        deadline = time.monotonic() + 30
        while not (tmp_path / "out" / f"block-{n}-meta").exists():
            assert time.monotonic() < deadline, f"block {n} not written"
            time.sleep(0.01)
    stop.set()
    runner.join(60)
    assert runner.result == {"file": 3}


def test_serve_cli_once_status_and_db_from_config(tmp_path: Path) -> None:
    with sqlstream.open(tmp_path / "app.db") as db:
        db.create_stream("orders").append({"id": 1})
    config = write_config(tmp_path, '[sqlstream]\ndb = "app.db"\n[store]\nstreamers = ["file"]\n'
                                    '[streamers.file]\nkeys = ["orders"]\nwrite_dir = "out"\n')
    run = [sys.executable, "-m", "sqlstream", "serve", "--config", str(config)]
    done = subprocess.run([*run, "--once"], capture_output=True, text=True, env=env(), timeout=30, cwd="/")
    assert (done.returncode, done.stdout, done.stderr) == (0, "file: 1 block(s)\n", "")
    done = subprocess.run([*run, "--status"], capture_output=True, text=True, env=env(), timeout=30, cwd="/")
    assert done.stdout == "file (file): height 1, head 1, lag 0\n"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_serve_exits_0_on_sigterm(tmp_path: Path, db: sqlstream.Database) -> None:
    db.create_stream("a").append("1")
    config = file_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "sqlstream", "--db", db.path, "serve", "--config", str(config)],
                            env=env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "out" / "block-1-meta").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    db.stream("a").append("2")
    while not (tmp_path / "out" / "block-2-meta").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""


BLOCKS = 200


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigkill_of_serve_at_random_points_writes_every_block_once_byte_identical(tmp_path: Path) -> None:
    rng = random.Random(12)
    db_file = tmp_path / "app.db"
    with sqlstream.open(db_file) as db:
        a, b = db.create_stream("a"), db.create_stream("b")
        for n in range(BLOCKS):
            with db.transaction():
                for i in range(rng.randint(1, 8)):
                    (a if rng.random() < 0.5 else b).append(f"{n}-{i}" * rng.randint(1, 50), key=f"k{i}")
    config = file_config(tmp_path, extra="fsync = true")
    cmd = [sys.executable, "-m", "sqlstream", "--db", str(db_file), "serve", "--config", str(config)]
    heights = []
    # Kill once the cursor passes a threshold (not after a fixed sleep: on a quiet machine
    # serve finished all blocks before the first kill), then at a later one.
    thresholds = sorted(rng.sample(range(5, BLOCKS - 40), 3))
    for threshold in thresholds:
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        with sqlstream.open(db_file) as watcher:
            while proc.poll() is None and time.monotonic() < deadline:
                rows = watcher.query("SELECT coalesce(max(height), 0) FROM streaming_cursors").rows
                if rows[0][0] >= threshold:
                    break
                time.sleep(0.001)
        proc.kill()
        proc.wait(10)
        with sqlstream.open(db_file) as db:
            heights.append(db.query("SELECT coalesce(max(height), 0) FROM streaming_cursors").rows[0][0])
    print("heights at the kills:", heights)
    assert len(set(heights)) > 1, heights  # the kills landed at different points
    done = subprocess.run([*cmd, "--once"], capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 0, done.stderr

    # The reference: the same blocks streamed in one uninterrupted run into another directory.
    reference = write_config(tmp_path, '[store]\nstreamers = ["ref"]\n[streamers.ref]\nservice = "file"\n'
                                       'keys = ["*"]\nwrite_dir = "ref"\n', name="ref.toml")
    with sqlstream.open(db_file) as db:
        assert run_once(db, reference) == {"ref": BLOCKS}
        assert db.query("SELECT service, height FROM streaming_cursors ORDER BY service").rows == [
            ("file", BLOCKS), ("ref", BLOCKS)]
    out, ref = tmp_path / "out", tmp_path / "ref"
    finals = sorted(n for n in os.listdir(out) if not n.endswith(".tmp"))
    assert finals == sorted(os.listdir(ref)) and len(finals) == 2 * BLOCKS
    for name in finals:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


# --------------------------------------------------------------------------- leftovers, read-only status


def test_start_removes_only_this_services_stale_temp_files(tmp_path: Path, db: sqlstream.Database) -> None:
    out = tmp_path / "out"
    out.mkdir()
    own = [".app-block-3-data.0a1b2c3d.tmp", ".app-block-12-meta.ffffffff.tmp"]
    others = [".block-3-data.0a1b2c3d.tmp", ".other-block-3-data.0a1b2c3d.tmp", "app-block-3-data",
              ".app-block-3-data.tmp", "notes.tmp"]
    for name in own + others:
        (out / name).write_bytes(b"x")
    db.create_stream("a").append("1")
    config = file_config(tmp_path, extra='prefix = "app"')
    assert run_once(db, config) == {"file": 1}
    left = set(os.listdir(out))
    assert not left & set(own)
    assert set(others) <= left
    assert {"app-block-1-data", "app-block-1-meta"} <= left


def _status(tmp_path: Path, db_file: Path) -> subprocess.CompletedProcess[str]:
    config = file_config(tmp_path)
    return subprocess.run([sys.executable, "-m", "sqlstream", "--db", str(db_file), "serve", "--config",
                           str(config), "--status"], capture_output=True, text=True, env=env(), timeout=30)


def test_status_of_an_unmigrated_database_says_so_and_leaves_it_unmigrated(tmp_path: Path) -> None:
    import apsw

    db_file = tmp_path / "app.db"
    with sqlstream.open(db_file) as db:
        db.create_stream("a").append("1")
    conn = apsw.Connection(str(db_file))
    conn.execute("DROP VIEW streaming_progress; DROP TABLE streaming_cursors; PRAGMA user_version = 4")
    conn.close()
    done = _status(tmp_path, db_file)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "file (file): height 0, head 0, lag 0\n"
    assert "not been migrated to the streaming schema" in done.stderr
    conn = apsw.Connection(str(db_file))
    assert conn.execute("PRAGMA user_version").fetchall() == [(4,)]
    conn.close()


# --------------------------------------------------------------------------- the archive service


def archive_config(tmp_path: Path, keys: str = '["ord*"]', extra: str = "", name: str = "sqlstream.toml") -> Path:
    return write_config(tmp_path, f'[store]\nstreamers = ["archive"]\n\n[streamers.archive]\n'
                                  f'keys = {keys}\ndir = "archives"\n{extra}\n', name=name)


def archived(directory: Path) -> list[tuple[str, int, bytes]]:
    """(stream, offset, payload) of every record in the closed archives under ``directory``."""
    from sqlstream.archive import ArchiveReader

    out = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and ".sqlstream-staging" not in p.parts):
        with ArchiveReader(path) as reader:
            out += [(meta["stream"], int(meta["offset"]), payload) for meta, payload in reader]
    return out


def test_archive_service_exports_matching_streams_compressed_and_shows_its_height(
        tmp_path: Path, db: sqlstream.Database) -> None:
    orders, other = db.create_stream("orders"), db.create_stream("other")
    for i in range(5):
        orders.append(f"o{i}")
        other.append(f"x{i}")
    config = archive_config(tmp_path, extra='compress = "gzip"\nroll_size_mb = 0.0001')
    assert run_once(db, config) == {"archive": 5}  # one archive per record: each is over 100 bytes
    files = sorted(os.listdir(tmp_path / "archives"))
    assert len([f for f in files if f.endswith(".events.gz")]) == 5
    assert archived(tmp_path / "archives") == [("orders", i, f"o{i}".encode()) for i in range(5)]
    head = db.query("SELECT txn FROM last_txn").rows[0][0]
    assert db.query("SELECT service, kind, height, lag FROM streaming_progress").rows == [("archive", "archive", head, 0)]
    assert sqlstream.archive.export.export_status(db, "archive").streams == {"orders": (5, 5)}
    orders.append("o5")
    assert run_once(db, config) == {"archive": 1}  # resumes: only the new record
    assert archived(tmp_path / "archives")[-1] == ("orders", 5, b"o5")


def test_archive_service_uploads_to_storage_relative_to_the_config(tmp_path: Path, db: sqlstream.Database) -> None:
    db.create_stream("orders").append("a")
    config = archive_config(tmp_path, extra='storage = { driver = "filesystem", root = "up" }\nstorage_prefix = "p/"')
    assert run_once(db, config) == {"archive": 1}
    assert archived(tmp_path / "up") == [("orders", 0, b"a")]
    assert [p.parent.name for p in (tmp_path / "up").rglob("*.events")] == ["p"]


def test_archive_service_in_a_runner_thread_wakes_on_commits(tmp_path: Path, db: sqlstream.Database) -> None:
    orders = db.create_stream("orders")
    runner = Runner.from_config(db, load_config(archive_config(tmp_path, extra="roll_size_mb = 0.0001")))
    runner.start()
    try:
        for i in range(3):
            orders.append(f"o{i}")
            deadline = time.monotonic() + 30
            while len(archived(tmp_path / "archives")) < i + 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        db.create_stream("ordinals").append("new")  # a stream the glob matches, created later
        deadline = time.monotonic() + 30
        while ("ordinals", 0, b"new") not in archived(tmp_path / "archives"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        runner.stop()
        runner.join(60)
    head = db.query("SELECT txn FROM last_txn").rows[0][0]
    assert db.query("SELECT height FROM streaming_progress").rows == [(head,)]


ARCHIVE_BAD_CONFIGS = [
    ('compress = "lz4"', "compress", 'must be "gzip" or "zstd"'),
    ("roll_size_mb = -1", "roll_size_mb", "positive"),
    ("roll_minutes = 0", "roll_minutes", "positive"),
    ('roll_size = 5', "roll_size", "did you mean 'roll_size_mb'"),
    ("format_version = 3", "format_version", "1 or 2"),
    ('storage = { root = "x" }', "storage", "needs a driver"),
    ('storage = { driver = "ftp" }', "storage", "no storage driver named 'ftp'"),
    ('template = ""', "template", "unusable name"),
]


def test_a_huge_integer_roll_size_loads_as_export_takes_it(tmp_path: Path) -> None:
    """roll_size_mb (or roll_minutes) as a 400-digit TOML integer raised a raw
    OverflowError from math.isfinite while the config loaded (`serve`: "internal error").
    An int is finite; db.export takes a huge roll size as 'never by size'."""
    for key in ("roll_size_mb", "roll_minutes"):
        config = load_config(archive_config(tmp_path, extra=f"{key} = {10**400}"))
        assert config is not None


@pytest.mark.parametrize(("extra", "key", "problem"), ARCHIVE_BAD_CONFIGS)
def test_bad_archive_config_names_file_table_and_key(tmp_path: Path, extra: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(archive_config(tmp_path, extra=extra))
    assert (info.value.table, info.value.key) == ("streamers.archive", key)
    assert problem in str(info.value)


def test_archive_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[store]\nstreamers = ["archive"]\n[streamers.archive]\nkeys = ["*"]\n')
    with pytest.raises(ConfigError, match=r"\[streamers.archive\] dir: is missing"):
        load_config(path)


ARCHIVE_RECORDS = 1000


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigkill_of_serve_with_the_archive_service_archives_every_record_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(7)
    db_file = tmp_path / "app.db"
    with sqlstream.open(db_file) as db:
        a, b = db.create_stream("orders"), db.create_stream("ordinals")
        for n in range(ARCHIVE_RECORDS):
            (a if rng.random() < 0.5 else b).append(f"{n}" * rng.randint(1, 40))
        expected = sorted((s, r.offset, r.value.encode()) for s in ("orders", "ordinals")
                          for r in db.stream(s).read(0, limit=ARCHIVE_RECORDS))
    config = archive_config(tmp_path, extra='compress = "gzip"\nroll_size_mb = 0.002')
    cmd = [sys.executable, "-m", "sqlstream", "--db", str(db_file), "serve", "--config", str(config)]
    progress = []
    for run in range(1, 4):
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill once this run has closed a few archives more: mid-run, at whatever step it is in.
        deadline = time.monotonic() + 30
        target = run * rng.randint(3, 8)
        while len(list((tmp_path / "archives").glob("*.gz"))) < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.kill()
        proc.wait(10)
        progress.append(len(archived(tmp_path / "archives")))
    assert progress == sorted(progress) and progress[-1] < ARCHIVE_RECORDS, progress  # killed mid-way
    done = subprocess.run([*cmd, "--once"], capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(archived(tmp_path / "archives")) == expected  # every record, exactly once


# --------------------------------------------------------------------------- retention vs. replay


def test_records_trimmed_before_the_file_service_streamed_them_stop_it_naming_the_range(
        tmp_path: Path, db: sqlstream.Database) -> None:
    from sqlstream.streaming import RecordsTrimmed

    s = db.create_stream("a")
    s.append("0")
    config = file_config(tmp_path)
    assert run_once(db, config) == {"file": 1}
    for i in range(1, 5):
        s.append(str(i))
    db.trim("a", 3)  # offsets 1 and 2 were never streamed
    with pytest.raises(RecordsTrimmed, match=r"'file'.*a offsets 1\.\.2"):
        run_once(db, config)
    assert os.listdir(tmp_path / "out") == ["block-1-data", "block-1-meta"] or \
        sorted(os.listdir(tmp_path / "out")) == ["block-1-data", "block-1-meta"]
    cli = ["--db", db.path, "serve", "--config", str(config), "--once"]
    assert main(cli) == 1
    assert main([*cli, "--skip-trimmed"]) == 0  # accepts the loss (logged), streams the rest
    assert sorted(os.listdir(tmp_path / "out"))[-2:] == ["block-5-data", "block-5-meta"]
    s.append("5")
    assert run_once(db, config) == {"file": 1}  # and the guard keeps working afterwards


def test_trimming_what_the_file_service_already_streamed_is_fine(tmp_path: Path, db: sqlstream.Database) -> None:
    s = db.create_stream("a")
    for i in range(3):
        s.append(str(i))
    config = file_config(tmp_path)
    assert run_once(db, config) == {"file": 3}
    db.trim("a", 3)
    s.append("3")
    assert run_once(db, config) == {"file": 1}


def test_records_trimmed_before_the_archive_service_archived_them_stop_it(tmp_path: Path, db: sqlstream.Database) -> None:
    from sqlstream.streaming import RecordsTrimmed

    s = db.create_stream("orders")
    s.append("0")
    config = archive_config(tmp_path)
    assert run_once(db, config) == {"archive": 1}
    for i in range(1, 4):
        s.append(str(i))
    db.trim("orders", 2)
    with pytest.raises(RecordsTrimmed, match=r"'archive'.*orders offsets 1\.\.1"):
        run_once(db, config)
    assert main(["--db", db.path, "serve", "--config", str(config), "--once", "--skip-trimmed"]) == 0
    assert [o for _s, o, _p in archived(tmp_path / "archives")] == [0, 2, 3]


def test_a_new_service_starts_from_what_is_retained_without_complaint(tmp_path: Path, db: sqlstream.Database) -> None:
    s = db.create_stream("a")
    for i in range(4):
        s.append(str(i))
    db.trim("a", 2)  # before the service ever ran: not its loss
    assert run_once(db, file_config(tmp_path)) == {"file": 2}


@pytest.mark.parametrize("max_records", [1, 3, 7, 256])
def test_next_blocks_reads_the_same_blocks_as_next_block_one_by_one(tmp_path: Path, max_records: int) -> None:
    """Store.next_blocks (one range query per stream, used by the jetstream relay) returns
    whole blocks, in order, equal to repeated next_block: across streams, transactions
    bigger than the read, and commits to unexposed streams."""
    from sqlstream.streaming.store import Store

    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        rnd = random.Random(max_records)
        for name in ("a", "b", "other"):
            db.create_stream(name)
        for n in range(150):
            with db.transaction():
                for _ in range(rnd.choice([1, 1, 2, 5, 12])):
                    db.stream(rnd.choice(["a", "b", "other"])).append(f"v{n}".encode(), key=f"k{n}",
                                                                        headers={"n": str(n)} if n % 3 else None)
        store = Store(db)
        store.cursor("one", "x", ["a", "b"])
        store.cursor("many", "x", ["a", "b"])
        expected, after = [], 0
        while (block := store.next_block("one", ["a", "b"], after)) is not None:
            expected.append(block)
            after = block.height
        got, after = [], 0
        while True:
            head, blocks = store.next_blocks("many", ["a", "b"], after, max_records=max_records)
            if not blocks:
                break
            assert head >= blocks[-1].height
            got.extend(blocks)
            after = blocks[-1].height
        assert [(b.height, b.streams, b.next_offsets) for b in got] == \
            [(b.height, b.streams, b.next_offsets) for b in expected]
        assert got and store.next_blocks("many", ["a", "b"], 0, upto=got[0].height)[1][-1].height == got[0].height
    finally:
        db.close()


def test_a_new_stream_that_reuses_a_deleted_streams_id_owes_the_file_service_every_record(
        tmp_path: Path, db: sqlstream.Database) -> None:
    """SQLite gives a new stream the id of the deleted newest one: the service's position in
    the old stream must not carry over, or a trim of the new stream's unstreamed records
    would pass unnoticed (and a relay's keep_unforwarded pin would start past them)."""
    from sqlstream.streaming import RecordsTrimmed

    config = file_config(tmp_path)
    old = db.create_stream("old")
    for i in range(5):
        old.append(str(i))
    assert run_once(db, config) == {"file": 5}  # the service is at offset 5 of stream id 1
    old_id = db.query("SELECT id FROM streams WHERE name = 'old'").rows[0][0]
    db.delete_stream("old")
    lower_the_stream_id_floor(db)
    new = db.create_stream("new")
    assert db.query("SELECT id FROM streams WHERE name = 'new'").rows[0][0] == old_id  # the id is reused
    for i in range(5):
        new.append(str(i))
    db.trim("new", 3)  # offsets 0..2 of the new stream were never streamed
    with pytest.raises(RecordsTrimmed, match=r"'file'.*new offsets 0\.\.2"):
        run_once(db, config)
