# PYTHON_ARGCOMPLETE_OK  (marks the console script's module for argcomplete's shell completion)
"""The ``sqlstream`` command line (console script ``sqlstream.cli:main``, ``python -m sqlstream``).

- :mod:`.main`: the parser (``build_parser``) and ``main``; the output contract is its docstring
- :mod:`.output`: error reporting, exit statuses, record and table rendering, progress line
- :mod:`.args`: the database path, argument types (numbers checked when parsed), values
- one module per command group, each adding its commands with ``register(command)``:
  :mod:`.streams`, :mod:`.subscriptions`, :mod:`.maintenance`, :mod:`.archive`
"""

from __future__ import annotations

from .args import COUNT_MAX, DB_ENV, DEFAULT_DB, OFFSET_MAX, SECONDS_MAX
from .main import build_parser, main
from .output import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    info_json,
    iso_time,
    record_json,
    record_line,
    render_table,
    report_error,
)
from .streams import check_one_statement, sql_param

__all__ = [
    "main",
    "build_parser",
    "CliError",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE",
    "DEFAULT_DB",
    "DB_ENV",
    "SECONDS_MAX",
    "OFFSET_MAX",
    "COUNT_MAX",
    "report_error",
    "iso_time",
    "record_json",
    "record_line",
    "info_json",
    "render_table",
    "sql_param",
    "check_one_statement",
]
