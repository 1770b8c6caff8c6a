"""Start-up: ``import sqlstream`` and the ``sqlstream`` command import only what they use.

The mechanism is checked, not the time: a fresh interpreter reports which modules an
import or a command loaded, and the heavy optional parts (compression, TOML, entry-point
metadata, SQLAlchemy, nats, asyncio, the archive and streaming packages) must not be
among them. The figures are measured side by side with a bare interpreter by
``python -m benchmarks.startup`` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sqlstream.logs import LazyLogger

ROOT = Path(__file__).resolve().parent.parent

# Loaded by neither `import sqlstream` nor a command that does not need them. (argparse's
# help formatter imports shutil, and with it zlib, bz2 and lzma: not avoidable by us.)
NEVER_AT_START = {
    "asyncio", "zstandard", "gzip", "tomllib", "tomli", "importlib.metadata",
    "sqlalchemy", "nats", "boto3", "datasette", "tqdm", "argcomplete",
    "sqlstream.aio", "sqlstream.archive", "sqlstream.streaming", "sqlstream.storage", "sqlstream.compat",
    "sqlstream.sqlalchemy", "sqlstream.datasette", "sqlstream.testing",
}
# Not needed to import the package: looked up when first used (logging: sqlstream.logs;
# the rest where a call needs them).
NOT_AT_IMPORT = NEVER_AT_START | {
    "logging", "concurrent.futures", "secrets", "random", "tempfile", "shutil", "importlib.resources",
    "zlib", "bz2", "lzma", "argparse", "sqlstream.cli",
}
# The core (and dataclasses, which imports inspect): loaded by the first ``sqlstream.open``
# or other public name, never by ``import sqlstream`` itself, nor by a command line that
# only builds its parser (the handlers import what they run).
CORE = {
    "sqlstream.database", "sqlstream.engine", "sqlstream.records", "sqlstream.streams", "sqlstream.subscriptions",
    "sqlstream.maintenance", "sqlstream.wakeup", "dataclasses", "inspect",
}


def loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code`` (beyond its own start-up)."""
    script = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "sys.stdout = sys.__stdout__\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str], names: set[str]) -> list[str]:
    """The modules of ``modules`` that are (or are inside) one of ``names``."""
    return sorted(m for m in modules if m in names or any(m.startswith(n + ".") for n in names))


def test_import_sqlstream_loads_only_the_package() -> None:
    """The public names are loaded on first use (PEP 562): the import itself loads neither
    apsw nor the core."""
    modules = loaded_by("import sqlstream")
    assert "sqlstream" in modules  # the probe sees the import
    assert not heavy(modules, CORE | {"apsw"}), heavy(modules, CORE | {"apsw"})


def test_the_first_open_loads_the_core_and_no_optional_part(tmp_path: Path) -> None:
    """Creating a database (migrations read as package resources) needs the core, never
    compression, TOML, entry points, asyncio or the archive and streaming packages."""
    modules = loaded_by(f"import sqlstream\nsqlstream.open({str(tmp_path / 'a.db')!r}).close()")
    assert "sqlstream.database" in modules and "apsw" in modules
    assert not heavy(modules, NEVER_AT_START), heavy(modules, NEVER_AT_START)


def test_every_public_name_resolves_to_its_defining_module() -> None:
    """Lazy or not, ``sqlstream.X`` is the object the defining module holds, ``from
    sqlstream import *`` binds every name of ``__all__``, and a wrong name is an
    AttributeError naming it."""
    import importlib

    import sqlstream

    for name in sqlstream.__all__:
        value = getattr(sqlstream, name)
        if name == "errors":
            assert value is importlib.import_module("sqlstream.errors")
        elif name != "__version__":
            assert value is getattr(importlib.import_module(value.__module__), name), name
            assert value.__module__.startswith("sqlstream."), name
    assert set(sqlstream.__all__) <= set(dir(sqlstream))
    namespace: dict[str, object] = {}
    exec("from sqlstream import *", namespace)  # noqa: S102 - the star import itself is under test
    assert set(sqlstream.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'opne'"):
        sqlstream.opne  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("argv", [["--version"], ["-h"], ["export", "-h"], ["serve", "-h"]], ids=" ".join)
def test_the_command_line_loads_no_command_module_it_does_not_run(argv: list[str]) -> None:
    """``sqlstream --version`` / ``-h`` build the whole parser, but the core, the archive
    and streaming packages (and what they bring: compression, TOML, entry points) are
    imported by the commands that run them."""
    modules = loaded_by(
        "import io, contextlib\n"
        "from sqlstream.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    status = main({argv!r})\n"
        "assert status == 0, status\n"
    )
    assert "sqlstream.cli.main" in modules
    assert not heavy(modules, NEVER_AT_START | CORE), heavy(modules, NEVER_AT_START | CORE)


@pytest.mark.parametrize("argv", [["streams"], ["sql", "SELECT 1"], ["check", "--json"], ["subscriptions"]], ids=" ".join)
def test_commands_that_open_a_database_still_run_with_the_lazy_imports(tmp_path: Path, argv: list[str]) -> None:
    """The handlers reach the core they import on their own (a command from each module)."""
    path = str(tmp_path / "app.db")
    import sqlstream

    sqlstream.open(path).close()
    modules = loaded_by(
        "import io, contextlib\n"
        "from sqlstream.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    status = main(['--db', {path!r}, *{argv!r}])\n"
        "assert status == 0, status\n"
    )
    assert "sqlstream.database" in modules


def test_a_command_still_loads_what_it_runs(tmp_path: Path) -> None:
    """The lazy imports are reached: `archive cat` of a missing file goes through the archive
    package (and reports the file, exit 1)."""
    modules = loaded_by(
        "import io, contextlib\n"
        "from sqlstream.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        f"    status = main(['archive', 'cat', {str(tmp_path / 'missing.events')!r}])\n"
        "assert status == 1, status\n"
    )
    assert "sqlstream.archive.format" in modules


def test_lazy_logger_logs_under_its_name_with_the_caller_as_origin(caplog: pytest.LogCaptureFixture) -> None:
    log = LazyLogger("sqlstream.test-startup")

    def report_something() -> None:
        log.warning("seen %d", 3)

    with caplog.at_level(logging.WARNING, logger="sqlstream.test-startup"):
        report_something()
    [record] = [r for r in caplog.records if r.name == "sqlstream.test-startup"]
    assert (record.getMessage(), record.funcName, record.levelno) == ("seen 3", "report_something", logging.WARNING)
    assert log.logger is logging.getLogger("sqlstream.test-startup")
