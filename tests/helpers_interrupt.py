"""Interrupt a call at each point where CPython may deliver a signal (Ctrl-C), to prove
that no such point leaves a lock held or a registration counted for ever."""

from __future__ import annotations

import dis
import gc
import inspect
import sys
from collections.abc import Callable
from typing import Any

_YIELD = dis.opmap["YIELD_VALUE"]
_GENERATOR = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def interrupted_at(step: int, call: Callable[[], object]) -> bool:
    """Run ``call()`` with a KeyboardInterrupt raised at its ``step``-th point where CPython
    may deliver a signal (a Python function starting, any function returning to its
    caller); True if it was raised (the call had that many points). A profile function
    sees exactly those events, C functions' returns included (a trace function's line
    events would also interrupt where no signal can land, e.g. between a with block's
    end and its __exit__ call). Only the calling thread is profiled: signals go to the
    main thread only, so other threads' frames are not interrupted."""
    events = 0

    def profiler(frame: Any, event: str, arg: Any) -> None:
        nonlocal events
        # In sqlstream's frames, and where a function returns into one (e.g. the return of
        # Condition.__enter__ into a with statement of ours); the standard library's own
        # insides are not ours to make interrupt-safe.
        ours = "sqlstream" in frame.f_code.co_filename
        if event == "return" and frame.f_back is not None:
            ours = ours or "sqlstream" in frame.f_back.f_code.co_filename
            if frame.f_code.co_flags & _GENERATOR and frame.f_code.co_code[frame.f_lasti] == _YIELD:
                # A yield, not a return. Raising here would discard the suspended
                # generator without running its finally blocks, which no signal can do: a
                # real one lands in the caller once the yield has reached it (modelled by
                # the caller's next event, e.g. contextlib's __enter__ returning to us).
                ours = False
        if event in ("call", "return", "c_return") and ours:
            events += 1
            if events == step:
                raise KeyboardInterrupt

    # The cyclic GC is kept off during the call: a finalizer it would run in the middle
    # (e.g. an old notifier's weakref.finalize, in sqlstream's code) counted as a point of
    # the call, and the interrupt raised there was ignored, as Python ignores any exception
    # in a finalizer, so the call ran to its end as if it had no more points (seen once in
    # CI). With the GC off, earlier garbage cannot be finalized during the call; it is
    # also collected once, before a test's first step (not at every step: a collection
    # costs 50-100 ms in a worker that ran hundreds of tests, and the tests here take
    # hundreds of steps: it made them 20-60 times slower in the whole suite).
    if step == 1:
        gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    sys.setprofile(profiler)
    try:
        call()
    except KeyboardInterrupt:
        return True
    finally:
        sys.setprofile(None)
        if collecting:
            gc.enable()
    return False
