"""Kill storm (bounded for CI): writers and consumers SIGKILLed at random, over and over.

The storm itself lives in ``benchmarks/killstorm.py`` (``python -m benchmarks.killstorm
--seconds 300`` is the long run whose figures the README quotes); this runs it briefly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

# Loaded from its file: the benchmarks folder is not an installed package.
_spec = importlib.util.spec_from_file_location(
    "benchmarks_killstorm", Path(__file__).resolve().parent.parent / "benchmarks" / "killstorm.py"
)
assert _spec is not None and _spec.loader is not None
killstorm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = killstorm  # dataclasses look their module up there
_spec.loader.exec_module(killstorm)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_kill_storm_loses_nothing_and_leaves_no_partial_batch(tmp_path: Path) -> None:
    """Guarantees under repeated SIGKILLs of 2 writers (appends, extends of up to 450
    records, transactions across two streams) and 2 exactly-once consumers (fetch +
    append + ack in one transaction): every write that returned is in the file, no
    batch or transaction is partial, nothing is stored or processed twice, offsets are
    gap-free, and check() passes."""
    fig = killstorm.run(tmp_path, 10.0, writers=2, consumers=2, interval=(0.05, 0.3), seed=9)
    print(f"\nkill storm: {dataclasses.asdict(fig)}")
    # Meaningful only if both kinds of process really were killed while working.
    assert fig.kills >= 10 and fig.writer_kills >= 3 and fig.consumer_kills >= 3, fig
    assert fig.acknowledged > 1_000 and fig.consumed_before_drain > 0, fig
    assert fig.out_of_row > 100, fig  # large payloads (stored in payloads) were written and killed too
    assert (fig.lost, fig.partial, fig.duplicates, fig.gaps, fig.corrupt) == (0, 0, 0, 0, 0), fig
    assert fig.check_ok, fig
