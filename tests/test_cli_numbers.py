"""Numbers on the command line are parsed strictly (issue 20, item 17).

Python's ``int()``/``float()`` take ``1_000``, `` 3``, other scripts' digits, ``nan`` and
``inf``: ``--timeout 0_5`` was five seconds. Every option and value of every command that
takes a number refuses them as a usage error (exit 2, one ``error:`` line, the command's
usage), found by walking the parser so a new command is covered without listing it here.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from sqlstream.cli import build_parser, main

MALFORMED = ["0_5", "1_000", " 1", "1 ", "\u0663", "nan", "NaN", "inf", "-inf", "1e999", "0x1", "+-1", ""]


TOP = build_parser()  # one parser for every case (building one per call is most of the time)


def _commands() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    walk(f"{prefix} {name}".strip(), sub)
                return
        found[prefix] = parser

    walk("", TOP)
    return found


def _numeric(action: argparse.Action) -> bool:
    """A value that is a number: its type takes "1" and refuses "abc"."""
    if action.type is None or not callable(action.type):
        return False
    try:
        action.type("1")
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    try:
        action.type("abc")
    except (argparse.ArgumentTypeError, ValueError):
        return True
    return False


def _argv(command: str, parser: argparse.ArgumentParser, target: argparse.Action, bad: str) -> list[str]:
    """The command with every required value filled in, and ``bad`` given to ``target``."""
    argv = command.split()
    for action in parser._actions:  # noqa: SLF001
        if action is target:
            argv += [target.option_strings[0], bad] if target.option_strings else [bad]
        elif action.required and action.nargs not in ("?", "*"):
            value = str(next(iter(action.choices))) if action.choices else "1"
            argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


PARSERS = _commands()  # one parser: the cases below are its own actions
CASES = [
    (command, action) for command, parser in sorted(PARSERS.items())
    for action in parser._actions if _numeric(action)  # noqa: SLF001
]


def test_the_walk_finds_the_number_options_of_the_newer_commands() -> None:
    found = {f"{command} {action.option_strings[0] if action.option_strings else action.dest}"
             for command, action in CASES}
    assert {"read --timeout", "read-many --timeout", "export --roll-size-mb", "archive cat --max-record-bytes",
            "retention --max-age", "seek --at", "ack offsets", "trim --before", "check --max-problems"} <= found


@pytest.mark.parametrize(("command", "action"), CASES,
                         ids=[f"{c} {a.option_strings[0] if a.option_strings else a.dest}" for c, a in CASES])
def test_malformed_numbers_are_usage_errors(command: str, action: argparse.Action) -> None:
    parser = PARSERS[command]
    for bad in MALFORMED:
        err = io.StringIO()
        # The parser main() runs, called directly: a usage error is SystemExit(2).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as exit_info:
            TOP.parse_args(["--db", "/nonexistent/never-opened.db", *_argv(command, parser, action, bad)])
        code = exit_info.value.code
        lines = err.getvalue().splitlines()
        assert code == 2, (command, action.dest, bad, err.getvalue())
        assert lines[0].startswith(f"usage: sqlstream {command}"), lines
        # One error line ("-inf" in a value's place reads as an unknown option instead).
        assert lines[-1].startswith(f"sqlstream {command}: error: "), lines
        assert sum("error:" in line for line in lines) == 1, lines
        assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("pair", ["s=latest", "s=earliest", "s=", "=1", "s", "s=1_0", "s=-1", "s=nan"])
def test_read_many_positions_are_usage_errors(pair: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["--db", "/nonexistent/never-opened.db", "read-many", "t=0", pair])
    assert code == 2, err.getvalue()
    assert err.getvalue().splitlines()[-1].startswith("sqlstream read-many: error: argument STREAM=OFFSET: ")
