"""The baselines a suite measures beside its dense rows: BM25 through pyserini, BM25's top k
reranked by dense vectors (hybrid), reciprocal rank fusion of BM25 with dense search, and FAISS's
own IndexRefineFlat over SQ8 codes. Each is a ``Pipeline``, timed by ``measure`` like a dense row."""

from __future__ import annotations

import time

import numpy as np

from adaretrieve.bench.measure import (
    Pipeline,
    arrays_run,
    disk_bytes_per_doc,
    evict_rerank,
    reads_rerank_file,
    search_threads,
    shortlist_resident_bytes_per_doc,
)
from adaretrieve.eval import run_from_arrays
from adaretrieve.faiss_util import resident_bytes_per_doc
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
from adaretrieve.sizes import parse_size


def bm25_pipelines(suite, reader: IndexReader, qids: list[str], queries: dict) -> list[Pipeline]:
    """BM25 alone, BM25 top k reranked by dense vectors (hybrid), and RRF of BM25 with dense search.
    One Lucene searcher serves them all (its JVM start and open are reported once, not per query);
    each row times its whole path: hybrid = BM25 + rerank, RRF = BM25 + dense search + fusion (plus
    the query encoding end to end)."""
    from adaretrieve.baselines.bm25 import BM25Searcher, build_bm25_index
    from adaretrieve.search.fusion import reciprocal_rank_fusion, rerank_run

    bm = BM25Searcher(build_bm25_index(suite.corpus, suite.bm25_index or f"{suite.index}-bm25"))
    threads = search_threads()  # the dense rows' FAISS threads: every row searches a batch on as many

    def bm25(rows, t):
        t0 = time.perf_counter()
        run = bm.search({qids[i]: queries[qids[i]] for i in rows}, k=1000, threads=threads)
        if t is not None:
            t["bm25"] = t.get("bm25", 0.0) + time.perf_counter() - t0
        return run

    out = [Pipeline("bm25 (k1=0.9, b=0.4)", "bm25", [], lambda rows, q, t: bm25(rows, t), lambda run, _: run, depth=1000,
                    extra={"bm25_setup_seconds": bm.setup_seconds, "bm25_threads": threads})]
    row_of = {d: i for i, d in enumerate(reader.docids)}
    for h in suite.hybrid:
        size, k = parse_size(h["rerank"]), int(h["k"])

        def hybrid(rows, q, t, size=size, k=k):
            return rerank_run(bm25(rows, t), [qids[i] for i in rows], q[size], reader, size, k, 1000, row_of, t)

        out.append(Pipeline(f"bm25 k={k} -> {size}", "hybrid", [size], hybrid, arrays_run(reader), depth=min(k, 1000),
                            cold=evict_rerank(reader) if reads_rerank_file(reader, size) else None,
                            k=k, rerank=size, rerank_bytes_per_doc_on_disk=size.dim * 2))
    for sz in suite.rrf:
        size = parse_size(sz)
        searcher = FunnelSearcher(reader, FunnelPlan(size, top=1000))

        def rrf(rows, q, t, searcher=searcher, size=size):
            sparse = bm25(rows, t)
            scores, ids = searcher.search(q, timings=t)
            t0 = time.perf_counter()
            sub = [qids[i] for i in rows]
            fused = reciprocal_rank_fusion([sparse, run_from_arrays(sub, scores, ids, reader.docids)], k=60)
            if t is not None:
                t["fusion"] = t.get("fusion", 0.0) + time.perf_counter() - t0
            return fused

        out.append(Pipeline(f"rrf(bm25, single {size})", "rrf", [size], rrf, lambda run, _: run, depth=1000, shortlist=size,
                            resident_bytes_per_doc=shortlist_resident_bytes_per_doc(reader.manifest, size),
                            disk_bytes_per_doc=disk_bytes_per_doc(reader, size, None)))
    return out


def refine_pipelines(suite, reader: IndexReader) -> list[Pipeline]:
    """FAISS's own answer to the same problem: SQ8 codes of the full size in RAM, refined exactly
    with float32 full vectors (IndexRefineFlat), at several k factors."""
    import faiss

    size = reader.manifest.rerank_size
    rows_f16 = reader.rerank_rows()
    sq = faiss.IndexScalarQuantizer(size.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexRefineFlat(sq)
    t0 = time.perf_counter()
    index.train(np.asarray(rows_f16[: min(reader.n_docs, 100_000)], dtype=np.float32))
    for start in range(0, reader.n_docs, 65536):
        index.add(np.asarray(rows_f16[start : start + 65536], dtype=np.float32))
    build_s = round(time.perf_counter() - t0, 2)
    out = []
    for kf in suite.refine:
        params = faiss.IndexRefineSearchParameters(k_factor=float(kf))

        def search(rows, q, t, params=params):
            return index.search(q[size], 1000, params=params)

        out.append(Pipeline(f"faiss RefineFlat(SQ8) {size} kf={kf:g}", "refine", [size], search, arrays_run(reader), depth=1000,
                            resident_bytes_per_doc=resident_bytes_per_doc(size.dim, "SQ8,RFlat"),
                            extra={"build_seconds": build_s}))
    return out
