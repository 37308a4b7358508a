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
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks.machine import uptime  # noqa: E402

TARGETS = (1.0, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.6)


def build_from_cache(cache: Path, model: str, out: Path, shortlist: list[str], rerank: str, corpus: str) -> None:
    """The index ``adaretrieve index`` would build, from the cached raw states of the set's one encoding
    pass (``benchmarks/codes.py encode``) mapped by the model's adaptor (``codes.adapted_vectors``,
    checked against the encoder on a sample): the library's ``IndexWriter`` writes it."""
    import codes as C
    import numpy as np

    from adaretrieve.index.codes import parse_shortlist
    from adaretrieve.index.writer import IndexWriter
    from adaretrieve.modeling import Encoder
    from adaretrieve.sizes import parse_size

    enc = Encoder(model)
    z = np.load(cache)
    if str(z["weights"]) != enc.backbone_hash() and str(z["weights"]) != enc.weights_hash():
        print(f"note: {cache} names weights {str(z['weights'])[:12]}", file=sys.stderr)
    entries = parse_shortlist(shortlist, default="Flat")
    sizes = list(dict.fromkeys([s for s, _ in entries] + [parse_size(rerank)]))
    raw = {L: z[f"d{L}"] for L in C.LAYERS}
    name = next(n for n, v in C.SETS.items() if Path(str(v["corpus"])).resolve() == Path(corpus).resolve())
    C.check_against_encoder(enc, name, raw, sizes)
    vecs = C.adapted_vectors(raw, enc, sizes)
    w = IndexWriter(out, len(z["docids"]), [s for s, _ in entries], parse_size(rerank),
                    kinds={s: f for s, f in entries if f != "Flat"})
    w.add([str(d) for d in z["docids"]], vecs)
    w.close(enc.describe(), corpus, {"from_cache": str(cache)}, spec=enc.spec().to_dict())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True, help="a BEIR folder (or the DL pool's queries file with --qrels)")
    ap.add_argument("--qrels", type=Path, help="judgments scored (default: DATA/qrels/SPLIT.tsv)")
    ap.add_argument("--corpus", type=Path, help="the corpus (default: DATA)")
    ap.add_argument("--split", default="test", help="the split scored (test; NFCorpus: dev)")
    ap.add_argument("--fit-split", default="train", help="train: the set's train queries; pseudo:N: N pseudo-queries "
                    "sampled from the corpus (calibrate --pseudo-queries)")
    ap.add_argument("--index", type=Path, required=True, help="built here when missing (outside the repository)")
    ap.add_argument("--cache", type=Path, help="build the index from this cached encoding pass (benchmarks/codes.py encode)")
    ap.add_argument("--shortlist", default="2x64")
    ap.add_argument("--k", type=int, action="append", default=[])
    ap.add_argument("--then", action="append", default=[])
    ap.add_argument("--rerank", default="6x384")
    ap.add_argument("--deep-k", type=int, default=None, help="the deep path adds the top N of the rerank size's shortlist")
    ap.add_argument("--deep-kind", default="pca128", help="the rerank size's shortlist kind built with --deep-k")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--targets", type=float, nargs="*", default=list(TARGETS))
    ap.add_argument("--designs", default="overlap:gap,ndcg:gap,ndcg:linear",
                    help="MEASURE:CONFIDENCE pairs fitted at every target")
    ap.add_argument("--chosen", default="ndcg:linear:0.99", help="the calibrated point named in advance: MEASURE:CONFIDENCE:TARGET")
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
    from adaretrieve.data import pseudo_queries, read_qrels, read_queries
    from adaretrieve.eval import Evaluator, run_from_arrays
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.search.calibrate import overlap_at
    from adaretrieve.search.cascade import StopRule

    k = args.k or [200, 50][: 1 + len(args.then)]
    corpus = args.corpus or args.data
    sizes = [args.shortlist, *args.then] + ([f"{args.rerank}:{args.deep_kind}"] if args.deep_k else [])
    if not args.index.exists():
        t0 = time.perf_counter()
        if args.cache:
            build_from_cache(args.cache, args.model, args.index, sizes, args.rerank, str(corpus))
        else:
            build_index(corpus, Encoder(args.model), args.index, sizes, args.rerank, progress=False)
        print(f"built {args.index} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    r = Retriever(args.index, model=args.model)
    plan = r.plan(args.shortlist, k[0], args.rerank, list(zip(args.then, k[1:])), args.top, deep_k=args.deep_k)
    queries = read_queries(args.data)
    qrels = read_qrels(args.qrels or args.data / "qrels" / f"{args.split}.tsv")
    test_ids = [q for q in qrels if q in queries]
    if args.fit_split.startswith("pseudo:"):
        fit_texts = pseudo_queries(corpus, int(args.fit_split.split(":", 1)[1]))
        fit_ids = [f"pseudo-{i}" for i in range(len(fit_texts))]
    else:
        fit_ids = [q for q in read_qrels(args.data / "qrels" / f"{args.fit_split}.tsv") if q in queries]
        assert not set(fit_ids) & set(test_ids), "fit and test queries overlap"
        fit_texts = [queries[q] for q in fit_ids]
    test = [queries[q] for q in test_ids]
    ev = Evaluator(qrels, ["nDCG@10", "RR@10"])

    def run_of(scores, rows):
        return run_from_arrays(test_ids, scores, rows, r.reader.docids)

    def metrics(scores, rows):
        return {m: round(v, 5) for m, v in ev(run_of(scores, rows)).items()}

    qv_test = r.encoder.encode_queries(test, plan.sizes())
    full_s, full_r = r.searcher(plan).search(qv_test)
    full = {"config": f"always full: {plan.name}", "metrics": metrics(full_s, full_r), "mean_layers": plan.layers}
    baselines = []
    from adaretrieve.bench.measure import coded_name, shortlist_kind_of

    for s in dict.fromkeys([plan.shortlist, *(x for x, _ in plan.then), plan.rerank]):
        p = r.plan(str(s), rerank="none", top=args.top)
        sc, rows = r.searcher(p).search(r.encoder.encode_queries(test, p.sizes()))
        baselines.append({"config": coded_name(p, shortlist_kind_of(r.reader.manifest, s)), "metrics": metrics(sc, rows),
                          "mean_layers": s.layer, "overlap_at_10_with_full": round(float(overlap_at(rows, full_r).mean()), 4)})
    if plan.rerank and shortlist_kind_of(r.reader.manifest, plan.rerank):  # its shortlist is a code: exact search too
        p = r.plan(args.shortlist, r.reader.n_docs, str(plan.rerank), top=args.top)  # every document reranked
        sc, rows = r.searcher(p).search(r.encoder.encode_queries(test, p.sizes()))
        baselines.append({"config": f"exact {plan.rerank} (every document rescored)", "metrics": metrics(sc, rows),
                          "mean_layers": plan.rerank.layer,
                          "overlap_at_10_with_full": round(float(overlap_at(rows, full_r).mean()), 4)})
    alternatives = []  # what a user would pick instead, always at full depth
    if args.deep_k:
        for p in (r.plan(str(plan.rerank), args.deep_k, str(plan.rerank), top=args.top),
                  r.plan(args.shortlist, k[0], args.rerank, top=args.top, deep_k=args.deep_k)):
            sc, rows = r.searcher(p).search(r.encoder.encode_queries(test, p.sizes()))
            alternatives.append({"config": coded_name(p, shortlist_kind_of(r.reader.manifest, p.shortlist)),
                                 "metrics": metrics(sc, rows), "mean_layers": p.layers,
                                 "overlap_at_10_with_full": round(float(overlap_at(rows, full_r).mean()), 4)})
    ranks = r.stage_rankings(test, plan)
    agree = [{"stage": i, "overlap_at_10": round(float(overlap_at(rw, full_r).mean()), 4),
              "share_identical_top10": round(float(np.mean([list(a[:10]) == list(b[:10]) for a, b in zip(rw, full_r)])), 4)}
             for i, (_, rw) in enumerate(ranks)]

    t0 = time.perf_counter()
    fit_ranks = r.stage_rankings(fit_texts, plan)
    rows_out = []
    designs = [tuple(d.split(":")) for d in args.designs.split(",")]
    cm, cc, ct = args.chosen.split(":")
    if (cm, cc) not in designs:
        designs.append((cm, cc))
    targets = sorted(set(args.targets) | {float(ct)}, reverse=True)
    for measure, confidence in designs:
        for target in targets:
            fit = r.calibrate(fit_texts, plan, target, measure=measure, confidence=confidence, rankings=fit_ranks)
            hits, res = r.search_adaptive(test, plan, fit.rule)
            m = ev(run_of(res.scores, res.rows))
            rows_out.append({"measure": measure, "confidence": confidence, "target": target, "rule": fit.rule.to_dict(),
                             "fit": fit.to_dict(), "metrics": {x: round(v, 5) for x, v in m.items()},
                             "stop_share": [round(float(np.mean(res.exit_stage == s)), 4) for s in range(plan.stages)],
                             "mean_layers": round(float(res.layers.mean()), 4),
                             "encoder_cost": round(float(res.layers.mean()) / plan.layers, 4),
                             "overlap_at_10_with_full": round(float(overlap_at(res.rows, full_r).mean()), 4),
                             "ndcg_change": round(m["nDCG@10"] / full["metrics"]["nDCG@10"] - 1, 4),
                             "chosen": (measure, confidence, target) == (cm, cc, float(ct))})
            print(f"{measure}:{confidence} target {target}: nDCG@10 {m['nDCG@10']:.4f} ({rows_out[-1]['ndcg_change']:+.2%}), "
                  f"encoder cost {rows_out[-1]['encoder_cost']:.3f}", file=sys.stderr, flush=True)
    fit_s = time.perf_counter() - t0

    # batch-1 latency, end to end, of the chosen point and always-full, taking turns
    n_lat = min(args.latency_queries, len(test))
    chosen = next(x for x in rows_out if x["chosen"])
    lat = {}
    if n_lat:
        rule = StopRule.from_dict(chosen["rule"])
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

        lat = {"point": args.chosen, "queries": n_lat, "threads": args.threads, "always_full": stats(a),
               "adaptive": stats(b)}
        lat["p95_ratio"] = round(lat["adaptive"]["p95"] / lat["always_full"]["p95"], 3)
        lat["mean_ratio"] = round(lat["adaptive"]["mean"] / lat["always_full"]["mean"], 3)

    name = args.name or args.data.name
    cmd = "python benchmarks/adaptive.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    res = {"data": str(args.data), "split": args.split, "fit_split": args.fit_split, "n_test": len(test_ids),
           "n_fit": len(fit_ids), "model": r.encoder.describe(), "plan": plan.describe(), "always_full": full,
           "single": baselines, "alternatives": alternatives, "exit_agreement": agree, "cascade": rows_out,
           "chosen": args.chosen, "latency_batch1": lat,
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
             f"Plan: `{full['config'].removeprefix('always full: ')}`; stop rules fitted without labels on the "
             f"{res['n_fit']} {res['fit_split']} queries against the full cascade's own ranking, scored on "
             f"{res['split']}. The point named in advance: `{res.get('chosen')}` (measure:confidence:target). "
             f"Machine: {res['machine']['cpu']}, load `{res['load']}`.", "",
             "| configuration | nDCG@10 | vs always-full | RR@10 | answered per stage | mean layers | encoder cost | overlap@10 with full |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
             f"| {full['config']} | {base:.4f} | | {full['metrics']['RR@10']:.4f} | | {full['mean_layers']} | 1.000 | 1.000 |"]
    for b in res.get("alternatives", []):
        lines.append(f"| {b['config']} (full depth) | {b['metrics']['nDCG@10']:.4f} | {b['metrics']['nDCG@10'] / base - 1:+.2%} | "
                     f"{b['metrics']['RR@10']:.4f} | | {b['mean_layers']} | {b['mean_layers'] / full['mean_layers']:.3f} | "
                     f"{b['overlap_at_10_with_full']:.3f} |")
    for row in res["cascade"]:
        design = f"{row.get('measure', 'overlap')}:{row.get('confidence', 'gap')}"
        mark = " **(named in advance)**" if row.get("chosen") else ""
        lines.append(f"| cascade {design}, target {row['target']}{mark} | {row['metrics']['nDCG@10']:.4f} | "
                     f"{row['ndcg_change']:+.2%} | {row['metrics']['RR@10']:.4f} | "
                     f"{' / '.join(f'{x:.2f}' for x in row['stop_share'])} | "
                     f"{row['mean_layers']:.2f} | {row['encoder_cost']:.3f} | {row['overlap_at_10_with_full']:.3f} |")
    for b in res["single"]:
        lines.append(f"| {b['config']} | {b['metrics']['nDCG@10']:.4f} | {b['metrics']['nDCG@10'] / base - 1:+.2%} | "
                     f"{b['metrics']['RR@10']:.4f} | | {b['mean_layers']} | {b['mean_layers'] / full['mean_layers']:.3f} | "
                     f"{b['overlap_at_10_with_full']:.3f} |")
    within = [x for x in res["cascade"] if x["ndcg_change"] >= -0.01]
    if within:
        b = min(within, key=lambda x: x["encoder_cost"])
        lines += ["", f"Cheapest row within 1% of always-full (picked with the test labels, so an upper bound on what "
                  f"calibration gives): {b.get('measure', 'overlap')}:{b.get('confidence', 'gap')} target {b['target']}, "
                  f"encoder cost {b['encoder_cost']:.3f}, nDCG@10 {b['ndcg_change']:+.2%}."]
    lines += ["", "Each stage's own top 10 against always-full's (test queries): "
              + "; ".join(f"stage {a['stage']} overlap@10 {a['overlap_at_10']:.3f}, identical {a['share_identical_top10']:.0%}"
                          for a in res["exit_agreement"]) + "."]
    lat = res["latency_batch1"]
    if lat:
        lines += ["", f"Batch-1 end to end (encode + search, torch, {lat['threads']} thread, {lat['queries']} test queries, "
                  f"the two taking turns), cascade at `{lat.get('point', lat.get('target'))}` against always-full: mean "
                  f"{lat['adaptive']['mean']} vs {lat['always_full']['mean']} ms ({lat['mean_ratio']}x), p95 "
                  f"{lat['adaptive']['p95']} vs {lat['always_full']['p95']} ms ({lat['p95_ratio']}x)."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    full = res["always_full"]
    designs = dict.fromkeys((x.get("measure", "overlap"), x.get("confidence", "gap")) for x in res["cascade"])
    for d in designs:
        c = [x for x in res["cascade"] if (x.get("measure", "overlap"), x.get("confidence", "gap")) == d]
        ax.plot([x["encoder_cost"] for x in c], [x["metrics"]["nDCG@10"] for x in c], "o-", ms=3,
                label=f"cascade {d[0]}:{d[1]}")
        for x in c:
            if x.get("chosen"):
                ax.plot([x["encoder_cost"]], [x["metrics"]["nDCG@10"]], "*", ms=12, color="k",
                        label=f"named in advance ({x['target']})")
    for b in res.get("alternatives", []):
        ax.plot([b["mean_layers"] / full["mean_layers"]], [b["metrics"]["nDCG@10"]], "D", label=b["config"])
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
