"""`index --ef-construction N`: the HNSW graph of every shortlist is built at N (what FAISS's
factory string cannot say), recorded in the manifest, and refused for factories without a graph."""

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve.errors import AdaError
from adaretrieve.faiss_util import downcast
from adaretrieve.index.writer import IndexWriter
from adaretrieve.search import IndexReader
from adaretrieve.sizes import Size
from tests.conftest import make_corpus

MODEL = {"name": "x", "path": "x", "weights_sha256": "", "normalize": True, "pooling": "mean", "max_length": 8,
         "n_layers": 2, "hidden_size": 16}


def write(out, factory, ef_construction):
    s = Size(1, 8)
    w = IndexWriter(out, 50, [s], None, factory=factory, ef_construction=ef_construction)
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    w.add([str(i) for i in range(50)], {s: x / np.linalg.norm(x, axis=1, keepdims=True)})
    return w.close(MODEL, corpus="c"), s


@pytest.mark.parametrize("factory", ["HNSW32", "HNSW16,Flat", "BHNSW32"])
def test_the_graph_is_built_at_the_ef_construction_asked_for(tmp_path, factory):
    m, s = write(tmp_path / "ix", factory, 77)
    assert m.shortlist[0]["ef_construction"] == 77
    ix = IndexReader(tmp_path / "ix").shortlist_index(s)
    down = downcast(ix)
    assert down.hnsw.efConstruction == 77


def test_ef_construction_is_refused_where_there_is_no_graph(tmp_path):
    with pytest.raises(AdaError, match="ef_construction applies to HNSW"):
        write(tmp_path / "a", "Flat", 100)
    with pytest.raises(AdaError, match="at least 1"):
        write(tmp_path / "b", "HNSW32", 0)
    m, _ = write(tmp_path / "c", "HNSW32", None)
    assert "ef_construction" not in m.shortlist[0]


def test_cli_ef_construction(tiny_model, tmp_path):
    from adaretrieve.cli.main import app

    corpus = make_corpus(tmp_path / "corpus.jsonl", n=40)
    base = ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "1x8", "--rerank", "none",
            "--quiet", "--device", "cpu"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "bad"), "--ef-construction", "64"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "HNSW" in res.stderr, res.output
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "ok"), "--factory", "HNSW32", "--ef-construction", "64"])
    assert res.exit_code == 0, res.output
    reader = IndexReader(tmp_path / "ok")
    assert faiss.downcast_index(reader.shortlist_index("1x8")).hnsw.efConstruction == 64
