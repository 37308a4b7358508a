"""Our evaluation reproduces the published nDCG@10 of the four DL19 candidate lists in ../shared."""

import pytest

from adaretrieve.data import read_qrels
from adaretrieve.eval import Evaluator, read_run
from adaretrieve.eval.measures import DL_METRICS
from tests.conftest import shared_or_skip

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name,ndcg", [("bm25", 0.5058), ("bm25rm3", 0.5216), ("tasb", 0.7210), ("splade", 0.7308)])
def test_published_dl19_ndcg(name, ndcg):
    root = shared_or_skip("data", "msmarco-dl-pool")
    ev = Evaluator(read_qrels(root / "qrels.dl19.txt"), DL_METRICS)
    res = ev(read_run(root / "runs" / f"retrieve_results_{name}_dl19.json.gz"))
    assert res["nDCG@10"] == pytest.approx(ndcg, abs=5e-5)
