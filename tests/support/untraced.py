"""Measurements that coverage's tracer would distort, taken with it paused.

Under ``scripts/test`` coverage traces every line of the production code, in this process and
in the ones it spawns. Two kinds of test measure something the tracer changes:

* allocation tests (the audio-callback path must allocate no sample buffers; ``tracemalloc``):
  the tracer allocates as it records lines (2.8 KiB measured in a window that allows 2 KiB);
* the ring's cross-process stress test, whose hard cases (the callback running dry, the ring
  running full) depend on the two processes' relative speeds, which tracing changes.

So they pause coverage (``Coverage.current()``) for the measured part; the same lines run,
traced, in each test's warm-up or in the other tests.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@contextmanager
def coverage_paused() -> Iterator[None]:
    """Coverage's tracer off inside the block, on again after (a no-op when coverage is not running)."""
    try:
        import coverage

        cov = coverage.Coverage.current()
    except ImportError:  # coverage is a dev dependency; without it there is nothing to pause
        cov = None
    if cov is not None:
        cov.stop()
    try:
        yield
    finally:
        if cov is not None:
            cov.start()


@dataclass
class Allocated:
    """Bytes traced in the window, relative to its start: the peak, and what is still held."""

    peak: int = 0
    current: int = 0


@contextmanager
def allocations() -> Iterator[Allocated]:
    """``tracemalloc`` over the block, coverage paused; the figures are filled in on exit."""
    result = Allocated()
    with coverage_paused():
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            yield result
            current, peak = tracemalloc.get_traced_memory()
            result.peak, result.current = peak - base, current - base
        finally:
            tracemalloc.stop()


#: Environment overrides that start a ``skald serve`` (and the actors it spawns) without coverage:
#: coverage's ``patch = ["subprocess"]`` hands its configuration to every child Python through
#: ``COVERAGE_PROCESS_CONFIG``, and an empty value starts nothing. For the one device test whose
#: stage must keep real time while three renders saturate both cores (tests/test_http.py): its
#: tracing cost is what made it miss, not skald; the same code paths are measured in other tests.
UNTRACED_SERVER = {"COVERAGE_PROCESS_CONFIG": "", "COVERAGE_PROCESS_START": ""}
