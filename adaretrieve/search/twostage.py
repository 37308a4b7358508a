"""Shortlist with FAISS over a small size, then rescore the candidates exactly at a larger size."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from adaretrieve.sizes import Size, parse_size, truncate


def exact_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (scores, rows) [n_queries, k] by inner product; rows are -1 past the corpus size."""
    k = max(1, min(k, index.ntotal))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def rerank_candidates(
    queries: np.ndarray,
    candidates: np.ndarray,
    rows: np.ndarray,
    dim: int,
    normalize: bool,
    top: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescore ``candidates`` [n_queries, k] (row ids, -1 = none) exactly.

    ``rows`` [n_docs, >=dim] holds the rerank vectors (often a float16 memory map); only the
    candidate rows are read, in ascending order, each once per call. Vectors are cut to ``dim``
    and renormalised as the size rule says. ``queries`` [n_queries, dim] are already at that size.
    Returns (scores, rows) [n_queries, min(top, k)], best first; ties keep shortlist order.
    """
    nq, k = candidates.shape
    top = min(top, k)
    valid = candidates >= 0
    uniq, inv = np.unique(candidates[valid], return_inverse=True)
    gathered = truncate(rows[uniq], dim, normalize)  # [n_unique, dim] float32
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    pos = np.zeros((nq, k), dtype=np.int64)
    pos[valid] = inv
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for i in range(nq):
        vi = valid[i]
        scores[i, vi] = gathered[pos[i, vi]] @ q[i]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    out_scores = np.take_along_axis(scores, order, axis=1)
    out_rows = np.take_along_axis(candidates, order, axis=1)
    out_rows[~np.isfinite(out_scores)] = -1
    return out_scores, out_rows


@dataclass
class TwoStageSearcher:
    """``search(q_short, q_rerank)``: FAISS top ``k`` at ``shortlist`` size, exact rescoring at
    ``rerank`` size (or the shortlist ranking alone when ``rerank`` is None)."""

    reader: object  # IndexReader; typed loosely to keep this module free of import cycles
    shortlist: Size
    rerank: Size | None = None
    k: int = 200

    def __post_init__(self):
        self.shortlist = parse_size(self.shortlist)
        self.rerank = parse_size(self.rerank) if self.rerank else None
        self.index = self.reader.shortlist_index(self.shortlist)
        self.rows = self.reader.rerank_source(self.rerank) if self.rerank else None

    def sizes(self) -> list[Size]:
        return [self.shortlist] + ([self.rerank] if self.rerank else [])

    def search(self, q_short: np.ndarray, q_rerank: np.ndarray | None = None, top: int = 1000):
        if self.rerank is None:
            return exact_search(self.index, q_short, top)
        _, cand = exact_search(self.index, q_short, self.k)
        return rerank_candidates(q_rerank, cand, self.rows, self.rerank.dim, self.reader.normalize, top)
