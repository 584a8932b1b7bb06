"""Timing shared by the benchmark scripts: alternating rounds, so outside load falls on every variant alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times in ms of each function: one warm-up call each, then `repeats` rounds of one call of each."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time in ms of each function, measured by `interleaved_times`."""
    return {name: statistics.median(values) for name, values in interleaved_times(functions, repeats).items()}
