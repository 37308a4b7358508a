"""Two-stage recall on real embeddings (issue 13, item 4), to read the 1M synthetic figures against.

The union of BEIR SciFact, BEIR NFCorpus and the MS MARCO DL19 pool (30,209 documents, ids prefixed by
their set) indexed by the adapted MiniLM; the queries of all three (SciFact test, NFCorpus dev, DL19).
For each two-stage configuration, recall@10 against exact full-size search: the fraction of the exact
6x384 top 10 (brute force over the stored float16 rerank rows, the vectors the rerank scores with) that
the configuration returns in its top 10. Shortlists: flat over 2x32 and 4x64, and the AdANNS idea,
FAISS HNSW32 and IVF (float32, SQ8 and PQ32x4fs codes in its lists) over the small size, rescored
exactly at 6x384.

    # build the union corpus (see the results file for the exact ids) and its index once:
    adaretrieve index --model checkpoints/minilm-adapt-scifact --corpus /tmp/union/corpus.jsonl \\
        --shortlist 2x32 --shortlist 4x64 --rerank 6x384 --chunk-size 2048 --max-length 256 --out indexes/union-30k-adapted
    python benchmarks/real_recall.py --index indexes/union-30k-adapted

Writes benchmarks/results/real-recall/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.data import read_qrels, read_queries  # noqa: E402
from adaretrieve.retriever import load_index_encoder  # noqa: E402
from adaretrieve.search import IndexReader, rerank_candidates  # noqa: E402
from adaretrieve.search.twostage import exact_search  # noqa: E402
from adaretrieve.sizes import Size, truncate  # noqa: E402
from benchmarks.machine import uptime  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FULL = Size(6, 384)


def queries() -> dict[str, str]:
    """Every judged query of the three sets (SciFact test, NFCorpus dev: ../shared has no NFCorpus test
    split, DL19), ids prefixed like the documents."""
    out = {}
    for ds, split in (("scifact", "test"), ("nfcorpus", "dev")):
        qrels = read_qrels(DATA / "beir" / ds / "qrels" / f"{split}.tsv")
        out.update({f"{ds}:{q}": t for q, t in read_queries(DATA / "beir" / ds / "queries.jsonl").items() if q in qrels})
    dl = read_qrels(DATA / "msmarco-dl-pool" / "qrels.dl19.txt")
    out.update({f"dl19:{q}": t for q, t in read_queries(DATA / "msmarco-dl-pool" / "queries.dl19.tsv").items() if q in dl})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=str(ROOT / "indexes" / "union-30k-adapted"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real-recall"))
    args = ap.parse_args()
    import faiss

    reader = IndexReader(args.index)
    enc = load_index_encoder(reader)
    qs = queries()
    qids = list(qs)
    sizes = [Size(2, 32), Size(4, 64), FULL]
    qv = enc.encode(enc.queries([qs[q] for q in qids]), sizes, batch_size=64)
    rows = reader.rerank_rows()
    full = np.asarray(rows, dtype=np.float32)  # [n, 384] unit rows as stored: what the rerank scores with
    exact = np.argsort(-(qv[FULL] @ full.T), axis=1, kind="stable")[:, :10]
    group = np.array([q.split(":")[0] for q in qids])

    def recall(top: np.ndarray) -> dict:
        hit = np.array([len(set(a) & set(b)) / 10 for a, b in zip(top[:, :10], exact)])
        return {"all": round(float(hit.mean()), 4), **{g: round(float(hit[group == g].mean()), 4) for g in sorted(set(group))}}

    results = []

    def two_stage(name, index, small, k, params=None):
        t0 = time.perf_counter()
        _, cand = exact_search(index, qv[small], k, params)
        _, top = rerank_candidates(qv[FULL], cand, rows, FULL.dim, reader.normalize, 10)
        ms = 1000 * (time.perf_counter() - t0) / len(qids)
        results.append({"config": name, "recall@10": recall(top), "ms_per_query_batched": round(ms, 3)})
        print(f"{name:40} recall@10 {results[-1]['recall@10']['all']:.4f}", flush=True)

    for small in (Size(2, 32), Size(4, 64)):
        flat = reader.shortlist_index(small)
        for k in (50, 200, 1000):
            two_stage(f"flat {small} k={k} -> {FULL}", flat, small, k)
        vecs = truncate(np.asarray(faiss.rev_swig_ptr(faiss.downcast_index(flat).get_xb(), flat.ntotal * flat.d))
                        .reshape(flat.ntotal, flat.d), small.dim, reader.normalize)
        hnsw = faiss.IndexHNSWFlat(small.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 200
        hnsw.add(vecs)
        for ef in (64, 256):
            two_stage(f"HNSW32 over {small} ef={ef} k=200 -> {FULL}", hnsw, small, 200,
                      faiss.SearchParametersHNSW(efSearch=ef))
        for codes in ("Flat", "SQ8", "PQ32x4fs"):  # IVF lists of float32 vectors, 8-bit codes, 4-bit PQ fast-scan codes
            ivf = faiss.index_factory(small.dim, f"IVF256,{codes}", faiss.METRIC_INNER_PRODUCT)
            ivf.train(vecs)
            ivf.add(vecs)
            name = "IVF256" if codes == "Flat" else f"IVF256,{codes}"
            for nprobe, k in ((8, 200), (32, 200), (32, 1000)):
                two_stage(f"{name} over {small} nprobe={nprobe} k={k} -> {FULL}", ivf, small, k,
                          faiss.SearchParametersIVF(nprobe=nprobe))
    res = {"command": "python benchmarks/real_recall.py --index indexes/union-30k-adapted", "index": args.index,
           "model": reader.manifest.model.get("name"), "n_docs": reader.n_docs, "n_queries": len(qids),
           "queries_per_set": {g: int((group == g).sum()) for g in sorted(set(group))}, "uptime": uptime(),
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    sets = sorted(res["queries_per_set"])
    lines = ["# Two-stage recall@10 against exact full-size search, real embeddings", "",
             f"Command: `{res['command']}` (index built as in the script's docstring)  ",
             f"{reader.n_docs} documents (SciFact + NFCorpus + the MS MARCO DL19 pool) indexed by "
             f"`{res['model']}` (the adapted MiniLM); {len(qids)} queries ({', '.join(f'{g} {n}' for g, n in res['queries_per_set'].items())}). "
             "Recall@10 = the share of the exact 6x384 top 10 (brute force over the stored float16 rows) that the "
             f"configuration returns in its top 10. {res['date']}; `{res['uptime']}`.", "",
             "| configuration | recall@10 | " + " | ".join(sets) + " | ms/query (batched, all queries) |",
             "| --- | ---: | " + " | ".join("---:" for _ in sets) + " | ---: |"]
    for r in results:
        lines.append(f"| {r['config']} | {r['recall@10']['all']:.4f} | " + " | ".join(f"{r['recall@10'][g]:.4f}" for g in sets)
                     + f" | {r['ms_per_query_batched']} |")
    scale = {r["n"]: r for r in json.loads((ROOT / "benchmarks" / "results" / "scale" / "results.json").read_text())["results"]}
    here = {r["config"]: r["recall@10"]["all"] for r in results}
    pairs = [("2x32 k=200", "two_stage_2x32_k200"), ("2x32 k=1000", "two_stage_2x32_k1000"),
             ("4x64 k=200", "two_stage_4x64_k200"), ("4x64 k=1000", "two_stage_4x64_k1000")]
    ns = sorted(scale)
    lines += ["", "Beside the synthetic figures (`benchmarks/results/scale/results.json`: random 768-d vectors whose "
              "variance decays along the dims, rescored at 768; here real vectors rescored at 6x384):", "",
              "| two-stage | real, 30k docs | " + " | ".join(f"synthetic, {n:,} docs" for n in ns) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in ns) + " |"]
    for label, key in pairs:
        small, k = label.split(" ")
        real = here.get(f"flat {small} {k} -> {FULL}")
        lines.append(f"| {label} | {real:.4f} | " + " | ".join(
            f"{scale[n][key]['recall@10']:.4f}" if key in scale[n] else "-" for n in ns) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
