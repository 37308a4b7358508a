"""One vector spec decides whether two encoders make the same vectors: change any one field and
every consumer (the build plan, the query-encoder check, serve's reload) refuses or rebuilds, naming
it (code-review-3 A4-A6, A14; issue 23)."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import numpy as np
import pytest

from adaretrieve.errors import AdaError
from adaretrieve.index.build import build_dir, build_index
from adaretrieve.index.format import check_encoder, read_manifest
from adaretrieve.modeling import Encoder
from adaretrieve.spec import DOCUMENT_FIELDS, QUERY_FIELDS, VectorSpec
from tests.conftest import make_corpus, module_or_skip

SIZES = dict(shortlist=["1x8"], rerank="4x32")
BASE = VectorSpec(weights_sha256="a" * 64, pooling="mean", normalize=True, max_length=32)
CHANGED = {"weights_sha256": "b" * 64, "pooling": "cls", "normalize": False, "max_length": 16, "query_prefix": "q: ",
           "passage_prefix": "p: ", "lowercase": True, "backend": "onnx-int8", "dtype": "bfloat16"}


def test_every_field_is_covered_and_differs_names_it():
    assert set(CHANGED) == {f.name for f in fields(VectorSpec)}
    assert set(QUERY_FIELDS) | set(DOCUMENT_FIELDS) == set(CHANGED)
    for name, value in CHANGED.items():
        other = replace(BASE, **{name: value})
        assert BASE.differs(other) == [name]
        assert name in BASE.explain(other)
    assert BASE.differs(BASE) == []
    assert VectorSpec.from_dict(BASE.to_dict()) == BASE
    with pytest.raises(AdaError, match="unknown keys 'colour'"):
        VectorSpec.from_dict({**BASE.to_dict(), "colour": 1})
    with pytest.raises(AdaError, match="pooling 'max'"):
        replace(BASE, pooling="max")


def test_spec_of_an_index_from_before_specs_is_read_from_its_model_entry():
    old = {"weights_sha256": "a" * 64, "pooling": "mean", "normalize": True, "max_length": 32}
    assert VectorSpec.from_model(old) == BASE  # no prefix recorded: none
    assert VectorSpec.from_model({**old, "query_prefix": "q: ", "lowercase": True}, {"backend": "onnx"}) == replace(
        BASE, query_prefix="q: ", lowercase=True, backend="onnx")


@pytest.mark.parametrize("name", list(CHANGED))
def test_query_encoder_check_refuses_each_query_field_and_allows_the_rest(name, tmp_path, tiny_model):
    from adaretrieve.index.format import Manifest

    m = Manifest(model={"name": "m", **{k: getattr(BASE, k) for k in ("weights_sha256", "pooling", "normalize",
                                                                        "max_length")}},
                 n_docs=1, shortlist=[{"size": "1x8", "file": "s"}], rerank=None, corpus="c", spec=BASE.to_dict())
    other = replace(BASE, **{name: CHANGED[name]})
    if name in QUERY_FIELDS:
        with pytest.raises(AdaError) as e:
            check_encoder(m, "ix", other, "enc")
        msg = str(e.value)
        assert "\n" not in msg and (name in msg or "is not the model that built" in msg)
    else:  # queries may run another backend / dtype than the corpus did; the passage prefix never touches them
        check_encoder(m, "ix", other, "enc")


def _encoder(model, name: str):
    kw = {"pooling": dict(pooling="cls"), "normalize": dict(normalize=False), "max_length": dict(max_length=16),
          "query_prefix": dict(query_prefix="q: "), "passage_prefix": dict(passage_prefix="p: "),
          "lowercase": dict(lowercase=True), "dtype": dict(dtype="bfloat16"), "backend": dict(backend="onnx")}[name]
    return Encoder(model, device="cpu", **kw)


@pytest.mark.parametrize("name", [n for n in CHANGED if n != "weights_sha256"])
def test_a_resumed_build_refuses_a_change_of_any_spec_field_naming_it(name, tiny_model, tmp_path, monkeypatch):
    """A6: a sharded or resumed build cannot mix chunks of two specs (fp32 and bf16, torch and onnx ...)."""
    if name == "backend":
        module_or_skip("onnxruntime", "pip install 'adaretrieve[onnx]'")
    corpus = make_corpus(tmp_path / "c.jsonl", n=24)
    enc = Encoder(tiny_model, device="cpu")
    build_index(corpus, enc, tmp_path / "b", chunk_size=8, progress=False, shard=(0, 3), **SIZES)  # one shard of three
    assert build_dir(tmp_path / "b").exists() and not (tmp_path / "b").exists()
    other = _encoder(tiny_model, name)
    assert enc.spec().differs(other.spec()) == [name]
    with pytest.raises(AdaError) as e:
        build_index(corpus, other, tmp_path / "b", chunk_size=8, progress=False, shard=(1, 3), **SIZES)
    msg = str(e.value)
    assert "\n" not in msg and f"differ in {name} " in msg


def test_a_build_records_its_spec_and_searches_check_it(tiny_model, corpus, tmp_path):
    enc = Encoder(tiny_model, device="cpu", pooling="cls", query_prefix="q: ")
    build_index(corpus, enc, tmp_path / "ix", progress=False, **SIZES)
    m = read_manifest(tmp_path / "ix")
    assert m.vector_spec == enc.spec() and m.spec["query_prefix"] == "q: " and m.spec["passage_prefix"] == ""
    from adaretrieve import Retriever

    r = Retriever(tmp_path / "ix", device="cpu")
    assert r.encoder.spec() == enc.spec()  # the index's pooling and prefix, not the folder's defaults
    # an index written before specs still opens, its spec read from the model entry
    gen = m.generation
    mp = tmp_path / "ix" / gen / "manifest.json"
    data = json.loads(mp.read_text())
    data.pop("spec")
    mp.write_text(json.dumps(data))
    old = read_manifest(tmp_path / "ix")
    assert old.spec is None and old.vector_spec == enc.spec()
    assert Retriever(tmp_path / "ix", device="cpu").encoder.spec() == enc.spec()


def test_serve_reload_rebuilds_the_encoder_when_pooling_changes(tiny_model, tmp_path):
    """A5: a rebuild with the same weights but another pooling is served with the new pooling."""
    module_or_skip("fastapi", "pip install 'adaretrieve[serve]'")
    from adaretrieve import Retriever
    from adaretrieve.serve.service import SearchService

    corpus = make_corpus(tmp_path / "c.jsonl", n=30)
    build_index(corpus, Encoder(tiny_model, device="cpu"), tmp_path / "ix", progress=False, **SIZES)
    service = SearchService(tmp_path / "ix", device="cpu", reload_every=0)
    service.start()
    try:
        assert service.encoder.pooling == "mean"
        build_index(corpus, Encoder(tiny_model, device="cpu", pooling="cls"), tmp_path / "ix", progress=False,
                    overwrite=True, **SIZES)
        assert service.reload()
        assert service.encoder.pooling == "cls"
        texts = ["the cell gene", "cancer risk"]
        got = service.search(texts, rerank="none", top=5)
        want = Retriever(tmp_path / "ix", device="cpu").search(texts, rerank="none", top=5)
        assert [[d for d, _ in h] for h in got] == [[d for d, _ in h] for h in want]
        np.testing.assert_allclose([s for h in got for _, s in h], [s for h in want for _, s in h], atol=1e-5)
    finally:
        service.stop()
