"""Choose an operating point from measured configurations, and estimate what a shortlist index
keeps in RAM. Plain arithmetic over bench rows (no torch, no faiss), so a notebook can re-pick
from a saved ``results.json`` under other budgets.

A row is one configuration as ``bench.run_suite`` reports it: ``metrics``, ``encode_ms_batch1``
and ``search_ms_batch1`` (medians under ``p50``), and ``resident_bytes_per_doc``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def latency_ms(row: dict) -> float | None:
    """Median per-query latency at batch 1: query encoding to the depth needed + search. None when
    the row has no encoding time (rows that are not a dense configuration)."""
    enc, search = row.get("encode_ms_batch1"), row.get("search_ms_batch1")
    if not enc or not search:
        return None
    return enc["p50"] + search["p50"]


def resident_mb(row: dict, n_docs: int) -> float | None:
    """RAM that stays resident (the shortlist index), in MB (1e6 bytes); None when unknown."""
    per_doc = row.get("resident_bytes_per_doc")
    return None if per_doc is None else per_doc * n_docs / 1e6


def within_budget(rows: Sequence[dict], n_docs: int, budget_ms: float | None = None,
                  budget_ram_mb: float | None = None) -> list[int]:
    """Indices of the rows that fit every budget given; a row whose cost is unknown fits no budget on it."""
    out = []
    for i, r in enumerate(rows):
        ms, mb = latency_ms(r), resident_mb(r, n_docs)
        if budget_ms is not None and (ms is None or ms > budget_ms):
            continue
        if budget_ram_mb is not None and (mb is None or mb > budget_ram_mb):
            continue
        out.append(i)
    return out


def best_within_budget(rows: Sequence[dict], metric: str, n_docs: int, budget_ms: float | None = None,
                       budget_ram_mb: float | None = None) -> dict | None:
    """The row with the highest ``metric`` among those that fit every budget, the faster on a tie;
    None when none fits. Feasibility comes first: a Pareto front of latency and quality built before
    the RAM filter can drop the best row that fits (its dominator may not fit)."""
    fits = [i for i in within_budget(rows, n_docs, budget_ms, budget_ram_mb) if metric in rows[i]["metrics"]]
    if not fits:
        return None
    return rows[min(fits, key=lambda i: (-rows[i]["metrics"][metric], latency_ms(rows[i]) or 0.0, i))]


# -- RAM of a FAISS index, per vector ----------------------------------------------------------

ID_BYTES = 8  # FAISS idx_t: inverted lists and IDMap keep one per vector


def hnsw_bytes(m: int) -> int:
    """Graph bytes per vector of HNSW with ``m`` links: 2m int32 links at level 0 (8m bytes), about one
    more int32 link on average above it (a vector reaches level l with probability m^-l, m links
    there), a level (int32) and an offset (int64): 8m + 16."""
    return 8 * m + 16


def _code_bytes(part: str, dim: int) -> float | None:
    """Bytes per vector of an encoding component (``Flat``, ``SQ8``, ``SQfp16``, ``PQ16x4``), else None."""
    if part == "Flat":
        return 4 * dim
    if part in ("SQfp16", "SQbf16"):
        return 2 * dim
    if m := re.fullmatch(r"SQ(\d+)(_direct(_signed)?)?", part):
        return math.ceil(int(m[1]) * dim / 8)
    if m := re.fullmatch(r"PQ(\d+)(?:x(\d+))?", part):
        return math.ceil(int(m[1]) * int(m[2] or 8) / 8)
    return None


def resident_bytes_per_doc(dim: int, factory: str = "Flat") -> float | None:
    """Estimated RAM per vector of a FAISS index built from ``factory`` over ``dim`` dims (sign bits for
    ``B...`` factories), once loaded: the codes (Flat 4 bytes a dim, SQfp16 2, SQ8 1, SQ4 1/2, PQm
    m bytes, binary dim/8), plus 8 bytes of ids per vector for IVF and IDMap, ``hnsw_bytes(M)`` for
    HNSW (8M + 16), and 4 bytes a dim more for a refining ``RFlat``. Costs that do not grow with the
    corpus (IVF centroids, PCA/OPQ matrices) are left out. None for factories this does not model."""
    parts = factory.split(",")
    if factory.startswith("B"):  # BFlat, BHNSW32, BIVF256[,BFlat]
        total: float = dim // 8  # binary dims are a multiple of 8
        for p in (p[1:] if p.startswith("B") else p for p in parts):
            if m := re.fullmatch(r"HNSW(\d+)", p):
                total += hnsw_bytes(int(m[1]))
            elif re.fullmatch(r"IVF\d+", p):
                total += ID_BYTES
            elif p != "Flat":
                return None
        return total
    d, extra, code = dim, 0.0, None
    for p in parts:
        if m := re.fullmatch(r"PCAW?R?(\d+)|OPQ\d+_(\d+)", p):
            d = int(m[1] or m[2])  # a transform: what follows sees its output dims
        elif re.fullmatch(r"OPQ\d+|L2norm", p):
            pass
        elif m := re.fullmatch(r"HNSW(\d+)", p):
            extra += hnsw_bytes(int(m[1]))
        elif re.fullmatch(r"IVF\d+(_HNSW\d+)?|IDMap2?", p):
            extra += ID_BYTES
        elif p == "RFlat":
            extra += 4 * dim  # the original vectors, kept to refine
        elif code is None and (c := _code_bytes(p, d)) is not None:
            code = c
        else:
            return None
    return (4 * d if code is None else code) + extra  # HNSW32 alone stores flat vectors
