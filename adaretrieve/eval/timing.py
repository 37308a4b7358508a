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
    return time_stages(lambda i, _: fn(i), n, warmup)[0]


def _timing(samples: list[float]) -> Timing:
    a = np.array(samples)
    return Timing(float(np.median(a)), float(np.percentile(a, 95)), float(a.mean()), len(a))


def time_stages(fn: Callable[[int, dict], object], n: int, warmup: int = 2) -> tuple[Timing, dict[str, Timing]]:
    """Time ``fn(i, timings)`` for i in 0..n-1, where ``fn`` adds the seconds of its stages to the
    dict ``timings`` (e.g. ``FunnelSearcher.search(..., timings=t)``). Returns the whole call's
    Timing and one Timing per stage, each over the same n calls."""
    for _ in range(warmup):
        fn(0, {})
    total, stages = [], {}
    for i in range(n):
        t: dict = {}
        t0 = time.perf_counter()
        fn(i, t)
        total.append(time.perf_counter() - t0)
        for k, v in t.items():
            stages.setdefault(k, []).append(v)
    return _timing(total), {k: _timing(v) for k, v in stages.items()}
