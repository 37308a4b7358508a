"""Sweep configurations of one model on one data set: encoder -> index -> search -> eval -> report.

The parts, one job each:

- ``suite``: YAML -> ``Suite`` -> the ``FunnelPlan`` list it measures (``resolve_plan``);
- ``measure``: the typed ``ResultRow``, the ``Pipeline`` a row searches with, ``measure``;
- ``baselines``: BM25, hybrid (BM25 then dense rerank), RRF, FAISS RefineFlat;
- ``adaptive``: the ``adaptive:`` rows (a cascade whose stop rule is fitted on other, unlabelled
  texts; one row per target) and the cascade ``tune --adaptive`` tries;
- ``verdicts``: Pareto, the memory model, the budget choice (``tune``), the scale goal rule (no
  numpy: the README's renderer uses it over results files);
- ``report``: Markdown and plots;
- ``run``: ``run_suite`` (index reuse, query encoding, every row, checks).

The names callers use are importable from here; they load on first use, so ``adaretrieve.bench.verdicts``
needs neither numpy nor torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Suite": "suite", "config_name": "suite", "with_search_params": "suite", "TOP": "suite",
    "ResultRow": "measure", "LatencyMs": "measure", "Pipeline": "measure", "Context": "measure", "measure": "measure",
    "load_rows": "measure", "machine_info": "measure", "dense_pipeline": "measure", "KINDS": "measure",
    "COLD_HOW": "measure", "shortlist_resident_bytes_per_doc": "measure", "disk_bytes_per_doc": "measure",
    "bm25_pipelines": "baselines", "refine_pipelines": "baselines",
    "AdaptiveEntry": "adaptive", "adaptive_pipelines": "adaptive", "with_middle_stage": "adaptive",
    "pareto": "verdicts", "check_expected": "verdicts", "best_within_budget": "verdicts", "within_budget": "verdicts",
    "latency_ms": "verdicts", "resident_mb": "verdicts", "row_ram_bytes": "verdicts", "goal_rows": "verdicts",
    "best_goal": "verdicts",
    "to_markdown": "report", "plot_report": "report", "write_report": "report", "STAGES": "report",
    "run_suite": "run", "ensure_index": "run",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"adaretrieve.bench.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'adaretrieve.bench' has no attribute {name!r}")
