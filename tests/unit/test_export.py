"""`adaretrieve export`: a sentence-transformers folder per size whose vectors equal adaretrieve's
(plain and adapted models, prefixes as prompts, the ONNX graph), and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve import AdaError
from adaretrieve.cli.main import app
from adaretrieve.modeling import Encoder
from adaretrieve.modeling.export import export_size
from tests.conftest import make_corpus, module_or_skip


@pytest.fixture(autouse=True, scope="module")
def _oracle():
    """sentence-transformers is the oracle: a missing one skips loudly here and fails under CI."""
    module_or_skip("sentence_transformers", "the oracle; pip install -e '.[dev]'")
TEXTS = ["the cell", "cancer risk of the drug in human trial", "a", "mouse brain study with immune therapy and virus",
         " ".join(["gene"] * 80)]


def _st(folder, **kw):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", **kw)


@pytest.fixture(scope="module")
def adapted_models(tiny_model, tmp_path_factory):
    from adaretrieve.training.adapt import AdaptConfig, adapt

    d = tmp_path_factory.mktemp("export-adapt")
    corpus = make_corpus(d / "corpus.jsonl", n=80, seed=3)
    out = {}
    for features in ("concat", "layer"):
        adapt(AdaptConfig(model=str(tiny_model), corpus=str(corpus), out=str(d / features), ladder=["2x16", "4x32"],
                          objective="distill", steps=5, batch_size=16, docs_per_step=32, teacher_top=4,
                          features=features, device="cpu"), progress=False)
        out[features] = d / features
    return out


@pytest.mark.parametrize("size", ["2x16", "4x32", "4x8", "1x32"])
def test_plain_model_round_trip(tiny_model, tmp_path, size):
    enc = Encoder(tiny_model, device="cpu")
    summary = export_size(enc, size, tmp_path / "out")
    assert summary["check"]["checked"] and summary["check"]["max_abs_diff"] <= 1e-5
    assert not summary["trust_remote_code"]
    want = enc.encode(TEXTS, [size])[enc.check_sizes([size])[0]]
    np.testing.assert_allclose(_st(tmp_path / "out").encode(TEXTS, convert_to_numpy=True), want, atol=1e-5)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == int(size.split("x")[0])
    back = Encoder(tmp_path / "out", device="cpu")  # adaretrieve reads its own export: the same vectors
    assert str(back.full_size) == size
    np.testing.assert_allclose(back.encode(TEXTS, [back.full_size])[back.full_size], want, atol=1e-5)


@pytest.mark.parametrize("features, size", [("concat", "2x16"), ("concat", "2x8"), ("layer", "2x16"), ("concat", "4x32")])
def test_adapted_model_round_trip(adapted_models, tmp_path, features, size):
    enc = Encoder(adapted_models[features], device="cpu")
    summary = export_size(enc, size, tmp_path / "out")
    concat = features == "concat" and size != "4x32"  # the last layer is never adapted
    assert summary["adapted"] == (size != "4x32") and summary["trust_remote_code"] == concat
    want = enc.encode(TEXTS, [size])[enc.check_sizes([size])[0]]
    got = _st(tmp_path / "out", trust_remote_code=concat).encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    if summary["adapted"]:
        assert "Dense" in summary["modules"]
        assert ("LayerConcat" in summary["modules"]) == concat


def test_export_keeps_the_models_lowercasing(cased_tiny_model, tmp_path):
    """Code review 3 A14: an export of a model that lowercases before a cased tokenizer lowercases
    too, in sentence-transformers and in adaretrieve (before, it wrote do_lower_case false)."""
    enc = Encoder(cased_tiny_model, device="cpu")
    texts = ["The Cell", "Cancer Risk of the Drug"]
    export_size(enc, "2x16", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "sentence_bert_config.json").read_text())["do_lower_case"] is True
    want = enc.encode(texts, ["2x16"])[enc.check_sizes(["2x16"])[0]]
    np.testing.assert_allclose(_st(tmp_path / "out").encode(texts, convert_to_numpy=True), want, atol=1e-5)
    back = Encoder(tmp_path / "out", device="cpu")
    assert back.lowercase
    np.testing.assert_allclose(back.encode(texts, [back.full_size])[back.full_size], want, atol=1e-5)


def test_prefixes_become_prompts(tiny_model, tmp_path):
    enc = Encoder(tiny_model, device="cpu", query_prefix="query: ", passage_prefix="passage: ")
    export_size(enc, "2x16", tmp_path / "out")
    m = _st(tmp_path / "out")
    q = enc.encode_queries(TEXTS, ["2x16"])[enc.check_sizes(["2x16"])[0]]
    p = enc.encode_passages(TEXTS, ["2x16"])[enc.check_sizes(["2x16"])[0]]
    np.testing.assert_allclose(m.encode_query(TEXTS, convert_to_numpy=True), q, atol=1e-5)
    np.testing.assert_allclose(m.encode_document(TEXTS, convert_to_numpy=True), p, atol=1e-5)


@pytest.mark.parametrize("which, size", [("plain", "2x16"), ("plain", "4x32"), ("concat", "2x16")])
def test_onnx_graph_equals_adaretrieve(tiny_model, adapted_models, tmp_path, which, size):
    module_or_skip("onnx", "pip install -e '.[dev]' (or '.[onnx]')")
    module_or_skip("onnxruntime", "pip install -e '.[dev]' (or '.[onnx]')")
    model = tiny_model if which == "plain" else adapted_models[which]
    summary = export_size(model, size, tmp_path / "out", onnx=True)
    assert (tmp_path / "out" / "onnx" / "model.onnx").exists()
    assert summary["onnx"]["max_abs_diff"] <= 1e-5


def test_cli_export_and_errors(tiny_model, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["export", "--model", str(tiny_model), "--size", "2x16", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["size"] == "2x16"
    for args, words in ((["--size", "9x16"], "layer"), (["--size", "2x64"], "64"), (["--size", "2by16"], "2by16")):
        r = runner.invoke(app, ["export", "--model", str(tiny_model), "--out", str(tmp_path / "p"), *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["export", "--model", str(tiny_model), "--size", "2x16", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, ["export", "--model", str(tiny_model), "--size", "2x16", "--out", str(tmp_path / "o"),
                            "--overwrite", "--query-prefix", "q: "])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "config_sentence_transformers.json").read_text())["prompts"] == {"query": "q: "}


def test_mlp_adaptor_is_refused(tiny_model, tmp_path):
    from adaretrieve.training.adapt import AdaptConfig, adapt

    corpus = make_corpus(tmp_path / "corpus.jsonl", n=60, seed=3)
    adapt(AdaptConfig(model=str(tiny_model), corpus=str(corpus), out=str(tmp_path / "mlp"), ladder=["2x16", "4x32"],
                      objective="ridge", kind="mlp", device="cpu"), progress=False)
    with pytest.raises(AdaError, match="mlp"):
        export_size(tmp_path / "mlp", "2x16", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_help_has_examples():
    r = CliRunner().invoke(app, ["export", "--help"])
    assert r.exit_code == 0 and "Example" in r.stdout and "--onnx" in r.stdout
