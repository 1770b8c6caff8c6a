"""Every code snippet of the README runs as pasted (issue 9, item 10).

The python and sh blocks are taken from README.md itself, in order, and run in a temporary
directory: first all of them in sequence on one set of files (as a reader following the
README does), then the two tours a reader is most likely to paste again — the API tour
and the command-line tour — twice on the same file. The only blocks not run are the
install commands, which `tests/test_packaging.py` covers.

Each python block runs in a fresh namespace with nothing defined beforehand: a block that
uses a name (``db``, the work a consumer does, an application's loop) defines it, so it
runs as pasted (issue 20, item 6). ``test_python_blocks_define_every_name_they_use`` also
checks this statically, for names used only on paths a run may not take (a handler
called only when records come).
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import subprocess
import symtable
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Blocks whose first line starts with one of these are install commands: not run here.
INSTALL_BLOCKS = ("pip install",)

# Runs the python blocks given as a JSON list, in order, each in a fresh namespace; a
# failure names the block and exits 1.
RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    for index, block in blocks:
        print(f"\\0README block {index}", flush=True)
        namespace = {"__name__": "__readme__"}
        try:
            exec(compile(block, f"<README python block {index}>", "exec"), namespace)
            db = namespace.get("db")
            if db is not None:
                db.close()
        except BaseException:
            traceback.print_exc()
            print(f"README python block {index} failed:\\n{block}", file=sys.stderr)
            sys.exit(1)
    """
)


