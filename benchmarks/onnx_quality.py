"""Quality of the onnx backends on SciFact (issue 13, item 1): full-size nDCG@10 with queries (and
the corpus) encoded by ONNX Runtime against the torch encoder; and (issue 23, code review 3 A7) the
early-exit graphs, an adapted model and two-stage search.

    python benchmarks/onnx_quality.py [--index indexes/scifact-minilm] [--corpus-backend onnx] [--threads 2]
    python benchmarks/onnx_quality.py --adapted /tmp/adapted-minilm-scifact --skip-base --merge --check

The index is the scifact-minilm suite's (built by the torch encoder; built here when missing). Rows:

- corpus torch, queries torch / onnx / onnx-int8: exact search at the full size (6x384) over the
  index's float32 flat 6x384 vectors; the int8 row is the query encoder an fp32 index would be
  searched with.
- corpus onnx, queries onnx (with --corpus-backend onnx): every document encoded again by the onnx
  backend, exact search over those vectors; the vectors' largest difference from the torch ones
  is reported too.

With --adapted MODEL (a folder written by `adaretrieve adapt`), its own section: an index of that
model built by the torch encoder (--adapted-index; built when missing: Flat shortlists at 2x64,
4x128 and the full size, float16 rerank rows at the full size), searched with queries encoded by
torch, onnx and onnx-int8 in each of ADAPTED_CONFIGS, each query encoded as `search` encodes it
(once, to the deepest layer the configuration needs: a single 2x64 query runs the depth-2 graph).
Per row: nDCG@10, RR@10, R@100, nDCG@10 minus torch's in the same configuration, the mean overlap
of its top 10 with torch's top 10 (|A & B| / 10), the number of queries whose top 10 is torch's,
in the same order, and the lowest cosine of its query vectors to torch's. The checks: no row's
nDCG@10 may fall more than --max-ndcg-drop below torch's in the same configuration (the full-size
rows of the base section are checked too); with --check a failed check exits 1.

--skip-base keeps the base section (the unadapted full-size rows) from the results.json at --out
as it is, command and date included, and measures only the adapted section.

Writes results.json and results.md under --out.
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

BACKENDS = ("torch", "onnx", "onnx-int8")
# (name, shortlist, k, rerank): what a `search --shortlist S [--k K --rerank R]` runs
ADAPTED_CONFIGS = [("single 2x64", "2x64", None, None), ("single 4x128", "4x128", None, None),
                   ("2x64 k=200 -> 6x384", "2x64", 200, "6x384"), ("single 6x384", "6x384", None, None)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=Path, default=ROOT / "indexes" / "scifact-minilm")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "beir" / "scifact")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--corpus-backend", default="", help="also encode the corpus with this backend (onnx)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx-quality")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing report at --out that this run does not measure (e.g. the onnx corpus)")
    ap.add_argument("--adapted", default="", help="also measure this adapted model folder (early-exit sizes, two-stage)")
    ap.add_argument("--adapted-index", type=Path, default=Path("/tmp/adaretrieve-onnx-quality/scifact-adapted-index"),
                    help="the adapted model's torch-built index (built here when missing)")
    ap.add_argument("--skip-base", action="store_true",
                    help="keep the base (unadapted, full-size) section of the results.json at --out instead of measuring it")
    ap.add_argument("--max-ndcg-drop", type=float, default=0.01,
                    help="the check: a row's nDCG@10 may be at most this far below torch's in the same configuration")
    ap.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    args = ap.parse_args(argv)
    command = "python benchmarks/onnx_quality.py " + shlex.join(argv or sys.argv[1:])
    if args.skip_base:
        if not (args.out / "results.json").exists():
            raise SystemExit(f"--skip-base keeps the base section of {args.out / 'results.json'}, which does not exist")
        report = json.loads((args.out / "results.json").read_text())
    else:
        report = measure_base(args, command)
    if args.adapted:
        report["adapted"] = measure_adapted(args, command)
    elif args.merge and "adapted" in (old := _old(args.out)):
        report["adapted"] = old["adapted"]
    report["checks"] = checks(report, args.max_ndcg_drop)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(report))
    print(to_markdown(report))
    failed = [c for c in report["checks"] if not c["ok"]]
    if args.check and failed:
        raise SystemExit("failed: " + "; ".join(c["what"] for c in failed))


def _old(out: Path) -> dict:
    return json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}


def measure_base(args, command: str) -> dict:
    """The unadapted model at the full size, exact search (issue 13): the report's top level."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import faiss
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from adaretrieve.bench import machine_info
    from adaretrieve.data import iter_corpus, read_qrels, read_queries
    from adaretrieve.data.readers import doc_text
    from adaretrieve.eval import Evaluator, run_from_arrays
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.search import IndexReader
    from adaretrieve.search.reader import faiss_flat_vectors
    from adaretrieve.sizes import Size

    t_start = time.time()
    uptime_before = uptime()
    base = Encoder(args.model, device="cpu", max_length=256)
    full = base.full_size
    if not args.index.exists():
        build_index(args.data, base, args.index, [Size(2, 64), full], str(full), batch_size=32, progress=True)
    reader = IndexReader(args.index)
    reader.check_encoder(base.spec(), base.name)
    if full not in reader.manifest.shortlist_sizes:
        raise SystemExit(f"{args.index} has no flat {full} shortlist to search exactly")
    index = reader.shortlist_index(full)
    qrels = read_qrels(args.data / "qrels" / "test.tsv")
    queries = {q: t for q, t in read_queries(args.data / "queries.jsonl").items() if q in qrels}
    qids = list(queries)
    texts = [queries[q] for q in qids]
    measures = ["nDCG@10", "RR@10", "R@100"]
    ev = Evaluator(qrels, measures)

    def score(ix, qv, docids):
        s, r = ix.search(np.ascontiguousarray(qv, dtype=np.float32), 100)
        return {k: round(v, 5) for k, v in ev(run_from_arrays(qids, s, r, docids)).items()}

    rows = []
    qvecs = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        enc = base if backend == "torch" else Encoder(args.model, device="cpu", max_length=256, backend=backend,
                                                       threads=args.threads)
        qvecs[backend] = enc.encode(texts, [full], batch_size=32)[full]
        rows.append({"corpus": "torch (index)", "queries": backend, "metrics": score(index, qvecs[backend], reader.docids)})
    for b in ("onnx", "onnx-int8"):
        rows[[r["queries"] for r in rows].index(b)]["query_max_abs_diff_to_torch"] = float(np.abs(qvecs[b] - qvecs["torch"]).max())
    corpus_info = {}
    if args.corpus_backend:
        enc = Encoder(args.model, device="cpu", max_length=256, backend=args.corpus_backend, threads=args.threads)
        ids, docs = [], []
        for d in iter_corpus(args.data):
            ids.append(d.docid)
            docs.append(doc_text(d.title, d.text))
        t0 = time.perf_counter()
        dv = enc.encode(docs, [full], batch_size=32, progress=True)[full]
        secs = time.perf_counter() - t0
        assert ids == list(reader.docids), "the index's doc order differs from the corpus order"
        ref = faiss_flat_vectors(index)
        ix = faiss.IndexFlatIP(full.dim)
        ix.add(dv)
        corpus_info = {"backend": args.corpus_backend, "docs": len(docs), "encode_seconds": round(secs, 1),
                       "doc_max_abs_diff_to_torch": float(np.abs(dv - ref).max())}
        rows.append({"corpus": args.corpus_backend, "queries": args.corpus_backend,
                     "metrics": score(ix, qvecs[args.corpus_backend], ids), **corpus_info})
    earlier = []
    if args.merge and (args.out / "results.json").exists():
        old = _old(args.out)
        have = {(r["corpus"], r["queries"]) for r in rows}
        for r in old["rows"]:
            if (r["corpus"], r["queries"]) not in have:
                rows.append({**r, "from": r.get("from") or f"{old['command']} ({old['date']})"})
                earlier.append(r["corpus"] + "/" + r["queries"])
    torch_ndcg = rows[0]["metrics"]["nDCG@10"]
    for r in rows:
        r["nDCG@10_minus_torch"] = round(r["metrics"]["nDCG@10"] - torch_ndcg, 5)
    return {"command": command, "model": base.describe(), "size": str(full), "n_queries": len(qids), "n_docs": reader.n_docs,
            "index": str(args.index), "threads": args.threads, "machine": machine_info(),
            "uptime_before": uptime_before, "uptime_after": uptime(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "seconds": round(time.time() - t_start, 1), "rows": rows, "merged_from_earlier_run": earlier}


def measure_adapted(args, command: str) -> dict:
    """An adapted model's early-exit sizes and two-stage search, queries by every backend, against
    one torch-built index (code review 3, A7)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from adaretrieve.bench import machine_info
    from adaretrieve.data import read_qrels, read_queries
    from adaretrieve.eval import Evaluator, run_from_arrays
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
    from adaretrieve.sizes import parse_size

    t_start = time.time()
    uptime_before = uptime()
    encs = {b: Encoder(args.adapted, device="cpu", max_length=256, backend=b, threads=args.threads) for b in BACKENDS}
    torch_enc = encs["torch"]
    if torch_enc.adaptor is None:
        raise SystemExit(f"{args.adapted} has no adaptor: give a folder written by `adaretrieve adapt`")
    sizes = list(dict.fromkeys(parse_size(x) for _, sl, _, rr in ADAPTED_CONFIGS for x in (sl, rr) if x))
    full = torch_enc.full_size
    build = {"shortlist": [str(s) for s in sizes], "rerank": str(full), "factory": "Flat", "rerank_dtype": "float16",
             "batch_size": 32}
    build_seconds = None
    if not args.adapted_index.exists():
        t0 = time.perf_counter()
        build_index(args.data, torch_enc, args.adapted_index, sizes, full, batch_size=32, progress=True)
        build_seconds = round(time.perf_counter() - t0, 1)
    reader = IndexReader(args.adapted_index)
    reader.check_encoder(torch_enc.spec(), torch_enc.name)
    qrels = read_qrels(args.data / "qrels" / "test.tsv")
    queries = {q: t for q, t in read_queries(args.data / "queries.jsonl").items() if q in qrels}
    qids = list(queries)
    texts = [queries[q] for q in qids]
    ev = Evaluator(qrels, ["nDCG@10", "RR@10", "R@100"])
    rows, encode_ms = [], {}
    for name, shortlist, k, rerank in ADAPTED_CONFIGS:
        want = [parse_size(shortlist), *([parse_size(rerank)] if rerank else [])]
        searcher = FunnelSearcher(reader, FunnelPlan(shortlist, k=k or 200, rerank=rerank, top=100))
        depth = max(s.layer for s in want)
        results, vecs, ndcg = {}, {}, {}
        for b in BACKENDS:  # torch first: the others are compared with it
            enc = encs[b]
            enc.encode_queries(texts[:2], want)  # the depth's graph exported / session created before timing
            t0 = time.perf_counter()
            vecs[b] = enc.encode_queries(texts, want, batch_size=32)
            encode_ms.setdefault(b, {})[f"L{depth}"] = round(1000 * (time.perf_counter() - t0) / len(texts), 2)
            s, r = searcher.search(vecs[b])
            results[b] = r
            metrics = {m: round(v, 5) for m, v in ev(run_from_arrays(qids, s, r, reader.docids)).items()}
            top, ref = r[:, :10], results["torch"][:, :10]
            overlap = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(top, ref)])
            cos = min(float((vecs[b][x] * vecs["torch"][x]).sum(1).min()) for x in want)
            ndcg[b] = metrics["nDCG@10"]
            rows.append({"config": name, "queries": b, "depth": depth, "metrics": metrics,
                         "nDCG@10_minus_torch": round(ndcg[b] - ndcg["torch"], 5),
                         "overlap@10_with_torch": round(float(overlap), 4),
                         "identical_top10": int(sum(bool((a == t).all()) for a, t in zip(top, ref))),
                         "min_query_cosine_to_torch": round(cos, 5)})
    return {"command": command, "model": torch_enc.describe(), "adaptor_layers": list(torch_enc.adaptor.layers),
            "adaptor": {k: torch_enc.adaptor.meta.get(k) for k in ("base_model", "objective", "fitted_on", "ladder")},
            "index": str(args.adapted_index), "index_build": build, "index_build_seconds": build_seconds,
            "n_docs": reader.n_docs, "n_queries": len(qids), "threads": args.threads, "machine": machine_info(),
            "encode_ms_per_query_batch32": encode_ms, "uptime_before": uptime_before, "uptime_after": uptime(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(time.time() - t_start, 1), "rows": rows}


def checks(report: dict, max_drop: float) -> list[dict]:
    """Every non-torch row against torch's in the same configuration: nDCG@10 at most ``max_drop`` lower."""
    out = []
    base = [("base " + r["corpus"] + " / " + r["queries"], r["nDCG@10_minus_torch"]) for r in report["rows"]
            if r["queries"] != "torch"]
    adapted = [(f"adapted {r['config']} / {r['queries']}", r["nDCG@10_minus_torch"])
               for r in report.get("adapted", {}).get("rows", []) if r["queries"] != "torch"]
    for what, delta in base + adapted:
        out.append({"what": f"{what}: nDCG@10 minus torch {delta:+.5f} >= {-max_drop:+.5f}", "delta": delta,
                    "floor": -max_drop, "ok": bool(delta >= -max_drop)})
    return out


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# onnx backends: SciFact quality at the full size", "", f"Command: `{r['command']}`  ",
             f"Model: `{r['model']['name']}` ({r['model']['n_layers']}x{r['model']['hidden_size']}, max length "
             f"{r['model']['max_length']}); {r['n_docs']} docs, {r['n_queries']} test queries; exact search at {r['size']}.  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {r['threads']} threads; {r['date']}; load before "
             f"`{r['uptime_before']}`.", "",
             "| corpus | queries | nDCG@10 | minus torch | RR@10 | R@100 | max abs diff of vectors to torch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for x in r["rows"]:
        diff = x.get("doc_max_abs_diff_to_torch", x.get("query_max_abs_diff_to_torch"))
        mt = x["metrics"]
        lines.append(f"| {x['corpus']} | {x['queries']} | {mt['nDCG@10']:.5f} | {x['nDCG@10_minus_torch']:+.5f} | "
                     f"{mt['RR@10']:.5f} | {mt['R@100']:.5f} | {'-' if diff is None else f'{diff:.2e}'} |")
    for x in r["rows"]:
        if x.get("from"):
            lines.append(f"\nRow corpus {x['corpus']} / queries {x['queries']}: kept from an earlier run (`--merge`), "
                         f"{x['from']}.")
    if "adapted" in r:
        lines += ["", *adapted_markdown(r["adapted"])]
    if r.get("checks"):
        bad = [c for c in r["checks"] if not c["ok"]]
        lines += ["", "## Checks", "", f"nDCG@10 of every onnx / onnx-int8 row at most {-r['checks'][0]['floor']:g} "
                  f"below torch's in the same configuration: {len(r['checks']) - len(bad)} of {len(r['checks'])} met"
                  + ("." if not bad else "; failed:"), *[f"- {c['what']}" for c in bad]]
    return "\n".join(lines) + "\n"


def adapted_markdown(a: dict) -> list[str]:
    m = a["machine"]
    md = a["model"]
    built = (f"built here in {a['index_build_seconds']} s" if a.get("index_build_seconds") is not None
             else "built by an earlier run of this script")
    out = ["## An adapted model: early-exit sizes and two-stage search (issue 23, code review 3 A7)", "",
           f"Command: `{a['command']}`  ",
           f"Model: `{md['path']}` ({md['n_layers']}x{md['hidden_size']}, adaptor on layers "
           f"{', '.join(map(str, a['adaptor_layers']))}, max length {md['max_length']}); {a['n_docs']} docs, "
           f"{a['n_queries']} test queries.  ",
           f"Index: built by the torch encoder ({built}): Flat shortlists at {', '.join(a['index_build']['shortlist'])}, "
           f"{a['index_build']['rerank_dtype']} rerank rows at {a['index_build']['rerank']}. Each query is encoded "
           "once, to the deepest layer its configuration needs (depth).  ",
           f"Machine: {m['cpu']}, {m['cores']} cores, {a['threads']} threads; {a['date']}; {a['seconds']} s; load before "
           f"`{a['uptime_before']}`.", "",
           "Overlap: mean |top 10 & torch's top 10| / 10. Identical: queries whose top 10 is torch's, same order.", "",
           "| configuration | depth | queries | nDCG@10 | minus torch | RR@10 | R@100 | overlap@10 with torch | "
           "identical top 10 | min query cosine to torch | encode ms/query (batch 32) |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in a["rows"]:
        mt = x["metrics"]
        ms = a["encode_ms_per_query_batch32"].get(x["queries"], {}).get(f"L{x['depth']}", "-")
        out.append(f"| {x['config']} | {x['depth']} | {x['queries']} | {mt['nDCG@10']:.5f} | {x['nDCG@10_minus_torch']:+.5f} | "
                   f"{mt['RR@10']:.5f} | {mt['R@100']:.5f} | {x['overlap@10_with_torch']:.3f} | "
                   f"{x['identical_top10']}/{a['n_queries']} | {x['min_query_cosine_to_torch']:.5f} | {ms} |")
    out += ["", "Encoding times are one pass each under the machine's load at the time: read them as rough."]
    return out


if __name__ == "__main__":
    main()
