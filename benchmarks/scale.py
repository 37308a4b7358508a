"""Scale benchmark with no model: synthetic Matryoshka-shaped unit vectors (768-d, variance
decaying along the dims, clustered), two-stage search from an adaretrieve index against exact flat
768-d float32 search and FAISS's own IndexRefineFlat / IndexHNSWFlat.

    python benchmarks/scale.py --n 10000 100000 1000000 [--queries 64] [--out benchmarks/results/scale]

Per N: build time, RAM resident (anonymous RSS growth while loading, and the index bytes), bytes on
disk, per-query latency at batch 1 and batch 64, recall@10 of each method against exact full-size
search. The memory-bandwidth floor of the shortlist scan is measured in the same run.

Every method is timed alike (adaretrieve.eval.timing): batch 1 over all the queries after WARMUP
untimed ones (median, p95), batch 64 as the median of REPEATS whole-batch calls after a warm-up
one. Two-stage k=200 rows are also timed cold: before each query the float16 rerank file is
dropped from the page cache (pagecache.evict: madvise(MADV_DONTNEED) on our mapping, then
posix_fadvise(POSIX_FADV_DONTNEED); no root needed). HNSW is built at each efConstruction asked for.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from adaretrieve.bench import machine_info  # noqa: E402
from adaretrieve.eval.pagecache import evict, resident_fraction  # noqa: E402
from adaretrieve.eval.timing import REPEATS, WARMUP, WARMUP_BATCHED, time_repeats, time_stages  # noqa: E402
from adaretrieve.index.writer import IndexWriter  # noqa: E402
from adaretrieve.search import FunnelSearcher, IndexReader  # noqa: E402
from adaretrieve.sizes import Size, truncate  # noqa: E402

D = 768
FULL = Size(12, D)
SHORT = [Size(2, 32), Size(4, 64)]
MODEL = {"name": "synthetic", "path": "synthetic", "weights_sha256": "", "normalize": True, "pooling": "mean",
         "max_length": 0, "n_layers": 12, "hidden_size": D}


def rss_anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Synthetic:
    """Clustered vectors whose per-dim scale decays like a Matryoshka embedding's variance, so the
    leading dims carry most of the signal. One generator per layer-free vector: every size is a
    prefix of the same 768-d vector (what a 2D model's shortlist layer would roughly give)."""

    def __init__(self, seed: int = 0, clusters: int = 1000):
        rng = np.random.default_rng(seed)
        self.scale = (1.0 / np.sqrt(1.0 + np.arange(D) / 4.0)).astype(np.float32)
        self.centers = (rng.standard_normal((clusters, D)).astype(np.float32) * self.scale)
        self.seed = seed

    def chunk(self, start: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        c = self.centers[rng.integers(0, len(self.centers), n)]
        x = c + 0.8 * rng.standard_normal((n, D)).astype(np.float32) * self.scale
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def queries(self, n: int, n_docs: int) -> np.ndarray:
        """Noisy copies of random documents: each query has a true neighbourhood."""
        rng = np.random.default_rng([self.seed, 999_999_999])
        ids = rng.integers(0, n_docs, n)
        x = np.stack([self.chunk(int(i), 1)[0] for i in ids])
        x = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32) * self.scale
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def bandwidth_gbs(mb: int = 1024, repeats: int = 5) -> float:
    a = np.ones(mb * 1024 * 1024 // 4, dtype=np.float32)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def time_batch1(fn, q: np.ndarray, before=None) -> dict:
    """One query at a time over every query in ``q``, after WARMUP untimed ones."""
    t, _ = time_stages(lambda i, _: fn(q[i : i + 1]), len(q), WARMUP, before=before)
    return {"p50_ms": 1000 * t.p50, "p95_ms": 1000 * t.p95, "queries": t.repeats, "warmup": WARMUP}


def time_batch(fn, q: np.ndarray) -> dict:
    """The whole batch ``q`` at once: median of REPEATS calls after WARMUP_BATCHED, per query."""
    t, _ = time_repeats(lambda _: fn(q))
    return {"per_query_ms": 1000 * t.p50 / len(q), "batch": len(q), "repeats": t.repeats, "warmup": WARMUP_BATCHED}


def time_cold(fn, q: np.ndarray, reader: IndexReader) -> dict:
    """Batch 1 with the float16 rerank file dropped from the page cache before every query."""
    rows = reader.rerank_rows()
    path = reader.gen_dir / reader.manifest.rerank["file"]

    def drop(_):
        evict(path, [rows])

    out = time_batch1(fn, q, before=drop)
    drop(0)
    left = resident_fraction(path)
    out["how"] = "madvise(MADV_DONTNEED) on the memory map + posix_fadvise(POSIX_FADV_DONTNEED) before each query"
    out["resident_after_evict"] = None if left is None else round(left, 4)
    return out


def recall_at_10(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(r[:10]) & set(t[:10])) / 10 for r, t in zip(rows, truth)]))


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def run_n(n: int, n_queries: int, work: Path, hnsw: list[tuple[int, int]], build_threads: int = 1) -> dict:
    """Every method at N = ``n``. ``hnsw``: (efConstruction, largest N to build it at) pairs."""
    gen = Synthetic()
    res: dict = {"n": n}
    ix_dir = work / f"scale-{n}"
    shutil.rmtree(ix_dir, ignore_errors=True)
    # exact baseline: flat 768-d float32, built alongside (it is what we compare against)
    exact = faiss.IndexFlatIP(D)
    t0 = time.perf_counter()
    w = IndexWriter(ix_dir, n, SHORT, FULL, factory="Flat")
    chunk = 50_000
    gen_s = 0.0
    for start in range(0, n, chunk):
        g0 = time.perf_counter()
        x = gen.chunk(start, min(chunk, n - start))
        gen_s += time.perf_counter() - g0
        w.add([str(i) for i in range(start, start + len(x))], {s: truncate(x, s.dim, True) for s in [*SHORT, FULL]})
        exact.add(x)
    w.close(MODEL, corpus="synthetic")
    res["build_seconds_adaretrieve_incl_exact"] = round(time.perf_counter() - t0 - gen_s, 2)
    res["generate_seconds"] = round(gen_s, 2)
    res["disk_bytes"] = dir_bytes(ix_dir)
    res["exact_index_bytes"] = n * D * 4

    q = gen.queries(n_queries, n)
    truth = exact.search(q, 10)[1]
    res["exact"] = {"batch1": time_batch1(lambda x, ix=exact: ix.search(x, 10), q),
                    "batch64": time_batch(lambda x, ix=exact: ix.search(x, 10), q[:64]), "recall@10": 1.0}
    del exact  # only the ground truth is needed from here on; reset() would keep the memory allocated
    gc.collect()

    gc.collect()
    before = rss_anon_mb()
    reader = IndexReader(ix_dir)
    searchers = {s: FunnelSearcher(reader, s, k=200, rerank=FULL) for s in SHORT}
    for s in SHORT:  # load the shortlist indexes now, so RSS counts them
        reader.shortlist_index(s)
    res["reader_rss_anon_mb"] = round(rss_anon_mb() - before, 1)
    res["resident_bytes_model"] = {str(s): n * s.dim * 4 for s in SHORT}

    for s, srch in searchers.items():
        qv = {s: truncate(q, s.dim, True), FULL: q}

        def two(x, srch=srch, s=s):
            return srch.search({s: truncate(x, s.dim, True), FULL: x}, top=10)

        def scan(x, srch=srch, s=s):
            return srch.index.search(truncate(x, s.dim, True), 200)

        rows = srch.search(qv, top=10)[1]
        res[f"two_stage_{s}_k200"] = {
            "batch1": time_batch1(two, q), "batch1_cold": time_cold(two, q, reader),
            "batch64": time_batch(two, q[:64]),
            "shortlist_scan_batch1": time_batch1(scan, q), "recall@10": recall_at_10(rows, truth),
            "resident_bytes": n * s.dim * 4}

    # deeper shortlists buy recall with more candidate rows read from disk; a three-stage funnel
    # spends the extra candidates on a cheap middle size instead of on 768-d rows
    small, mid = SHORT
    for name, srch in ((f"two_stage_{small}_k1000", FunnelSearcher(reader, small, k=1000, rerank=FULL)),
                       (f"two_stage_{mid}_k1000", FunnelSearcher(reader, mid, k=1000, rerank=FULL)),
                       (f"funnel_{small}_k2000_{mid}_k200", FunnelSearcher(reader, small, k=2000, then=[(mid, 200)],
                                                                          rerank=FULL))):
        def run(x, srch=srch):
            return srch.search({s: truncate(x, s.dim, True) for s in srch.sizes()}, top=10)

        res[name] = {"batch1": time_batch1(run, q), "batch64": time_batch(run, q[:64]),
                     "recall@10": recall_at_10(run(q)[1], truth),
                     "resident_bytes": n * sum(s.dim for s in srch.sizes() if s != FULL) * 4}

    # FAISS's own refine: SQ8 over the full 768 dims, exact refine with the float32 vectors
    sq = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    refine = faiss.IndexRefineFlat(sq)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        x = gen.chunk(start, min(chunk, n - start))
        if start == 0:
            refine.train(x)  # trains the SQ8 ranges on the first chunk
        refine.add(x)
    build = time.perf_counter() - t0
    for k_factor in (1.0, 4.0, 20.0):
        params = faiss.IndexRefineSearchParameters(k_factor=k_factor)

        def rf(x, params=params, ix=refine):
            return ix.search(x, 10, params=params)

        rows = rf(q)[1]
        res[f"refineflat_sq8_kf{int(k_factor)}"] = {
            "batch1": time_batch1(rf, q), "batch64": time_batch(rf, q[:64]),
            "recall@10": recall_at_10(rows, truth), "build_seconds": round(build, 2),
            "resident_bytes": n * D * (1 + 4)}
    del refine, rf  # free its memory before HNSW is built (reset() keeps the allocation)
    gc.collect()

    res["hnsw_build_threads"] = build_threads
    res["hnsw_skipped"] = [efc for efc, n_max in hnsw if n > n_max]
    for efc in (efc for efc, n_max in hnsw if n <= n_max):
        h = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = efc
        search_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(build_threads)  # graph building is the slow part: give it every core we have
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            h.add(gen.chunk(start, min(chunk, n - start)))
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(search_threads)
        for ef in (32, 128, 512):
            h.hnsw.efSearch = ef

            def hs(x, h=h):
                return h.search(x, 10)

            rows = hs(q)[1]
            res[f"hnsw32_efc{efc}_ef{ef}"] = {"batch1": time_batch1(hs, q), "batch64": time_batch(hs, q[:64]),
                                             "recall@10": recall_at_10(rows, truth), "build_seconds": round(build, 2),
                                             "ef_construction": efc, "resident_bytes": n * D * 4 + n * 32 * 2 * 4}
        del h, hs
        gc.collect()
    shutil.rmtree(ix_dir, ignore_errors=True)
    return res


