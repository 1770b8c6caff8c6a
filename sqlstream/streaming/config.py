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

from ..errors import InvalidArgument, InvalidName
from ..validation import check_name
from .services import Option, OptionError, Output, Service, known_services, resolve_path, service_class

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
    #: The ``[kafka]`` table as written (validated by ``sqlstream.kafka.config.settings_from_config``,
    #: which needs the optional ``kafka`` extra); None when the file has none.
    kafka: Mapping[str, Any] | None = None
    #: The ``[http]`` table as written (validated by ``sqlstream.http.config``, which needs
    #: the optional ``http`` extra); None when the file has none.
    http: dict[str, Any] | None = None

    def build(self) -> list[Service]:
        """One service per configured streamer, in ``store.streamers`` order."""
        return [s.build() for s in self.streamers]


_TOP = {"sqlstream": "table", "store": "table", "streamers": "table", "kafka": "table", "http": "table"}
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
        except RecursionError:
            # tomllib parses nested arrays and inline tables recursively.
            raise ConfigError(path, "file", None, "not valid TOML: arrays or tables nested too deeply",
                              hint="a streaming config needs a few levels at most") from None
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


def _unicode(value: Any) -> bool:
    """False for a str (or list of str) holding a lone surrogate, which no file or database
    name can hold (TOML cannot express one; a dict given to parse_config can)."""
    try:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                item.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(path: str, table: str, key: str, value: Any, kind: str) -> Any:
    ok = {
        "str": isinstance(value, str),
        "path": isinstance(value, str) and value != "" and "\x00" not in value,
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "table": isinstance(value, dict),
        "list": isinstance(value, list) and all(isinstance(v, str) and v for v in value),
    }[kind] and _unicode(value)
    if not ok:
        hint = "write true or false without quotes" if kind == "bool" and value in ("true", "false") else None
        raise ConfigError(path, table, key, f"must be {_KIND_NAMES[kind]}, not {value!r}", hint=hint)
    return value


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> StreamingConfig:
    """Validate an already parsed TOML document (``path`` names it in errors).

    Everything a service needs is checked here, before anything runs: a configuration
    this returns builds its services without error. Raises :class:`ConfigError` (an
    ``InvalidArgument``) for anything else, ``data`` that is not a table included.
    """
    if not isinstance(path, str):
        raise InvalidArgument(f"path names the configuration in errors: a str, not {type(path).__name__}")
    if not isinstance(data, Mapping):
        raise ConfigError(path, "file", None, f"a configuration is a table (a dict), not {type(data).__name__}",
                          hint="pass the dict tomllib.load returns, or use load_config(PATH)")
    if not all(isinstance(key, str) for key in data):
        raise ConfigError(path, "file", None, "table names are strings")
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
        if not isinstance(name, str):
            raise ConfigError(path, "streamers", None, f"table names are strings, not {name!r}")
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
        try:
            # The name keys the service's cursor in the database (and the archive
            # service's export): a name as streams have.
            check_name(name, "streamer")
        except InvalidName as exc:
            raise ConfigError(path, "store", "streamers", str(exc.args[0]), hint=exc.hint) from None
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
    _refuse_overlaps(path, streamers)
    return StreamingConfig(os.path.abspath(path) if not path.startswith("<") else path, db, tuple(streamers),
                           data.get("kafka"), data.get("http"))


def _refuse_overlaps(path: str, streamers: list[StreamerConfig]) -> None:
    """ConfigError naming both streamers when two of them write to the same place.

    Each service says where it writes (:meth:`Service.outputs`); two streamers whose
    outputs overlap would write over each other's files, so the whole configuration is
    refused before anything runs, whatever their types. A streamer turned off (``keys``
    empty) writes nothing and overlaps nothing.
    """
    claimed: list[tuple[str, Output]] = []
    for streamer in streamers:
        if not streamer.keys:
            continue
        mine = service_class(streamer.kind).outputs(streamer.name, streamer.options)
        for other, output in claimed:
            for out in mine:
                if out.overlaps(output):
                    raise ConfigError(
                        path, f"streamers.{streamer.name}", None,
                        f"writes to the same place as [streamers.{other}]: {out}",
                        hint="give each streamer its own directory (write_dir/dir), or file streamers "
                             "different prefixes",
                    )
        claimed += [(streamer.name, out) for out in mine]
