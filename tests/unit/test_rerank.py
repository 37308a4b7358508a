"""Rerank without waste (issue 13, item 2): the fast path (rows at their stored width taken as
stored, float16 scored a block at a time, one sorted gather) against brute force on random data."""

import numpy as np
import pytest

from adaretrieve.search import rerank_candidates
from adaretrieve.search.reader import Int8Rows


def unit_rows(n, d, seed, dtype=np.float16):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def brute_force(q, cand, rows, dim, renorm, top):
    """Per query: its candidates' rows cut to dim, renormalised only when asked, dotted with the query."""
    out_s, out_r = [], []
    for qi, c in zip(q, cand):
        c = c[c >= 0]
        x = np.asarray(rows[c], dtype=np.float64)[:, :dim]
        if renorm:
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ qi.astype(np.float64)
        order = np.argsort(-s, kind="stable")[:top]
        out_s.append(s[order])
        out_r.append(c[order])
    return out_s, out_r


def check(q, cand, rows, dim, renorm, top, normalize=True):
    s, r = rerank_candidates(q, cand, rows, dim, normalize, top)
    ws, wr = brute_force(q, cand, rows, dim, renorm, top)
    for i in range(len(q)):
        n = len(wr[i])
        np.testing.assert_allclose(s[i, :n], ws[i], atol=2e-5, rtol=1e-5)
        # equal scores may swap places; every row's score must match its place
        assert set(r[i, :n]) == set(wr[i]) and (r[i, n:] == -1).all()
        got = dict(zip(wr[i], ws[i]))
        np.testing.assert_allclose([got[x] for x in r[i, :n]], s[i, :n], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("nq", [1, 3, 40])  # 40 queries with little overlap: the per-query branch
@pytest.mark.parametrize("dim", [768, 100])  # the stored width (no renormalisation) and a prefix (renormalised)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_fast_path_equals_brute_force(tmp_path, nq, dim, dtype):
    n, k = 6000, 1000  # 40 queries reach more than 4k distinct rows: the per-query branch
    path = tmp_path / "rows.npy"
    np.save(path, unit_rows(n, 768, 0, dtype))
    rows = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(1)
    q = rng.normal(size=(nq, dim)).astype(np.float32)
    cand = np.stack([rng.choice(n, k, replace=False) for _ in range(nq)])
    cand[0, -5:] = -1  # fewer candidates than k for one query
    check(q, cand, rows, dim, renorm=dim < 768, top=1000)
    check(q, cand, rows, dim, renorm=dim < 768, top=10)


def test_rows_at_their_stored_width_are_taken_as_stored():
    """Stored rows of a normalising index are unit vectors already: at their full width they are not
    renormalised (rows scaled by 2 here show it), at a prefix they are."""
    rows = 2 * unit_rows(300, 64, 2, np.float32)
    q = np.random.default_rng(3).normal(size=(2, 64)).astype(np.float32)
    cand = np.array([np.arange(0, 300, 3), np.arange(1, 300, 3)])
    check(q, cand, rows, 64, renorm=False, top=100)
    check(q[:, :20], cand, rows, 20, renorm=True, top=100)
    check(q, cand, rows, 64, renorm=False, top=100, normalize=False)


def test_int8_rows_are_still_renormalised():
    """Dequantised int8 rows are unit vectors only to about 1e-2: they keep the renormalisation."""
    x = unit_rows(200, 32, 4, np.float32)
    scale = np.abs(x).max(1) / 127
    rows = Int8Rows(np.round(x / scale[:, None]).astype(np.int8), scale.astype(np.float32))
    q = np.random.default_rng(5).normal(size=(1, 32)).astype(np.float32)
    check(q, np.arange(200)[None, ::-1].copy(), rows, 32, renorm=True, top=50)


def test_one_sorted_gather_per_call():
    rows = unit_rows(5000, 128, 6)
    seen = []

    class Rows:
        shape, dtype = rows.shape, rows.dtype

        def __getitem__(self, idx):
            seen.append(np.asarray(idx))
            return rows[idx]

    cand = np.random.default_rng(7).integers(0, 5000, size=(50, 300))
    rerank_candidates(np.ones((50, 128), np.float32), cand, Rows(), 128, True, top=10)
    assert len(seen) == 1 and (np.diff(seen[0]) > 0).all()


def test_float16_rows_are_scored_by_faiss_float16_kernels(monkeypatch):
    """numpy converts float16 to float32 an element at a time (~1 ns each, five times the product's
    cost at 768-d): float16 rows are scored by FAISS's SIMD float16 kernels over their bytes,
    renormalised ones too (their norms from the same kernels), and equal brute force."""
    import faiss

    from adaretrieve.search import twostage

    made = []
    real = faiss.IndexScalarQuantizer

    def counting(*a):
        made.append(a)
        return real(*a)

    monkeypatch.setattr(twostage.faiss, "IndexScalarQuantizer", counting)
    rows = unit_rows(3000, 768, 8)
    q = np.random.default_rng(9).normal(size=(2, 768)).astype(np.float32)
    cand = np.random.default_rng(10).integers(0, 3000, size=(2, 200))
    check(q, cand, rows, 768, renorm=False, top=50)
    assert made and all(a[1] == faiss.ScalarQuantizer.QT_fp16 for a in made)
    made.clear()
    check(q[:, :256], cand, rows, 256, renorm=True, top=50)
    assert {a[2] for a in made} == {faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2}


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("dim", [64, 32])
def test_no_candidate_at_all_gives_empty_rows(dtype, dim):
    """An IVF shortlist whose probed lists are empty returns only -1: the rerank returns -1 rows, not an error."""
    rows = unit_rows(100, 64, 11, dtype)
    s, r = rerank_candidates(np.ones((2, dim), np.float32), -np.ones((2, 10), dtype=np.int64), rows, dim, True, 5)
    assert s.shape == r.shape == (2, 5) and (r == -1).all() and np.isneginf(s).all()


def test_float16_rows_are_scored_where_they_were_gathered(monkeypatch):
    """FAISS's float16 kernels read the gathered rows where numpy put them: no second copy into a
    FAISS vector (0.1 ms of the 0.8 ms a 1000-candidate rerank at 768-d took), one query or many."""
    from adaretrieve.search import twostage

    def no_copy(*a):
        raise AssertionError("rows copied into FAISS")

    monkeypatch.setattr(twostage.faiss, "copy_array_to_vector", no_copy)
    rows = unit_rows(3000, 768, 12)
    rng = np.random.default_rng(13)
    for nq in (1, 3):
        q = rng.normal(size=(nq, 768)).astype(np.float32)
        cand = np.stack([rng.choice(3000, 500, replace=False) for _ in range(nq)])
        check(q, cand, rows, 768, renorm=False, top=10)
        check(q[:, :100], cand, rows, 100, renorm=True, top=10)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("top", [1, 3, 10, 40])
def test_equal_scores_keep_the_previous_stage_order(dtype, top):
    """Duplicate documents score alike: among equal scores the earlier candidate stays first, at
    every cut (a tie may straddle the top-``top`` boundary), for one query as for many."""
    base = unit_rows(20, 64, 14, dtype)
    rows = np.concatenate([base, base, base])  # rows i, i + 20, i + 40 are the same vector
    rng = np.random.default_rng(15)
    for nq in (1, 2):
        q = rng.normal(size=(nq, 64)).astype(np.float32)
        cand = np.stack([rng.permutation(60) for _ in range(nq)])
        s, r = rerank_candidates(q, cand, rows, 64, True, top)
        for i in range(nq):
            x = rows[cand[i]].astype(np.float64) @ q[i]
            want = cand[i][np.argsort(-x, kind="stable")[:top]]
            np.testing.assert_array_equal(r[i], want)
