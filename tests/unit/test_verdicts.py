"""Verdicts over results (adaretrieve.bench.verdicts): Pareto, the scale goal rule, and which goal
row the README shows; on small hand-made rows and on the committed scale results."""

import json
from pathlib import Path

import pytest

from adaretrieve.bench import verdicts

SCALE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "scale" / "results.json"


def test_pareto_keeps_what_nothing_beats_on_both():
    pts = [(1.0, 0.5), (2.0, 0.6), (2.0, 0.5), (3.0, 0.6), (0.5, 0.1)]
    assert verdicts.pareto(pts) == [0, 1, 4]


def _hnsw(recall, ms, ram=3.3e9):
    return {"recall@10": recall, "batch1": {"p50_ms": ms}, "resident_bytes": ram, "resident_measured_bytes": ram}


def _ours(recall, ms, private, **kw):
    return {"recall@10": recall, "batch1": {"p50_ms": ms}, "resident_bytes": private, "resident_measured_bytes": private,
            "k": 1000, **kw}


def test_hnsw_768_is_interpolated_along_its_frontier_in_log_latency():
    r = {"n": 10, "hnsw32_efc40_ef16": _hnsw(0.2, 1.0), "hnsw32_efc40_ef64": _hnsw(0.6, 4.0),
         "hnsw32_efc200_ef64": _hnsw(0.6, 5.0)}  # slower at the same recall: not on the frontier
    assert verdicts.hnsw768_ms_interpolated(r, 0.4) == pytest.approx(2.0)  # halfway in recall: the geometric mean
    assert verdicts.hnsw768_ms_interpolated(r, 0.1) == 1.0  # below its lowest recall: its first point
    assert verdicts.hnsw768_ms_interpolated(r, 0.7) is None
    assert verdicts.hnsw768_at(r, 0.5)[0] == "hnsw32_efc40_ef64"


def test_the_goal_needs_its_speed_and_one_sixth_of_its_ram():
    r = {"n": 10, "hnsw32_efc40_ef16": _hnsw(0.2, 1.0, 6e9), "hnsw32_efc40_ef64": _hnsw(0.6, 4.0, 6e9),
         "ivf_2x32_k1000_nprobe32": _ours(0.4, 1.5, 5e8),  # 2 ms at equal recall / 1.5: faster, 1/12 of the RAM
         "ivf_4x64_k1000_nprobe32": _ours(0.4, 2.5, 5e8),  # slower than HNSW-768 at its recall
         "ivfsq8_4x64_k1000_nprobe64": _ours(0.9, 1.0, 1e8),  # no HNSW-768 row reaches its recall
         "sqfp16_2x32_k200": _ours(0.4, 0.1, 1e6)}  # a flat scan: not a sublinear shortlist, not a goal row
    goals = {g["row"]: g for g in verdicts.goal_rows(r)}
    assert set(goals) == {"ivf_2x32_k1000_nprobe32", "ivf_4x64_k1000_nprobe32", "ivfsq8_4x64_k1000_nprobe64"}
    g = goals["ivf_2x32_k1000_nprobe32"]
    assert g["speed"] == pytest.approx(2.0 / 1.5) and g["ram_ratio"] == pytest.approx(12.0) and g["met"]
    assert not goals["ivf_4x64_k1000_nprobe32"]["met"] and goals["ivfsq8_4x64_k1000_nprobe64"]["ref"] is None
    assert verdicts.best_goal(list(goals.values()))["row"] == "ivf_2x32_k1000_nprobe32"


def test_the_committed_goal_table_is_the_rule_applied_to_the_committed_rows():
    for r in json.loads(SCALE.read_text())["results"]:
        want = verdicts.goal_rows(r)
        assert [g["row"] for g in r["goal"]] == [g["row"] for g in want], r["n"]
        for got, g in zip(r["goal"], want):
            assert set(got) == set(g) and all(got[k] == (pytest.approx(v) if isinstance(v, float) else v)
                                              for k, v in g.items()), (r["n"], g["row"])


def test_a_shallow_row_is_compared_at_its_own_depth():
    """A k=50 row stores R@50 (code-review-3 A3); asked for R@1000, tune compares that value (a run of
    50 results recalls at 1000 what it recalls at 50), never a missing key."""
    row = {"metrics": {"nDCG@10": 0.2, "R@50": 0.22}, "depth": 50}
    assert verdicts.metric_of(row, "R@1000") == 0.22 and verdicts.metric_of(row, "R@50") == 0.22
    assert verdicts.metric_of(row, "R@10") is None and verdicts.metric_of(row, "RR@1000") is None
    assert verdicts.metric_of({"metrics": {"R(rel=2)@50": 0.1}, "depth": 50}, "R(rel=2)@100") == 0.1
