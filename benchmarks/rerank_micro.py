"""Rerank micro-benchmark (issue 13, item 2): adaretrieve's rerank of k candidates against a bare
numpy gather + matrix-vector product over the same rows, in the same run.

    taskset -c 1 python benchmarks/rerank_micro.py [--n 200000] [--k 1000] [--dim 768] [--repeats 300]

Rows are unit vectors stored as float16 in a .npy file opened with mmap_mode="r", as an index's
rerank rows are, and read once before timing (warm page cache). Each repeat draws a fresh set of
k candidate rows for one query and times every method on that same set, in turn, so load on the
machine falls on all of them alike; the
method timed first rotates from one repeat to the next. p10 is reported beside p50: on a shared
machine the median includes time slices lost to other processes, the 10th percentile less so. Methods:

- ``bare``: ``rows[cand] @ q`` (numpy gathers in candidate order, converts to float32, one GEMV);
  the floor the issue sets: ours may cost at most 1.2x it.
- ``bare sorted``: the same over the candidates in ascending row order.
- ``adaretrieve``: ``rerank_candidates`` at the stored width (rows taken as stored), top k.
- ``adaretrieve top 10``: the same keeping 10.
- ``adaretrieve prefix``: at half the width (the rows are cut and renormalised).
- ``numpy cast``: the rerank at the stored width as it was before float16 rows were scored by
  FAISS's float16 kernels (numpy converting the rows to float32 256 at a time, then BLAS).
- ``before``: the rerank as it was before this change (gather, full float32 copy, renormalise
  every row, then score), kept here for the comparison.

Threads: numpy/BLAS are limited to one (OMP/OPENBLAS_NUM_THREADS set before numpy loads); pin the
process to a core with taskset. Writes results.json and results.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.bench import machine_info  # noqa: E402
from adaretrieve.search import rerank_candidates  # noqa: E402
from adaretrieve.sizes import truncate  # noqa: E402
from benchmarks.machine import uptime  # noqa: E402


def before(queries, candidates, rows, dim, normalize, top):
    """The rerank before issue 13 item 2 (commit 0526981), for one query's candidates."""
    nq, k = candidates.shape
    valid = candidates >= 0
    uniq, inv = np.unique(candidates[valid], return_inverse=True)
    gathered = truncate(rows[uniq], dim, normalize)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    pos = np.zeros((nq, k), dtype=np.int64)
    pos[valid] = inv
    q = np.ascontiguousarray(queries, dtype=np.float32)
    every = gathered @ q.T
    qi = np.broadcast_to(np.arange(nq)[:, None], (nq, k))
    scores[valid] = every[pos[valid], qi[valid]]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def numpy_cast(queries, candidates, rows, dim, normalize, top):
    """The rerank before float16 rows went to FAISS's kernels (commit 3d99371): the rows converted to
    float32 by numpy 256 at a time into a small buffer, then one product per block."""
    nq, k = candidates.shape
    uniq, inv = np.unique(candidates[candidates >= 0], return_inverse=True)
    x = rows[uniq][:, :dim]
    q = np.ascontiguousarray(queries, dtype=np.float32)
    every = np.empty((len(x), nq), dtype=np.float32)
    buf = np.empty((min(256, len(x)), dim), dtype=np.float32)
    for s in range(0, len(x), 256):
        b = buf[: min(256, len(x) - s)]
        np.copyto(b, x[s : s + 256], casting="unsafe")
        np.matmul(b, q.T, out=every[s : s + len(b)])
    scores = every[inv.reshape(nq, k), np.arange(nq)[:, None]]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="rows in the file")
    ap.add_argument("--k", type=int, default=1000, help="candidates per query")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rows", type=Path, default=Path("/tmp/adaretrieve-rerank-micro.npy"), help="scratch file for the rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rerank-micro")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    n, k, d = args.n, args.k, args.dim

    if not args.rows.exists() or np.load(args.rows, mmap_mode="r").shape != (n, d):
        rng = np.random.default_rng(0)
        x = np.empty((n, d), np.float16)
        for s in range(0, n, 50_000):
            b = rng.standard_normal((min(50_000, n - s), d), dtype=np.float32)
            x[s : s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
        np.save(args.rows, x)
        del x
    rows = np.load(args.rows, mmap_mode="r")
    float(np.asarray(rows[::1]).sum(dtype=np.float64))  # every page read once: warm cache
    rng = np.random.default_rng(1)
    half = d // 2
    methods = {
        "bare": lambda q, c: rows[c[0]] @ q[0],
        "bare sorted": lambda q, c: rows[np.sort(c[0])] @ q[0],
        "adaretrieve": lambda q, c: rerank_candidates(q, c, rows, d, True, k),
        "adaretrieve top 10": lambda q, c: rerank_candidates(q, c, rows, d, True, 10),
        "adaretrieve prefix": lambda q, c: rerank_candidates(q[:, :half], c, rows, half, True, k),
        "numpy cast": lambda q, c: numpy_cast(q, c, rows, d, True, k),
        "before": lambda q, c: before(q, c, rows, d, True, k),
    }
    # the same answer: ours at the stored width equals the bare product, ranked
    q = rng.standard_normal((1, d)).astype(np.float32)
    c = rng.choice(n, k, replace=False)[None]
    s, r = rerank_candidates(q, c, rows, d, True, k)
    bare = rows[c[0]] @ q[0]
    np.testing.assert_allclose(s[0], np.sort(bare)[::-1], rtol=1e-5, atol=1e-5)

    samples = {m: [] for m in methods}
    for i in range(args.warmup + args.repeats):
        q = rng.standard_normal((1, d)).astype(np.float32)
        c = rng.choice(n, k, replace=False)[None]
        names = list(methods)
        for name in names[i % len(names) :] + names[: i % len(names)]:  # each method first in turn
            fn = methods[name]
            t0 = time.perf_counter()
            fn(q, c)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                samples[name].append(dt)
    res = {m: {"p10_us": round(1e6 * float(np.percentile(v, 10)), 1), "p50_us": round(1e6 * float(np.median(v)), 1), "p95_us": round(1e6 * float(np.percentile(v, 95)), 1),
               "mean_us": round(1e6 * float(np.mean(v)), 1)} for m, v in samples.items()}
    base = res["bare"]["p50_us"]
    for m in res:
        res[m]["ratio_to_bare_p50"] = round(res[m]["p50_us"] / base, 3)
        res[m]["ratio_to_bare_p10"] = round(res[m]["p10_us"] / res["bare"]["p10_us"], 3)
    # the ratio per repeat (same candidates, measured back to back), then its median
    paired = np.array(samples["adaretrieve"]) / np.array(samples["bare"])
    command = "taskset -c " + _affinity() + " python " + shlex.join(["benchmarks/rerank_micro.py", *(argv or sys.argv[1:])])
    out = {
        "command": command, "n_rows": n, "k": k, "dim": d, "rows_dtype": "float16 (memory-mapped .npy, warm page cache)",
        "warmup": args.warmup, "repeats": args.repeats, "threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": machine_info(), "cpu_affinity": _affinity(), "uptime": uptime(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "note": args.note, "results": res,
        "adaretrieve_over_bare_paired_median": round(float(np.median(paired)), 3),
        "goal": "adaretrieve <= 1.2x bare (issue 13, item 2)",
        "goal_met": bool(res["adaretrieve"]["ratio_to_bare_p50"] <= 1.2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(out))
    print(to_markdown(out))


def _affinity() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus))


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Rerank micro-benchmark",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores (process pinned to CPU {r['cpu_affinity']}), numpy {m['numpy']}, "
        f"{r['threads']} BLAS thread; {r['date']}; load: `{r['uptime']}`.  ",
        f"{r['k']} candidates of {r['n_rows']:,} {r['dim']}-d rows, {r['rows_dtype']}; one query; "
        f"{r['repeats']} repeats after {r['warmup']} warm-up, each on fresh candidates shared by every method.",
        *([f"Note: {r['note']}"] if r.get("note") else []),
        "",
        "| method | p10 us | p50 us | p95 us | mean us | p10 / bare | p50 / bare |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in r["results"].items():
        lines.append(f"| {name} | {v['p10_us']} | {v['p50_us']} | {v['p95_us']} | {v['mean_us']} | {v['ratio_to_bare_p10']} | "
                     f"{v['ratio_to_bare_p50']} |")
    lines += ["", f"adaretrieve / bare, median of the per-repeat ratios: {r['adaretrieve_over_bare_paired_median']} "
              f"(goal: at most 1.2; met: {'yes' if r['goal_met'] else 'no'})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
