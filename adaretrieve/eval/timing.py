"""Repeat timers: warm-up, repeats, median and p95 (operating points, not single numbers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Timing:
    """Seconds per call: median, p95, mean over ``repeats`` timed calls after ``warmup`` untimed."""

    p50: float
    p95: float
    mean: float
    repeats: int

    def ms(self) -> dict:
        return {k: (round(v * 1000, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def time_each(fn: Callable[[int], object], n: int, warmup: int = 2) -> Timing:
    """Time ``fn(i)`` for i in 0..n-1 (e.g. one query each) after ``warmup`` calls of fn(0)."""
    for _ in range(warmup):
        fn(0)
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        t.append(time.perf_counter() - t0)
    a = np.array(t)
    return Timing(float(np.median(a)), float(np.percentile(a, 95)), float(a.mean()), n)
