"""Quality of the onnx backends on SciFact (issue 13, item 1): full-size nDCG@10 with queries (and
the corpus) encoded by ONNX Runtime against the torch encoder.

    python benchmarks/onnx_quality.py [--index indexes/scifact-minilm] [--corpus-backend onnx] [--threads 2]

The index is the scifact-minilm suite's (built by the torch encoder; built here when missing). Rows:

- corpus torch, queries torch / onnx / onnx-int8: exact search at the full size (6x384) over the
  index's float32 flat 6x384 vectors; the int8 row is the query encoder an fp32 index would be
  searched with.
- corpus onnx, queries onnx (with --corpus-backend onnx): every document encoded again by the onnx
  backend, exact search over those vectors; the vectors' largest difference from the torch ones
  is reported too.

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
    args = ap.parse_args(argv)
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
        old = json.loads((args.out / "results.json").read_text())
        have = {(r["corpus"], r["queries"]) for r in rows}
        for r in old["rows"]:
            if (r["corpus"], r["queries"]) not in have:
                rows.append({**r, "from": r.get("from") or f"{old['command']} ({old['date']})"})
                earlier.append(r["corpus"] + "/" + r["queries"])
    torch_ndcg = rows[0]["metrics"]["nDCG@10"]
    for r in rows:
        r["nDCG@10_minus_torch"] = round(r["metrics"]["nDCG@10"] - torch_ndcg, 5)
    report = {"command": "python benchmarks/onnx_quality.py " + shlex.join(argv or sys.argv[1:]),
              "model": base.describe(), "size": str(full), "n_queries": len(qids), "n_docs": reader.n_docs,
              "index": str(args.index), "threads": args.threads, "machine": machine_info(),
              "uptime_before": uptime_before, "uptime_after": uptime(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "seconds": round(time.time() - t_start, 1), "rows": rows, "merged_from_earlier_run": earlier}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(report))
    print(to_markdown(report))


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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
