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
    res = scale.run_n(1200, 10, tmp_path, hnsw=[(40, 10**9), (200, 10**9)], build_threads=1, ann=())
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
    res = scale.run_n(600, 4, tmp_path, hnsw=[(40, 10**9), (200, 100)], build_threads=1, ann=())
    assert "hnsw32_efc40_ef32" in res and "hnsw32_efc200_ef32" not in res
    assert res["hnsw_skipped"] == [200]


def test_sublinear_shortlists_over_the_small_sizes_reach_faiss_and_are_compared_with_hnsw_768(tmp_path):
    """HNSW32 / IVF over 2x32 and 4x64 built by adaretrieve's writer, one row per (size, k, setting),
    each with its private memory measured; nprobe reaches FAISS (IVF recall rises with it, up to the
    flat shortlist's); the report has the goal table against HNSW-768."""
    scale = load_scale()
    res = scale.run_n(3000, 16, tmp_path, hnsw=[(40, 10**9)], build_threads=1)
    for s in ("2x32", "4x64"):
        ivf = [res[f"ivf_{s}_k200_nprobe{p}"]["recall@10"] for p in (8, 32, 128)]
        flat = res[f"two_stage_{s}_k200"]["recall@10"]
        assert ivf[0] < ivf[2] <= flat + 1e-9, (s, ivf, flat)
        hnsw = res[f"hnsw32_{s}_k200_ef200"]
        assert hnsw["factory"] == "HNSW32" and hnsw["ef_search"] == 200 and hnsw["recall@10"] <= flat + 1e-9
        assert res[f"hnsw32_{s}_k1000_ef1000"]["recall@10"] >= hnsw["recall@10"]
        assert res[f"ivf_{s}_k2000_nprobe128"]["k"] == 2000
        for k in (f"ivf_{s}_k200_nprobe8", f"hnsw32_{s}_k200_ef200"):
            assert res[k]["resident_measured_bytes"] > 0 and res[k]["batch1_cold"]["queries"] == 16
    for s in ("2x32", "4x64"):  # float16 codes scanned flat: the flat shortlist's recall within rounding
        assert abs(res[f"sqfp16_{s}_k200"]["recall@10"] - res[f"two_stage_{s}_k200"]["recall@10"]) <= 0.02
    assert res["ivf_2x32_k200_nprobe8"]["factory"] == f"IVF{scale.nlist_for(3000)},Flat" == "IVF256,Flat"
    # IVF with compact codes in its lists: 8-bit scalar codes and 4-bit PQ codes scanned by fast-scan kernels
    for s in ("2x32", "4x64"):
        assert res[f"ivfsq8_{s}_k1000_nprobe64"]["factory"] == "IVF256,SQ8"
        assert res[f"ivfpqfs_{s}_k1000_nprobe64"]["factory"] == "IVF256,PQ32x4fs"
        for kind in ("ivfsq8", "ivfpqfs"):
            assert res[f"{kind}_{s}_k1000_nprobe64"]["recall@10"] <= res[f"{kind}_{s}_k1000_nprobe128"]["recall@10"]
            assert res[f"{kind}_{s}_k2000_nprobe128"]["nprobe"] == 128
    assert res["hnsw32_efc40_ef16"]["resident_measured_bytes"] > 3000 * 768 * 4
    # every warm row starts with the rerank file wholly cached, also those timed after a cold row
    warm = [k for k, v in res.items() if isinstance(v, dict) and "rerank_cached" in v]
    assert len(warm) == 47 and all(res[k]["rerank_cached"] >= 0.99 for k in warm), warm
    assert res["hnsw32_4x64_k1000_ef1000"]["ef_construction"] == 200
    assert res["disk_bytes"] > 3000 * 768 * 2  # the float16 rerank rows alone (inside the generation folder)
    assert res["goal"] == scale.goal_rows(res) and len(res["goal"]) == 38  # in the JSON: the README reads it there
    md = scale.to_markdown({"command": "x", "machine": {"cpu": "c", "cores": 2, "faiss": "f"}, "bandwidth_gbs": 10.0,
                            "threads": 1, "date": "d", "results": [res]})
    goal = [line for line in md.splitlines() if line.startswith("| ivf_2x32_k200_nprobe128 |")]
    assert len(goal) == 2 and goal[1].endswith(("| yes |", "| no |", "| - |"))  # the main table, then the goal table


def test_the_hnsw_768_graph_is_reused_from_the_cache(tmp_path):
    scale = load_scale()
    gen = scale.Synthetic()
    _, build, path = scale.hnsw768(gen, 500, 40, 1, 200, tmp_path)
    stamp = path.stat().st_mtime_ns
    h, again, same = scale.hnsw768(gen, 500, 40, 1, 200, tmp_path)
    assert same == path and path.stat().st_mtime_ns == stamp and again == round(build, 2) and h.ntotal == 500
    assert scale.hnsw768(scale.Synthetic(seed=1), 500, 40, 1, 200, tmp_path)[2] != path  # other vectors, other file
