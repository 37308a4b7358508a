"""Repeat timers: warm-up, repeats, median and p95 (operating points, not single numbers).

Every speed figure in a report comes from one of two helpers with the same defaults: ``time_stages``
(batch 1: one call per query, after ``WARMUP`` untimed calls) and ``time_repeats`` (a whole batch,
``REPEATS`` timed calls after ``WARMUP_BATCHED`` untimed ones, median)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

WARMUP = 2  # untimed batch-1 calls before the timed ones
WARMUP_BATCHED = 1  # untimed whole-batch calls before the timed repeats
REPEATS = 3  # timed whole-batch calls; the median is reported


@dataclass
class Timing:
    """Seconds per call: median, p95, mean over ``repeats`` timed calls after ``warmup`` untimed."""

    p50: float
    p95: float
    mean: float
    repeats: int

    def ms(self) -> dict:
        return {k: (round(v * 1000, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def time_each(fn: Callable[[int], object], n: int, warmup: int = WARMUP) -> Timing:
    """Time ``fn(i)`` for i in 0..n-1 (e.g. one query each) after ``warmup`` calls of fn(0)."""
    return time_stages(lambda i, _: fn(i), n, warmup)[0]


def _timing(samples: list[float]) -> Timing:
    a = np.array(samples)
    return Timing(float(np.median(a)), float(np.percentile(a, 95)), float(a.mean()), len(a))


def time_stages(fn: Callable[[int, dict], object], n: int, warmup: int = WARMUP,
                before: Callable[[int], object] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> tuple[Timing, dict[str, Timing]]:
    """Time ``fn(i, timings)`` for i in 0..n-1, where ``fn`` adds the seconds of its stages to the
    dict ``timings`` (e.g. ``FunnelSearcher.search(..., timings=t)``). Returns the whole call's
    Timing and one Timing per stage, each over the same n calls. ``before(i)``, when given, runs
    untimed ahead of every call, warm-up included (e.g. dropping a file from the page cache)."""
    for _ in range(warmup):
        if before is not None:
            before(0)
        fn(0, {})
    total, stages = [], {}
    for i in range(n):
        if before is not None:
            before(i)
        t: dict = {}
        t0 = clock()
        fn(i, t)
        total.append(clock() - t0)
        for k, v in t.items():
            stages.setdefault(k, []).append(v)
    return _timing(total), {k: _timing(v) for k, v in stages.items()}


def time_repeats(fn: Callable[[dict], object], repeats: int = REPEATS, warmup: int = WARMUP_BATCHED,
                 clock: Callable[[], float] = time.perf_counter) -> tuple[Timing, dict[str, Timing]]:
    """Time ``fn(timings)`` (e.g. a search over every query at once) ``repeats`` times after
    ``warmup`` untimed calls: the whole call's Timing and one per stage ``fn`` reports, as in
    ``time_stages``. Divide by the batch size for a per-query figure."""
    return time_stages(lambda _, t: fn(t), repeats, warmup, clock=clock)
