"""Timers and page-cache eviction: deterministic checks (a fake clock; mincore), no timed asserts."""

import os

import numpy as np
import pytest

from adaretrieve.eval.pagecache import evict, resident_fraction
from adaretrieve.eval.timing import REPEATS, WARMUP_BATCHED, time_repeats, time_stages


class FakeClock:
    """perf_counter stand-in: each call to ``work(s)`` advances the time by s seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, s):
        self.now += s


def test_batched_timing_excludes_warmup_and_takes_the_median_of_repeats():
    clock, calls = FakeClock(), []

    def batch(t):
        calls.append(1)
        clock.work(100.0 if len(calls) == 1 else float(len(calls)))  # a slow first call (JIT, cold caches)
        t["stage"] = 0.5

    total, stages = time_repeats(batch, clock=clock)
    assert len(calls) == WARMUP_BATCHED + REPEATS and REPEATS > 1
    assert total.repeats == REPEATS and total.p50 == 3.0  # calls 2, 3, 4: the slow first one is not counted
    assert stages["stage"].p50 == 0.5


def test_before_hook_runs_untimed_ahead_of_every_call():
    clock, order = FakeClock(), []

    def before(i):
        order.append(("before", i))
        clock.work(50.0)

    def fn(i, t):
        order.append(("call", i))
        clock.work(1.0)

    total, _ = time_stages(fn, 3, warmup=1, before=before, clock=clock)
    assert order == [("before", 0), ("call", 0), *[(w, i) for i in range(3) for w in ("before", "call")]]
    assert total.p50 == 1.0 and total.repeats == 3


def test_evict_drops_a_memory_mapped_file_from_the_page_cache(tmp_path):
    path = tmp_path / "rows.npy"
    np.save(path, np.ones((512, 1024), np.float16))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # dirty pages cannot be dropped
    os.close(fd)
    rows = np.load(path, mmap_mode="r")
    float(rows[:, :8].astype(np.float32).sum())  # fault every page in through the mapping
    before = resident_fraction(path)
    if before is None or before == 0:
        pytest.skip("mincore unavailable or the file was never cached")
    evict(path, [rows])
    after = resident_fraction(path)
    if after == before:
        pytest.skip("this filesystem keeps pages cached (tmpfs?)")
    assert after < 0.1
    assert float(rows[0, 0]) == 1.0  # the mapping still reads, from disk