def to_markdown(report: dict) -> str:
    lines = ["# Scale benchmark (synthetic 768-d Matryoshka-shaped vectors)", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, faiss {report['machine']['faiss']}; "
             f"memory bandwidth (numpy sum over 1 GiB, one thread) {report['bandwidth_gbs']:.1f} GB/s; {report['threads']} "
             f"search thread(s) for every method; {report['date']}.", "",
             *([f"Note: {report['note']}", ""] if report.get("note") else []),
             "Latency in ms per query: batch 1 median (p95) over every query after "
             f"{report.get('warmup', '?')} warm-up queries, and batch 64 per query (median of "
             f"{report.get('repeats', '?')} repeats after a warm-up batch); every method is timed on the same queries. "
             "Resident = bytes the method must keep in RAM; two-stage keeps only the shortlist index (full vectors are "
             "float16 on disk, candidate rows read through a memory map). Cold = the rerank file dropped from the page "
             "cache before each query (madvise(MADV_DONTNEED) on the process's memory map, then "
             "posix_fadvise(POSIX_FADV_DONTNEED); mincore confirms what stays cached).", ""]
    for r in report["results"]:
        n = r["n"]
        ex = r["exact"]
        lines += [f"## N = {n:,}", "",
                  f"Build (adaretrieve index: 2 shortlists + float16 rerank rows, plus the exact index): "
                  f"{r['build_seconds_adaretrieve_incl_exact']} s; on disk {r['disk_bytes'] / 1e6:.1f} MB; "
                  f"reader anonymous RSS growth {r['reader_rss_anon_mb']} MB.", "",
                  "| method | recall@10 | batch-1 ms p50 (p95) | batch-1 cold ms p50 (p95) | batch-64 ms/query | queries "
                  "| resident MB | speed-up vs exact (batch 1) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        base = ex["batch1"]["p50_ms"]
        rows = [("exact flat 768-d float32", ex, r["exact_index_bytes"])]
        rows += [(k, v, v["resident_bytes"]) for k, v in r.items() if isinstance(v, dict) and "recall@10" in v and k != "exact"]
        for name, v, mem in rows:
            cold = v.get("batch1_cold")
            cold_s = f"{cold['p50_ms']:.3f} ({cold['p95_ms']:.3f})" if cold else "-"
            lines.append(f"| {name} | {v['recall@10']:.4f} | {v['batch1']['p50_ms']:.3f} ({v['batch1']['p95_ms']:.3f}) | "
                         f"{cold_s} | {v['batch64']['per_query_ms']:.3f} | {v['batch1'].get('queries', '?')} | "
                         f"{mem / 1e6:.1f} | {base / v['batch1']['p50_ms']:.1f}x |")
        lines += ["", "At equal recall (the fastest FAISS configuration whose recall@10 is at least the adaretrieve row's, "
                  "batch 1 median):", ""]
        faiss_rows = [(k, v) for k, v in r.items() if isinstance(v, dict) and k.startswith(("hnsw", "refineflat"))]
        for k, v in r.items():
            if not (isinstance(v, dict) and k.startswith(("two_stage", "funnel"))):
                continue
            match = [(fk, fv) for fk, fv in faiss_rows if fv["recall@10"] >= v["recall@10"]]
            if match:
                fk, fv = min(match, key=lambda kv: kv[1]["batch1"]["p50_ms"])
                ratio = fv["batch1"]["p50_ms"] / v["batch1"]["p50_ms"]
                lines.append(f"- {k} (recall {v['recall@10']:.3f}, {v['batch1']['p50_ms']:.2f} ms, {v['resident_bytes'] / 1e6:.0f} MB "
                             f"resident) vs {fk} (recall {fv['recall@10']:.3f}, {fv['batch1']['p50_ms']:.2f} ms, "
                             f"{fv['resident_bytes'] / 1e6:.0f} MB): adaretrieve {ratio:.2f}x the speed, "
                             f"1/{fv['resident_bytes'] / v['resident_bytes']:.0f} the RAM.")
        for k, v in r.items():
            if k.startswith("hnsw32_") and k.endswith("_ef32"):
                lines.append(f"\nHNSW build ({r.get('hnsw_build_threads', 1)} thread(s), M=32, efConstruction "
                             f"{v.get('ef_construction', 40)}): {v['build_seconds']} s.")
        if r.get("hnsw_skipped"):
            lines.append(f"\nHNSW at efConstruction {', '.join(map(str, r['hnsw_skipped']))} not built at this N "
                         "(over its --hnsw limit: too slow on one core for this run).")
        for s in SHORT:
            v = r.get(f"two_stage_{s}_k200")
            if v:
                floor_ms = 1000 * n * s.dim * 4 / (report["bandwidth_gbs"] * 1e9)
                lines.append("")
                lines.append(f"Shortlist scan {s} (k=200) alone: {v['shortlist_scan_batch1']['p50_ms']:.3f} ms at batch 1; "
                             f"bandwidth floor {floor_ms:.3f} ms ({v['shortlist_scan_batch1']['p50_ms'] / floor_ms:.2f}x the floor). "
                             f"RAM ratio vs exact flat: 1/{r['exact_index_bytes'] / v['resident_bytes']:.0f}.")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--hnsw", nargs="+", default=["40:1000000", "200:1000000"], metavar="EFC:MAX_N",
                    help="build HNSW (M=32) at efConstruction EFC for N up to MAX_N (1M at efConstruction 40: ~6 min "
                         "on 2 cores; 200 takes several times longer)")
    ap.add_argument("--build-threads", type=int, default=0, help="threads for building HNSW (default: every core "
                    "this process may run on)")
    ap.add_argument("--merge", action="store_true", help="keep the other N of an existing results.json in --out "
                    "(a run of only the largest N after smaller ones)")
    ap.add_argument("--note", default=None, help="a line for the report, e.g. how the run was pinned")
    ap.add_argument("--work", default=str(ROOT / "indexes"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"))
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads for every method (default 1: the "
                    "machine is shared, and one thread gives every method the same footing)")
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    hnsw = [(int(e), int(m)) for e, m in (h.split(":") for h in a.hnsw)]
    build_threads = a.build_threads or len(os.sched_getaffinity(0))
    report = {"command": "python " + " ".join(sys.argv), "machine": machine_info(), "bandwidth_gbs": bandwidth_gbs(),
              "threads": a.threads, "warmup": WARMUP, "repeats": REPEATS, "note": a.note,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": []}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.merge and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        report["results"] = [r for r in old["results"] if r["n"] not in a.n]
        report["command"] = f"{old['command']}; then {report['command']}"
    for n in a.n:
        report["results"].append(run_n(n, a.queries, Path(a.work), hnsw, build_threads))
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "results.md").write_text(to_markdown(report))
        print(f"done N={n}", flush=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [r["n"] for r in report["results"]]
        for key, label in [("exact", "exact flat 768-d"), ("two_stage_2x32_k200", "two-stage 32-d k=200 -> 768"),
                           ("two_stage_4x64_k200", "two-stage 64-d k=200 -> 768"), ("refineflat_sq8_kf4", "RefineFlat SQ8 kf=4"),
                           ("two_stage_2x32_k1000", "two-stage 32-d k=1000 -> 768"), ("hnsw32_efc40_ef128", "HNSW32 efC=40 ef=128"),
                           ("hnsw32_efc200_ef128", "HNSW32 efC=200 ef=128")]:
            ys = [r[key]["batch1"]["p50_ms"] for r in report["results"] if key in r]
            if len(ys) == len(ns):
                ax.plot(ns, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel("ms per query (batch 1, median)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_n.png", dpi=120)
    except ImportError:
        pass
