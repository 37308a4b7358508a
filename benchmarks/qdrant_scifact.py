"""SciFact through Qdrant (qdrant-client's embedded local mode) against adaretrieve's own search (issue 15).

Uploads the SciFact MiniLM folder index (benchmarks/scifact-minilm.yaml builds it) into a Qdrant
collection without re-encoding, then runs the same configurations both ways on the 300 test
queries: top-10 agreement per query, nDCG@10 / R@100 of each, and the upload time.

    python benchmarks/qdrant_scifact.py [--index indexes/scifact-minilm] [--store /tmp/ada-qdrant-scifact]

Writes benchmarks/results/qdrant/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.data import read_qrels, read_queries  # noqa: E402
from adaretrieve.eval import Evaluator, run_from_arrays  # noqa: E402
from adaretrieve.qdrant import QdrantIndex, parse_location, upload  # noqa: E402
from adaretrieve.retriever import load_index_encoder  # noqa: E402
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader  # noqa: E402
from adaretrieve.sizes import parse_size  # noqa: E402

CONFIGS = [  # (name, shortlist, k, then, rerank)
    ("2x64 k=200 -> 6x384", "2x64", 200, [], "6x384"),
    ("2x64 k=50 -> 6x384", "2x64", 50, [], "6x384"),
    ("4x128 k=200 -> 6x384", "4x128", 200, [], "6x384"),
    ("funnel 2x64 k=500 -> 4x128 k=100 -> 6x384", "2x64", 500, [("4x128", 100)], "6x384"),
    ("single 2x64", "2x64", 200, [], None),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=str(ROOT / "indexes" / "scifact-minilm"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beir" / "scifact"))
    ap.add_argument("--store", default="/tmp/ada-qdrant-scifact")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qdrant"))
    args = ap.parse_args()
    reader = IndexReader(args.index)
    enc = load_index_encoder(reader)
    qrels = read_qrels(Path(args.data) / "qrels" / "test.tsv")
    queries = {q: t for q, t in read_queries(Path(args.data) / "queries.jsonl").items() if q in qrels}
    qids = list(queries)
    sizes = sorted({parse_size(s) for c in CONFIGS for s in [c[1], *(x for x, _ in c[3]), *([c[4]] if c[4] else [])]},
                   key=lambda s: (s.layer, s.dim))
    qv = enc.encode([queries[q] for q in qids], sizes, batch_size=64)
    shutil.rmtree(args.store, ignore_errors=True)
    loc = parse_location(f"qdrant:{args.store}")
    t0 = time.perf_counter()
    upload(reader, loc, batch_size=256, progress=True)
    upload_s = time.perf_counter() - t0
    qi = QdrantIndex(loc)
    ev = Evaluator(qrels, ["nDCG@10", "R@100"])
    rows = []
    for name, short, k, then, rr in CONFIGS:
        plan = FunnelPlan(short, k, tuple(then), rr, top=100)
        s = FunnelSearcher(reader, plan)
        t0 = time.perf_counter()
        scores, cand = s.search(qv)
        ours_s = time.perf_counter() - t0
        ours = run_from_arrays(qids, scores, cand, reader.docids)
        t0 = time.perf_counter()
        hits = qi.search(qv, plan)
        qd_s = time.perf_counter() - t0
        theirs = {q: dict(h) for q, h in zip(qids, hits)}
        top10 = sum(list(ours[q])[:10] == [d for d, _ in hits[i][:10]] for i, q in enumerate(qids))
        top10_set = sum(set(list(ours[q])[:10]) == {d for d, _ in hits[i][:10]} for i, q in enumerate(qids))
        # where the two differ: how close our own scores are at the place they part (float near-ties?)
        gaps = []
        for i, q in enumerate(qids):
            a, b = list(ours[q])[:10], [d for d, _ in hits[i][:10]]
            if a != b:
                j = next(p for p in range(10) if a[p] != b[p])
                gaps.append(round(abs(ours[q][a[j]] - dict(hits[i]).get(a[j], ours[q].get(b[j], float("nan")))), 7))
        a, b = ev(ours), ev(theirs)
        rows.append({"config": name, "queries": len(qids), "same_top10": top10, "same_top10_fraction": round(top10 / len(qids), 4),
                     "same_top10_set": top10_set, "score_gap_where_they_differ": gaps,
                     "adaretrieve": {k2: round(v, 5) for k2, v in a.items()}, "qdrant": {k2: round(v, 5) for k2, v in b.items()},
                     "ndcg10_difference": round(abs(a["nDCG@10"] - b["nDCG@10"]), 5),
                     "ms_per_query_adaretrieve": round(1000 * ours_s / len(qids), 3),
                     "ms_per_query_qdrant_local": round(1000 * qd_s / len(qids), 3)})
        print(f"{name:42} same top-10 {top10}/{len(qids)} (as sets {top10_set})  gaps {gaps}  nDCG@10 {a['nDCG@10']:.4f} vs {b['nDCG@10']:.4f}", flush=True)
    qi.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/qdrant_scifact.py"
    import qdrant_client

    res = {"command": command, "index": args.index, "n_docs": reader.n_docs, "upload_seconds": round(upload_s, 1),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "qdrant_client": getattr(qdrant_client, "__version__", None) or _version("qdrant-client")},
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "rows": rows}
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# SciFact through Qdrant (local mode) against adaretrieve's own search", "", f"Command: `{command}`  ",
             f"{reader.n_docs} docs (the scifact-minilm folder index, uploaded without re-encoding in {upload_s:.0f} s: "
             "one named vector per stored size, point id = row, doc id as payload), 300 test queries encoded once by "
             f"MiniLM and searched both ways; qdrant-client {res['machine']['qdrant_client']} local mode, {res['date']}. "
             "Qdrant runs each configuration as nested prefetches (shortlist limit k, then each stage), the last query on "
             "the rerank vector. Local mode is an in-process Python reference (exact scan), so its times say nothing of a "
             "Qdrant server's.", "",
             "| configuration | same top 10 (in order) | same top-10 set | nDCG@10 adaretrieve | nDCG@10 Qdrant | R@100 adaretrieve | R@100 Qdrant | ms/query ours | ms/query Qdrant local |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['same_top10']}/{r['queries']} | {r['same_top10_set']}/{r['queries']} | "
                     f"{r['adaretrieve']['nDCG@10']:.4f} | "
                     f"{r['qdrant']['nDCG@10']:.4f} | {r['adaretrieve']['R@100']:.4f} | {r['qdrant']['R@100']:.4f} | "
                     f"{r['ms_per_query_adaretrieve']} | {r['ms_per_query_qdrant_local']} |")
    lines += ["", "Where the two lists differ, `score_gap_where_they_differ` in results.json gives, per query, the score "
              "difference between the two documents at the first position where they part: float near-ties (float32 "
              "sums in another order, or a stage boundary falling between two documents whose scores differ in the "
              "last bits), not a different ranking rule."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.md'}")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
