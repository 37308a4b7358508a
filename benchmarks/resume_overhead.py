"""What resuming costs at batch 1 (issue 25: "resuming must be nearly free"): one query encoded in one
pass to the full depth against encode_to(shortlist layer) + resume(each later stage's layer), and the
whole cascade that never stops against always-full search, same queries, taking turns, 1 thread.

    python benchmarks/resume_overhead.py --index /tmp/w/ix-scifact --model /tmp/w/ad-scifact \\
        --queries ../shared/data/beir/scifact --out benchmarks/results/adaptive/resume-overhead.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import uptime  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from adaretrieve import Retriever
    from adaretrieve.bench import machine_info
    from adaretrieve.data import read_queries
    from adaretrieve.search.cascade import StopRule

    r = Retriever(args.index, model=args.model)
    plan = r.plan("2x64", 200, "6x384", [("4x128", 50)], 10, deep_k=100)
    qs = list(read_queries(args.queries).values())[: args.n]
    enc, sizes = r.encoder, plan.sizes()
    srch = r.searcher(plan)

    def one_pass(i):
        enc.encode_queries([qs[i]], sizes)

    def resumed(i):
        _, st = enc.encode_to(enc.queries([qs[i]]), [sizes[0]])
        _, st = enc.resume(st, [sizes[1]])
        enc.resume(st, [sizes[2]])

    def always(i):
        srch.search(enc.encode_queries([qs[i]], sizes))

    def never(i):
        r.search_adaptive([qs[i]], plan, StopRule.never())

    pairs = {"encode: one pass vs encode_to + 2 resumes": (one_pass, resumed),
             "end to end: always-full vs a cascade that never stops": (always, never)}
    out = {}
    for name, (a, b) in pairs.items():
        for _ in range(3):
            a(0), b(0)
        ta, tb = [], []
        for i in range(len(qs)):  # taking turns
            t = time.perf_counter()
            a(i)
            ta.append(time.perf_counter() - t)
            t = time.perf_counter()
            b(i)
            tb.append(time.perf_counter() - t)
        ma, mb = 1000 * np.array(ta), 1000 * np.array(tb)
        out[name] = {"first_ms": {"p50": round(float(np.median(ma)), 3), "p95": round(float(np.percentile(ma, 95)), 3)},
                     "second_ms": {"p50": round(float(np.median(mb)), 3), "p95": round(float(np.percentile(mb, 95)), 3)},
                     "p50_ratio": round(float(np.median(mb) / np.median(ma)), 3)}
        print(name, out[name], flush=True)
    res = {"plan": plan.name, "queries": len(qs), "threads": 1, "results": out, "machine": machine_info(),
           "load": uptime(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": "python benchmarks/resume_overhead.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
