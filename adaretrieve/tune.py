"""Choose an operating point from measured configurations. Plain arithmetic over bench rows (no
torch, no faiss), so a notebook can re-pick from a saved ``results.json`` under other budgets.

A row is one configuration as ``bench.run_suite`` reports it: ``metrics``, ``encode_ms_batch1``
and ``search_ms_batch1`` (medians under ``p50``), and ``resident_bytes_per_doc`` (the estimate of
``faiss_util.resident_bytes_per_doc``).
"""

from __future__ import annotations

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
