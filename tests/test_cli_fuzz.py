"""Fuzzing the command line (issue 9): random commands, options and values, in-process.

Whatever the arguments — huge, infinite or negative numbers, lone surrogates (what a
non-UTF-8 argv byte becomes), unknown streams, bad names, unknown options — ``main()``
returns 0, 1 or 2, prints no traceback and no "internal error", and a call it refuses
(1 or 2) leaves the stored data exactly as it was. Bounded for CI: a fixed number of
examples, and no value that would make a valid call wait.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream.cli import build_parser, main

NUMBERS = ["0", "1", "2", "-1", "-0", "1.5", "1e-9", "0.01", "1e9", "1e300", "-1e300", "inf", "-inf", "nan",
           str(10**23), str(2**62), str(2**63 - 1), str(2**63), str(2**64), "9" * 400, "0x10", "1_000", "0_5", "",
           " 3", "\u0663", "s=0", "s=latest", "sub=1", "\udcff", "earliest", "latest"]
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
    "delete": ((0, 2), ["--force!", "--json!"]),
    "sql": ((0, 3), ["--param", "--json-params", "--max-rows", "--max-bytes", "--timeout T", "--json!"]),
    "subscribe": ((0, 3), ["--start", "--ack-timeout", "--max-unacked", "--max-deliveries", "--dead-letter",
                           "--exist-ok!", "--json!"]),
    "unsubscribe": ((0, 2), ["--force!", "--json!"]),
    "subscriptions": ((0, 1), ["--json!"]),
    "fetch": ((0, 2), ["--consumer", "--max", "--timeout T", "--ack!", "--json!"]),
    "ack": ((0, 4), ["--json!"]),
    "nack": ((0, 4), ["--delay", "--error", "--json!"]),
    "pending": ((0, 2), ["--consumer", "--limit", "--json!"]),
    "reader": ((0, 3), ["--from", "--limit", "--timeout T", "--seek", "--delete!", "--list!", "--json!"]),
    # The commands added since issue 9 (issue 20, item 17). Nothing here may wait for ever:
    # no `export --follow`, and `serve` only ever meets configs that do not exist.
    "read-many": ((0, 3), ["--limit", "--timeout T", "--json!"]),
    "seek": ((0, 2), ["--at", "--json!"]),
    "reset": ((0, 2), ["--json!"]),
    "configure": ((0, 1), ["--ack-timeout", "--max-unacked", "--max-deliveries", "--dead-letter", "--no-dead-letter!",
                           "--json!"]),
    "claim": ((0, 3), ["--consumer", "--min-idle", "--json!"]),
    "autoclaim": ((0, 1), ["--consumer", "--min-idle", "--count", "--json!"]),
    "redrive": ((0, 1), ["--max", "--json!"]),
    "extend-deadline": ((0, 3), ["--seconds", "--json!"]),
    "trim": ((0, 1), ["--before", "--force!", "--json!"]),
    "retention": ((0, 1), ["--max-count", "--max-age", "--max-bytes", "--keep-unacked!", "--no-keep-unacked!",
                           "--dedup-seconds", "--dedup-records", "--json!"]),
    "vacuum": ((0, 0), ["--full!", "--no-retention!", "--no-checkpoint!", "--json!"]),
    "check": ((0, 0), ["--quick!", "--max-problems", "--json!"]),
    "backup": ((0, 1), ["--force!", "--json!"]),
    "export": ((0, 2), ["--status!", "--dir", "--name", "--template", "--roll-size-mb", "--roll-minutes", "--compress",
                        "--storage", "--storage-prefix", "--format-version", "--trim!", "--json!"]),
    "import": ((0, 1), ["--dir", "--storage", "--stream", "--no-create!", "--create-db!", "--secret", "--rename",
                        "--allow-gap!", "--json!"]),
    "archive cat": ((0, 2), ["--max-record-bytes"]),
    "block cat": ((0, 2), []),
    "serve": ((0, 0), ["--config", "--skip-trimmed!", "--once!", "--status!", "--insecure!", "--json!"]),
}


# Commands whose values are STREAM=OFFSET pairs: fuzz the offset (`read-many s=latest`
# was an internal error) as well as the whole text.
PAIR_COMMANDS = {"read-many"}
PAIR = st.one_of(st.builds("{}={}".format, st.sampled_from(NAMES), st.sampled_from(NUMBERS)), TEXT)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from([*COMMANDS, "--bogus", "nosuchcommand"]))
    if command not in COMMANDS:
        return [command, *draw(st.lists(TEXT, max_size=2))]
    (low, high), options = COMMANDS[command]
    values = PAIR if command in PAIR_COMMANDS else TEXT
    argv = [*command.split(), *draw(st.lists(values, min_size=low, max_size=high))]
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
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=command_lines(), stdin=st.binary(max_size=40))
# Classes found before (issue 20): each stays in the run whatever the draw.
@example(argv=["read-many", "s=latest"], stdin=b"")
@example(argv=["read-many", "s=0", "s="], stdin=b"")
@example(argv=["export", "s", "--dir", "d", "--roll-size-mb", "nan"], stdin=b"")
@example(argv=["seek", "sub", "--at", "inf"], stdin=b"")
@example(argv=["retention", "s", "--max-age", "1_0"], stdin=b"")
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
    saved, cwd = sys.stdin, os.getcwd()
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    work = tmp_path / "cwd"  # backup, export and import write relative paths: keep them here
    work.mkdir(exist_ok=True)
    os.chdir(work)
    try:
        capsys.readouterr()
        status = main(["--db", path, *argv])
        _, err = capsys.readouterr()
    finally:
        sys.stdin = saved
        os.chdir(cwd)
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    lines = err.rstrip("\n").split("\n") if err else []  # not splitlines(): it also splits at \x1c-\x1e
    if status == 1:  # one error line, then at most its hint (`archive cat`, `block cat`: one per file)
        assert lines and lines[0].startswith("Error: "), (argv, err)
        assert all(line.startswith(("Error: ", "Hint: ")) for line in lines), (argv, err)
        assert argv[1:2] == ["cat"] or sum(line.startswith("Error: ") for line in lines) == 1, (argv, err)
    elif status == 2:  # argparse's usage then one error line, or main's own one line
        assert lines and ("error: " in lines[-1] or lines[0].startswith("Error: ")), (argv, err)
    if status != 0:
        assert snapshot(path) == before, (argv, err)


def test_the_fuzz_covers_every_command() -> None:
    """A new command must join COMMANDS (its options too), so the fuzz reaches it."""

    def walk(prefix: str, parser: argparse.ArgumentParser) -> dict[str, set[str]]:
        for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                found: dict[str, set[str]] = {}
                for name, sub in action.choices.items():
                    found |= walk(f"{prefix} {name}".strip(), sub)
                return found
        return {prefix: {o for a in parser._actions for o in a.option_strings  # noqa: SLF001
                         if o.startswith("--") and o not in ("--help", "--db")}}

    commands = walk("", build_parser())
    assert set(commands) == set(COMMANDS)
    # Options the fuzz leaves out on purpose: they wait (tail -f, export --follow, a
    # `serve --kafka`/`--http` listener, with its options) or choose an output format only.
    skipped = {"--follow", "--kafka", "--http", "--cors-origin", "--insecure", "--table", "--csv", "--tsv", "--nl", "--json-array", "--reverse", "--records",
               "--base64", "--file", "--quiet", "--lines", "--ordering", "--ack"}
    for command, options in commands.items():
        fuzzed = {o.partition(" ")[0].rstrip("!") for o in COMMANDS[command][1]}
        assert options - skipped <= fuzzed, (command, options - skipped - fuzzed)
