"""Every fast path against brute force on random data (no model needed)."""

import os

import faiss
import numpy as np
import pytest

from adaretrieve import AdaError, Size
from adaretrieve.index.format import current_generation
from adaretrieve.index.writer import IndexWriter
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader, rerank_candidates
from adaretrieve.sizes import truncate

N, L, D = 500, 4, 48
MODEL = {"name": "random", "path": "random", "weights_sha256": "abc", "normalize": True, "pooling": "mean",
         "max_length": 32, "n_layers": L, "hidden_size": D}


def matryoshka_like(n, d, seed):
    """Unit vectors whose variance decays along the dims, so prefixes carry most of the signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * (1.0 / np.sqrt(1 + np.arange(d)))
    return x.astype(np.float32)


def per_layer(n, seed):
    return {layer: matryoshka_like(n, D, seed + layer) for layer in range(1, L + 1)}


def write(tmp_path, shortlist, rerank, name="ix", chunk=128, factory="Flat", seed=0, **kw):
    """Write an index of N random documents; returns the float32 vectors per layer."""
    vecs = per_layer(N, seed)
    sizes = list(shortlist) + ([rerank] if rerank else [])
    w = IndexWriter(tmp_path / name, N, shortlist, rerank, factory=factory, **kw)
    for start in range(0, N, chunk):
        sl = slice(start, start + chunk)
        w.add([f"d{i}" for i in range(start, min(start + chunk, N))],
              {s: truncate(vecs[s.layer][sl], s.dim, True) for s in sizes})
    w.close(MODEL, corpus="none")
    return vecs


def exact_ranking(doc_vecs, q, size, top, as_stored=False):
    """Exact top ``top`` at ``size``; ``as_stored``: the rows are an index's stored unit vectors at
    their stored width, which the rerank takes as they are (no renormalisation, issue 13 item 2)."""
    d = doc_vecs[:, : size.dim] if as_stored else truncate(doc_vecs, size.dim, True)
    qq = truncate(q, size.dim, True)
    s = qq @ d.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(s, order, 1), order


def test_two_stage_with_k_covering_corpus_equals_exact_full_search(tmp_path):
    vecs = write(tmp_path, [Size(1, 8)], Size(L, D))
    reader = IndexReader(tmp_path / "ix")
    q = matryoshka_like(20, D, 99)
    searcher = FunnelSearcher(reader, FunnelPlan(Size(1, 8), N, rerank=Size(L, D), top=100))
    scores, rows = searcher.search({Size(1, 8): truncate(q, 8, True), Size(L, D): truncate(q, D, True)})
    # exact search over the same stored (float16) full-size vectors
    stored = np.asarray(reader.rerank_rows(), dtype=np.float32)
    ref_s, ref_rows = exact_ranking(stored, q, Size(L, D), 100, as_stored=True)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-6)
    # against float32 vectors, float16 storage may only swap near-ties: the top-10 sets agree
    _, ref32 = exact_ranking(vecs[L], q, Size(L, D), 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows[:, :10], ref32)])
    assert overlap >= 0.97


def test_small_k_is_shortlist_then_exact_rescoring(tmp_path):
    write(tmp_path, [Size(2, 16)], Size(L, D))
    reader = IndexReader(tmp_path / "ix")
    q = matryoshka_like(10, D, 5)
    s = FunnelSearcher(reader, FunnelPlan(Size(2, 16), 25, rerank=Size(L, D), top=10))
    scores, rows = s.search({Size(2, 16): truncate(q, 16, True), Size(L, D): truncate(q, D, True)})
    stored = np.asarray(reader.rerank_rows(), dtype=np.float32)
    _, cand = exact_ranking(reader.shortlist_index(Size(2, 16)).reconstruct_n(0, N), q, Size(2, 16), 25)
    for i in range(10):
        c = cand[i]
        full = stored[c] @ truncate(q[i : i + 1], D, True)[0]  # stored width: rows as stored
        np.testing.assert_array_equal(rows[i], c[np.argsort(-full, kind="stable")[:10]])
        assert set(rows[i]) <= set(c)


def test_stage_timings_are_recorded_and_change_nothing(tmp_path):
    write(tmp_path, [Size(2, 16)], Size(L, D))
    s = FunnelSearcher(IndexReader(tmp_path / "ix"), FunnelPlan(Size(2, 16), 25, rerank=Size(L, D), top=10))
    q = matryoshka_like(10, D, 5)
    qv = {Size(2, 16): truncate(q, 16, True), Size(L, D): truncate(q, D, True)}
    plain = s.search(qv)
    t: dict = {}
    timed = s.search(qv, timings=t)
    np.testing.assert_array_equal(plain[1], timed[1])
    assert set(t) == {"shortlist", "gather", "rerank"} and all(v > 0 for v in t.values())


def test_derived_shortlist_equals_directly_built(tmp_path):
    write(tmp_path, [Size(2, 32)], Size(L, D), name="big")
    write(tmp_path, [Size(2, 8)], Size(L, D), name="direct")
    derived = IndexReader(tmp_path / "big")
    direct = IndexReader(tmp_path / "direct")
    q = truncate(matryoshka_like(15, D, 7), 8, True)
    a = derived.shortlist_index(Size(2, 8)).search(q, 50)
    b = direct.shortlist_index(Size(2, 8)).search(q, 50)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    # a shortlist cut from the float16 rerank rows (same layer) is also allowed
    ix = derived.shortlist_index(Size(L, 16))
    assert ix.ntotal == N and ix.d == 16


def test_rerank_by_truncation_equals_rerank_at_stored_size(tmp_path):
    write(tmp_path, [Size(1, 8)], Size(L, 24), name="small")
    write(tmp_path, [Size(1, 8)], Size(L, D), name="full")
    q = matryoshka_like(12, D, 3)
    plan = FunnelPlan(Size(1, 8), 60, rerank=Size(L, 24), top=20)
    qv = {Size(1, 8): truncate(q, 8, True), Size(L, 24): truncate(q, 24, True)}
    ra = FunnelSearcher(IndexReader(tmp_path / "full"), plan).search(qv)
    rb = FunnelSearcher(IndexReader(tmp_path / "small"), plan).search(qv)
    np.testing.assert_array_equal(ra[1], rb[1])


def test_unknown_size_lists_what_the_index_has(tmp_path):
    write(tmp_path, [Size(2, 16)], Size(L, D))
    reader = IndexReader(tmp_path / "ix")
    with pytest.raises(AdaError, match=r"shortlist size 3x16 is not in index .*shortlist 2x16; rerank 4x48.*rebuild"):
        reader.shortlist_index(Size(3, 16))
    with pytest.raises(AdaError, match=r"shortlist size 2x32 is not in index"):
        reader.shortlist_index(Size(2, 32))
    with pytest.raises(AdaError, match=r"rerank size 3x48 is not in index"):
        reader.rerank_source(Size(3, 48))


def test_rerank_handles_padding_and_duplicates():
    rows = np.eye(4, dtype=np.float16)
    q = np.array([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    cand = np.array([[0, 1, -1], [3, 3, 2]])
    s, r = rerank_candidates(q, cand, rows, 4, True, top=3)
    assert list(r[0]) == [1, 0, -1] and s[0, 0] == 1.0
    assert r[1, 0] == 3


def test_rerank_reads_only_candidate_rows(tmp_path):
    class Spy(np.ndarray):
        pass

    rows = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float16)
    seen = []

    class Rows:
        shape = rows.shape

        def __getitem__(self, idx):
            seen.append(np.asarray(idx))
            return rows[idx]

    cand = np.array([[5, 7, 9], [9, 2, 5]])
    rerank_candidates(np.ones((2, 8), np.float32), cand, Rows(), 8, True, top=3)
    assert len(seen) == 1 and list(seen[0]) == [2, 5, 7, 9]


def test_failed_overwrite_leaves_old_index(tmp_path):
    write(tmp_path, [Size(1, 8)], Size(L, D))
    before = (current_generation(tmp_path / "ix") / "manifest.json").read_text()
    w = IndexWriter(tmp_path / "ix", N, [Size(1, 8)], Size(L, D), overwrite=True)
    w.add(["x"], {Size(1, 8): np.ones((1, 8), np.float32), Size(L, D): np.ones((1, D), np.float32)})
    w.abort()
    assert (current_generation(tmp_path / "ix") / "manifest.json").read_text() == before
    assert IndexReader(tmp_path / "ix").n_docs == N
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]
    with pytest.raises(AdaError, match="already exists"):
        IndexWriter(tmp_path / "ix", N, [Size(1, 8)], None)


def test_trained_factory(tmp_path):
    write(tmp_path, [Size(2, 16)], Size(L, D), factory="IVF4,Flat")
    reader = IndexReader(tmp_path / "ix")
    assert reader.shortlist_index(Size(2, 16)).ntotal == N


def test_binary_shortlist_is_exact_hamming(tmp_path):

    vecs = write(tmp_path, [Size(2, 32)], Size(L, D), factory="BFlat")
    reader = IndexReader(tmp_path / "ix")
    assert reader.manifest.shortlist[0]["metric"] == "hamming"
    q = matryoshka_like(8, D, 11)
    qs = truncate(q, 32, True)
    s, rows = FunnelSearcher(reader, FunnelPlan(Size(2, 32), top=40)).search({Size(2, 32): qs})
    bits_d = truncate(vecs[2], 32, True) > 0
    for i in range(8):
        ham = (bits_d != (qs[i] > 0)).sum(1)
        # same multiset of distances as brute force (ties may order differently)
        np.testing.assert_array_equal(np.sort(-s[i]), np.sort(ham)[:40])
        np.testing.assert_array_equal(ham[rows[i]], -s[i])


def test_int8_rerank_close_to_float16(tmp_path):
    write(tmp_path, [Size(1, 8)], Size(L, D), name="f16")
    write(tmp_path, [Size(1, 8)], Size(L, D), name="i8", rerank_dtype="int8")
    a, b = IndexReader(tmp_path / "f16"), IndexReader(tmp_path / "i8")
    assert b.manifest.rerank["dtype"] == "int8"
    ids = np.array([0, 5, 17, 499])
    np.testing.assert_allclose(b.rerank_rows()[ids], np.asarray(a.rerank_rows()[ids], np.float32), atol=0.02)
    q = matryoshka_like(20, D, 4)
    plan = FunnelPlan(Size(1, 8), 100, rerank=Size(L, D), top=10)
    qv = {Size(1, 8): truncate(q, 8, True), Size(L, D): truncate(q, D, True)}
    ra = FunnelSearcher(a, plan).search(qv)
    rb = FunnelSearcher(b, plan).search(qv)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ra[1], rb[1])])
    assert overlap >= 0.9


def test_funnel_equals_stagewise_brute_force(tmp_path):

    vecs = write(tmp_path, [Size(1, 8), Size(3, 24)], Size(L, D))
    reader = IndexReader(tmp_path / "ix")
    q = matryoshka_like(6, D, 21)
    qv = {s: truncate(q, s.dim, True) for s in (Size(1, 8), Size(3, 16), Size(L, D))}
    f = FunnelSearcher(reader, FunnelPlan(Size(1, 8), 100, ((Size(3, 16), 30),), Size(L, D), top=10))
    _, rows = f.search(qv)
    stored_full = np.asarray(reader.rerank_rows(), np.float32)
    for i in range(6):
        c1 = np.argsort(-(truncate(vecs[1], 8, True) @ qv[Size(1, 8)][i]), kind="stable")[:100]
        s2 = truncate(vecs[3][c1], 16, True) @ qv[Size(3, 16)][i]
        c2 = c1[np.argsort(-s2, kind="stable")[:30]]
        s3 = stored_full[c2] @ qv[Size(L, D)][i]  # stored width: rows as stored
        np.testing.assert_array_equal(rows[i], c2[np.argsort(-s3, kind="stable")[:10]])
    with pytest.raises(AdaError, match="a funnel narrows"):
        FunnelPlan(Size(1, 8), 10, ((Size(3, 16), 30),))


def test_rrf_and_rerank_of_an_external_run(tmp_path):
    from adaretrieve.search.fusion import candidates_from_run, reciprocal_rank_fusion, rerank_run

    a = {"q": {"x": 3.0, "y": 2.0, "z": 1.0}}
    b = {"q": {"z": 9.0, "y": 8.0}}
    fused = reciprocal_rank_fusion([a, b], k=60)
    assert list(fused["q"]) == ["z", "y", "x"]  # z: 1/63 + 1/61 > y: 1/62 + 1/62 > x: 1/61
    assert fused["q"]["y"] == pytest.approx(2 / 62)
    write(tmp_path, [Size(1, 8)], Size(L, D))
    reader = IndexReader(tmp_path / "ix")
    run = {"q": {"d5": 1.0, "d9": 0.5, "missing": 0.2, "d1": 0.1}}
    cand = candidates_from_run(run, ["q"], {d: i for i, d in enumerate(reader.docids)}, k=4)
    assert list(cand[0]) == [5, 9, 1, -1]
    q = matryoshka_like(1, D, 8)
    s, rows = rerank_run(run, ["q"], truncate(q, D, True), reader, Size(L, D), k=4, top=3)
    full = np.asarray(reader.rerank_rows()[[5, 9, 1]], np.float32)
    order = np.argsort(-(truncate(full, D, True) @ truncate(q, D, True)[0]))
    assert list(rows[0]) == list(np.array([5, 9, 1])[order])


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "SQ8", "HNSW16", "IVF4,Flat", "BFlat"])
def test_every_shortlist_kind_in_two_stage_search(tmp_path, factory):
    """Each kind, reranked at full size: with k covering what it returns the result is exact rescoring of its
    candidates, and its shortlist keeps most of the exact top 10 at k=100."""
    write(tmp_path, [Size(L, 16)], Size(L, D), factory=factory)  # a prefix of the rerank vectors
    reader = IndexReader(tmp_path / "ix")
    q = matryoshka_like(20, D, 13)
    stored = np.asarray(reader.rerank_rows(), np.float32)
    _, exact = exact_ranking(stored, q, Size(L, D), 10, as_stored=True)
    searcher = FunnelSearcher(reader, FunnelPlan(Size(L, 16), 100, rerank=Size(L, D), top=10))
    scores, rows = searcher.search({Size(L, 16): truncate(q, 16, True), Size(L, D): truncate(q, D, True)})
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    for i in range(20):  # every returned row's score is its exact full-size score
        got = rows[i][rows[i] >= 0]
        np.testing.assert_allclose(scores[i][: len(got)], stored[got] @ truncate(q[i : i + 1], D, True)[0],
                                   rtol=1e-5, atol=1e-6)  # stored width: rows as stored
    recall = np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows, exact)])
    # measured: Flat, SQfp16, SQ8 1.0; HNSW16 0.97; IVF4 (nprobe 1) 0.70; sign bits 0.645
    floor = {"Flat": 0.99, "SQfp16": 0.99, "SQ8": 0.95, "HNSW16": 0.9, "IVF4,Flat": 0.5, "BFlat": 0.5}[factory]
    assert recall >= floor, recall


def test_doc_ids_are_compact_and_exact(tmp_path):
    from adaretrieve.search.reader import DocIds

    ids = ["d0", "Ünïcode-1", "", "x" * 300, "last"]
    p = tmp_path / "ids.txt"
    p.write_bytes(("\n".join(ids)).encode())  # no newline after the last id
    d = DocIds(p)
    assert len(d) == 5 and list(d) == ids and d[np.int64(1)] == "Ünïcode-1" and d[-1] == "last"
    with pytest.raises(IndexError):
        d[5]
    p.write_bytes(("\n".join(ids) + "\n").encode())
    assert list(DocIds(p)) == ids
    write(tmp_path, [Size(1, 8)], None, name="ix2")
    reader = IndexReader(tmp_path / "ix2")
    assert list(reader.docids) == [f"d{i}" for i in range(N)] and reader.docids.nbytes == 4 * (N + 1)


def test_rerank_source_outlives_its_reader(tmp_path):
    """A flat shortlist's vectors live inside the FAISS index the reader owns: the array handed out
    must keep them alive after the reader is gone."""
    import gc

    write(tmp_path, [Size(2, 32)], Size(L, D))
    r = IndexReader(tmp_path / "ix")
    src = r.rerank_source("2x32")
    before = np.array(src, copy=True)
    del r
    gc.collect()
    junk = [np.full(before.shape, 7.0, dtype=np.float32) for _ in range(8)]  # reuse any freed memory
    np.testing.assert_array_equal(np.asarray(src), before)
    del junk


def test_retriever_facade_matches_the_cli_path(tiny_model, other_tiny_model, corpus, tmp_path):
    """adaretrieve.Retriever loads the index's own encoder (hash checked in the library) and its
    search equals encoder + FunnelSearcher by hand."""
    import adaretrieve
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    enc = Encoder(tiny_model, device="cpu")
    build_index(corpus, enc, tmp_path / "ix", ["2x16"], "4x32", progress=False)
    r = adaretrieve.Retriever(tmp_path / "ix", device="cpu")
    hits = r.search(["the cell gene", "cancer risk"], shortlist="2x8", k=10, top=5)
    s = FunnelSearcher(IndexReader(tmp_path / "ix"), FunnelPlan("2x8", 10, rerank="4x32", top=5))
    scores, rows = s.search(enc.encode(["the cell gene", "cancer risk"], s.sizes()))
    assert [[d for d, _ in h] for h in hits] == [[r.reader.docids[j] for j in row] for row in rows]
    assert len(hits[0]) == 5 and hits[0][0][1] >= hits[0][1][1]
    with pytest.raises(AdaError, match="is not the model that built"):
        adaretrieve.Retriever(tmp_path / "ix", model=str(other_tiny_model), device="cpu")


def test_rerank_reads_the_memory_mapped_rows_even_when_a_flat_shortlist_has_the_size(tmp_path):
    """Issue 12, item 8: the README promises float16 rows read through a memory map (only the candidates'
    pages); a stored Flat shortlist at the rerank size must not be read whole into RAM instead."""
    write(tmp_path, [Size(1, 8), Size(L, D)], Size(L, D))
    reader = IndexReader(tmp_path / "ix")
    src = reader.rerank_source(Size(L, D))
    assert isinstance(src, np.memmap) and src.dtype == np.float16
    assert Size(L, D) not in reader._shortlists  # the FAISS file was never loaded for reranking
    assert isinstance(reader.rerank_source(Size(L, 16)), np.memmap)  # a prefix of the rows, too


def _recall_at_10(rows, ref):
    return np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(rows, ref)])


def test_nprobe_reaches_faiss_and_ivf_recall_rises_with_it(tmp_path):
    """Issue 13, item 3: search-time parameters go to FAISS per call (SearchParameters), not by
    mutating the shared index."""

    vecs = write(tmp_path, [Size(2, 16)], None, factory="IVF16,Flat")
    reader = IndexReader(tmp_path / "ix")
    q = truncate(matryoshka_like(40, D, 5), 16, True)
    _, ref = exact_ranking(vecs[2], q, Size(2, 16), 10)
    got = {}
    for nprobe in (1, 4, 16):
        s = FunnelSearcher(reader, FunnelPlan(Size(2, 16), top=10, nprobe=nprobe))
        _, rows = s.search({Size(2, 16): q})
        got[nprobe] = _recall_at_10(rows, ref)
    assert got[1] < got[4] <= got[16] == 1.0  # all 16 lists probed: exact
    assert faiss.extract_index_ivf(reader.shortlist_index(Size(2, 16))).nprobe == 1  # the index itself untouched


def test_ef_search_reaches_faiss_for_an_hnsw_shortlist(tmp_path):

    vecs = write(tmp_path, [Size(2, 16)], None, factory="HNSW4")
    reader = IndexReader(tmp_path / "ix")
    q = truncate(matryoshka_like(40, D, 6), 16, True)
    _, ref = exact_ranking(vecs[2], q, Size(2, 16), 10)
    low = _recall_at_10(FunnelSearcher(reader, FunnelPlan(Size(2, 16), top=10, ef_search=10)).search({Size(2, 16): q})[1], ref)
    high = _recall_at_10(FunnelSearcher(reader, FunnelPlan(Size(2, 16), top=10, ef_search=400)).search({Size(2, 16): q})[1],
                         ref)
    assert low < high and high >= 0.95


def test_search_parameters_that_do_not_apply_are_refused(tmp_path):

    write(tmp_path, [Size(2, 16)], None)
    reader = IndexReader(tmp_path / "ix")
    with pytest.raises(AdaError, match="nprobe.*IVF"):
        FunnelSearcher(reader, FunnelPlan(Size(2, 16), nprobe=8))
    with pytest.raises(AdaError, match="ef.search.*HNSW"):
        FunnelSearcher(reader, FunnelPlan(Size(2, 16), ef_search=64))
    write(tmp_path, [Size(2, 16)], None, name="hnsw", factory="HNSW8")
    with pytest.raises(AdaError, match="at least 1"):
        FunnelSearcher(IndexReader(tmp_path / "hnsw"), FunnelPlan(Size(2, 16), ef_search=-1))


def test_rerank_rows_read_from_disk_only_around_the_candidates(tmp_path):
    """A memory-mapped rerank file is read per candidate row, not in readahead windows: after the file
    is dropped from the page cache, rescoring 200 candidates of 12,000 rows brings in a few pages per
    row, not the file (the trial's R3: ~57 KB per candidate, the whole file after a few queries)."""
    from adaretrieve.eval.pagecache import evict, resident_fraction

    n, dim = 12000, 768
    rng = np.random.default_rng(0)
    w = IndexWriter(tmp_path / "big", n, [Size(1, 8)], Size(1, dim))
    for start in range(0, n, 4000):
        x = rng.standard_normal((4000, dim)).astype(np.float32)
        w.add([f"d{i}" for i in range(start, start + 4000)], {Size(1, 8): truncate(x, 8, True), Size(1, dim): truncate(x, dim, True)})
    w.close(MODEL | {"n_layers": 1, "hidden_size": dim}, corpus="none")
    reader = IndexReader(tmp_path / "big")
    rows = reader.rerank_rows()
    path = reader.gen_dir / reader.manifest.rerank["file"]
    os.sync()
    evict(path, [rows])
    before = resident_fraction(path)
    if before is None or before > 0.01:
        pytest.skip(f"cannot drop {path} from the page cache here (resident fraction {before})")
    cand = np.sort(rng.choice(n, 200, replace=False))
    rerank_candidates(rng.standard_normal((1, dim)).astype(np.float32), cand[None, :], rows, dim, True, top=10)
    pages = path.stat().st_size / 4096
    read = resident_fraction(path) * pages
    assert read <= 200 * 3, f"{read:.0f} pages read for 200 rows of {dim * 2} bytes ({pages:.0f} in the file)"


def test_retriever_builds_each_searcher_once_when_threads_race(tiny_model, corpus, tmp_path, monkeypatch):
    """Threads sharing a Retriever (a web app's workers) ask for the same configuration at once: its
    searcher, a derived shortlist included, is built once, as the search service's are."""
    import threading
    import time as _time

    import adaretrieve
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.search import twostage

    build_index(corpus, Encoder(tiny_model, device="cpu"), tmp_path / "ix", ["2x16"], "4x32", progress=False)
    r = adaretrieve.Retriever(tmp_path / "ix", device="cpu")
    built = []
    real_init = twostage.FunnelSearcher.__init__

    def slow_init(self, *a, **kw):
        built.append(a)
        _time.sleep(0.05)  # a derived shortlist takes a while to build: the race window
        real_init(self, *a, **kw)

    monkeypatch.setattr(twostage.FunnelSearcher, "__init__", slow_init)
    got = []
    threads = [threading.Thread(target=lambda: got.append(r.searcher(r.plan("2x8", k=10)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len({id(s) for s in got}) == 1
