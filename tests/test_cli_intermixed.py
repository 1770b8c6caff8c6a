"""Options anywhere on a command's line, and errors with the command's own usage (issue 20, item 10).

``sqlstream append t --key k1 hello`` used to exit 2 with "unrecognized arguments: hello"
under the top-level usage: argparse stops a command's values at its first option.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest

import sqlstream
from sqlstream.cli import build_parser, main


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every runnable command, groups' sub-commands as "archive cat"."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    walk(f"{prefix} {name}".strip(), sub)
                return
        found[prefix] = parser

    walk("", build_parser())
    return found


def test_options_between_values_are_options(tmp_path: Path) -> None:
    db = str(tmp_path / "app.db")
    assert _run("--db", db, "create", "t")[0] == 0
    assert _run("--db", db, "append", "t", "--key", "k1", "hello")[0] == 0
    assert _run("--db", db, "append", "t", "a", "--header", "h=1", "b", "--expect-offset", "1", "c")[0] == 0
    code, out, err = _run("--db", db, "sql", "SELECT ? + 1", "--csv", "41")
    assert (code, out.split()) == (0, ["?", "+", "1", "42"]), err
    with sqlstream.open(db, readonly=True) as handle:
        records = handle.stream("t").read(0)
    assert [(r.key, r.headers, r.value) for r in records] == [
        ("k1", {}, "hello"), (None, {"h": "1"}, "a"), (None, {"h": "1"}, "b"), (None, {"h": "1"}, "c")]


def test_a_double_dash_still_ends_the_options(tmp_path: Path) -> None:
    db = str(tmp_path / "app.db")
    _run("--db", db, "create", "t")
    assert _run("--db", db, "append", "t", "--key", "k", "--", "--key")[0] == 0
    with sqlstream.open(db, readonly=True) as handle:
        assert [(r.key, r.value) for r in handle.stream("t").read(0)] == [("k", "--key")]


def _valid(action: argparse.Action) -> str:
    """A value the action takes: a number, or a STREAM=OFFSET pair."""
    for candidate in ("1", "s=1"):
        try:
            if action.type is None or not callable(action.type) or action.type(candidate) is not None:
                return candidate
        except (argparse.ArgumentTypeError, ValueError):
            continue
    raise AssertionError(f"no sample value for {action.dest}")


@pytest.mark.parametrize("command", sorted(_commands()))
def test_an_unknown_option_is_a_usage_error_of_the_command(command: str) -> None:
    """Whatever the command, after its required values: exit 2 and its own usage line."""
    parser = _commands()[command]
    values: list[str] = []
    for action in parser._actions:  # noqa: SLF001
        if action.required and action.nargs not in ("?", "*"):
            value = str(next(iter(action.choices))) if action.choices else _valid(action)
            values += [action.option_strings[0], value] if action.option_strings else [value]
    code, _out, err = _run(*command.split(), *values, "--no-such-option")
    assert code == 2
    assert err.startswith(f"usage: sqlstream {command} "), err
    assert err.rstrip().endswith(f"sqlstream {command}: error: unrecognized arguments: --no-such-option"), err
