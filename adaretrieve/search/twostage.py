"""Shortlist with FAISS over a small size, then rescore the candidates exactly at larger sizes.

A funnel has a shortlist stage (FAISS over a small size, top ``k``), any number of intermediate
stages (rescore the candidates exactly at a larger size, keep the top ``k_i``), and an optional
final rerank at the largest size. Two-stage search is the funnel with no intermediate stage.
"""

from __future__ import annotations

import logging
import threading
import time

import faiss
import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.faiss_util import downcast
from adaretrieve.search.plan import FunnelPlan, shortlist_nprobe_default
from adaretrieve.search.prefetch import prefetch_rows
from adaretrieve.search.reader import check_finite_rows
from adaretrieve.sizes import Size

log = logging.getLogger(__name__)


def add_time(timings: dict | None, stage: str, seconds: float) -> None:
    """Add ``seconds`` to ``timings[stage]`` (when timings is a dict): per-stage timing of a search."""
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + seconds


def is_binary(index) -> bool:
    return isinstance(index, faiss.IndexBinary)


def shortlist_kind(index) -> str:
    """The FAISS class of a shortlist index (``IndexIVFFlat``, ``IndexHNSWFlat``, ``IndexBinaryFlat``...)."""
    return type(downcast(index)).__name__


def search_params(index, nprobe: int | None = None, ef_search: int | None = None):
    """FAISS ``SearchParameters`` for one search call over ``index`` (the shared index is never
    mutated, so threads may search it with different settings): ``nprobe`` for IVF shortlists,
    ``ef_search`` for HNSW ones. None when neither is given; AdaError when one does not apply."""
    if nprobe is None and ef_search is None:
        return None
    for name, v in (("nprobe", nprobe), ("ef_search", ef_search)):
        if v is not None and v < 1:
            raise AdaError(f"{name} {v} must be at least 1")
    kind = shortlist_kind(index)
    is_ivf, is_hnsw = "IVF" in kind, "HNSW" in kind
    if nprobe is not None and not is_ivf:
        raise AdaError(f"nprobe applies to IVF shortlists; this shortlist is a {kind} (build one with --factory IVF...)")
    if ef_search is not None and not is_hnsw:
        raise AdaError(f"ef_search applies to HNSW shortlists; this shortlist is a {kind} (build one with --factory HNSW32)")
    if is_ivf:
        return faiss.SearchParametersIVF(nprobe=int(nprobe)) if nprobe is not None else None
    return faiss.SearchParametersHNSW(efSearch=int(ef_search))


