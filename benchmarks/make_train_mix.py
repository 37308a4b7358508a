"""Training data for the GPU recipe (configs/minilm-starbucks-gpu.yaml): NFCorpus train + SciFact
train as one self-contained jsonl of texts ({"query", "positives", "negatives"}), with BM25 hard
negatives (pyserini, as the Starbucks paper), so the GPU machine needs neither the corpora nor
pyserini, faiss, datasets or ir-measures: carry this file and the model folder.

    python benchmarks/make_train_mix.py --out cache/nfcorpus-scifact-train.jsonl [--positives 4 --negatives 7]

Positives and negatives per query are capped so the file stays small (NFCorpus judges ~40
documents per training query); BM25's top 100 minus every judged document, in rank order.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.data.readers import doc_text, iter_corpus, read_qrels, read_queries  # noqa: E402
from adaretrieve.training.negatives import mine_bm25  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "beir"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="cache/nfcorpus-scifact-train.jsonl")
    ap.add_argument("--sets", nargs="*", default=["nfcorpus", "scifact"])
    ap.add_argument("--positives", type=int, default=4)
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for name in a.sets:
            root = SHARED / name
            negs_path = ROOT / "cache" / f"{name}-train-bm25-negatives.jsonl"
            if not negs_path.exists():
                print(mine_bm25(root, "train", negs_path, depth=100, n=30, bm25_index=ROOT / "indexes" / f"bm25-{name}"))
            negs = {json.loads(line)["qid"]: json.loads(line)["negatives"] for line in open(negs_path, encoding="utf-8")}
            qrels = read_qrels(root / "qrels" / "train.tsv")
            queries = read_queries(root)
            texts = {d.docid: doc_text(d.title, d.text) for d in iter_corpus(root)}
            for q, docs in qrels.items():
                pos = [d for d, g in sorted(docs.items(), key=lambda kv: -kv[1]) if g > 0 and d in texts]
                if not pos or q not in queries:
                    continue
                rng.shuffle(pos)
                row = {"query": queries[q], "positives": [texts[d] for d in pos[: a.positives]],
                       "negatives": [texts[d] for d in negs.get(q, [])[: a.negatives] if d in texts], "source": name}
                f.write(json.dumps(row) + "\n")
                n += 1
    tmp.replace(out)
    print(json.dumps({"out": str(out), "queries": n, "bytes": out.stat().st_size}))


if __name__ == "__main__":
    main()
