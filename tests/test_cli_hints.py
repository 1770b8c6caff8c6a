"""Every hint the command line prints names the command line's own flags and commands
(issue 20, item 12).

``backup`` said "pass overwrite=True" (the flag is --force), ``redrive`` said
"sub.configure(...)", ``sql`` said "query() is read-only". An error carries the command
line's form of its advice as ``cli_hint`` (per raise site, or a class default); the CLI
prints ``command_line_hint``. This test reads every ``hint=`` of the modules the command
line runs and fails on one that names Python (a keyword argument, a method call, ``f()``)
without a command-line variant, so a new one cannot slip in.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

import sqlstream
from sqlstream import errors
from sqlstream.cli import main

PACKAGE = Path(sqlstream.__file__).resolve().parent

# Modules the command line never runs: Python-only faces of the API.
NOT_CLI = ("aio.py", "sqlalchemy.py", "_dbapi.py", "compat/", "testing.py", "pytest_plugin.py", "datasette.py")

PYTHON_ISM = re.compile(
    r"(?<![-\w./])[a-z_][a-z0-9_]*=(?:True|False|None|\.\.\.|'|\"|\[|\{)"  # exist_ok=True, rename={...}
    r"|\b[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\("  # sub.configure(, db.stream(
    r"|\b[a-z_][a-z0-9_]*\(\)"  # query(), create_stream()
    r"|\b[a-z_][a-z0-9_]*\([a-z_]+="  # seek(at=
)


def test_the_pattern_finds_python_and_leaves_the_command_line_alone() -> None:
    for python in ("pass overwrite=True", "set one with sub.configure(max_deliveries=...)",
                   "query() is read-only", "use seek(at=...)", "rename={'a': 'b'}"):
        assert PYTHON_ISM.search(python), python
    for cli in ("pass --force to replace it", "`sqlstream configure SUB --dead-letter STREAM`",
                "--rename orders=restored/orders", "e.g. keys = [\"*\"]", "--dupe-window=...",
                "sqlstream read-many orders=0 payments=5", "a header is NAME=VALUE"):
        assert not PYTHON_ISM.search(cli), cli


def _text(node: ast.AST) -> str | None:
    """The literal text of a hint expression (f-string holes as {}), or None if not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp):
        left, right = _text(node.left), _text(node.right)
        return None if left is None and right is None else (left or "") + (right or "")
    if isinstance(node, ast.IfExp):
        return f"{_text(node.body) or ''} | {_text(node.orelse) or ''}"
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _raised_class(module: object, call: ast.Call) -> type | None:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    found = getattr(module, name, None) if name else None
    return found if isinstance(found, type) and issubclass(found, errors.SqlstreamError) else None


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" assignments (hints kept in a constant)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            text = _text(node.value)
            if text is not None:
                out[node.targets[0].id] = text
    return out


def _resolved(node: ast.AST, names: dict[str, str]) -> str | None:
    return names.get(node.id) if isinstance(node, ast.Name) else _text(node)


def _hint_sites() -> list[tuple[str, str, str | None, type | None]]:
    """(where, hint text, cli_hint text or None, raised class) of every hint= in CLI-reachable code."""
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(NOT_CLI):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _constants(tree)
        module = importlib.import_module(_module_name(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if "hint" not in keywords:
                continue
            text = _resolved(keywords["hint"], names)
            if text is None:
                continue  # passed through (exc.hint, an option's help): checked where it is written
            cli = _resolved(keywords["cli_hint"], names) if "cli_hint" in keywords else None
            sites.append((f"{rel}:{node.lineno}", text, cli, _raised_class(module, node)))
    return sites


def test_every_hint_that_names_python_has_a_command_line_form() -> None:
    missing = []
    for where, text, cli, cls in _hint_sites():
        if not PYTHON_ISM.search(text) or where.startswith("cli/"):
            continue
        has_class_default = cls is not None and cls.cli_hint is not None
        if cli is None and not has_class_default:
            missing.append(f"{where}: {text!r}")
    assert not missing, "hints naming Python with no cli_hint:\n" + "\n".join(missing)


def test_no_command_line_hint_names_python() -> None:
    bad = [f"{where}: {cli!r}" for where, _text_, cli, _cls in _hint_sites() if cli and PYTHON_ISM.search(cli)]
    bad += [f"{where}: {text!r}" for where, text, _cli, _cls in _hint_sites()
            if where.startswith("cli/") and PYTHON_ISM.search(text)]
    bad += [f"class {cls.__name__}: {cls.cli_hint!r}" for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.SqlstreamError)
            and cls.cli_hint and PYTHON_ISM.search(cls.cli_hint)]
    assert not bad, "\n".join(bad)


def test_converted_sqlite_errors_have_command_line_hints() -> None:
    for _apsw_cls, our_cls, hint in errors._CONVERSIONS:  # noqa: SLF001 - the one conversion table
        if hint and PYTHON_ISM.search(hint):
            assert our_cls.cli_hint is not None, (our_cls, hint)


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


@pytest.fixture
def app(tmp_path: Path) -> str:
    path = str(tmp_path / "app.db")
    with sqlstream.open(path) as db:
        db.create_stream("orders").append({"id": 1})
        db.create_subscription("billing", "orders")
    return path


def test_backup_names_force(app: str, tmp_path: Path) -> None:
    (tmp_path / "copy.db").write_bytes(b"")
    code, err = _cli("--db", app, "backup", str(tmp_path / "copy.db"))
    assert code == 1 and "--force" in err and "overwrite" not in err, err


def test_redrive_names_the_configure_command(app: str) -> None:
    code, err = _cli("--db", app, "redrive", "billing")
    assert code == 1 and "sqlstream configure" in err and "sub." not in err, err


def test_sql_names_the_command_not_query(app: str) -> None:
    code, err = _cli("--db", app, "sql", "DELETE FROM chunks")
    assert code == 1 and "query()" not in err and "sqlstream sql" in err, err


@pytest.mark.parametrize("argv", [
    ["create", "orders"], ["info", "nope"], ["subscribe", "billing", "orders"], ["fetch", "nope"],
    ["reader", "nope"], ["read-many", "nope=0"], ["unsubscribe", "nope"], ["reset", "nope", "earliest"],
    ["seek", "billing"], ["redrive", "nope"], ["backup", "{db}"], ["export", "--status", "--name", "nope"],
    ["import", "nothing-*", "--dir", "."],
])
def test_common_errors_print_no_python(app: str, argv: list[str]) -> None:
    code, err = _cli("--db", app, *(a.replace("{db}", app) for a in argv))
    assert code in (1, 2)
    assert not PYTHON_ISM.search(err), err
