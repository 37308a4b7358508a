"""Hard negatives: documents a retriever ranks high for a training query that are not judged
relevant. Cached as jsonl ``{"qid": ..., "negatives": [docid, ...]}`` for ``adaretrieve train``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from adaretrieve.data.readers import read_qrels, read_queries
from adaretrieve.errors import AdaError
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader


def _write_negatives(out: str | Path, qids: list[str], ranked: dict[str, list[str]], qrels: dict, skip: int, n: int) -> dict:
    """Keep up to ``n`` unjudged documents from ranks ``skip+1 ..`` of each query; atomic write."""
    counts = []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for qid in qids:
            judged = qrels[qid]
            negs = [d for d in ranked.get(qid, [])[skip:] if d not in judged][:n]
            counts.append(len(negs))
            f.write(json.dumps({"qid": qid, "negatives": negs}) + "\n")
    tmp.replace(out)
    return {"queries": len(qids), "mean_negatives": float(np.mean(counts)) if counts else 0.0, "out": str(out)}


def mine_bm25(data: str | Path, split: str, out: str | Path, depth: int = 100, skip: int = 0, n: int = 30,
              bm25_index: str | Path | None = None, threads: int = 2) -> dict:
    """Hard negatives from BM25 (pyserini, k1 0.9 b 0.4; the paper's kind): the top ``depth``
    BM25 documents of each training query that are not judged, ranks ``skip+1..``. The Lucene
    index of ``data``'s corpus is built once (``bm25_index``, default ``indexes/bm25-<name>``)."""
    from adaretrieve.baselines.bm25 import bm25_search, build_bm25_index

    qrels = read_qrels(Path(data) / "qrels" / f"{split}.tsv")
    queries = read_queries(data)
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise AdaError(f"none of the queries of {data}/qrels/{split}.tsv has a text in {data}")
    idx = Path(bm25_index or Path("indexes") / f"bm25-{Path(data).resolve().name}")
    build_bm25_index(data, idx, threads=threads)
    run = bm25_search(idx, {q: queries[q] for q in qids}, k=depth, threads=threads, remove_query=True)
    ranked = {q: [d for d, _ in sorted(hits.items(), key=lambda kv: -kv[1])] for q, hits in run.items()}
    return {**_write_negatives(out, qids, ranked, qrels, skip, n), "method": "bm25"}


def mine_dense(index: str | Path, data: str | Path, split: str, out: str | Path, depth: int = 100,
               skip: int = 0, n: int = 30, model: str | None = None, batch_size: int = 64,
               progress: bool = True) -> dict:
    """Search every query of ``data``'s ``split`` qrels in ``index`` at its full size and keep up to
    ``n`` unjudged documents from ranks ``skip+1 .. depth``. Judged documents of any grade (0
    included) are never negatives: grade 0 is known-irrelevant, but BEIR sets mark partial relevance
    with it too."""
    from adaretrieve.retriever import load_index_encoder

    reader = IndexReader(index)
    m = reader.manifest
    if m.rerank is None:
        raise AdaError(f"index {index} has no rerank vectors to mine with; rebuild it with --rerank")
    enc = load_index_encoder(reader, model)
    qrels = read_qrels(Path(data) / "qrels" / f"{split}.tsv")
    queries = read_queries(data)
    qids = [q for q in qrels if q in queries]
    size = m.rerank_size
    searcher = FunnelSearcher(reader, FunnelPlan(size, top=depth))  # single stage at the full size
    qv = enc.encode_queries([queries[q] for q in qids], [size], batch_size=batch_size, progress=progress)[size]
    _, rows = searcher.search({size: qv})
    ranked = {qid: [reader.docids[j] for j in r if j >= 0] for qid, r in zip(qids, rows)}
    return {**_write_negatives(out, qids, ranked, qrels, skip, n), "method": "dense"}
