"""tests/helpers_once.py: the shared step runs once per run, and never half-made is seen."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers_once import once_per_run


def test_the_step_runs_once_and_every_caller_gets_the_finished_folder(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    calls: list[Path] = []
    name = f"once-{time.monotonic_ns()}"

    def make(folder: Path) -> None:
        calls.append(folder)
        time.sleep(0.2)  # long enough for the other threads to reach the lock meanwhile
        (folder / "result").write_text("done")

    seen: list[str] = []

    def call() -> None:
        folder = once_per_run(tmp_path_factory, name, make)
        seen.append((folder / "result").read_text())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and seen == ["done"] * 4


def test_a_failed_step_is_tried_again_by_the_next_caller(tmp_path_factory: pytest.TempPathFactory) -> None:
    name = f"once-fail-{time.monotonic_ns()}"
    attempts: list[int] = []

    def make(folder: Path) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    with pytest.raises(RuntimeError):
        once_per_run(tmp_path_factory, name, make)
    once_per_run(tmp_path_factory, name, make)
    once_per_run(tmp_path_factory, name, make)
    assert len(attempts) == 2
