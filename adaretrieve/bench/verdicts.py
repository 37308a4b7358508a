"""Verdicts over measured rows: plain functions of results files (no numpy, torch or faiss), so the
README's renderer, ``tune`` and a notebook reach the same conclusions from the same JSON.

- ``pareto``: the rows no other row beats on cost and quality;
- ``row_ram_bytes``: the one memory model: what a row's latency needed resident;
- ``bytes_per_doc``: a row's shortlist codes per document (the quality-per-byte axis);
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

PAGE = 4096
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


# -- the memory model ------------------------------------------------------------------------------


def row_ram_bytes(row: dict, n_docs: int | None = None) -> float | None:
    """Everything a row's latency needed resident, in bytes: private memory plus the page-cache
    bytes of the index and rerank files it touched. None when unknown.

    - Private memory: measured in a fresh process serving the row where measured (scale:
      ``resident_measured_bytes``; bench: ``resident_measured["anon_bytes"]``), else the index's
      estimate (scale: ``resident_bytes``; bench: ``resident_bytes_per_doc`` x ``n_docs``).
    - Page cache: a row timed warm with the whole rerank file read into the page cache first (scale:
      ``rerank_cached``) is charged the whole file (``rerank_file_bytes``); a bench row measured in a
      fresh process is charged the index-file pages mapped after all its queries
      (``resident_measured["file_bytes"]``); an unmeasured bench row that reads rerank rows is
      charged the whole rerank file (``rerank_bytes_per_doc_on_disk`` x ``n_docs``: its warm
      latency may have touched any of it).
    """
    measured = row.get("resident_measured")
    if isinstance(measured, dict) and measured.get("anon_bytes") is not None:  # bench, measured
        return float(measured["anon_bytes"]) + float(measured.get("file_bytes") or 0)
    private = row.get("resident_measured_bytes") or row.get("resident_bytes")
    if private is None and row.get("resident_bytes_per_doc") is not None and n_docs is not None:
        private = row["resident_bytes_per_doc"] * n_docs
    if private is None:
        return None
    cache = 0.0
    if row.get("rerank_cached"):
        cache = rerank_file_bytes(row, n_docs)
    elif row.get("rerank_bytes_per_doc_on_disk") and n_docs is not None:
        cache = row["rerank_bytes_per_doc_on_disk"] * n_docs
    return float(private) + cache


def rerank_file_bytes(row: dict, n_docs: int | None = None) -> float:
    """The bytes of the rerank file a row reads: recorded (``rerank_file_bytes``), else its bytes per
    document on disk times the documents. ValueError when neither is known (a warm row must not be
    charged nothing)."""
    if row.get("rerank_file_bytes") is not None:
        return float(row["rerank_file_bytes"])
    if row.get("rerank_bytes_per_doc_on_disk") and n_docs is not None:
        return float(row["rerank_bytes_per_doc_on_disk"] * n_docs)
    raise ValueError("a row timed with the rerank file cached must record rerank_file_bytes")


def cold_ram_bytes(row: dict) -> float | None:
    """A scale row timed cold (``batch1_cold``: the rerank file dropped from the page cache before
    each query): its private memory plus the pages one query's ``k`` candidate rows span, at most
    ``row bytes + one page`` each (what a cold query leaves cached). None when not timed cold."""
    if not row.get("batch1_cold"):
        return None
    private = row.get("resident_measured_bytes") or row.get("resident_bytes")
    row_bytes = row.get("rerank_row_bytes", 0)
    return float(private) + row["k"] * (row_bytes + PAGE)


def resident_mb(row: dict, n_docs: int) -> float | None:
    """``row_ram_bytes`` of a bench row in MB (1e6 bytes)."""
    b = row_ram_bytes(row, n_docs)
    return None if b is None else b / 1e6


# -- the budget choice (adaretrieve tune) ----------------------------------------------------------


def latency_ms(row: dict) -> float | None:
    """Median per-query latency of a bench row at batch 1: query encoding to the depth needed +
    search. None when the row has no encoding time (rows that are not a dense configuration). A row
    whose search encodes (an adaptive cascade: ``search_includes_encoding``) has no encoding time of
    its own: its end to end median, measured per query as every row's is."""
    if row.get("search_includes_encoding"):
        e2e = row.get("end_to_end_ms_batch1")
        return e2e["p50"] if e2e else None
    enc, search = row.get("encode_ms_batch1"), row.get("search_ms_batch1")
    if not enc or not search:
        return None
    return enc["p50"] + search["p50"]


def bytes_per_doc(row: dict) -> float | None:
    """The bytes a document costs in RAM for a bench row's shortlist: its codes (``sign``: dim/8, a
    float32 Flat: 4 x dim; ``faiss_util.resident_bytes_per_doc``), what grows with the corpus and must
    stay resident. The rerank rows a two-stage row reads are on disk and are not in it (they are in
    ``row_ram_bytes``). None when unknown."""
    b = row.get("resident_bytes_per_doc")
    return None if b is None else float(b)


def within_budget(rows: Sequence[dict], n_docs: int, budget_ms: float | None = None,
                  budget_ram_mb: float | None = None, budget_bytes_per_doc: float | None = None) -> list[int]:
    """Indices of the bench rows that fit every budget given (RAM: ``row_ram_bytes``; bytes per
    document: ``bytes_per_doc``); a row whose cost is unknown fits no budget on it."""
    out = []
    for i, r in enumerate(rows):
        ms, mb, bpd = latency_ms(r), resident_mb(r, n_docs), bytes_per_doc(r)
        if budget_ms is not None and (ms is None or ms > budget_ms):
            continue
        if budget_ram_mb is not None and (mb is None or mb > budget_ram_mb):
            continue
        if budget_bytes_per_doc is not None and (bpd is None or bpd > budget_bytes_per_doc):
            continue
        out.append(i)
    return out


