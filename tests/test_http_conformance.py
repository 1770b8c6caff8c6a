"""The official Durable Streams server conformance suite against ``sqlstream serve --http``.

The pinned npm package ``@durable-streams/server-conformance-tests`` is installed into a
cache folder (``$SQLSTREAM_TEST_CACHE``, else ``~/.cache/sqlstream-tests``) on first use;
``.ci/run`` installs it ahead (install_http_conformance). Its own CLI looks for test
files under node_modules, which vitest excludes, so a small vitest config of ours
(``sqlstream-vitest.config.mjs``) includes a runner of ours (``RUNNER``) that calls the suite's ``runConformanceTests`` with its
optional subscription tests switched on (the suite's own runner leaves them out; the
server runs with ``webhooks = true`` for its webhook tests). Every test must pass and
none be skipped; the count is printed. Without node/npm the test skips, except under CI,
where it fails.
"""

from __future__ import annotations

import json
import os
import warnings
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_procs import run_group, start_logged

import sqlstream

SUITE = "@durable-streams/server-conformance-tests"
SUITE_VERSION = "0.3.6"
ROOT = Path(__file__).resolve().parent.parent
VITEST_CONFIG = """\
import { defineConfig } from "vitest/config"
export default defineConfig({
  test: {
    include: ["sqlstream-conformance.test.mjs"],
    exclude: [],
    testTimeout: 30000,
    hookTimeout: 30000,
  },
})
"""

RUNNER = """\
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
runConformanceTests({ baseUrl: process.env.CONFORMANCE_TEST_URL, subscriptions: true })
"""

class ConformanceCount(UserWarning):
    """Carries the conformance count to pytest's warnings summary (not a problem)."""


def cache_dir() -> Path:
    base = os.environ.get("SQLSTREAM_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sqlstream-tests")
    return Path(base) / f"ds-conformance-{SUITE_VERSION}"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the conformance suite: .ci/run installs it)")
    pytest.skip(reason)


def install_suite() -> Path:
    """The folder holding the pinned suite and its vitest config (installed if missing)."""
    folder = cache_dir()
    marker = folder / "node_modules" / "@durable-streams" / "server-conformance-tests" / "package.json"
    if not marker.exists() or json.loads(marker.read_text())["version"] != SUITE_VERSION:
        if shutil.which("npm") is None:
            _missing("npm is not installed")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"private": true}\n')
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"{SUITE}@{SUITE_VERSION}"],
                              cwd=folder, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            _missing(f"npm install {SUITE}@{SUITE_VERSION} failed: {proc.stderr[-500:]}")
    (folder / "sqlstream-vitest.config.mjs").write_text(VITEST_CONFIG)
    (folder / "sqlstream-conformance.test.mjs").write_text(RUNNER)
    return folder


@pytest.mark.slow
def test_official_conformance_suite_passes(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        _missing("node is not installed")
    folder = install_suite()
    path = str(tmp_path / "conformance.db")
    with sqlstream.open(path):
        pass
    config = tmp_path / "serve.toml"
    # A short long-poll timeout keeps the suite's "waits, then 204" tests quick.
    # Webhook subscriptions are off by default; the suite tests them.
    config.write_text('[http]\nlong_poll_timeout = 1\nwebhooks = true\n')
    # The server's log and the suite's output go to files (tests/helpers_procs.py): an
    # unread pipe would stall a server that logs, and vitest's workers would hold a pipe
    # open past a timeout.
    server, line = start_logged(
        [sys.executable, "-m", "sqlstream", "--db", path, "serve", "--config", str(config), "--http", "127.0.0.1:0",
         # The suite checks CORS answers as a public, tokenless server would give them:
         # explicitly opted in here (the default serves no other origin without a token).
         "--cors-origin", "*"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, log=tmp_path / "server.log", marker=" at http://")
    try:
        url = line.split(" at ")[1].split("/v1/stream")[0]
        report = tmp_path / "report.json"
        run = run_group(
            ["npx", "vitest", "run", "--config", "sqlstream-vitest.config.mjs", "--reporter=json", f"--outputFile={report}"],
            cwd=folder, timeout=900, log=tmp_path / "vitest.log",
            env={**os.environ, "CONFORMANCE_TEST_URL": url})
        assert report.exists(), run.stdout[-2000:]
        result = json.loads(report.read_text())
        failed = [f"{' > '.join(a['ancestorTitles'][1:])} :: {a['title']} :: "
                  f"{' / '.join(a['failureMessages'][0].splitlines()[:3])[:400]}"
                  for f in result["testResults"] for a in f["assertionResults"] if a["status"] == "failed"]
        count = (f"Durable Streams conformance {SUITE_VERSION}: {result['numPassedTests']} passed, "
                 f"{result['numFailedTests']} failed, {result['numPendingTests']} skipped, "
                 f"of {result['numTotalTests']}")
        print("\n" + count)
        # The suite runs on xdist workers, whose prints CI does not show: a warning reaches
        # the summary at the end of every run.
        warnings.warn(ConformanceCount(count), stacklevel=1)
        assert not failed, "\n".join(failed)
        assert result["numPendingTests"] == 0  # the subscription tests ran too
        assert result["numPassedTests"] > 300
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(30) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
