"""Where the time of IVF over a small size goes at 1M (issue 13's IVF rows over 4x64), per
stage, and what other IVF storage would save in the shortlist stage.

    python benchmarks/ivf_profile.py [--n 1000000] [--out benchmarks/results/ivf-profile]

Builds IVF4096,Flat over 4x64 of benchmarks/scale.py's synthetic vectors with adaretrieve's
IndexWriter (float16 768-d rerank rows beside it), warms the rerank file as scale.py does, and times
at batch 1 on 64 queries (one thread, median): the FAISS search alone, the whole funnel, and the
funnel's own per-stage timings (shortlist, gather, rerank; means, from the same calls), at k=1000 nprobe 128 and k=200 nprobe 32.
Then IVF4096 with SQfp16 and SQ8 codes over the same 64-d vectors (their own coarse quantizer):
the shortlist search alone, and the overlap of their 1000 candidates with the Flat one's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from adaretrieve.bench import machine_info  # noqa: E402
from adaretrieve.eval.timing import time_each, time_stages  # noqa: E402
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader  # noqa: E402
from adaretrieve.sizes import Size, truncate  # noqa: E402
from benchmarks import scale as sc  # noqa: E402
from benchmarks.machine import uptime  # noqa: E402


def median_ms(fn, n: int) -> float:
    """Median ms of ``fn(i)`` over i < n after one warm-up call (adaretrieve.eval.timing)."""
    return 1000 * time_each(fn, n, warmup=1).p50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/adaretrieve-ivf-profile"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ivf-profile")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    n, gen, small, full = a.n, sc.Synthetic(), Size(4, 64), sc.FULL
    nlist = sc.nlist_for(n)
    shutil.rmtree(a.work, ignore_errors=True)
    faiss.omp_set_num_threads(2)
    xs: list[np.ndarray] = []
    sc.write_synthetic(gen, n, a.work, f"IVF{nlist},Flat", 50_000, sizes=[small], each=lambda x: xs.append(truncate(x, 64, True)))
    x64 = np.concatenate(xs)
    others = {}
    for codes in ("SQfp16", "SQ8"):
        ix = faiss.index_factory(64, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        ix.train(x64[:200_000])
        ix.add(x64)
        others[codes] = ix
    threadpool_limits(1)
    faiss.omp_set_num_threads(1)
    reader = IndexReader(a.work)
    sc.warm_rerank(reader)
    flat = reader.shortlist_index(small)
    q = gen.queries(64, n)
    qs = truncate(q, 64, True)
    lines = ["# IVF over 4x64 at 1M: time per stage", "",
             f"Command: `python benchmarks/ivf_profile.py --n {n}`  ",
             f"Machine: {machine_info()['cpu']}, 1 thread, batch 1, median of 64 queries (the shortlist, gather and rerank columns: their mean per query, from the same calls); load `{uptime()}`.", "",
             "| k | nprobe | FAISS search alone ms | funnel total ms | shortlist | gather | rerank |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, nprobe in ((1000, 128), (200, 32)):
        p = faiss.SearchParametersIVF(nprobe=nprobe)
        alone = median_ms(lambda i, p=p, k=k: flat.search(qs[i : i + 1], k, params=p), 64)
        srch = FunnelSearcher(reader, FunnelPlan(small, k, rerank=full, top=10, nprobe=nprobe))
        total, stages = time_stages(lambda i, t, srch=srch: srch.search({small: qs[i : i + 1], full: q[i : i + 1]},
                                                                        timings=t), 64, warmup=1)
        lines.append(f"| {k} | {nprobe} | {alone:.3f} | {1000 * total.p50:.3f} | " + " | ".join(
            f"{1000 * stages[s].mean:.3f}" for s in ("shortlist", "gather", "rerank")) + " |")
    p = faiss.SearchParametersIVF(nprobe=128)
    ref = flat.search(qs, 1000, params=p)[1]
    lines += ["", "Shortlist stage alone with other IVF codes (k=1000, nprobe 128; own coarse quantizer):", "",
              "| codes | bytes / vector | search ms | candidates shared with Flat's |", "| --- | ---: | ---: | ---: |",
              f"| Flat | 256 | {median_ms(lambda i: flat.search(qs[i : i + 1], 1000, params=p), 64):.3f} | 1.000 |"]
    for codes, ix in others.items():
        ms = median_ms(lambda i, ix=ix: ix.search(qs[i : i + 1], 1000, params=p), 64)
        got = ix.search(qs, 1000, params=p)[1]
        overlap = np.mean([len(set(g) & set(r)) / 1000 for g, r in zip(got, ref)])
        lines.append(f"| {codes} | {128 if codes == 'SQfp16' else 64} | {ms:.3f} | {overlap:.3f} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    del reader
    shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
