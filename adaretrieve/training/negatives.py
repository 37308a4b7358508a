"""Hard negatives: documents a retriever ranks high for a training query that are not judged
relevant. Cached as jsonl ``{"qid": ..., "negatives": [docid, ...]}`` for ``adaretrieve train``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from adaretrieve.data.readers import read_qrels, read_queries
from adaretrieve.errors import AdaError
from adaretrieve.search import IndexReader, TwoStageSearcher


def mine_dense(index: str | Path, data: str | Path, split: str, out: str | Path, depth: int = 100,
               skip: int = 0, n: int = 30, model: str | None = None, batch_size: int = 64,
               progress: bool = True) -> dict:
    """Search every query of ``data``'s ``split`` qrels in ``index`` at its full size and keep up to
    ``n`` unjudged documents from ranks ``skip+1 .. depth``. Judged documents of any grade (0
    included) are never negatives: grade 0 is known-irrelevant, but BEIR sets mark partial relevance
    with it too."""
    from adaretrieve.modeling import Encoder

    reader = IndexReader(index)
    m = reader.manifest
    if m.rerank is None:
        raise AdaError(f"index {index} has no rerank vectors to mine with; rebuild it with --rerank")
    enc = Encoder(model or (m.model["path"] if Path(m.model["path"]).exists() else m.model["name"]),
                  pooling=m.model["pooling"], normalize=m.model["normalize"], max_length=m.model["max_length"])
    reader.check_model(enc.weights_hash(), enc.name)
    qrels = read_qrels(Path(data) / "qrels" / f"{split}.tsv")
    queries = read_queries(data)
    qids = [q for q in qrels if q in queries]
    size = m.rerank_size
    searcher = TwoStageSearcher(reader, size, None)
    qv = enc.encode([queries[q] for q in qids], [size], batch_size=batch_size, progress=progress)[size]
    _, rows = searcher.search(qv, None, top=depth)
    counts = []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for qid, r in zip(qids, rows):
            judged = qrels[qid]
            negs = [reader.docids[j] for j in r[skip:] if j >= 0 and reader.docids[j] not in judged][:n]
            counts.append(len(negs))
            f.write(json.dumps({"qid": qid, "negatives": negs}) + "\n")
    tmp.replace(out)
    return {"queries": len(qids), "mean_negatives": float(np.mean(counts)) if counts else 0.0, "out": str(out)}