def metric_of(row: dict, metric: str) -> float | None:
    """A bench row's ``metric``; for a row whose run is shallower than a recall's cut-off, its recall
    at its depth, which is what that recall is for a run of that depth (a k=50 row's ``R@1000`` is its
    ``R@50``, stored under that name). None when the row has neither."""
    got = row["metrics"]
    if metric in got:
        return got[metric]
    kind, _, cut = metric.rpartition("@")
    depth = row.get("depth")
    if kind.startswith("R") and not kind.startswith("RR") and cut.isdigit() and depth is not None and int(cut) > depth:
        return got.get(f"{kind}@{depth}")
    return None


def best_within_budget(rows: Sequence[dict], metric: str, n_docs: int, budget_ms: float | None = None,
                       budget_ram_mb: float | None = None, budget_bytes_per_doc: float | None = None) -> dict | None:
    """The bench row with the highest ``metric`` (``metric_of``) among those that fit every budget,
    the faster on a tie; None when none fits. Feasibility comes first: a Pareto front of latency and
    quality built before the RAM filter can drop the best row that fits (its dominator may not fit)."""
    fits = [i for i in within_budget(rows, n_docs, budget_ms, budget_ram_mb, budget_bytes_per_doc)
            if metric_of(rows[i], metric) is not None]
    if not fits:
        return None
    return rows[min(fits, key=lambda i: (-metric_of(rows[i], metric), latency_ms(rows[i]) or 0.0, i))]


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


def goal_entry(r: dict, key: str, v: dict, timing: str) -> dict:
    """One goal verdict: row ``key`` timed ``warm`` (batch 1, RAM charged for the cached rerank
    file) or ``cold`` (batch 1 with the rerank file dropped before each query, RAM charged for what
    one query's reads keep) against HNSW-768 at its recall."""
    if timing == "warm":
        ms, ram = _ms(v), row_ram_bytes(v, r.get("n"))
    else:
        ms, ram = v["batch1_cold"]["p50_ms"], cold_ram_bytes(v)
    g = {"row": key, "timing": timing, "recall": v["recall@10"], "ms": ms, "ram": ram,
         "private": v.get("resident_measured_bytes") or v["resident_bytes"], "ref": None, "met": False}
    ref = hnsw768_at(r, v["recall@10"])
    if ref is not None:
        fk, fv = ref
        g.update(ref=fk, ref_recall=fv["recall@10"], ref_ms=_ms(fv), ref_ram=row_ram_bytes(fv, r.get("n")))
        g["interp_ms"] = hnsw768_ms_interpolated(r, v["recall@10"])
        g["speed"] = (g["interp_ms"] or g["ref_ms"]) / ms
        g["ram_ratio"] = g["ref_ram"] / ram
        g["met"] = g["speed"] >= GOAL_SPEED and g["ram_ratio"] >= GOAL_RAM_RATIO
    return g


def goal_rows(r: dict) -> list[dict]:
    """The scale goal over one N's rows ``r``: one warm entry per HNSW / IVF row over a small size
    (its batch-1 median, RAM = ``row_ram_bytes``: private memory plus the rerank file it was timed
    with in the page cache), and one cold entry for each such row also timed cold. Each gives the
    fastest HNSW-768 row reaching its recall (``ref``; None when none does), HNSW-768's ms
    interpolated at exactly that recall, the speed and RAM ratios, and ``met``."""
    out = []
    for k, v in r.items():
        if not (isinstance(v, dict) and ann_kind(k) not in (None, "SQfp16")):
            continue
        out.append(goal_entry(r, k, v, "warm"))
        if v.get("batch1_cold"):
            out.append(goal_entry(r, k, v, "cold"))
    return out


def best_goal(goals: Sequence[dict]) -> dict:
    """The goal entry to show: of those meeting the goal with a margin run-to-run noise does not
    erase (``CLEAR_MARGIN``), else of all meeting it, the one with the highest recall; when none
    does, the warm one closest to HNSW-768's speed."""
    rows = [g for g in goals if g["ref"] is not None]
    met = [g for g in rows if g["met"]]
    clear = [g for g in met if g["speed"] >= CLEAR_MARGIN] or met
    if met:
        return max(clear, key=lambda g: (g["recall"], g["speed"]))
    return max((g for g in rows if g.get("timing", "warm") == "warm"), key=lambda g: g["speed"])


def goal_summary(goals: Sequence[dict]) -> dict:
    """What the goal table says in numbers: entries, how many meet it (warm / cold), the best RAM
    ratio of a warm row at HNSW-768's speed or better, and the fastest cold entry's speed."""
    warm = [g for g in goals if g.get("timing", "warm") == "warm" and g["ref"] is not None]
    cold = [g for g in goals if g.get("timing") == "cold" and g["ref"] is not None]
    fast = [g for g in warm if g["speed"] >= GOAL_SPEED]
    return {"entries": len(goals), "warm": len(warm), "cold": len(cold),
            "met": sum(g["met"] for g in goals), "met_warm": sum(g["met"] for g in warm),
            "met_cold": sum(g["met"] for g in cold),
            "fast_warm": len(fast), "best_ram_ratio_at_speed": max((g["ram_ratio"] for g in fast), default=None),
            "best_cold_speed": max((g["speed"] for g in cold), default=None),
            "best_cold": max(cold, key=lambda g: g["speed"]) if cold else None}
