"""Adaptive depth on a BEIR set (issue 25): a cascade whose stop rule is fitted without labels on the
train queries, scored on the test queries, against always-full two-stage search and the single
stage sizes, in one run with the same threads.

    python benchmarks/adaptive.py --model /path/to/adapted-minilm --data ../shared/data/beir/scifact \\
        --index /tmp/adaptive-scifact --shortlist 2x64 --k 200 --then 4x128 --k 50 --rerank 6x384

Rows: for each target overlap@10 (with the full cascade's top 10, mean over the fit queries) the
calibrated cascade's share of test queries answered at each stage, mean layers per query (and their
ratio to the full depth: the query encoder's cost), nDCG@10, RR@10, the test queries' own overlap@10
with always-full, and batch-1 end-to-end latency (encode + search, torch, --threads) of the cascade
and of always-full over the same queries, the two taking turns. Writes results.json, results.md and
a plot of nDCG@10 against encoder cost under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import uptime  # noqa: E402

TARGETS = (1.0, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.6)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True, help="a BEIR folder with qrels/train.tsv and a test (or dev) split")
    ap.add_argument("--split", default="test", help="the split scored (test; NFCorpus: dev)")
    ap.add_argument("--fit-split", default="train")
    ap.add_argument("--index", type=Path, required=True, help="built here when missing (outside the repository)")
    ap.add_argument("--shortlist", default="2x64")
    ap.add_argument("--k", type=int, action="append", default=[])
    ap.add_argument("--then", action="append", default=[])
    ap.add_argument("--rerank", default="6x384")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--targets", type=float, nargs="*", default=list(TARGETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adaptive")
    ap.add_argument("--name", default=None, help="results file stem (default: the data folder's name)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from adaretrieve import Retriever
    from adaretrieve.bench import machine_info
    from adaretrieve.data import read_qrels, read_queries
    from adaretrieve.eval import Evaluator, run_from_arrays
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.search.calibrate import overlap_at

    k = args.k or [200, 50][: 1 + len(args.then)]
    sizes = [args.shortlist, *args.then]
    if not args.index.exists():
        t0 = time.perf_counter()
        build_index(args.data, Encoder(args.model), args.index, sizes, args.rerank, progress=False)
        print(f"built {args.index} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    r = Retriever(args.index, model=args.model)
    plan = r.plan(args.shortlist, k[0], args.rerank, list(zip(args.then, k[1:])), args.top)
    queries = read_queries(args.data)
    fit_ids = [q for q in read_qrels(args.data / "qrels" / f"{args.fit_split}.tsv") if q in queries]
    qrels = read_qrels(args.data / "qrels" / f"{args.split}.tsv")
    test_ids = [q for q in qrels if q in queries]
    assert not set(fit_ids) & set(test_ids), "fit and test queries overlap"
    test = [queries[q] for q in test_ids]
    ev = Evaluator(qrels, ["nDCG@10", "RR@10"])

    def run_of(scores, rows):
        return run_from_arrays(test_ids, scores, rows, r.reader.docids)

    full_s, full_r = r.searcher(plan).search(r.encoder.encode_queries(test, plan.sizes()))
    full = {"config": f"always full: {plan.name}", "metrics": {m: round(v, 5) for m, v in ev(run_of(full_s, full_r)).items()},
            "mean_layers": plan.layers}
    baselines = []
    for s in dict.fromkeys([plan.shortlist, *(x for x, _ in plan.then), plan.rerank]):
        p = r.plan(str(s), rerank="none", top=args.top)
        sc, rows = r.searcher(p).search(r.encoder.encode_queries(test, p.sizes()))
        baselines.append({"config": p.name, "metrics": {m: round(v, 5) for m, v in ev(run_of(sc, rows)).items()},
                          "mean_layers": s.layer, "overlap_at_10_with_full": round(float(overlap_at(rows, full_r).mean()), 4)})
    # each exit stage's own top 10 against always-full's (item 0: do the exit sizes agree with the full size?)
    from adaretrieve.search.calibrate import stage_rankings

    srch = r.searcher(plan)
    ranks = stage_rankings(plan, srch.index, srch.sources, r.reader.normalize, r.encoder.encode_queries(test, plan.sizes()),
                           srch.params, srch.deep)
    agree = [{"stage": i, "overlap_at_10": round(float(overlap_at(rw, full_r).mean()), 4),
              "share_identical_top10": round(float(np.mean([list(a[:10]) == list(b[:10]) for a, b in zip(rw, full_r)])), 4)}
             for i, (_, rw) in enumerate(ranks)]

    t0 = time.perf_counter()
    fit_texts = [queries[q] for q in fit_ids]
    rows_out = []
    for target in args.targets:
        fit = r.calibrate(fit_texts, plan, target)
        hits, res = r.search_adaptive(test, plan, fit.rule)
        m = ev(run_of(res.scores, res.rows))
        rows_out.append({"target": target, "rule": fit.rule.to_dict(), "fit": fit.to_dict(),
                         "metrics": {x: round(v, 5) for x, v in m.items()},
                         "stop_share": [round(float(np.mean(res.exit_stage == s)), 4) for s in range(plan.stages)],
                         "mean_layers": round(float(res.layers.mean()), 4),
                         "encoder_cost": round(float(res.layers.mean()) / plan.layers, 4),
                         "overlap_at_10_with_full": round(float(overlap_at(res.rows, full_r).mean()), 4),
                         "ndcg_change": round(m["nDCG@10"] / full["metrics"]["nDCG@10"] - 1, 4)})
        print(f"target {target}: nDCG@10 {m['nDCG@10']:.4f} ({rows_out[-1]['ndcg_change']:+.2%}), "
              f"encoder cost {rows_out[-1]['encoder_cost']:.3f}", file=sys.stderr)
    fit_s = time.perf_counter() - t0

    # batch-1 latency, end to end, for the calibrated points within 1% and always-full, taking turns
    n_lat = min(args.latency_queries, len(test))
    within = [x for x in rows_out if x["ndcg_change"] >= -0.01]
    best = min(within, key=lambda x: x["encoder_cost"]) if within else None
    lat = {}
    if best is not None:
        from adaretrieve.search.cascade import StopRule

        rule = StopRule.from_dict(best["rule"])
        srch = r.searcher(plan)

        def always(i):
            return srch.search(r.encoder.encode_queries([test[i]], plan.sizes()))

        def adaptive(i):
            return r.search_adaptive([test[i]], plan, rule)

        for _ in range(2):  # warm-up of both paths
            always(0), adaptive(0)
        def timed(fn, i):
            t = time.perf_counter()
            fn(i)
            return time.perf_counter() - t

        a, b = [], []
        for i in range(n_lat):  # taking turns, so load changes hit both alike
            a.append(timed(always, i))
            b.append(timed(adaptive, i))

        def stats(ts):
            ms = 1000 * np.array(ts)
            return {"mean": round(float(ms.mean()), 3), "p50": round(float(np.percentile(ms, 50)), 3),
                    "p95": round(float(np.percentile(ms, 95)), 3)}

        lat = {"target": best["target"], "queries": n_lat, "threads": args.threads, "always_full": stats(a),
               "adaptive": stats(b)}
        lat["p95_ratio"] = round(lat["adaptive"]["p95"] / lat["always_full"]["p95"], 3)
        lat["mean_ratio"] = round(lat["adaptive"]["mean"] / lat["always_full"]["mean"], 3)

    name = args.name or args.data.name
    cmd = "python benchmarks/adaptive.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    res = {"data": str(args.data), "split": args.split, "fit_split": args.fit_split, "n_test": len(test_ids),
           "n_fit": len(fit_ids), "model": r.encoder.describe(), "plan": plan.describe(), "always_full": full,
           "single": baselines, "exit_agreement": agree, "cascade": rows_out, "latency_batch1": lat,
           "fit_seconds": round(fit_s, 1), "command": cmd, "machine": machine_info(), "load": uptime(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(to_markdown(res))
    plot(res, args.out / f"{name}.png")
    print(to_markdown(res))


def to_markdown(res: dict) -> str:
    full = res["always_full"]
    base = full["metrics"]["nDCG@10"]
    lines = [f"# Adaptive depth on {Path(res['data']).name} {res['split']} ({res['n_test']} queries)", "",
             f"Command: `{res['command']}`  ",
             f"Plan: `{full['config'].removeprefix('always full: ')}`; stop rule fitted without labels on the "
             f"{res['n_fit']} {res['fit_split']} queries (target: mean overlap@10 with the full cascade), scored on "
             f"{res['split']}. Machine: {res['machine']['cpu']}, load `{res['load']}`.", "",
             "| configuration | nDCG@10 | vs always-full | RR@10 | answered per stage | mean layers | encoder cost | overlap@10 with full |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
             f"| {full['config']} | {base:.4f} | | {full['metrics']['RR@10']:.4f} | | {full['mean_layers']} | 1.000 | 1.000 |"]
    for row in res["cascade"]:
        lines.append(f"| cascade, target {row['target']} | {row['metrics']['nDCG@10']:.4f} | {row['ndcg_change']:+.2%} | "
                     f"{row['metrics']['RR@10']:.4f} | {' / '.join(f'{x:.2f}' for x in row['stop_share'])} | "
                     f"{row['mean_layers']:.2f} | {row['encoder_cost']:.3f} | {row['overlap_at_10_with_full']:.3f} |")
    for b in res["single"]:
        lines.append(f"| {b['config']} | {b['metrics']['nDCG@10']:.4f} | {b['metrics']['nDCG@10'] / base - 1:+.2%} | "
                     f"{b['metrics']['RR@10']:.4f} | | {b['mean_layers']} | {b['mean_layers'] / full['mean_layers']:.3f} | "
                     f"{b['overlap_at_10_with_full']:.3f} |")
    lines += ["", "Each stage's own top 10 against always-full's (test queries): "
              + "; ".join(f"stage {a['stage']} overlap@10 {a['overlap_at_10']:.3f}, identical {a['share_identical_top10']:.0%}"
                          for a in res["exit_agreement"]) + "."]
    lat = res["latency_batch1"]
    if lat:
        lines += ["", f"Batch-1 end to end (encode + search, torch, {lat['threads']} thread, {lat['queries']} test queries, "
                  f"the two taking turns), cascade at target {lat['target']} against always-full: mean "
                  f"{lat['adaptive']['mean']} vs {lat['always_full']['mean']} ms ({lat['mean_ratio']}x), p95 "
                  f"{lat['adaptive']['p95']} vs {lat['always_full']['p95']} ms ({lat['p95_ratio']}x)."]
    else:
        lines += ["", "No calibrated point kept nDCG@10 within 1% of always-full, so no latency row was timed."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    c = res["cascade"]
    ax.plot([x["encoder_cost"] for x in c], [x["metrics"]["nDCG@10"] for x in c], "o-", label="calibrated cascade")
    for x in c:
        ax.annotate(str(x["target"]), (x["encoder_cost"], x["metrics"]["nDCG@10"]), fontsize=7)
    full = res["always_full"]
    ax.plot([1.0], [full["metrics"]["nDCG@10"]], "s", label="always full")
    for b in res["single"]:
        ax.plot([b["mean_layers"] / full["mean_layers"]], [b["metrics"]["nDCG@10"]], "^", label=b["config"])
    ax.set_xlabel("mean query encoder cost (layers / full depth)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"adaptive depth, {Path(res['data']).name} {res['split']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
