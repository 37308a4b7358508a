"""Cold rerank rows: before the gather, when a sample of the candidates' pages is missing from the
page cache, every candidate row's pages are asked for at once (MADV_WILLNEED), so their reads
overlap instead of faulting one row after another; a warm gather costs only the sample's check."""

import mmap
import os

import numpy as np
import pytest

from adaretrieve import osutil
from adaretrieve.search import prefetch, rerank_candidates
from adaretrieve.search.reader import Int8Rows


@pytest.fixture
def rows(tmp_path):
    x = np.random.default_rng(0).normal(size=(3000, 384)).astype(np.float16)  # 768-byte rows: some straddle pages
    np.save(tmp_path / "rows.npy", x)
    return np.load(tmp_path / "rows.npy", mmap_mode="r")


def fake_cache(monkeypatch, resident: bool):
    asked, checked = [], []

    def mincore(addr, length):
        checked.append((addr, length))
        return [resident] * -(-length // mmap.PAGESIZE)

    monkeypatch.setattr(prefetch, "mincore", mincore)
    monkeypatch.setattr(prefetch, "willneed", lambda addr, length: asked.append((addr, length)))
    return asked, checked


def test_a_cold_gather_asks_for_every_candidate_row_at_once(rows, monkeypatch):
    asked, checked = fake_cache(monkeypatch, resident=False)
    ids = np.sort(np.random.default_rng(1).choice(3000, 200, replace=False))
    assert prefetch.prefetch_rows(rows, ids) == 200
    page, base, width = mmap.PAGESIZE, rows.ctypes.data, rows.strides[0]
    assert len(asked) == 200 and 0 < len(checked) <= prefetch.SAMPLE
    for (addr, length), i in zip(asked, ids):
        start = base + int(i) * width
        assert addr % page == 0 and addr <= start and addr + length >= start + width  # the whole row, page-aligned


def test_a_warm_gather_only_checks_a_sample(rows, monkeypatch):
    asked, checked = fake_cache(monkeypatch, resident=True)
    assert prefetch.prefetch_rows(rows, np.arange(0, 3000, 3)) == 0
    assert asked == [] and len(checked) == prefetch.SAMPLE


def test_arrays_in_memory_are_left_alone(monkeypatch):
    asked, checked = fake_cache(monkeypatch, resident=False)
    assert prefetch.prefetch_rows(np.zeros((100, 8), np.float16), np.arange(10)) == 0
    assert asked == checked == []


def test_int8_rows_prefetch_their_codes(rows, tmp_path, monkeypatch):
    asked, _ = fake_cache(monkeypatch, resident=False)
    np.save(tmp_path / "codes.npy", np.zeros((3000, 64), np.int8))
    r = Int8Rows(np.load(tmp_path / "codes.npy", mmap_mode="r"), np.ones(3000, np.float32))
    assert prefetch.prefetch_rows(r, np.arange(5)) == 5 and len(asked) == 5


@pytest.mark.parametrize("nq", [1, 3])
def test_the_rerank_prefetches_cold_rows_and_returns_the_same(rows, monkeypatch, nq):
    asked, _ = fake_cache(monkeypatch, resident=False)
    rng = np.random.default_rng(2)
    q = rng.normal(size=(nq, 384)).astype(np.float32)
    cand = np.stack([rng.choice(3000, 300, replace=False) for _ in range(nq)])
    got = rerank_candidates(q, cand, rows, 384, True, 10)
    assert len(asked) == len(np.unique(cand))
    want = rerank_candidates(q, cand, rows, 384, True, 10, prefetch=False)
    assert len(asked) == len(np.unique(cand))  # no second prefetch when asked not to
    np.testing.assert_array_equal(got[1], want[1])


def test_the_real_page_cache(rows, tmp_path):
    """With the real syscalls: the rows' pages dropped from the cache are asked for, then gathered."""
    from adaretrieve.eval.pagecache import evict, resident_fraction

    if osutil.mincore(rows.ctypes.data - rows.ctypes.data % mmap.PAGESIZE, mmap.PAGESIZE) is None:
        pytest.skip("no mincore here")
    with open(tmp_path / "rows.npy", "rb") as f:
        os.fsync(f.fileno())  # written just now: dirty pages are not dropped
    evict(tmp_path / "rows.npy", [rows])
    if resident_fraction(tmp_path / "rows.npy") not in (None, 0.0):
        pytest.skip("this file system keeps the file cached")
    ids = np.arange(0, 3000, 7)
    assert prefetch.prefetch_rows(rows, ids) == len(ids)
    np.testing.assert_array_equal(rows[ids], np.load(tmp_path / "rows.npy")[ids])
