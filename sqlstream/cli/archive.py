"""The file commands of the ``sqlstream`` CLI: ``export``, ``import``, ``archive cat``, ``block cat``.

Registered by :mod:`sqlstream.cli.main` so the archive code stays in one place.
Output follows the CLI's contract: human lines by default, ``--json`` objects one per
line, ``Error:``/``Hint:`` on stderr and exit 1 on failure. ``archive cat`` always
prints JSON lines: ``file``, ``index``, ``metadata`` (object of strings) and
``payload`` (the text when the payload is UTF-8, else base64 with ``"encoding":
"base64"``); consumers must ignore fields they do not know. ``block cat`` prints the
file streaming service's block files the same way (see :func:`cmd_block_cat`). A reader
that goes away (``| head``) ends them quietly, as it ends ``read``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from ..errors import ArchiveError, EndOfArchive, InvalidArgument, RecordTooLarge, SqlstreamError
from .args import CommandFactory, HelpFormatter, db_path, open_db, strict_float, strict_int
from .output import CliError, dump, isatty, progress_bar, render_table, report_error

# The archive package (compression, storage drivers, roll managers) is imported by the
# commands that use it, not by every `sqlstream` invocation: start-up time, see
# tests/test_startup.py.
if TYPE_CHECKING:
    from ..archive.export import ExportProgress
    from ..archive.importing import ImportResult


def parse_storage(text: str) -> dict[str, Any]:
    """A storage configuration from the command line.

    ``{"driver": ...}`` JSON, or a shorthand: ``filesystem:DIR``, ``sqlite:DB``,
    ``s3://BUCKET[/PREFIX]`` (credentials and endpoint from the usual AWS environment).
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"--storage is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InvalidArgument("--storage JSON must be an object with a 'driver' key")
        return dict(parsed)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        config: dict[str, Any] = {"driver": "s3", "bucket": bucket, "prefix": prefix}
        if os.environ.get("AWS_ENDPOINT_URL"):
            config["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        return config
    driver, sep, arg = text.partition(":")
    if sep and driver == "filesystem":
        return {"driver": "filesystem", "root": arg}
    if sep and driver == "sqlite":
        return {"driver": "sqlite", "path": arg}
    raise InvalidArgument(
        f"cannot read --storage {text!r}",
        hint="use filesystem:DIR, sqlite:DB, s3://BUCKET/PREFIX or a JSON object with a 'driver' key",
    )


# --------------------------------------------------------------------------- commands


def cmd_export_status(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """``export --status``: each export's progress and lag, read-only.

    Lag is the stream's next offset minus the export's ``exported_offset`` (records not
    yet in any archive); ``delivered`` is the frontier of records in closed archives.
    """
    from ..archive.export import export_status

    with open_db(args, write=False) as db:
        if args.name is not None:
            names = [args.name]
        else:
            names = [row[0] for row in db.query("SELECT name FROM exports ORDER BY name").rows]
        statuses = [export_status(db, n) for n in names]
        next_offsets = {i.name: i.next_offset for i in db.streams()}
    wanted = set(args.streams)
    docs: list[dict[str, Any]] = []
    for st in statuses:
        streams = {
            stream: {"exported_offset": exported, "delivered_offset": delivered,
                     "next_offset": next_offsets.get(stream, exported),
                     "lag": max(0, next_offsets.get(stream, exported) - exported)}
            for stream, (exported, delivered) in st.streams.items()
            if not wanted or stream in wanted
        }
        if wanted and not streams:
            continue
        docs.append({"export": st.name, "directory": st.directory, "files": st.files, "pending": st.pending,
                     "streams": streams})
    if args.json:
        out.write("".join(dump(d) + "\n" for d in docs))
        return 0
    columns = ["export", "stream", "exported", "delivered", "next", "lag", "files", "pending", "directory"]
    rows = [
        (d["export"], stream, s["exported_offset"], s["delivered_offset"], s["next_offset"], s["lag"],
         d["files"], d["pending"], d["directory"])
        for d in docs for stream, s in d["streams"].items()
    ]
    if rows or isatty(out):
        out.write("".join(line + "\n" for line in render_table(columns, rows)))
    return 0


def cmd_export(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Export streams to archives (progress bar on a terminal; Ctrl-C ends --follow cleanly)."""
    if args.status:
        return cmd_export_status(args, out, err)
    if not args.streams:
        raise CliError("name the streams to export", hint="e.g. `sqlstream export orders --dir archives`; "
                       "`sqlstream export --status` shows the progress of past exports")
    if args.dir is None:
        raise CliError("--dir is required to export", hint="e.g. `sqlstream export orders --dir archives`")

    from ..archive.export import export, trim_exported

    storage = parse_storage(args.storage) if args.storage else None
    stop = threading.Event()
    bar = progress_bar(err, f"export {args.name or '+'.join(args.streams)}")
    on_progress: Callable[[ExportProgress], None] | None = None
    if bar is not None:
        def on_progress(p: ExportProgress) -> None:
            bar.update(p.records, p.total, f"{p.files} archive(s)")

    previous = None
    if args.follow and threading.current_thread() is threading.main_thread():
        def on_sigint(signum: int, frame: FrameType | None) -> None:
            stop.set()  # finish and close the current archive, then return

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with open_db(args, write=True) as db:
            result = export(
                db, args.streams, args.dir, name=args.name, template=args.template,
                roll_size_mb=args.roll_size_mb, roll_minutes=args.roll_minutes, compress=args.compress,
                storage=storage, storage_prefix=args.storage_prefix, follow=args.follow,
                version=args.format_version, stop=stop, progress=on_progress,
            )
            trimmed = trim_exported(db, result.name) if args.trim else {}
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    if args.json:
        out.write(dump({
            "export": result.name, "records": result.records, "bytes": result.bytes, "files": result.files,
            "recovered": result.recovered, "skipped": result.skipped, "offsets": result.offsets,
            "trimmed": trimmed,
        }) + "\n")
        return 0
    out.write("".join(f"{f}\n" for f in result.files))
    summary = f"exported {result.records:,} record(s) to {len(result.files)} archive(s)"
    if result.recovered:
        summary += f", finishing {result.recovered} from an interrupted run"
    err.write(summary + "\n")
    if result.skipped:
        err.write(f"note: {result.skipped} record(s) were trimmed by retention before they could be exported\n")
    if trimmed:
        err.write(f"trimmed {sum(trimmed.values()):,} exported record(s)\n")
    return 0


def cmd_import(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Import archives back into streams (idempotent).

    The database must exist unless ``--create-db`` is given (only ``create`` makes a new
    file otherwise). ``--secret`` unlocks the secret stream it belongs to; ``--rename
    SRC=DST`` imports a stream's records under another name. A pattern that matches no
    archive is an error (exit 1), so scripts notice a wrong path.
    """

    path = db_path(args)
    if not args.create_db and not os.path.exists(path):
        raise CliError(
            f"no database at {os.path.abspath(path)}",
            hint=f"to restore into a new file, add --create-db; or create it with `sqlstream --db {path} create NAME`",
        )

    from ..archive.importing import import_archives

    storage = parse_storage(args.storage) if args.storage else None
    rename: dict[str, str] = {}
    for item in args.rename or []:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise CliError(f"--rename takes SRC=DST, not {item!r}", hint="e.g. --rename orders=restored/orders")
        rename[source] = target
    bar = progress_bar(err, f"import {args.pattern}", unit="archive")
    on_progress: Callable[[ImportResult], None] | None = None
    if bar is not None:
        def on_progress(r: ImportResult) -> None:
            bar.update(len(r.files), None, f"{r.imported:,} record(s) imported")
    with open_db(args, write=True, create=args.create_db) as db:
        # A write secret names its stream, so `--secret S` needs no stream name.
        secrets = {db.writer(secret).name: secret for secret in args.secret or []}
        try:
            result = import_archives(db, args.pattern, args.dir, storage=storage, streams=args.stream or None,
                                     create=not args.no_create, secrets=secrets, rename=rename,
                                     progress=on_progress, allow_gap=args.allow_gap)
        except RecordTooLarge as exc:
            raise _too_large_here(exc, "import reads records up to the database's max_record_bytes "
                                       "(sqlstream.open(..., max_record_bytes=N) in Python)") from exc
        finally:
            if bar is not None:
                bar.close()
    if not result.files:
        raise CliError(
            f"no archive matches {args.pattern!r} in {args.dir}",
            hint="check the pattern and --dir (quote the pattern so the shell does not expand it)",
        )
    if args.json:
        out.write(dump({
            "files": result.files, "records": result.records, "imported": result.imported,
            "skipped": result.skipped, "streams": result.streams, "torn": result.torn,
        }) + "\n")
    else:
        out.write(
            f"imported {result.imported:,} record(s) from {len(result.files)} archive(s); "
            f"{result.skipped:,} already present\n"
        )
        for label in result.torn:
            err.write(f"note: {label} ends in a torn record, which was ignored\n")
    return 0


def _too_large_here(exc: RecordTooLarge, hint: str) -> ArchiveError:
    """The error with a command-line hint (the CLI's PayloadTooLarge hint is about appends)."""
    return ArchiveError(str(exc.args[0]), hint=hint)


def _put_bytes(line: dict[str, Any], field: str, data: bytes, encoding_field: str) -> None:
    """``line[field]``: the text when ``data`` is UTF-8, else its base64 with ``line[encoding_field] = "base64"``."""
    try:
        line[field] = data.decode("utf-8")
    except UnicodeDecodeError:
        line[field] = base64.b64encode(data).decode("ascii")
        line[encoding_field] = "base64"


def cmd_archive_cat(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print every record of the archive files as JSON lines."""
    from ..archive.format import DEFAULT_MAX_RECORD_BYTES, ArchiveReader

    limit = DEFAULT_MAX_RECORD_BYTES if args.max_record_bytes is None else args.max_record_bytes

    status = 0
    for filename in args.files:
        try:
            with ArchiveReader(filename, max_record_bytes=limit) as reader:
                while True:
                    try:
                        metadata, payload = reader.read()
                    except EndOfArchive:
                        break
                    line: dict[str, Any] = {"file": filename, "index": reader.index - 1, "metadata": metadata}
                    _put_bytes(line, "payload", payload, "encoding")
                    out.write(dump(line) + "\n")
        except RecordTooLarge as exc:
            out.flush()
            report_error(_too_large_here(exc, "if the file is trusted, raise the limit with --max-record-bytes"), err)
            status = 1
        except (ArchiveError, SqlstreamError) as exc:
            out.flush()
            report_error(exc, err)
            status = 1
        except BrokenPipeError:
            raise  # the reader went away (`| head`): main() ends quietly, as for `read`
        except OSError as exc:
            report_error(ArchiveError(f"{filename}: {exc.strerror or exc}"), err)
            status = 1
    return status


def cmd_block_cat(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Print the file streaming service's block files as JSON lines.

    A data file (``[prefix-]block-H-data``) gives one line per pair: ``file``, ``index``,
    ``store_key`` (the stream), ``key``, ``value`` (each UTF-8 text, else base64 with
    ``key_encoding``/``value_encoding`` ``"base64"``) and ``delete``. A meta file (a name
    ending in ``-meta``) gives one line: ``file``, ``height``, ``commit_time_us`` and
    ``streams`` (``stream``, ``first_offset``, ``last_offset``). A file that cannot be read
    or is not a block file is reported on stderr and the others are still printed (exit 1).
    """
    from ..streaming.file import decode_data, decode_meta, read_file  # see the note at the top

    status = 0
    for filename in args.files:
        try:
            data = read_file(filename)
            if filename.endswith("-meta"):
                meta = decode_meta(data, filename)
                out.write(dump({"file": filename, "height": meta.height, "commit_time_us": meta.commit_time_us,
                                "streams": [{"stream": s, "first_offset": f, "last_offset": last}
                                            for s, f, last in meta.streams]}) + "\n")
                continue
            for index, pair in enumerate(decode_data(data, filename)):
                line: dict[str, Any] = {"file": filename, "index": index, "store_key": pair.store_key}
                _put_bytes(line, "key", pair.key, "key_encoding")
                _put_bytes(line, "value", pair.value, "value_encoding")
                line["delete"] = pair.delete
                out.write(dump(line) + "\n")
        except SqlstreamError as exc:
            out.flush()
            report_error(exc, err)
            status = 1
    return status


# --------------------------------------------------------------------------- parser


def _positive_float(text: str) -> float:
    value = strict_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 2**31:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 2**31, not {text!r}")
    return int(text)


def register(command: CommandFactory) -> None:
    """Add ``export``, ``import`` and ``archive cat`` to the CLI's command group."""
    p = command(
        "export", cmd_export, "Export streams to rolled archive files (incremental, resumable).",
        "sqlstream export orders --dir archives --roll-size-mb 64 --compress gzip\n"
        "sqlstream export orders audit --dir staging --storage s3://my-bucket/archives --follow",
        details="Each run exports the records not yet exported under --name (default: the\n"
        "stream names joined by '+'); progress is kept in the database, so an export that\n"
        "is stopped (even killed) and re-run writes every record to exactly one closed\n"
        "archive. Prints the closed archives, one per line. --follow keeps exporting as\n"
        "records arrive until the streams are sealed or Ctrl-C (which closes the current\n"
        "archive first). A progress bar is drawn on stderr when it is a terminal.\n\n"
        "--status exports nothing: it lists each export (or --name, or those of the named\n"
        "STREAMs) with, per stream, exported (records below it are in archives),\n"
        "delivered (below it: in closed archives), the stream's next offset, lag (records\n"
        "not exported yet), files and pending archives.",
    )
    p.add_argument("streams", metavar="STREAM", nargs="*")
    p.add_argument("--status", action="store_true", help="show the progress and lag of exports; export nothing")
    p.add_argument("--dir", metavar="DIR", help="where archives are written (or staged); required to export")
    p.add_argument("--name", help="the export's name, which keys its progress")
    p.add_argument("--template", metavar="T", help="strftime file-name template (UTC)")
    p.add_argument("--roll-size-mb", type=_positive_float, default=100.0, metavar="MB",
                   help="close an archive once it reaches MB MiB (default 100)")
    p.add_argument("--roll-minutes", type=_positive_float, metavar="MIN",
                   help="close an archive once it has been open MIN minutes")
    p.add_argument("--compress", choices=["gzip", "zstd"], help="compress closed archives (zstd: the zstd extra)")
    p.add_argument("--storage", metavar="SPEC",
                   help="upload archives: filesystem:DIR, sqlite:DB, s3://BUCKET/PREFIX or JSON")
    p.add_argument("--storage-prefix", default="", metavar="P", help="object path prefix in --storage")
    p.add_argument("--follow", action="store_true", help="keep exporting as records arrive")
    p.add_argument("--format-version", type=strict_int, choices=[1, 2], default=2,
                   help="archive record format (1: shoebox-compatible, no checksums)")
    p.add_argument("--trim", action="store_true", help="afterwards, delete the exported records from the streams")

    p = command(
        "import", cmd_import, "Load exported archives back into streams (idempotent).",
        "sqlstream --db restored.db import --create-db 'archives/orders-*.events*'\n"
        "sqlstream import 'orders-*' --dir archives --storage s3://my-bucket",
        details="Records keep their offsets, byte positions and timestamps; records a stream\n"
        "already holds are skipped, so importing the same archives twice adds nothing.\n"
        "PATTERN is matched against file names (or object names under --dir with\n"
        "--storage), read in name order; matching nothing is an error. The database\n"
        "must exist unless --create-db is given. Streams created with --secret take\n"
        "records only with --secret; --rename SRC=DST imports under another name.\n"
        "Missing records (a torn or absent archive before the first one of a stream)\n"
        "are an error and store nothing of that stream, so a rerun with good copies\n"
        "completes it; --allow-gap starts the stream past them instead, for good.",
    )
    p.add_argument("pattern", metavar="PATTERN")
    p.add_argument("--dir", default=".", metavar="DIR", help="directory (or object prefix) to search (default .)")
    p.add_argument("--storage", metavar="SPEC", help="read archives from storage (see export --storage)")
    p.add_argument("--stream", action="append", metavar="NAME", help="import only this stream; repeatable")
    p.add_argument("--no-create", action="store_true", help="refuse streams that do not exist yet")
    p.add_argument("--create-db", action="store_true", help="create the database file if it does not exist")
    p.add_argument("--secret", action="append", metavar="S",
                   help="write secret of a secret stream to import into; repeatable")
    p.add_argument("--rename", action="append", metavar="SRC=DST",
                   help="import archive stream SRC into stream DST; repeatable")
    p.add_argument("--allow-gap", action="store_true",
                   help="start an empty stream where the archives do, even past missing records "
                        "(they can never be imported afterwards)")

    p = command(
        "archive", lambda a, o, e: 2, "Inspect archive files.",
        "sqlstream archive cat archives/orders-20240101T000000.000000Z.events | jq .metadata.offset",
        json_output=False,
    )
    sub = p.add_subparsers(dest="archive_command", metavar="SUBCOMMAND", required=True)
    cat = sub.add_parser(
        "cat", help="Print the records of archive files as JSON lines.",
        description="Print the records of archive files (version 1 or 2, gzip/zstd or not) as JSON\n"
        "lines: file, index, metadata, payload (UTF-8 text, else base64 with\n"
        "\"encoding\": \"base64\"). A damaged or torn file is reported on stderr\n"
        "(exit 1) after its intact records are printed.",
        epilog="Example:\n  sqlstream archive cat a.events b.events.gz\n",
        formatter_class=HelpFormatter,
    )
    cat.add_argument("files", metavar="FILE", nargs="+")
    cat.add_argument("--max-record-bytes", type=_positive_int, default=None, metavar="N",
                     help="refuse records larger than N bytes, decompressed (default 16 MiB)")
    cat.set_defaults(handler=cmd_archive_cat)

    p = command(
        "block", lambda a, o, e: 2, "Inspect the block files of the file streaming service.",
        "sqlstream block cat stream-out/app-block-12-data | jq .value",
        json_output=False,
    )
    sub = p.add_subparsers(dest="block_command", metavar="SUBCOMMAND", required=True)
    cat = sub.add_parser(
        "cat", help="Print the pairs of block files as JSON lines.",
        description="Print the Cosmos StoreKVPair messages of data files ([prefix-]block-H-data) as\n"
        "JSON lines: file, index, store_key (the stream), key, value (UTF-8 text, else\n"
        "base64 with \"key_encoding\"/\"value_encoding\": \"base64\"), delete. A meta file\n"
        "(name ending in -meta) prints one line: height, commit_time_us, streams. A\n"
        "damaged file is reported on stderr (exit 1); the other files are still printed.",
        epilog="Example:\n  sqlstream block cat stream-out/block-12-data stream-out/block-12-meta\n",
        formatter_class=HelpFormatter,
    )
    cat.add_argument("files", metavar="FILE", nargs="+")
    cat.set_defaults(handler=cmd_block_cat)


__all__ = ["register", "parse_storage", "cmd_export", "cmd_import", "cmd_archive_cat", "cmd_block_cat"]
