"""Cold-cache rerank with and without asking for every candidate row at once (issue 13's cold rows).

    python benchmarks/cold_rerank.py [--n 1000000] [--queries 32] [--out benchmarks/results/cold-rerank]

Writes benchmarks/scale.py's synthetic index (flat 2x32 shortlist, float16 768-d rerank rows on
disk) and, per query, takes the 2x32 shortlist's top k (200 and 1000) and rescores it at 768-d with
``rerank_candidates``: with ``prefetch_rows`` (a sample of the candidates' pages checked with mincore;
if any is missing, MADV_WILLNEED for every candidate row at once) and without (each row faults in
turn), each cold (the rerank file dropped from the page cache before the call, as scale.py's cold
rows) and warm (the whole file cached). The methods take turns on every query, on the same
candidates; one thread; medians, and the median of the per-query ratios.
"""

from __future__ import annotations

import argparse
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
from adaretrieve.search import IndexReader, rerank_candidates  # noqa: E402
from adaretrieve.sizes import Size, truncate  # noqa: E402
from benchmarks import scale as sc  # noqa: E402
from benchmarks.machine import uptime  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/adaretrieve-cold-rerank"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold-rerank")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    small = Size(2, 32)
    shutil.rmtree(a.work, ignore_errors=True)
    faiss.omp_set_num_threads(2)
    sc.write_synthetic(sc.Synthetic(), a.n, a.work, "Flat", 50_000, sizes=[small])
    threadpool_limits(1)
    faiss.omp_set_num_threads(1)
    reader = IndexReader(a.work)
    rows = reader.rerank_rows()
    path = reader.gen_dir / reader.manifest.rerank["file"]
    with open(path, "rb") as f:  # written just now: dirty pages would not be dropped
        os.fsync(f.fileno())
    q = sc.Synthetic().queries(a.queries, a.n)
    _, cand = reader.shortlist_index(small).search(np.ascontiguousarray(truncate(q, small.dim, True)), 1000)
    methods = {"prefetch": True, "no prefetch": False}
    out: dict = {}
    for k in (200, 1000):
        for state in ("cold", "warm"):
            if state == "warm":
                sc.warm_rerank(reader)
            ms: dict[str, list[float]] = {m: [] for m in methods}
            for i in range(a.queries):
                order = list(methods) if i % 2 == 0 else list(methods)[::-1]  # take turns going first
                for m in order:
                    if state == "cold":
                        evict(path, [rows])
                    t0 = time.perf_counter()
                    rerank_candidates(q[i : i + 1], cand[i : i + 1, :k], rows, sc.D, True, 10, prefetch=methods[m])
                    ms[m].append(1000 * (time.perf_counter() - t0))
            ratio = float(np.median(np.array(ms["prefetch"]) / np.array(ms["no prefetch"])))
            out[f"k{k}_{state}"] = {"k": k, "state": state, **{m: {"p50_ms": round(float(np.median(v)), 3),
                                                                   "p95_ms": round(float(np.percentile(v, 95)), 3)}
                                                               for m, v in ms.items()},
                                    "prefetch_over_none_paired_median": round(ratio, 3)}
            print(k, state, out[f"k{k}_{state}"], flush=True)
    evict(path, [rows])
    left = resident_fraction(path)
    res = {"command": f"python benchmarks/cold_rerank.py --n {a.n} --queries {a.queries}", "machine": machine_info(),
           "uptime": uptime(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "n": a.n, "queries": a.queries,
           "dim": sc.D, "rerank_file_bytes": path.stat().st_size,
           "resident_after_evict": None if left is None else round(left, 4), "results": out}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# Cold-cache rerank: every candidate row asked for at once, or faulted in turn", "",
             f"Command: `{res['command']}`  ",
             f"Machine: {res['machine']['cpu']}, 1 thread; {res['date']}; load `{res['uptime']}`.  ",
             f"{a.n:,} float16 768-d rows on disk ({res['rerank_file_bytes'] / 1e6:.0f} MB), one query at a time, the "
             f"flat 2x32 shortlist's top k rescored to the top 10; cold = the file dropped from the page cache before "
             f"each call (fraction left cached after a drop: {res['resident_after_evict']}).", "",
             "| k | page cache | prefetch ms p50 (p95) | no prefetch ms p50 (p95) | prefetch / none (median of per-query ratios) |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for v in out.values():
        p, n = v["prefetch"], v["no prefetch"]
        lines.append(f"| {v['k']} | {v['state']} | {p['p50_ms']:.3f} ({p['p95_ms']:.3f}) | {n['p50_ms']:.3f} ({n['p95_ms']:.3f}) "
                     f"| {v['prefetch_over_none_paired_median']} |")
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    del reader, rows
    shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
