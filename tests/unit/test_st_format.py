"""Sentence-transformers folders: what adaretrieve reads from one (every pooling spelling, Dense
modules, prompts, max length) equals what sentence-transformers computes, anything it cannot honour
is one AdaError line, and the folders `train` and `adapt` write load in sentence-transformers as
adaretrieve encodes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from adaretrieve import AdaError
from adaretrieve.modeling import Encoder
from tests.conftest import _save_tiny_bert, make_corpus, module_or_skip

TEXTS = ["the cell", "cancer risk of the drug in human trial", "a", "mouse brain study with immune therapy and virus"]


@pytest.fixture(autouse=True, scope="module")
def _oracle():
    """sentence-transformers is the oracle: a missing one skips loudly here and fails under CI."""
    module_or_skip("sentence_transformers", "the oracle; pip install -e '.[dev]'")


def _st6_folder(path: Path, pooling="mean", dense: int | None = None, normalize=True, prompts=None,
                max_seq_length=40, activation=None, seed=7) -> Path:
    """A folder saved by sentence-transformers itself around a tiny random BERT."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models
    base = _save_tiny_bert(path.with_name(path.name + "-hf"), seed=5, st=False)
    torch.manual_seed(seed)
    mods = [models.Transformer(str(base), max_seq_length=max_seq_length)]
    mods.append(models.Pooling(32, pooling_mode=pooling))
    if dense:
        mods.append(models.Dense(32, dense, activation_function=activation or torch.nn.Identity()))
    if normalize:
        mods.append(models.Normalize())
    SentenceTransformer(modules=mods, prompts=prompts or {}, device="cpu").save(str(path))
    return path


def _st_vectors(path, texts=TEXTS, **kw) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", **kw).encode(list(texts), convert_to_numpy=True, batch_size=3)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_st6_folder_is_read_with_its_pooling(tmp_path, pooling):
    d = _st6_folder(tmp_path / "st", pooling=pooling)
    assert "pooling_mode" in json.loads((d / "1_Pooling" / "config.json").read_text())  # ST 6's own spelling
    enc = Encoder(d, device="cpu")
    assert (enc.pooling, enc.normalize, enc.max_length) == (pooling, True, 40)
    got = enc.encode(TEXTS, [enc.full_size])[enc.full_size]
    np.testing.assert_allclose(got, _st_vectors(d), atol=1e-5)


@pytest.mark.parametrize("config, want", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"word_embedding_dimension": 32, "pooling_mode": "cls"}, "cls"),
    ({"embedding_dimension": 32, "pooling_mode": ["mean"]}, "mean"),
    ({"pooling_mode": "mean_tokens"}, "mean"),
    ({"pooling_mode": "cls_token"}, "cls"),
])
def test_every_pooling_spelling(tmp_path, config, want):
    d = _save_tiny_bert(tmp_path / "m", seed=0)
    (d / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert Encoder(d, device="cpu").pooling == want


@pytest.mark.parametrize("config, words", [
    ({"pooling_mode": "max"}, "max"),
    ({"pooling_mode": ["cls", "mean"]}, "cls"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "max"),
    ({"pooling_mode": "weightedmean"}, "weightedmean"),
])
def test_pooling_adaretrieve_cannot_do_is_an_error(tmp_path, config, words):
    d = _save_tiny_bert(tmp_path / "m", seed=0)
    (d / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdaError, match=words) as e:
        Encoder(d, device="cpu")
    assert "\n" not in str(e.value) and "1_Pooling" in str(e.value)


def test_unknown_module_and_bad_order_are_errors(tmp_path):
    d = _save_tiny_bert(tmp_path / "m", seed=0)
    mods = json.loads((d / "modules.json").read_text())
    (d / "modules.json").write_text(json.dumps([*mods, {"idx": 3, "name": "3", "path": "3_LayerNorm",
                                                         "type": "sentence_transformers.models.LayerNorm"}]))
    with pytest.raises(AdaError, match="LayerNorm"):
        Encoder(d, device="cpu")
    (d / "modules.json").write_text(json.dumps(mods[:1] + mods[2:] + mods[1:2]))  # Normalize before Pooling
    with pytest.raises(AdaError, match="order"):
        Encoder(d, device="cpu")


@pytest.mark.parametrize("activation", [None, torch.nn.Tanh()])
def test_dense_module_is_honoured(tmp_path, activation):
    d = _st6_folder(tmp_path / "st", dense=16, activation=activation)
    enc = Encoder(d, device="cpu")
    assert str(enc.full_size) == "4x16" and enc.width(2) == 32
    got = enc.encode(TEXTS, ["4x16", "4x8", "2x32"])
    np.testing.assert_allclose(got[enc.full_size], _st_vectors(d), atol=1e-5)
    assert Encoder(d, device="cpu").weights_hash() == enc.weights_hash()
    other = _st6_folder(tmp_path / "st2", dense=16, activation=activation, seed=8)
    assert Encoder(other, device="cpu").weights_hash() != enc.weights_hash()  # same backbone, other Dense


def test_dense_with_an_activation_adaretrieve_lacks_is_an_error(tmp_path):
    d = _st6_folder(tmp_path / "st", dense=16, activation=torch.nn.ReLU())
    with pytest.raises(AdaError, match="ReLU"):
        Encoder(d, device="cpu")


def test_prompts_become_prefixes(tmp_path):
    d = _st6_folder(tmp_path / "st", prompts={"query": "query: ", "document": "passage: "})
    enc = Encoder(d, device="cpu")
    assert (enc.query_prefix, enc.passage_prefix) == ("query: ", "passage: ")
    assert enc.describe()["query_prefix"] == "query: "
    q = enc.encode_queries(TEXTS, [enc.full_size])[enc.full_size]
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(d), device="cpu")
    np.testing.assert_allclose(q, m.encode_query(TEXTS, convert_to_numpy=True), atol=1e-5)
    p = enc.encode_passages(TEXTS, [enc.full_size])[enc.full_size]
    np.testing.assert_allclose(p, m.encode_document(TEXTS, convert_to_numpy=True), atol=1e-5)
    assert Encoder(d, device="cpu", query_prefix="", passage_prefix="").query_prefix == ""


