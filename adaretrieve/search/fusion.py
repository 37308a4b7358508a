"""Hybrid search over runs (``{qid: {docid: score}}``): reciprocal rank fusion, and rescoring an
external candidate list (e.g. BM25's) with an index's dense vectors. numpy only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from adaretrieve.search.twostage import rerank_candidates

Run = Mapping[str, Mapping[str, float]]


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 60, top: int = 1000) -> dict[str, dict[str, float]]:
    """RRF (Cormack et al. 2009): score(d) = sum over runs of 1 / (k + rank of d in that run)."""
    out: dict[str, dict[str, float]] = {}
    for qid in set().union(*runs):
        fused: dict[str, float] = {}
        for run in runs:
            ranked = sorted(run.get(qid, {}).items(), key=lambda x: -x[1])
            for rank, (docid, _) in enumerate(ranked, 1):
                fused[docid] = fused.get(docid, 0.0) + 1.0 / (k + rank)
        out[qid] = dict(sorted(fused.items(), key=lambda x: -x[1])[:top])
    return out


def candidates_from_run(run: Run, qids: Sequence[str], row_of: Mapping[str, int], k: int) -> np.ndarray:
    """Row ids [n_queries, k] of each query's top ``k`` documents in ``run`` (-1 padded); documents
    the index lacks are dropped."""
    cand = np.full((len(qids), k), -1, dtype=np.int64)
    for i, q in enumerate(qids):
        ranked = sorted(run.get(q, {}).items(), key=lambda x: -x[1])
        rows = [row_of[d] for d, _ in ranked if d in row_of][:k]
        cand[i, : len(rows)] = rows
    return cand


def rerank_run(run: Run, qids: Sequence[str], queries: np.ndarray, reader, size, k: int, top: int,
               row_of: Mapping[str, int] | None = None, timings: dict | None = None):
    """Rescore each query's top ``k`` of ``run`` with the index's vectors at ``size``: (scores, rows).
    ``row_of`` ({docid: row}, built from ``reader.docids`` when absent) is worth building once when
    calling per query; ``timings`` gets the gather and rerank seconds as in ``rerank_candidates``."""
    if row_of is None:
        row_of = {d: i for i, d in enumerate(reader.docids)}
    cand = candidates_from_run(run, qids, row_of, k)
    return rerank_candidates(queries, cand, reader.rerank_source(size), size.dim, reader.normalize, top,
                             timings=timings)
