"""Shared helpers for the subscription, reader, producer and consumer tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A controllable wall clock for ``db.engine.clock``: ack deadlines expire without sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with the checkout importable."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=child_env(), text=True, **kwargs  # type: ignore[call-overload]
    )