def test_exclude_prompt_pooling_is_an_error(tmp_path):
    d = _st6_folder(tmp_path / "st", prompts={"query": "query: "})
    cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
    (d / "1_Pooling" / "config.json").write_text(json.dumps({**cfg, "include_prompt": False}))
    with pytest.raises(AdaError, match="include_prompt"):
        Encoder(d, device="cpu")


def _assert_st_loads_as_adaretrieve(folder: Path):
    enc = Encoder(folder, device="cpu")
    got = enc.encode(TEXTS, [enc.full_size])[enc.full_size]
    np.testing.assert_allclose(got, _st_vectors(folder), atol=1e-5)
    long = " ".join(["cell"] * 200)
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(folder), device="cpu").max_seq_length == enc.max_length
    np.testing.assert_allclose(enc.encode([long], [enc.full_size])[enc.full_size], _st_vectors(folder, [long]), atol=1e-5)


def _train_two_steps(model, tmp_path):
    """``train`` for two steps on a 20-doc BEIR folder; the output folder."""
    from adaretrieve.training.trainer import TrainConfig, train

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    make_corpus(root / "corpus.jsonl", n=20)
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"cell risk {i}"}) + "\n" for i in range(8)))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(8)))
    out = tmp_path / "trained"
    train(TrainConfig(model=str(model), data=str(root), output=str(out), steps=2, batch_size=4, n_negatives=1,
                      save_every=10, device="cpu"), progress=False)
    return out


def test_train_output_loads_in_sentence_transformers(tiny_model, tmp_path):

    out = _train_two_steps(tiny_model, tmp_path)
    assert json.loads((out / "modules.json").read_text())[-1]["type"].endswith("Normalize")
    _assert_st_loads_as_adaretrieve(out)


def test_train_output_from_a_plain_hf_folder_loads_in_sentence_transformers(tmp_path):
    """No sentence-transformers files in the start model: cls pooling, no normalisation, 64 tokens."""

    plain = _save_tiny_bert(tmp_path / "plain", seed=2, st=False)
    out = _train_two_steps(plain, tmp_path)
    enc = Encoder(out, device="cpu")
    assert (enc.pooling, enc.normalize) == ("cls", False)
    _assert_st_loads_as_adaretrieve(out)


def test_adapt_output_loads_in_sentence_transformers(tmp_path):
    """The full size of an adapted model is the backbone's; a start folder without ST files (plain
    HF, cls pooling) gets them, written from the encoder's settings."""
    from adaretrieve.training.adapt import AdaptConfig, adapt

    plain = _save_tiny_bert(tmp_path / "plain", seed=2, st=False)
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=60, seed=3)
    out = tmp_path / "adapted"
    adapt(AdaptConfig(model=str(plain), corpus=str(corpus), out=str(out), ladder=["2x16", "4x32"], objective="ridge",
                      device="cpu"), progress=False)
    assert (out / "modules.json").exists()
    _assert_st_loads_as_adaretrieve(out)


def test_adapt_output_keeps_the_source_st_files(tiny_model, tmp_path):
    from adaretrieve.training.adapt import AdaptConfig, adapt

    src = tmp_path / "src"
    shutil.copytree(tiny_model, src)
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=60, seed=3)
    out = tmp_path / "adapted"
    adapt(AdaptConfig(model=str(src), corpus=str(corpus), out=str(out), ladder=["2x16", "4x32"], objective="ridge",
                      device="cpu"), progress=False)
    _assert_st_loads_as_adaretrieve(out)
