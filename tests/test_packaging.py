"""Packaging: the built wheel carries the migrations and works from a fresh environment."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers_once import once_per_run

ROOT = Path(__file__).resolve().parent.parent


def _apsw_install_items() -> list[Path]:
    """The top-level files and folders of this interpreter's installed apsw (package,
    bundled libraries, .dist-info), wherever it lives (venv, user or system site)."""
    dist = importlib.metadata.distribution("apsw")
    tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}
    items = [Path(str(dist.locate_file(top))) for top in sorted(tops)]
    assert any(p.name.endswith(".dist-info") for p in items), items
    assert all(p.exists() for p in items), items
    return items


# Build droppings and local state a copy of the tree leaves out.
_NOT_SOURCE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "build", "dist", ".venv", ".git", ".hypothesis", ".mypy_cache",
    ".pytest_cache", "*.db", "*.db-wal", "*.db-shm", ".work",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` (sdist, then a wheel from that sdist) of a copy of the tree, made
    once per run and shared by the xdist workers (helpers_once)."""
    pytest.importorskip("build")

    def build(tmp: Path) -> None:
        src = tmp / "src"
        shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
        proc = subprocess.run([sys.executable, "-m", "build", "-o", str(tmp / "dist"), str(src)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    return once_per_run(tmp_path_factory, "packaging-built", build) / "dist"


def _outer_pip_targets_other_interpreters() -> bool:
    """Whether this interpreter's pip can install into another one (``pip --python``, 22.3+)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (22, 3)


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_creates_a_database(built: Path, tmp_path: Path) -> None:
    """The wheel ``python -m build`` makes (the one the twine test checks), installed in a
    new venv, creates a migrated database."""
    wheels = list(built.glob("sqlstream-*.whl"))
    assert len(wheels) == 1

    env_dir = tmp_path / "venv"
    # An isolated venv (no system site-packages: whether the base interpreter has apsw
    # says nothing, and inside a virtualenv it usually has not). The installed apsw of
    # the interpreter running the tests is exposed to it through a .pth file naming a
    # folder that holds only apsw and its metadata, so pip sees the dependency declared
    # by the wheel as satisfied without a download, and nothing else leaks in.
    # The venv gets no pip of its own where the outer pip can install into it (`pip
    # --python`): ensurepip costs seconds of CPU and tests nothing of ours.
    outer_pip = _outer_pip_targets_other_interpreters()
    venv.EnvBuilder(system_site_packages=False, with_pip=not outer_pip).create(env_dir)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py)] if outer_pip else [str(py), "-m", "pip"]
    deps = tmp_path / "deps"
    deps.mkdir()
    for item in _apsw_install_items():
        (deps / item.name).symlink_to(item, target_is_directory=item.is_dir())
    site_dir = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(site_dir) / "outer-apsw.pth").write_text(f"{deps}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # With dependencies: pip must find the declared apsw requirement met.
    subprocess.run([*pip, "install", "-q", "--no-index", str(wheels[0])], check=True, env=env)
    subprocess.run([*pip, "check"], check=True, env=env, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    script = (
        "import sqlstream, pathlib\n"
        f"assert sqlstream.__file__.startswith({str(env_dir)!r}), sqlstream.__file__\n"
        "import sqlstream.archive.rolling, sqlstream.cli  # subpackages are in the wheel\n"
        "db = sqlstream.open('fresh.db')\n"
        "s = db.create_stream('s')\n"
        "assert s.append(b'x') == 0\n"
        "print(db.query('PRAGMA user_version').rows[0][0])\n"
        "db.close()\n"
    )
    out = subprocess.run([str(py), "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    migrations = sorted(p for p in (ROOT / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert int(out.stdout.strip()) == len(migrations)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The README's test command is the command .ci/run executes."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test-command -->\s*```(?:sh|bash)?\n(.+?)\n```", readme, re.S)
    assert match, "README must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in [line.strip() for line in ci.splitlines()]
    # ...and runs it inside a fresh virtualenv too (the packaging test once failed only there).
    assert "venv" in ci and "-m venv" in ci


def test_py_typed_shipped() -> None:
    assert (ROOT / "sqlstream" / "py.typed").exists()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_quickstart_example_runs(tmp_path: Path) -> None:
    """The README's first quickstart command runs the example end to end, on a new file in a
    temporary directory each run (issue 20, item 6): nothing lands in the working directory,
    and a second run tells the same story on its own new file."""
    work, tmp = tmp_path / "checkout", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py")],
            cwd=work, env=env, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "blocked reader woke" in out.stdout
        assert "finished=True" in out.stdout
        runs.append(out.stdout)
    assert list(work.iterdir()) == []  # nothing written into the checkout
    paths = [Path(run.splitlines()[0].removeprefix("database: ")) for run in runs]
    assert paths[0] != paths[1] and all(p.exists() and p.parent.parent == tmp for p in paths)
    import sqlstream  # noqa: PLC0415

    def streams(path: Path) -> list[tuple[str, int]]:
        with sqlstream.open(str(path), readonly=True) as db:
            return [(i.name, i.next_offset) for i in db.streams()]

    assert streams(paths[0]) == streams(paths[1])  # the same state: no new stream per run
    # A named file is made new too: an existing one is refused, never added to.
    again = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(paths[0])],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists" in again.stderr
    assert streams(paths[0]) == streams(paths[1])


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check_with_license_and_classifiers(built: Path) -> None:
    """What PyPI shows: the README renders, the license is MIT with its file in both
    archives, and the classifiers are valid for upload."""
    pytest.importorskip("twine")
    files = sorted(str(p) for p in built.iterdir())
    assert len(files) == 2, files
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import tarfile
    import zipfile

    (wheel,) = built.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "sqlstream/pytest_plugin.py" in names and "sqlstream/testing.py" in names
    assert "[pytest11]" in entry_points and "sqlstream.pytest_plugin" in entry_points
    assert "License-Expression: MIT" in meta
    for classifier in ("Development Status :: 4 - Beta", "Typing :: Typed", "Topic :: Database",
                       "Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.13",
                       "Operating System :: POSIX :: Linux", "Operating System :: MacOS"):
        assert f"Classifier: {classifier}" in meta
    (sdist,) = built.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        assert any(n.endswith("/LICENSE") and n.count("/") == 1 for n in tf.getnames())


@pytest.mark.slow
def test_sdist_contains_its_tests_and_they_run_from_it(built: Path, tmp_path: Path) -> None:
    """Unpacked, the sdist has the tests with conftest and helpers, docs, examples,
    migrations and benchmarks, and a few of its tests pass there."""
    import tarfile

    (sdist,) = built.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    (top,) = tmp_path.iterdir()
    for needed in ("LICENSE", "README.md", "pyproject.toml", ".ci/run", "tests/conftest.py",
                   "tests/helpers_subscriptions.py", "tests/test_pytest_plugin.py", "docs/architecture.md",
                   "examples/quickstart.py", "migrations/0001_init.sql", "benchmarks/harness.py"):
        assert (top / needed).is_file(), needed
    assert not list(top.rglob("__pycache__")) and not list(top.rglob("*.db"))
    env = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_TEST_INSTALLED"}
    # -n 0: five tests in one process. The sdist's addopts would start an xdist worker per
    # CPU plus one, each importing and collecting on its own: 8-9 s of CPU instead of 2.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_basics.py",
         "tests/test_readme.py::test_every_readme_snippet_is_run_or_an_install_command"],
        cwd=top, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_readme_links_work_on_pypi() -> None:
    """PyPI shows the README without the repository: no relative links or images (files
    are named in text instead), and no #anchors (PyPI's renderer drops heading ids)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)", readme) + re.findall(r"<(?:img|a)\b[^>]*?(?:src|href)=\"([^\"]+)", readme)
    bad = [t for t in targets if not re.match(r"https?://", t)]
    assert not bad, f"README links that break on PyPI: {bad}"
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "sqlstream developers" in license_text