def exact_search(index, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (scores, rows) [n_queries, k] from a FAISS index; rows are -1 past the corpus.
    ``params``: FAISS SearchParameters for this call (see ``search_params``).

    Binary indexes (sign bits, Hamming distance) return ``-distance`` as the score, so that
    higher is better everywhere.
    """
    k = max(1, min(k, index.ntotal))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if is_binary(index):
        dist, rows = index.search(np.packbits(q > 0, axis=1), k, params=params)
        return -dist.astype(np.float32), rows
    return index.search(q, k, params=params)


def takes_as_stored(rows, dim: int) -> bool:
    """Rows cut to ``dim`` need no renormalisation: a normalising index stores unit vectors, so at
    their full stored width float16 / float32 rows are used as stored (int8 rows, unit only to
    about 1e-2 once dequantised, and any other source are renormalised as the size rule says)."""
    return getattr(rows, "dtype", None) in (np.float16, np.float32) and dim == rows.shape[1]


def _view_codes(ix, buf: np.ndarray) -> bool:
    """Point the flat-codes index ``ix`` at the bytes of ``buf`` (C-contiguous, kept alive by the
    caller while ``ix`` is used) instead of copying them in: FAISS keeps codes in a vector that may
    view memory it does not own. False where this FAISS has no such vector (then copy)."""
    c = ix.codes
    if not all(hasattr(c, a) for a in ("is_owned", "view_data", "view_size", "c_ptr", "c_size")):
        return False
    b = buf.view(np.uint8).reshape(-1)
    ptr = faiss.swig_ptr(b)
    c.is_owned, c.view_data, c.view_size, c.c_ptr, c.c_size = False, ptr, b.size, ptr, b.size
    return True


def _fp16_index(x: np.ndarray, metric: int):
    """A throwaway FAISS float16 index over the rows ``x`` [n, d] (no shared state, so threads may
    score at once), reading them where they lie when it can (see ``_view_codes``)."""
    n, d = x.shape
    ix = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, metric)
    if not _view_codes(ix, x):
        faiss.copy_array_to_vector(x.view(np.uint8).reshape(-1), ix.codes)
    ix.ntotal = n
    return ix


def _fp16_products(x: np.ndarray, q: np.ndarray, metric: int) -> np.ndarray:
    """[n, n_queries] inner products (or squared L2 distances) of float16 rows ``x`` [n, d] with
    float32 ``q`` [n_queries, d], by FAISS's SIMD float16 kernels reading the rows' bytes as they
    are: numpy converts float16 to float32 an element at a time (~1 ns each, five times the cost
    of the product at 768-d)."""
    n = len(x)
    if n == 0:  # no candidate at all (FAISS asks for k >= 1)
        return np.empty((0, len(q)), dtype=np.float32)
    x = np.ascontiguousarray(x)
    dist, order = _fp16_index(x, metric).search(q, n)  # every row, per query (in FAISS's order: put back in row order below)
    out = np.empty((n, len(q)), dtype=np.float32)
    out[order, np.arange(len(q))[:, None]] = dist
    return out


def _fp16_top_one(x: np.ndarray, q: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Top ``top`` (scores, positions in ``x``) of one query ``q`` [1, d] over the float16 rows ``x``
    [n, d], by FAISS's float16 kernels keeping a heap of ``top + 1`` rather than ordering all n
    scores. None when two of those scores are equal: FAISS breaks ties by position, not by the
    previous stage's order, so the caller then orders every score itself."""
    m = min(top + 1, len(x))
    x = np.ascontiguousarray(x)
    dist, pos = _fp16_index(x, faiss.METRIC_INNER_PRODUCT).search(q, m)
    if (dist[0, 1:] == dist[0, :-1]).any():
        return None
    return dist[0, :top], pos[0, :top]


def _score_rows(x: np.ndarray, q: np.ndarray, renorm: bool) -> np.ndarray:
    """``x`` [n, dim] rows (float16, float32, possibly a strided prefix view), ``q`` [n_queries, dim]
    float32 -> inner products [n, n_queries] float32, each divided by its row's norm when ``renorm``.
    float32 rows go to BLAS as they are; float16 rows to FAISS's float16 kernels (no float32 copy
    of them); anything else is converted first."""
    if x.dtype == np.float16:
        out = _fp16_products(x, q, faiss.METRIC_INNER_PRODUCT)
        norms = np.sqrt(_fp16_products(x, np.zeros((1, x.shape[1]), np.float32), faiss.METRIC_L2)[:, 0]) if renorm else None
    else:
        x = np.asarray(x, dtype=np.float32)
        out = np.matmul(x, q.T)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x)) if renorm else None
    if renorm:
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)  # rows of zeros stay zero
        out *= inv[:, None]
    return out


