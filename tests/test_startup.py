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


def test_import_sqlstream_loads_only_the_core() -> None:
    modules = loaded_by("import sqlstream")
    assert "sqlstream.database" in modules and "apsw" in modules  # the probe sees the import
    assert not heavy(modules, NOT_AT_IMPORT), heavy(modules, NOT_AT_IMPORT)


@pytest.mark.parametrize("argv", [["--version"], ["-h"], ["export", "-h"], ["serve", "-h"]], ids=" ".join)
def test_the_command_line_loads_no_command_module_it_does_not_run(argv: list[str]) -> None:
    """``sqlstream --version`` / ``-h`` build the whole parser, but the archive and
    streaming packages (and what they bring: compression, TOML, entry points) are
    imported by the commands that run them."""
    modules = loaded_by(
        "import io, contextlib\n"
        "from sqlstream.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    status = main({argv!r})\n"
        "assert status == 0, status\n"
    )
    assert "sqlstream.cli.main" in modules
    assert not heavy(modules, NEVER_AT_START), heavy(modules, NEVER_AT_START)


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
