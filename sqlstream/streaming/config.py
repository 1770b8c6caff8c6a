"""Loading and validating a streaming configuration (``sqlstream.toml``).

The file follows the shape of Cosmos SDK's ``app.toml`` streaming section::

    [sqlstream]
    db = "app.db"                  # optional: the database (relative to this file)

    [store]
    streamers = ["file"]           # the services to run, by name

    [streamers.file]
    keys = ["orders", "pay*"]      # streams to expose: names or globs, "*" all, [] off
    write_dir = "stream-out"       # relative to this file
    prefix = "app"

Each ``[streamers.NAME]`` table configures the streamer ``NAME``; its type is ``NAME``
itself unless the table says ``service = "TYPE"`` (so two file streamers can coexist).
Validation is strict: an unknown table, service or option, a value of the wrong type, or
a missing required option raises :class:`ConfigError` naming the file, table and key.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument
from .services import Option, OptionError, Service, known_services, resolve_path, service_class

__all__ = ["ConfigError", "StreamingConfig", "StreamerConfig", "load_config", "parse_config"]


class ConfigError(InvalidArgument):
    """A streaming configuration is invalid; ``path``, ``table`` and ``key`` say where."""

    def __init__(self, path: str, table: str, key: str | None, problem: str, *, hint: str | None = None) -> None:
        where = f"[{table}]" + (f" {key}" if key else "")
        super().__init__(f"{path}: {where}: {problem}", hint=hint)
        self.path = path
        self.table = table
        self.key = key


@dataclass(frozen=True)
class StreamerConfig:
    """One configured streamer: its name, service type, key patterns and validated options."""

    name: str
    kind: str
    keys: tuple[str, ...]
    options: Mapping[str, Any]

    def build(self) -> Service:
        """A new service instance for this streamer."""
        return service_class(self.kind)(self.name, self.keys, self.options)


@dataclass(frozen=True)
class StreamingConfig:
    """A whole configuration file: the database path (or None) and the streamers in order."""

    path: str
    db: str | None
    streamers: tuple[StreamerConfig, ...] = field(default_factory=tuple)

    def build(self) -> list[Service]:
        """One service per configured streamer, in ``store.streamers`` order."""
        return [s.build() for s in self.streamers]


_TOP = {"sqlstream": "table", "store": "table", "streamers": "table"}
_KIND_NAMES = {"str": "a string", "path": "a string (a path)", "bool": "true or false", "int": "an integer",
               "number": "a number", "table": "a table", "list": "a list of strings"}


def load_config(path: str | os.PathLike[str]) -> StreamingConfig:
    """Read and validate the TOML file at ``path``; raises :class:`ConfigError`."""
    path = os.fspath(path)
    not_regular = "not a regular file (a directory, FIFO, socket or device)"
    if "\x00" in path:
        raise ConfigError(path.replace("\x00", "\\0"), "file", None, "the path contains a NUL character")
    try:
        # O_NONBLOCK: a FIFO at the path must be refused, not wait for a writer for ever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(path, "file", None, "no such file", hint="pass --config PATH to an existing file") from None
    except IsADirectoryError:
        raise ConfigError(path, "file", None, not_regular, hint="pass --config PATH to a TOML file") from None
    except OSError as exc:
        raise ConfigError(path, "file", None, f"cannot read it: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(path, "file", None, not_regular, hint="pass --config PATH to a TOML file")
    # The TOML parser is imported when a file is read, not with the package: `sqlstream -h`
    # and `import sqlstream.streaming` need none (tests/test_startup.py).
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    with os.fdopen(fd, "rb") as fh:
        try:
            data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(path, "file", None, f"cannot read it: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, "file", None, f"not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(path, "file", None, f"not valid TOML: not UTF-8 text (byte {exc.start})",
                              hint="save the file as UTF-8") from None
    return parse_config(data, path)


def _unknown(path: str, table: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known)) or '(none)'}"
    return ConfigError(path, table, key, "unknown option", hint=hint)


def _check(path: str, table: str, key: str, value: Any, kind: str) -> Any:
    ok = {
        "str": isinstance(value, str),
        "path": isinstance(value, str) and value != "" and "\x00" not in value,
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "table": isinstance(value, dict),
        "list": isinstance(value, list) and all(isinstance(v, str) and v for v in value),
    }[kind]
    if not ok:
        hint = "write true or false without quotes" if kind == "bool" and value in ("true", "false") else None
        raise ConfigError(path, table, key, f"must be {_KIND_NAMES[kind]}, not {value!r}", hint=hint)
    return value


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> StreamingConfig:
    """Validate an already parsed TOML document (``path`` names it in errors)."""
    base_dir = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
    for key, value in data.items():
        if key not in _TOP:
            raise ConfigError(path, key, None, "unknown table",
                              hint=f"a streaming config has the tables {', '.join(_TOP)}")
        _check(path, key, "", value, "table")
    db: str | None = None
    for key, value in data.get("sqlstream", {}).items():
        if key != "db":
            raise _unknown(path, "sqlstream", key, ["db"])
        db = resolve_path(_check(path, "sqlstream", key, value, "path"), base_dir)
    store = data.get("store", {})
    for key in store:
        if key != "streamers":
            raise _unknown(path, "store", key, ["streamers"])
    names = _check(path, "store", "streamers", store.get("streamers", []), "list")
    tables: dict[str, Any] = data.get("streamers", {})
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(path, "streamers", name, f"must be a table, not {table!r}")
        if name not in names:
            raise ConfigError(path, f"streamers.{name}", None, "is configured but not listed in store.streamers",
                              hint=f'add "{name}" to [store] streamers, or remove the table')
    seen: set[str] = set()
    streamers: list[StreamerConfig] = []
    for name in names:
        if name in seen:
            raise ConfigError(path, "store", "streamers", f"lists {name!r} twice")
        seen.add(name)
        table_name = f"streamers.{name}"
        table = dict(tables.get(name, {}))
        kind = table.pop("service", name)
        _check(path, table_name, "service", kind, "str")
        try:
            cls = service_class(kind)
        except InvalidArgument as exc:
            named = "service" in tables.get(name, {})
            raise ConfigError(path, table_name if named else "store", "service" if named else "streamers",
                              f"unknown streaming service {kind!r}",
                              hint=f"known services: {', '.join(known_services())}") from exc
        if "keys" not in table:
            raise ConfigError(path, table_name, "keys", "is missing",
                              hint='list the streams to expose, e.g. keys = ["*"] (an empty list turns it off)')
        keys = _check(path, table_name, "keys", table.pop("keys"), "list")
        options: dict[str, Any] = {}
        for key, value in table.items():
            if key not in cls.OPTIONS:
                raise _unknown(path, table_name, key, ["keys", "service", *cls.OPTIONS])
            spec: Option = cls.OPTIONS[key]
            value = _check(path, table_name, key, value, spec.kind)
            problem = spec.check(value) if spec.check is not None else None
            if problem is not None:
                raise ConfigError(path, table_name, key, problem, hint=spec.help or None)
            options[key] = resolve_path(value, base_dir) if spec.kind == "path" else value
        for key, spec in cls.OPTIONS.items():
            if key not in options:
                if spec.required:
                    raise ConfigError(path, table_name, key, "is missing", hint=spec.help or None)
                options[key] = spec.default
        try:
            options = cls.prepare_options(options, base_dir)
            cls.prepare_keys(tuple(keys), options)
        except OptionError as exc:
            raise ConfigError(path, table_name, exc.key, exc.problem, hint=exc.hint) from exc
        streamers.append(StreamerConfig(name, kind, tuple(keys), options))
    return StreamingConfig(os.path.abspath(path) if not path.startswith("<") else path, db, tuple(streamers))
