"""Reading the file streaming service's block files back, and the varints they are made of.

The expected bytes here are built by the test's own encoder (:func:`varint`, written
differently from sqlstream.streaming.protobuf), so a mistake in the writer cannot hide by
being made twice; the reader is checked against the writer of a real ``serve`` run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream.cli import main
from sqlstream.errors import CorruptBlockFile, InvalidArgument
from sqlstream.streaming import Runner, load_config
from sqlstream.streaming.file import BlockMeta, KVPair, decode_data, encode_data, read_block, read_block_meta
from sqlstream.streaming.protobuf import read_uvarint, uvarint
from sqlstream.streaming.store import Block, BlockRecord

ROOT = Path(__file__).resolve().parent.parent


def varint(n: int) -> bytes:
    """Base-128 little-endian groups, the high bit set on all but the last (by digits)."""
    groups = []
    while True:
        groups.append(n % 128)
        n //= 128
        if n == 0:
            break
    return bytes([g + 128 for g in groups[:-1]] + [groups[-1]])


# The boundaries where a varint grows a byte, and the bytes the protobuf spec gives for them.
BOUNDARIES = {0: b"\x00", 1: b"\x01", 127: b"\x7f", 128: b"\x80\x01", 300: b"\xac\x02",
              16383: b"\xff\x7f", 16384: b"\x80\x80\x01", 2**21 - 1: b"\xff\xff\x7f", 2**21: b"\x80\x80\x80\x01",
              2**64 - 1: b"\xff" * 9 + b"\x01"}


@pytest.mark.parametrize("n", sorted(BOUNDARIES))
def test_uvarint_at_each_length_boundary(n: int) -> None:
    assert varint(n) == BOUNDARIES[n]  # the test's encoder agrees with the spec...
    assert uvarint(n) == BOUNDARIES[n]  # ...and so does the writer's
    assert read_uvarint(b"\xaa" + BOUNDARIES[n] + b"\xbb", 1) == (n, 1 + len(BOUNDARIES[n]))


@given(st.integers(0, 2**64 - 1))
def test_uvarint_round_trips(n: int) -> None:
    assert uvarint(n) == varint(n)
    assert read_uvarint(uvarint(n), 0) == (n, len(uvarint(n)))


def write_config(tmp_path: Path, prefix: str = "") -> Path:
    path = tmp_path / "sqlstream.toml"
    path.write_text(f'[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "out"\n'
                    f'prefix = "{prefix}"\n')
    return path


@pytest.mark.parametrize("size", [127, 128, 16383, 16384])
def test_data_files_round_trip_lengths_at_the_varint_boundaries(
    tmp_path: Path, db: sqlstream.Database, size: int
) -> None:
    # The value's length, and the message's (a few bytes more), each cross a boundary.
    s = db.create_stream("s")
    values = [b"v" * size, b"w" * (size - 6)]
    with db.transaction():
        for v in values:
            s.append(v, key="k")
    Runner.from_config(db, load_config(write_config(tmp_path))).run(once=True)
    height = db.query("SELECT max(txn) FROM chunks").rows[0][0]
    data = (tmp_path / "out" / f"block-{height}-data").read_bytes()
    body = b""
    for v in values:
        message = b"\x0a\x01s" + b"\x1a\x01k" + b"\x22" + varint(len(v)) + v
        body += varint(len(message)) + message
    assert data == len(body).to_bytes(8, "big") + body
    assert read_block(tmp_path / "out", height) == [KVPair("s", b"k", v) for v in values]


def test_read_block_gives_back_what_a_serve_run_wrote(tmp_path: Path, db: sqlstream.Database) -> None:
    a, b = db.create_stream("a"), db.create_stream("b")
    a.append({"n": 1})  # block 1
    with db.transaction():  # block 2: two streams, text, JSON, bytes, with and without keys
        b.append("zwei", key="k2")
        a.append(b"\x00\xff")
        a.append("é", key="ключ")
    Runner.from_config(db, load_config(write_config(tmp_path, "app"))).run(once=True)
    assert read_block(tmp_path / "out", 1, "app") == [KVPair("a", b"", b'{"n":1}')]
    assert read_block(tmp_path / "out", 2, prefix="app") == [
        KVPair("a", b"", b"\x00\xff"), KVPair("a", "ключ".encode(), "é".encode()), KVPair("b", b"k2", b"zwei"),
    ]
    meta = read_block_meta(tmp_path / "out", 2, "app")
    assert meta == BlockMeta(2, meta.commit_time_us, (("a", 1, 2), ("b", 0, 0)))
    assert meta.commit_time_us == db.query("SELECT max(timestamp) FROM chunks WHERE txn = 2").rows[0][0]
    with pytest.raises(InvalidArgument, match="no file"):  # a hint: blocks without exposed records have none
        read_block(tmp_path / "out", 3, "app")
    with pytest.raises(InvalidArgument):
        read_block(tmp_path / "out", 1, "../app")
    with pytest.raises(InvalidArgument):
        read_block(tmp_path / "out", -1)


names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(names, st.lists(st.tuples(st.none() | names, st.binary(max_size=20000)), min_size=1,
                                       max_size=4), max_size=3))
def test_decode_data_is_the_inverse_of_encode_data(streams: dict[str, list[tuple[str | None, bytes]]]) -> None:
    block = Block(7, {name: [BlockRecord(name, i, 0, key, None, "bytes", value) for i, (key, value) in enumerate(rs)]
                      for name, rs in streams.items()})
    expected = [KVPair(name, (key or "").encode(), value)
                for name in sorted(streams) for key, value in streams[name]]
    assert decode_data(encode_data(block)) == expected


@pytest.mark.parametrize("damage", ["cut", "longer", "bad varint", "wire type 5", "not a file", "empty"])
def test_damaged_data_files_are_corrupt_block_file_errors(damage: str) -> None:
    block = Block(1, {"s": [BlockRecord("s", 0, 0, "k", None, "bytes", b"x" * 300)]})
    good = encode_data(block)
    data = {
        "cut": good[:-1],
        "longer": good + b"\x00",
        "bad varint": (5).to_bytes(8, "big") + b"\xff" * 5,
        "wire type 5": (4).to_bytes(8, "big") + b"\x03\x0d\x00\x00",
        "not a file": b"[store]\nstreamers = []\n",
        "empty": b"",
    }[damage]
    with pytest.raises(CorruptBlockFile, match="not a block data file"):
        decode_data(data, "f")


def test_cli_block_cat_prints_pairs_and_meta_as_json_lines(
    tmp_path: Path, db: sqlstream.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    s = db.create_stream("s")
    with db.transaction():
        s.append("hello", key="k")
        s.append(b"\xff\x00")
    Runner.from_config(db, load_config(write_config(tmp_path))).run(once=True)
    data, meta = str(tmp_path / "out" / "block-1-data"), str(tmp_path / "out" / "block-1-meta")
    assert main(["block", "cat", data, meta]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[:2] == [
        {"file": data, "index": 0, "store_key": "s", "key": "k", "value": "hello", "delete": False},
        {"file": data, "index": 1, "store_key": "s", "key": "", "value": "/wA=", "value_encoding": "base64",
         "delete": False},
    ]
    assert lines[2]["height"] == 1 and lines[2]["streams"] == [{"stream": "s", "first_offset": 0, "last_offset": 1}]
    (tmp_path / "cut-data").write_bytes(Path(data).read_bytes()[:-2])
    assert main(["block", "cat", str(tmp_path / "cut-data"), data, str(tmp_path / "missing")]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2  # the good file is still printed
    assert err.count("Error: ") == 2 and "not a block data file" in err and "Traceback" not in err


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.mark.parametrize("command", ["archive", "block"])
def test_cat_into_a_closed_pipe_ends_quietly_as_read_does(tmp_path: Path, db: sqlstream.Database, command: str) -> None:
    # `sqlstream archive cat ... | head -3` printed "Error: ... Broken pipe" and exited 1.
    s = db.create_stream("s")
    with db.transaction():
        s.extend([f"record {i} " + "x" * 100 for i in range(3000)])  # far more than a pipe holds
    if command == "archive":
        (target,) = db.export("s", tmp_path / "arch").files
    else:
        Runner.from_config(db, load_config(write_config(tmp_path))).run(once=True)
        target = str(tmp_path / "out" / "block-1-data")
    results = []
    for argv in (["--db", db.path, "read", "s", "--limit", "3000"], [command, "cat", target]):
        proc = subprocess.Popen([sys.executable, "-m", "sqlstream", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env())
        assert proc.stdout is not None and proc.stderr is not None
        head = [proc.stdout.readline() for _ in range(3)]
        proc.stdout.close()  # what `head -3` does after its third line
        err = proc.stderr.read()
        proc.stderr.close()
        assert all(head)
        results.append((proc.wait(timeout=60), err))
    assert results[1] == results[0] and results[0] == (141, b"")
