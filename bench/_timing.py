"""Timing helpers shared by the benchmarks: per-call latencies and their percentiles."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def latencies_us(call: Callable[[], object], repeat: int, warmup: int = 200) -> list[float]:
    """Wall time of each of ``repeat`` calls, in microseconds (GC paused, as it is a noise source)."""
    for _ in range(warmup):
        call()
    gc.collect()
    gc.disable()
    try:
        out = []
        clock = time.perf_counter_ns
        for _ in range(repeat):
            start = clock()
            call()
            out.append((clock() - start) / 1000)
        return out
    finally:
        gc.enable()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), percentile(values, 99)
