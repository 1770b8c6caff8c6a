"""Fuzzing the command line (issue 9): random commands, options and values, in-process.

Whatever the arguments — huge, infinite or negative numbers, lone surrogates (what a
non-UTF-8 argv byte becomes), unknown streams, bad names, unknown options — ``main()``
returns 0, 1 or 2, prints no traceback and no "internal error", and a call it refuses
(1 or 2) leaves the stored data exactly as it was. Bounded for CI: a fixed number of
examples, and no value that would make a valid call wait.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream.cli import main

NUMBERS = ["0", "1", "2", "-1", "-0", "1.5", "1e-9", "0.01", "1e9", "1e300", "-1e300", "inf", "-inf", "nan",
           str(10**23), str(2**62), str(2**63 - 1), str(2**63), str(2**64), "9" * 400, "0x10", "1_000", "",
           " 3", "\udcff", "earliest", "latest"]
NAMES = ["s", "sealed", "sub", "nope", "", " ", "bad name", "a" * 300, "\udcff", "s\x00", "-x", "é", "a/b:c"]
TEXT = st.one_of(st.sampled_from(NUMBERS + NAMES + ['{"id": 1}', "[1", "null", "NaN", "SELECT 1"]),
                 st.text(max_size=12))

# Timeouts are drawn only from values that are invalid or do not wait: a valid long
# timeout on a record that never comes would only slow the test down.
TIMEOUTS = ["0", "-1", "1e300", "inf", "nan", "x", "\udcff", str(10**23)]

# Per command: (number of positionals (min, max), options); "!" marks a flag, "T" a timeout.
COMMANDS: dict[str, tuple[tuple[int, int], list[str]]] = {
    "create": ((0, 2), ["--max-count", "--max-age", "--max-bytes", "--keep-unacked!", "--secret!",
                        "--exist-ok!", "--json!"]),
    "append": ((0, 4), ["--json!", "--key", "--header", "--secret", "--expect-offset", "--dedup-id", "-q!",
                        "--keep-blank!"]),
    "read": ((0, 2), ["--offset", "--limit", "--timeout T", "--json!"]),
    "tail": ((0, 2), ["--from", "-n", "--json!"]),
    "streams": ((0, 1), ["--json!"]),
    "info": ((0, 2), ["--json!"]),
    "seal": ((0, 2), ["--secret", "--json!"]),
    "delete": ((0, 2), ["--json!"]),
    "sql": ((0, 3), ["--param", "--json-params", "--json!"]),
    "subscribe": ((0, 3), ["--start", "--ack-timeout", "--max-unacked", "--max-deliveries", "--dead-letter",
                           "--exist-ok!", "--json!"]),
    "unsubscribe": ((0, 2), ["--force!", "--json!"]),
    "subscriptions": ((0, 1), ["--json!"]),
    "fetch": ((0, 2), ["--consumer", "--max", "--timeout T", "--ack!", "--json!"]),
    "ack": ((0, 4), ["--json!"]),
    "nack": ((0, 4), ["--delay", "--error", "--json!"]),
    "pending": ((0, 2), ["--consumer", "--limit", "--json!"]),
    "reader": ((0, 3), ["--from", "--limit", "--timeout T", "--seek", "--delete!", "--list!", "--json!"]),
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from([*COMMANDS, "--bogus", "nosuchcommand"]))
    if command not in COMMANDS:
        return [command, *draw(st.lists(TEXT, max_size=2))]
    (low, high), options = COMMANDS[command]
    argv = [command, *draw(st.lists(TEXT, min_size=low, max_size=high))]
    for option in draw(st.lists(st.sampled_from([*options, "--bogus!"]), max_size=4, unique=True)):
        name, _, kind = option.partition(" ")
        if name.endswith("!"):
            argv.append(name[:-1])
        elif kind == "T":
            argv += [name, draw(st.sampled_from(TIMEOUTS))]
        else:
            argv += [name, draw(TEXT)]
    return argv


def snapshot(path: str) -> Any:
    """Everything a refused call must leave alone: streams, records, subscriptions, readers."""
    with sqlstream.open(path, readonly=True) as db:
        streams = [(i.name, i.first_offset, i.next_offset, i.sealed, i.max_count, i.max_age, i.max_bytes)
                   for i in db.streams()]
        records = {name: [(r.offset, r.value, r.key) for r in db.stream(name).read(first, 1000)] if nxt > first
                   else [] for name, first, nxt, *_ in streams}
        subs = [(i.name, i.stream, i.pending, i.acked, i.acked_frontier, i.lag) for i in db.subscriptions()]
        readers = [(r.name, r.stream, r.position) for r in db.readers()]
    return streams, records, subs, readers


def make_database(path: str) -> None:
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        s.extend(["a", {"id": 1}, b"\x00"])
        db.create_stream("sealed").seal()
        db.create_subscription("sub", "s")
        db.subscription("sub").fetch("w", 1)  # one pending delivery, offset 0
        db.reader("r", "s")


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=command_lines(), stdin=st.binary(max_size=40))
def test_cli_fuzz_exit_codes_no_tracebacks_refusals_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], stdin: bytes
) -> None:
    template, path = str(tmp_path / "template.db"), str(tmp_path / "fuzz.db")
    if not Path(template).exists():  # tmp_path is shared by the examples: build it once
        make_database(template)
    for suffix in ("", "-wal", "-shm"):  # a closed file and its WAL, copied whole
        Path(path + suffix).unlink(missing_ok=True)
        if Path(template + suffix).exists():
            shutil.copyfile(template + suffix, path + suffix)
    before = snapshot(path)
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        capsys.readouterr()
        status = main(["--db", path, *argv])
        _, err = capsys.readouterr()
    finally:
        sys.stdin = saved
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if status != 0:
        assert snapshot(path) == before, (argv, err)
