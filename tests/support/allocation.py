"""Allocation measurement for the audio-callback tests, with coverage's tracer paused.

The callback path must allocate no sample buffers; the tests measure it with ``tracemalloc``.
Under ``scripts/test`` coverage's tracer runs too, and it allocates as it records lines (2.8 KiB
measured in a window that allows 2 KiB), which is not the code under test. So measurement pauses
coverage (``Coverage.current()``); the same lines run, traced, in each test's warm-up.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Allocated:
    """Bytes traced in the window, relative to its start: the peak, and what is still held."""

    peak: int = 0
    current: int = 0


@contextmanager
def allocations() -> Iterator[Allocated]:
    try:
        import coverage

        cov = coverage.Coverage.current()
    except ImportError:  # coverage is a dev dependency; without it there is nothing to pause
        cov = None
    if cov is not None:
        cov.stop()
    result = Allocated()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        yield result
        current, peak = tracemalloc.get_traced_memory()
        result.peak, result.current = peak - base, current - base
    finally:
        tracemalloc.stop()
        if cov is not None:
            cov.start()
