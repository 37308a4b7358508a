"""Choosing an operating point from measured configurations: the rule is a verdict over results
and lives in ``adaretrieve.bench.verdicts`` (plain arithmetic over bench rows, no torch, no faiss);
the names are kept here for callers of this module. FAISS's per-vector memory model is
``adaretrieve.faiss_util.resident_bytes_per_doc``."""

from __future__ import annotations

from adaretrieve.bench.verdicts import best_within_budget, latency_ms, resident_mb, within_budget

__all__ = ["best_within_budget", "latency_ms", "resident_mb", "within_budget"]
