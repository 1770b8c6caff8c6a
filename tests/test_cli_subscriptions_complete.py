"""CLI: seek, reset, configure, claim, autoclaim, redrive, read --reverse, read-many, --ordering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sqlstream.cli import main


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], db_path: str) -> Iterator[Any]:
    def runner(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--db", db_path, *argv])
        out, err = capsys.readouterr()
        return status, out, err

    yield runner


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _offsets(out: str) -> list[int]:
    return [r["offset"] for r in jsonl(out)]


def test_cli_seek_reset_configure(run: Any) -> None:
    run("create", "s")
    run("append", "s", "a", "b", "c", "d")
    assert run("subscribe", "sub", "s", "--ordering", "key", "--json")[1].count('"ordering": "key"') == 1
    assert jsonl(run("seek", "sub", "2", "--json")[1]) == [{"subscription": "sub", "position": 2}]
    assert _offsets(run("fetch", "sub", "--json", "--ack")[1]) == [2, 3]
    assert run("reset", "sub", "earliest")[0] == 0
    assert _offsets(run("fetch", "sub", "--json", "--ack")[1]) == [0, 1, 2, 3]
    assert run("seek", "sub", "--at", "0")[0] == 0
    status, out, _ = run("configure", "sub", "--max-unacked", "3", "--max-deliveries", "2", "--dead-letter", "d", "--json")
    info = jsonl(out)[0]
    assert status == 0 and (info["max_unacked"], info["max_deliveries"], info["dead_letter"]) == (3, 2, "d")
    assert jsonl(run("configure", "sub", "--no-dead-letter", "--json")[1])[0]["dead_letter"] is None


def test_cli_claim_autoclaim_redrive(run: Any) -> None:
    run("create", "s")
    run("append", "s", "a", "b")
    run("subscribe", "sub", "s", "--max-deliveries", "1", "--dead-letter", "dead")
    run("fetch", "sub", "--consumer", "w1")
    status, out, err = run("claim", "sub", "0", "5", "--consumer", "w2", "--json")
    assert status == 0 and _offsets(out) == [] and "5" in err  # 0 had its one delivery: dead-lettered
    assert _offsets(run("autoclaim", "sub", "--consumer", "w3", "--json")[1]) == []
    status, out, _ = run("redrive", "sub", "--json")
    assert status == 0 and jsonl(out)[0]["offsets"] == [2, 3]


def test_cli_read_reverse_and_read_many(run: Any) -> None:
    run("create", "a")
    run("create", "b")
    run("append", "a", "x", "y", "z")
    run("append", "b", "q")
    assert _offsets(run("read", "a", "--reverse", "--limit", "2", "--json")[1]) == [2, 1]
    assert _offsets(run("read", "a", "--reverse", "--offset", "1", "--json")[1]) == [0]
    status, out, _ = run("read-many", "a=2", "b=0", "--json")
    assert status == 0 and [(r["stream"], r["offset"]) for r in jsonl(out)] == [("a", 2), ("b", 0)]
    status, out, _ = run("read-many", "a=2", "b=1")
    assert status == 0 and out.startswith("a\t2")


@pytest.mark.parametrize("argv", [
    ("seek", "sub"), ("seek", "sub", "1", "--at", "5"), ("seek", "sub", "99"), ("seek", "sub", "--at", "soon"),
    ("reset", "sub", "middle"), ("configure", "sub", "--max-deliveries", "2"),
    ("configure", "sub", "--no-dead-letter", "--dead-letter", "d"), ("claim", "sub", "-1"),
    ("autoclaim", "sub", "--count", "0"), ("redrive", "sub"), ("read-many", "a"), ("read-many", "nope=0"),
    ("read", "a", "--reverse", "--limit", "0"), ("seek", "nosuch", "0"),
])
def test_cli_bad_input_is_an_error_message_not_a_traceback(run: Any, argv: tuple[str, ...]) -> None:
    run("create", "a")
    run("subscribe", "sub", "a")
    status, out, err = run(*argv)
    assert status != 0 and "error" in err.lower() and "Traceback" not in err


@pytest.mark.parametrize("command", ["seek", "reset", "configure", "claim", "autoclaim", "redrive", "read-many"])
def test_cli_new_commands_have_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "-h"]) == 0
    assert "Example" in capsys.readouterr().out
