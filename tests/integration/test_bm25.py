"""BM25 through pyserini reproduces Anserini's SciFact flat numbers (k1 0.9, b 0.4)."""

import pytest

from adaretrieve.data import read_qrels, read_queries
from adaretrieve.eval import Evaluator
from tests.conftest import module_or_skip, shared_or_skip

pytestmark = pytest.mark.integration


def test_bm25_scifact_flat_matches_anserini(tmp_path):
    root = shared_or_skip("data", "beir", "scifact")
    module_or_skip("pyserini", "the BM25 test needs pip install 'adaretrieve[bm25]'")
    from adaretrieve.baselines.bm25 import bm25_search, build_bm25_index

    ix = build_bm25_index(root, tmp_path / "bm25")
    qrels = read_qrels(root / "qrels" / "test.tsv")
    queries = {q: t for q, t in read_queries(root).items() if q in qrels}
    res = Evaluator(qrels, ["nDCG@10", "R@100", "R@1000"])(bm25_search(ix, queries, k=1000))
    assert res["nDCG@10"] == pytest.approx(0.6789, abs=0.002)
    assert res["R@100"] == pytest.approx(0.9253, abs=0.002)
    assert res["R@1000"] == pytest.approx(0.9767, abs=0.002)


def test_mine_bm25_negatives_are_unjudged_bm25_hits(tmp_path):
    root = shared_or_skip("data", "beir", "scifact")
    module_or_skip("pyserini", "the BM25 test needs pip install 'adaretrieve[bm25]'")
    import json

    from adaretrieve.baselines.bm25 import bm25_search
    from adaretrieve.training.negatives import mine_bm25

    out = tmp_path / "negs.jsonl"
    info = mine_bm25(root, "train", out, depth=20, skip=0, n=5, bm25_index=tmp_path / "bm25")
    qrels = read_qrels(root / "qrels" / "train.tsv")
    assert info["method"] == "bm25" and info["queries"] == len(qrels) == 809
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    q = rows[0]["qid"]
    hits = bm25_search(tmp_path / "bm25", {q: read_queries(root)[q]}, k=20)[q]
    want = [d for d, _ in sorted(hits.items(), key=lambda kv: -kv[1]) if d not in qrels[q]][:5]
    assert rows[0]["negatives"] == want
    assert all(not set(r["negatives"]) & set(qrels[r["qid"]]) for r in rows)