def rerank_candidates(
    queries: np.ndarray,
    candidates: np.ndarray,
    rows,
    dim: int,
    normalize: bool,
    top: int,
    timings: dict | None = None,
    prefetch: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescore ``candidates`` [n_queries, k] (row ids, -1 = none) exactly.

    ``rows`` [n_docs, >=dim] holds the vectors (a float16 memory map, or anything indexable by an
    array of row ids); only the candidate rows are read, in one gather in ascending order, each
    once per call. Vectors are cut to ``dim`` and renormalised as the size rule says, except rows
    used at their stored width, which a normalising index stored as unit vectors already (see
    ``takes_as_stored``); ``queries`` [n_queries, dim] are already at that size. Returns (scores,
    rows) [n_queries, min(top, k)], best first; ties keep the order of the previous stage. With
    ``timings`` (a dict), the seconds spent reading the candidate rows and scoring them are added
    under ``"gather"`` and ``"rerank"``. ``prefetch``: when the candidate rows of a memory map are
    not in the page cache, ask for all of them at once before gathering (``prefetch_rows``).
    """
    t0 = time.perf_counter()
    nq, k = candidates.shape
    top = min(top, k)
    if nq == 1 and getattr(rows, "dtype", None) == np.float16 and takes_as_stored(rows, dim) and top < k:
        # one query over float16 rows as stored (the batch-1 case): FAISS keeps only the top
        ids = np.sort(candidates[0])
        if ids[0] >= 0 and (ids[1:] > ids[:-1]).all():  # no -1 and no repeated row
            if prefetch:
                prefetch_rows(rows, ids)
            gathered = np.ascontiguousarray(rows[ids])
            check_finite_rows(gathered, rows, ids)  # NaN rows would rank arbitrarily, exit 0
            t1 = time.perf_counter()
            best = _fp16_top_one(gathered, np.ascontiguousarray(queries, dtype=np.float32), top)
            if best is not None:
                add_time(timings, "gather", t1 - t0)
                add_time(timings, "rerank", time.perf_counter() - t1)
                return best[0][None, :], ids[best[1]][None, :]
    valid = candidates >= 0
    uniq, inv = np.unique(candidates[valid], return_inverse=True)
    if prefetch:
        prefetch_rows(rows, uniq)
    gathered = rows[uniq]  # [n_unique, width]: the only read of the rows
    check_finite_rows(gathered, rows, uniq)
    if gathered.shape[1] != dim:
        gathered = gathered[:, :dim]  # a view: the cut happens as the rows are scored
    t1 = time.perf_counter()
    renorm = normalize and not takes_as_stored(rows, dim)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if len(uniq) <= 4 * k:  # few queries (or shared candidates): one product, no per-query copies
        every = _score_rows(gathered, q, renorm)  # [n_unique, n_queries]
        if valid.all():
            scores = every[inv.reshape(nq, k), np.arange(nq)[:, None]]
        else:
            scores = np.full((nq, k), -np.inf, dtype=np.float32)
            qi = np.broadcast_to(np.arange(nq)[:, None], (nq, k))
            scores[valid] = every[inv, qi[valid]]
    else:  # many queries: score each one's own candidates only
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        pos = np.zeros((nq, k), dtype=np.int64)
        pos[valid] = inv
        for i in range(nq):
            vi = valid[i]
            scores[i, vi] = _score_rows(gathered[pos[i, vi]], q[i : i + 1], renorm)[:, 0]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    out_scores = np.take_along_axis(scores, order, axis=1)
    out_rows = np.take_along_axis(candidates, order, axis=1)
    out_rows[~np.isfinite(out_scores)] = -1
    add_time(timings, "gather", t1 - t0)
    add_time(timings, "rerank", time.perf_counter() - t1)
    return out_scores, out_rows


def join_candidates(cand: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """[n, <= a + b] per query: the rows of ``cand`` [n, a] in order, then those of ``extra`` [n, b]
    not already there (-1 = none, padding at the end)."""
    out = np.full((len(cand), cand.shape[1] + extra.shape[1]), -1, dtype=np.int64)
    width = 0
    for i, (a, b) in enumerate(zip(cand, extra)):
        row = list(dict.fromkeys(int(x) for x in (*a, *b) if x >= 0))
        out[i, : len(row)] = row
        width = max(width, len(row))
    return out[:, :width]


def deep_candidates(plan: FunnelPlan, deep, query: np.ndarray, cand: np.ndarray, timings: dict | None = None
                    ) -> np.ndarray:
    """``cand`` joined with the top ``plan.deep_k`` of ``deep`` (the shortlist index over the rerank
    size, searched with its params: ``(index, params)``) for the rerank-size ``query`` vectors; ``cand``
    unchanged when the plan has no ``deep_k``."""
    if not plan.deep_k:
        return cand
    t0 = time.perf_counter()
    _, extra = exact_search(deep[0], query, plan.deep_k, deep[1])
    add_time(timings, "shortlist", time.perf_counter() - t0)
    return join_candidates(cand, extra)


def funnel(plan: FunnelPlan, index, queries: dict[Size, np.ndarray], sources: dict, normalize: bool, params=None,
           timings: dict | None = None, record: list | None = None, deep=None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``plan`` over arrays: FAISS ``index`` (the shortlist, searched with ``params``) for the
    shortlist's top, then each stage rescoring exactly from ``sources[size]`` (rows [n_docs, >=dim],
    see ``rerank_candidates``). ``queries``: ``{size: [n_queries, dim]}`` for every size of the plan.
    Returns (scores, rows) [n_queries, <= plan.top], best first. With ``timings`` (a dict), seconds
    per stage are added under ``"shortlist"``, ``"gather"`` (reading candidate rows) and ``"rerank"``.
    With ``record`` (a list), every stage's (scores, rows) is appended to it, the shortlist's first:
    what a cascade that never stops sees (``calibrate.stage_rankings``). ``deep``: ``(index, params)``
    of the shortlist over the rerank size, for a plan with ``deep_k`` (``deep_candidates``)."""
    if plan.deep_k and deep is None:
        raise AdaError(f"{plan.name}: deep_k needs the shortlist index over {plan.rerank}")
    t0 = time.perf_counter()
    scores, cand = exact_search(index, queries[plan.shortlist], plan.k, params)
    add_time(timings, "shortlist", time.perf_counter() - t0)
    if record is not None:
        record.append((scores, cand))
    if plan.single:
        return scores, cand
    stages = [*plan.then, *([(plan.rerank, plan.top)] if plan.rerank else [])]
    for i, (size, k) in enumerate(stages):
        if i == len(stages) - 1:
            cand = deep_candidates(plan, deep, queries[size], cand, timings)
        scores, cand = rerank_candidates(queries[size], cand, sources[size], size.dim, normalize, k, timings)
        if record is not None:
            record.append((scores, cand))
    return scores[:, :plan.top], cand[:, :plan.top]


class FunnelSearcher:
    """A FunnelPlan bound to a folder index: the plan's shortlist index and rerank rows, opened
    once; ``search({size: queries [n, dim]})`` runs ``funnel`` over them."""

    def __init__(self, reader, plan: FunnelPlan):
        self.reader, self.plan = reader, plan
        self.index = reader.shortlist_index(plan.shortlist)
        self.params = search_params(self.index, plan.nprobe, plan.ef_search)
        if self.params is None and "IVF" in shortlist_kind(self.index):
            log.warning("the %s shortlist is an IVF index searched at FAISS's nprobe 1 (1/%d of its lists); plans from "
                        "resolve_plan fill in the index's default", plan.shortlist, downcast(self.index).nlist)
        self.sources = {s: reader.rerank_source(s) for s, _ in plan.then}
        if plan.rerank:
            self.sources[plan.rerank] = reader.rerank_source(plan.rerank)
        self.deep = None
        if plan.deep_k:
            ix = reader.shortlist_index(plan.rerank)
            self.deep = (ix, search_params(ix, shortlist_nprobe_default(reader.manifest, plan.rerank)))

    def sizes(self) -> list[Size]:
        return self.plan.sizes()

    def search(self, queries: dict[Size, np.ndarray], timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``plan.top`` (scores, rows) [n_queries, <= top]; see ``funnel``."""
        return funnel(self.plan, self.index, queries, self.sources, self.reader.normalize, self.params, timings,
                      deep=self.deep)


class SearcherCache:
    """FunnelSearchers over one reader, one per plan, each built once even when threads ask for it at
    the same moment (a derived shortlist is built once, not once per racing caller): what the
    Retriever and the search service keep. The top of a plan does not change what is opened, so
    plans that differ only in it share the searcher's files."""

    def __init__(self, reader):
        self.reader = reader
        self._searchers: dict = {}
        self._lock = threading.Lock()

    def get(self, plan: FunnelPlan) -> FunnelSearcher:
        with self._lock:
            if plan not in self._searchers:
                self._searchers[plan] = FunnelSearcher(self.reader, plan)
            return self._searchers[plan]
