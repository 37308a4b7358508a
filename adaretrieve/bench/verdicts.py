"""Verdicts over measured rows: plain functions of results files (no numpy, torch or faiss), so the
README's renderer, ``tune`` and a notebook reach the same conclusions from the same JSON.

- ``pareto``: the rows no other row beats on cost and quality;
- ``within_budget`` / ``best_within_budget``: the choice ``adaretrieve tune`` makes;
- ``goal_rows`` / ``best_goal``: the scale goal (HNSW-768's batch-1 latency at equal recall with at
  most 1/6 of its RAM) over ``benchmarks/scale.py``'s rows.

Two row schemas meet here: bench rows (``ResultRow.to_dict``: latencies under ``p50``, RAM per
document) and scale rows (one ``results.json`` entry per method at one N: ``batch1`` ``p50_ms``,
RAM in bytes). Each function says which it takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

GOAL_RAM_RATIO = 6.0  # the issue's bar: at most 1/6 of HNSW-768's RAM
GOAL_SPEED = 1.0  # ... at at least its batch-1 speed at equal recall
CLEAR_MARGIN = 1.1  # HNSW-768's own rows moved by 5% between runs: a margin noise does not erase


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, quality) points no other point beats on both cost (lower) and quality
    (higher)."""
    front = []
    for i, (c, q) in enumerate(points):
        if not any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(points) if j != i):
            front.append(i)
    return front


def check_expected(rows, expected: dict) -> list[dict]:
    """Compare pinned scores ``{config name: {metric: [value, tolerance]}}`` with the measured ones
    (``rows``: ResultRows or their dicts)."""
    by_name = {(r["config"] if isinstance(r, dict) else r.config): (r["metrics"] if isinstance(r, dict) else r.metrics)
               for r in rows}
    out = []
    for name, metrics in (expected or {}).items():
        for metric, (value, tol) in metrics.items():
            got = by_name.get(name, {}).get(metric)
            ok = got is not None and abs(got - value) <= tol
            out.append({"config": name, "metric": metric, "expected": value, "tolerance": tol, "got": got, "ok": ok})
    return out


def resident_mb(row: dict, n_docs: int) -> float | None:
    """RAM that stays resident (the shortlist index), in MB (1e6 bytes); None when unknown."""
    per_doc = row.get("resident_bytes_per_doc")
    return None if per_doc is None else per_doc * n_docs / 1e6


# -- the budget choice (adaretrieve tune) ----------------------------------------------------------


def latency_ms(row: dict) -> float | None:
    """Median per-query latency of a bench row at batch 1: query encoding to the depth needed +
    search. None when the row has no encoding time (rows that are not a dense configuration)."""
    enc, search = row.get("encode_ms_batch1"), row.get("search_ms_batch1")
    if not enc or not search:
        return None
    return enc["p50"] + search["p50"]


def within_budget(rows: Sequence[dict], n_docs: int, budget_ms: float | None = None,
                  budget_ram_mb: float | None = None) -> list[int]:
    """Indices of the bench rows that fit every budget given (RAM: ``row_ram_bytes``); a row whose
    cost is unknown fits no budget on it."""
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
    """The bench row with the highest ``metric`` among those that fit every budget, the faster on a
    tie; None when none fits. Feasibility comes first: a Pareto front of latency and quality built
    before the RAM filter can drop the best row that fits (its dominator may not fit)."""
    fits = [i for i in within_budget(rows, n_docs, budget_ms, budget_ram_mb) if metric in rows[i]["metrics"]]
    if not fits:
        return None
    return rows[min(fits, key=lambda i: (-rows[i]["metrics"][metric], latency_ms(rows[i]) or 0.0, i))]


# -- the scale goal (benchmarks/scale.py rows at one N) --------------------------------------------

ANN = ("HNSW32", "IVF", "IVFSQ8", "IVFPQfs", "SQfp16")  # benchmarks/scale.py's sublinear shortlist kinds
ANN_PREFIX = tuple(f"{kind.lower()}_" for kind in ANN)
REFERENCE = "hnsw32_efc"  # FAISS HNSW32 over the full 768-d vectors


