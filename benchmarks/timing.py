"""Timing shared by the benchmarks: the machine is shared and noisy, so variants are compared in
one run, their calls interleaved round by round, and each gets its median."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per function over ``repeats`` rounds (one call of each per round), after a
    warm-up round whose results are returned too (for checking that the variants agree)."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results
