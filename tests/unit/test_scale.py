"""benchmarks/scale.py on a tiny N: every row timed on the same queries with the same warm-up and
repeats, HNSW at two efConstruction values, cold-cache two-stage beside warm."""

import importlib.util
from pathlib import Path

from adaretrieve.eval.timing import REPEATS, WARMUP

SCALE = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_bench", SCALE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_row_is_timed_alike_and_hnsw_is_built_at_both_ef_construction(tmp_path):
    scale = load_scale()
    res = scale.run_n(1200, 10, tmp_path, hnsw=[(40, 10**9), (200, 10**9)], build_threads=1)
    rows = {k: v for k, v in res.items() if isinstance(v, dict) and "recall@10" in v}
    assert {"exact", "refineflat_sq8_kf1", "two_stage_2x32_k200", "hnsw32_efc40_ef32", "hnsw32_efc200_ef32"} <= set(rows)
    for name, v in rows.items():
        assert v["batch1"]["queries"] == 10 and v["batch1"]["warmup"] == WARMUP, name
        assert v["batch64"]["repeats"] == REPEATS and v["batch64"]["batch"] == 10, name
    assert rows["hnsw32_efc200_ef32"]["ef_construction"] == 200 and rows["hnsw32_efc40_ef32"]["ef_construction"] == 40
    assert rows["hnsw32_efc200_ef32"]["build_seconds"] > 0
    cold = rows["two_stage_2x32_k200"]["batch1_cold"]
    assert cold["queries"] == 10 and cold["how"].startswith("madvise")


def test_hnsw_above_its_limit_is_skipped_and_said(tmp_path):
    scale = load_scale()
    res = scale.run_n(600, 4, tmp_path, hnsw=[(40, 10**9), (200, 100)], build_threads=1)
    assert "hnsw32_efc40_ef32" in res and "hnsw32_efc200_ef32" not in res
    assert res["hnsw_skipped"] == [200]
