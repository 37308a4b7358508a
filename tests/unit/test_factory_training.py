"""Shortlist factories that train (IVF lists, PQ codebooks) need at least as many documents as they
have centroids: a corpus too small for the factory is refused in one line before anything is
encoded, not by a FAISS error after the whole corpus was."""

import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve.errors import AdaError
from adaretrieve.index.writer import IndexWriter
from adaretrieve.sizes import Size
from tests.conftest import make_corpus

MODEL = {"name": "x", "path": "x", "weights_sha256": "", "normalize": True, "pooling": "mean", "max_length": 8,
         "n_layers": 2, "hidden_size": 16}


def write(out, factory, n):
    s = Size(1, 16)
    w = IndexWriter(out, n, [s], None, factory=factory)
    x = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    w.add([str(i) for i in range(n)], {s: x / np.linalg.norm(x, axis=1, keepdims=True)})
    return w.close(MODEL, corpus="c")


@pytest.mark.parametrize("factory, need", [("IVF256,SQ8", 256), ("IVF256,Flat", 256), ("IVF8,PQ4", 256),
                                           ("PQ8", 256), ("BIVF256", 256)])
def test_a_factory_that_cannot_train_on_the_corpus_is_refused_up_front(tmp_path, factory, need):
    with pytest.raises(AdaError, match=f"needs at least {need} documents"):
        IndexWriter(tmp_path / "ix", 100, [Size(1, 16)], None, factory=factory)
    assert not (tmp_path / "ix").exists()


@pytest.mark.parametrize("factory", ["IVF16,SQ8", "IVF8,PQ8x4fs", "IVF16,Flat", "SQ8", "HNSW32"])
def test_a_factory_the_corpus_can_train_is_built(tmp_path, factory):
    assert write(tmp_path / "ix", factory, 300).n_docs == 300


def test_the_cli_refuses_it_before_encoding(tiny_model, tmp_path, monkeypatch):
    from adaretrieve.cli.main import app
    from adaretrieve.modeling import Encoder

    def no_encoding(*a, **kw):
        raise AssertionError("encoded before the factory was checked")

    monkeypatch.setattr(Encoder, "encode", no_encoding)
    corpus = make_corpus(tmp_path / "c.jsonl", 30)
    r = CliRunner().invoke(app, ["index", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "2x16",
                                 "--factory", "IVF64,Flat", "--out", str(tmp_path / "ix"), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "needs at least 64 documents" in r.output and "IVF" in r.output and "Traceback" not in r.output