def readme_blocks() -> list[tuple[int, str, str]]:
    """(index, language, code) of every fenced block of README.md, in order."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.S | re.M)
    return [(i, lang, code) for i, (lang, code) in enumerate(found)]


def runnable_blocks() -> list[tuple[int, str, str]]:
    return [
        (i, lang, code) for i, lang, code in readme_blocks()
        if lang in ("python", "sh") and not code.lstrip().startswith(INSTALL_BLOCKS)
    ]


def find_block(first_line: str) -> tuple[int, str, str]:
    matches = [b for b in runnable_blocks() if b[2].lstrip().startswith(first_line)]
    assert len(matches) == 1, f"expected one README block starting with {first_line!r}"
    return matches[0]


def _env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # The interpreter's own scripts folder too (datasette, sqlstream): a venv's python run
    # without activating the venv still finds the commands installed beside it.
    scripts = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(bin_dir), str(scripts), env.get("PATH", "")])
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with a `sqlstream` command from this checkout and an `app.log` to pipe."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "sqlstream"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sqlstream "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    # The user's log file of the CLI tour (blank lines included: they are skipped).
    (work / "app.log").write_text("".join(f"GET /item/{i} 200\n" + ("\n" if i % 50 == 0 else "")
                                          for i in range(150)))
    return work


def run_python(work: Path, blocks: list[tuple[int, str, str]]) -> dict[int, str]:
    """Run the python blocks in order in one process; each block's stdout by its index."""
    payload = work.parent / "blocks.json"
    payload.write_text(json.dumps([(i, code) for i, _, code in blocks]))
    runner = work.parent / "runner.py"
    runner.write_text(RUNNER)
    proc = subprocess.run([sys.executable, str(runner), str(payload)], cwd=work,
                          env=_env(work.parent / "bin"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    outputs: dict[int, str] = {}
    for part in proc.stdout.split("\0README block ")[1:]:
        index, _, out = part.partition("\n")
        outputs[int(index)] = out
    return outputs


def run_sh(work: Path, block: tuple[int, str, str]) -> str:
    index, _, code = block
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=work,
                          env=_env(work.parent / "bin"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"README sh block {index} failed:\n{code}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def _missing_tools(code: str) -> list[str]:
    return [tool for tool in ("sqlite3", "jq") if re.search(rf"\b{tool}\b ", code) and not shutil.which(tool)]


# Comments after a print that describe what is printed rather than show it literally.
DESCRIBED_OUTPUTS = frozenset({
    "the offset",
    "['/abs/path/archives/orders-20240101T120000.123456Z.events.gz', ...]",
    "RecordId(shard_id, batch_id, batch_index=0..1)",
})


def printed_outputs() -> list[tuple[int, str, str]]:
    """(block index, line, comment) of every README line that prints (a python `print(`, a sh
    `; echo`) and shows its output in a trailing comment, except the DESCRIBED_OUTPUTS."""
    found = []
    for index, lang, code in runnable_blocks():
        for line in code.splitlines():
            prints = r"^\s*print\(" if lang == "python" else r";\s*echo\b"
            match = re.search(prints + r".*?\s#\s(.+)$", line)
            if match and match.group(1).strip() not in DESCRIBED_OUTPUTS:
                found.append((index, line, match.group(1).strip()))
    return found


def _printed(expected: str, out: str) -> bool:
    """Whether `out` has a line equal to `expected`, where `...` in it stands for anything."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, line.rstrip()) for line in out.splitlines())


def test_printed_outputs_are_found_and_compared() -> None:
    """The output check itself: it finds the README's output comments and can fail."""
    shown = {expected for _, _, expected in printed_outputs()}
    assert '[{"id":1},{"id":2}]' in shown and "[{'hello': 1}]" in shown
    assert _printed("[(0, b'c1', ...), (1, b'c2', ...)]", "x\n[(0, b'c1', b'5'), (1, b'c2', b'7')]\n")
    assert not _printed("[(0, b'c1', ...)]", "[(0, None, b'{}')]\n")


@pytest.mark.slow
def test_readme_snippets_run_in_order_on_one_file(workdir: Path) -> None:
    """Every python and sh snippet, pasted in the README's order into one directory, runs
    and prints what its comments say it prints."""
    pending: list[tuple[int, str, str]] = []
    outputs: dict[int, str] = {}
    for block in runnable_blocks():
        if block[1] == "python":
            pending.append(block)
            continue
        if pending:
            outputs.update(run_python(workdir, pending))
            pending = []
        if _missing_tools(block[2]):
            continue  # e.g. no sqlite3 shell on this machine: the block cannot run here
        outputs[block[0]] = run_sh(workdir, block)
    if pending:
        outputs.update(run_python(workdir, pending))
    wrong = [(index, line, expected, outputs[index]) for index, line, expected in printed_outputs()
             if index in outputs and not _printed(expected, outputs[index])]
    assert wrong == [], "README lines whose output is not what their comment shows:\n" + "\n".join(
        f"block {index}: {line.strip()}\n  comment: {expected}\n  printed: {out!r}" for index, line, expected, out in wrong)


def test_readme_api_tour_runs_twice_on_the_same_file(workdir: Path) -> None:
    tour = find_block("import sqlstream\n\ndb = sqlstream.open(\"app.db\")            # creates the file")
    run_python(workdir, [tour])
    run_python(workdir, [tour])


def test_readme_sqlalchemy_snippet_runs_on_a_fresh_file_twice(workdir: Path) -> None:
    """The outbox snippet must create what it needs on a file that does not exist."""
    pytest.importorskip("sqlalchemy")
    snippet = find_block("import sqlalchemy as sa")
    run_python(workdir, [snippet])
    run_python(workdir, [snippet])
    import sqlstream  # noqa: PLC0415

    with sqlstream.open(str(workdir / "app.db"), readonly=True) as db:
        assert [r.value for r in db.stream("orders").read(0, 10)] == [{"id": 1}, {"id": 2}]


@pytest.mark.slow
def test_readme_cli_tour_runs_twice_on_the_same_file(workdir: Path) -> None:
    tour = find_block("export SQLSTREAM_DB=app.db")
    first = run_sh(workdir, tour)
    second = run_sh(workdir, tour)
    assert "orders" in first and "orders" in second  # the sql example prints its rows


def test_every_readme_snippet_is_run_or_an_install_command() -> None:
    """A new README block must be python or sh (so it runs here) or say what it is."""
    for index, lang, code in readme_blocks():
        if lang in ("python", "sh"):
            continue
        # Unlabelled blocks are not code (the layout tree); say so by having no language.
        assert lang == "", f"README block {index} has language {lang!r}, which no test runs:\n{code}"
        assert not code.lstrip().startswith(("import ", "sqlstream ", "$ ")), code


def _undefined_names(code: str) -> set[str]:
    """Names a block reads at module level or as globals in its functions but never binds."""
    top = symtable.symtable(code, "<README block>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    missing: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            global_read = table.get_type() == "module" or symbol.is_global()
            if symbol.is_referenced() and global_read and name not in bound and not hasattr(builtins, name):
                missing.add(name)
        for child in table.get_children():
            walk(child)

    walk(top)
    return missing


def test_python_blocks_define_every_name_they_use() -> None:
    """`charge`, `make_invoice`, `serve_forever`, `log_failure` were never defined (issue 20)."""
    assert _undefined_names("def f():\n    charge(1)\n") == {"charge"}  # the check can fail
    undefined = {index: sorted(names) for index, lang, code in runnable_blocks()
                 if lang == "python" and (names := _undefined_names(code))}
    assert undefined == {}, f"README python blocks use names they never define: {undefined}"


def test_layout_names_the_newest_migration() -> None:
    newest = sorted(p.name for p in (ROOT / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))[-1]
    layout = README.read_text(encoding="utf-8").split("## Layout", 1)[1]
    assert newest in layout, f"the README's Layout section does not name {newest}"