def ann_kind(key: str) -> str | None:
    """The shortlist kind of a scale results key (None for FAISS's own HNSW-768 rows and every other row)."""
    if key.startswith(REFERENCE):
        return None
    return next((kind for kind, pre in zip(ANN, ANN_PREFIX) if key.startswith(pre)), None)


def _ms(v: dict) -> float:
    return v["batch1"]["p50_ms"]


def reference_rows(r: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in r.items() if k.startswith(REFERENCE) and isinstance(v, dict)]


def hnsw768_at(r: dict, recall: float) -> tuple[str, dict] | None:
    """The fastest HNSW-768 row (any efConstruction / efSearch) whose recall@10 is at least ``recall``."""
    match = [(k, v) for k, v in reference_rows(r) if v["recall@10"] >= recall]
    return min(match, key=lambda kv: _ms(kv[1])) if match else None


def hnsw768_ms_interpolated(r: dict, recall: float) -> float | None:
    """HNSW-768's batch-1 ms at exactly ``recall``: along its recall/latency frontier (the fastest
    point at each recall and above), log-latency interpolated linearly in recall between the two
    points around it. None above its highest recall; below its lowest, its first point (the best it
    is known to do)."""
    pts = sorted((v["recall@10"], _ms(v)) for _, v in reference_rows(r))
    frontier: list[tuple[float, float]] = []
    for rec, ms in reversed(pts):  # from the highest recall down, keep a point only if it is faster
        if not frontier or ms < frontier[-1][1]:
            frontier.append((rec, ms))
    frontier.reverse()
    if not frontier or recall > frontier[-1][0]:
        return None
    if recall <= frontier[0][0]:
        return frontier[0][1]
    for (r0, m0), (r1, m1) in zip(frontier, frontier[1:]):
        if r0 <= recall <= r1:
            t = 0.0 if r1 == r0 else (recall - r0) / (r1 - r0)
            return math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
    return None


def goal_rows(r: dict) -> list[dict]:
    """The scale goal over one N's rows ``r``: one entry per HNSW / IVF row over a small size: its
    recall, ms and RAM (measured private memory where measured, else the index bytes), the fastest
    HNSW-768 row reaching its recall (None when none does), HNSW-768's ms interpolated at exactly
    that recall, the speed ratio against the interpolated ms, the RAM ratio, and ``met``."""
    out = []
    for k, v in r.items():
        if not (isinstance(v, dict) and ann_kind(k) not in (None, "SQfp16")):
            continue
        g = {"row": k, "recall": v["recall@10"], "ms": _ms(v),
             "ram": v.get("resident_measured_bytes") or v["resident_bytes"], "ref": None, "met": False}
        ref = hnsw768_at(r, v["recall@10"])
        if ref is not None:
            fk, fv = ref
            g.update(ref=fk, ref_recall=fv["recall@10"], ref_ms=_ms(fv),
                     ref_ram=fv.get("resident_measured_bytes") or fv["resident_bytes"])
            g["interp_ms"] = hnsw768_ms_interpolated(r, v["recall@10"])
            g["speed"] = (g["interp_ms"] or g["ref_ms"]) / g["ms"]
            g["ram_ratio"] = g["ref_ram"] / g["ram"]
            g["met"] = g["speed"] >= GOAL_SPEED and g["ram_ratio"] >= GOAL_RAM_RATIO
        out.append(g)
    return out


def best_goal(goals: Sequence[dict]) -> dict:
    """The goal entry to show: of those meeting the goal with a margin run-to-run noise does not
    erase (``CLEAR_MARGIN``), else of all meeting it, the one with the highest recall; when none
    does, the one closest to HNSW-768's speed."""
    rows = [g for g in goals if g["ref"] is not None]
    met = [g for g in rows if g["met"]]
    clear = [g for g in met if g["speed"] >= CLEAR_MARGIN] or met
    return max(clear, key=lambda g: (g["recall"], g["speed"])) if met else max(rows, key=lambda g: g["speed"])
