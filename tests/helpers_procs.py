"""Child processes for tests that cannot block the run: output goes to files, not pipes.

A pipe nobody reads fills at 64 KiB and then blocks the child that writes to it (a server
logging refusals stalls mid-request), and a pipe inherited by a grandchild (a test runner's
workers) keeps ``subprocess.run(..., timeout=)`` waiting for ever after the child itself was
killed. Files have neither problem, and a process group ends the grandchildren too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_group(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float,
              log: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a process group of its own with stdout and stderr in ``log``.

    On ``timeout`` the whole group is killed (grandchildren included) and
    ``subprocess.TimeoutExpired`` is raised; the returned ``stdout`` is the log's text."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return subprocess.CompletedProcess(list(argv), code, log.read_text(errors="replace"), "")


def start_logged(argv: Sequence[str], *, env: Mapping[str, str], log: Path, marker: str,
                 timeout: float = 60) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``argv`` with stderr (and stdout) in ``log`` and return it with the first line
    holding ``marker`` once it appears. A child that exits first, or ``timeout`` seconds
    without the line, is killed and fails the test with the log's tail."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return proc, line
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise AssertionError(f"{argv[0]} did not print {marker!r} (exit {proc.returncode}): "
                                 f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
