import numpy as np
import pytest
import torch

from adaretrieve import AdaError, Size
from adaretrieve.modeling import Encoder
from adaretrieve.sizes import truncate

TEXTS = ["the cell", "cancer risk of the drug in human trial", "a", "mouse brain study with immune therapy and virus"]


@pytest.fixture(scope="module")
def enc(tiny_model):
    return Encoder(tiny_model, device="cpu")


def test_reads_sentence_transformers_config(enc):
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 48)
    assert (enc.n_layers, enc.hidden_size) == (4, 32)
    assert Encoder(enc.path, pooling="cls", normalize=False, device="cpu").pooling == "cls"


def reference(enc, texts, layer):
    """Pooled hidden state of ``layer`` from a plain full forward pass, one text at a time."""
    out = []
    for t in texts:
        b = enc.tokenizer([t], return_tensors="pt", truncation=True, max_length=enc.max_length)
        with torch.inference_mode():
            hs = enc.model(**b, output_hidden_states=True).hidden_states
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append(((hs[layer] * m).sum(1) / m.sum(1))[0].numpy())
    return np.stack(out)


def test_one_pass_equals_separate_full_passes(enc):
    sizes = [Size(1, 8), Size(2, 16), Size(2, 32), Size(4, 32)]
    got = enc.encode(TEXTS, sizes, batch_size=3)
    for s in sizes:
        want = truncate(reference(enc, TEXTS, s.layer), s.dim, True)
        np.testing.assert_allclose(got[s], want, atol=2e-5)
        assert got[s].shape == (len(TEXTS), s.dim) and got[s].dtype == np.float32


def test_early_exit_runs_only_needed_layers(enc):
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda m, i, n=n: calls.append(n)) for n, layer in enumerate(enc.model.encoder.layer)]
    try:
        enc.encode(["the cell"], [Size(2, 8)])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1]  # layers 3 and 4 never start
    assert len(enc.model.encoder.layer) == 4  # the model itself is never cut


def test_shallow_then_deeper_encode(enc):
    """transformers 5 installs its hidden-state hooks once, on the layers present at the first call:
    a shallow encode must not break a later deeper one (it raised IndexError)."""
    fresh = Encoder(enc.path, device="cpu")
    fresh.encode(["the cell"], ["2x16"])
    got = fresh.encode(["the cell"], ["2x16", "4x32"])
    np.testing.assert_allclose(got[Size(4, 32)], truncate(reference(fresh, ["the cell"], 4), 32, True), atol=2e-5)


def test_threads_at_different_depths_get_their_own_vectors(enc):
    """A server encodes at several depths at once on one Encoder: every thread's vectors must equal
    its sequential answer."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(TEXTS * 3, ["1x8"] if i % 3 == 0 else ["2x16"] if i % 3 == 1 else ["4x32", "3x8"]) for i in range(24)]
    want = [enc.encode(t, s) for t, s in jobs]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda job: enc.encode(*job, batch_size=2), jobs))
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for s in w:
            np.testing.assert_allclose(g[s], w[s], atol=2e-5)


def test_final_norm_is_not_applied_to_any_size(tmp_path):
    """A size LxD is the pooled output of layer L before any final norm, on every path: a model
    with a final norm (ModernBERT) gives the same vector for its last layer whether it is reached
    by a full pass or an early-exited one, and it equals the raw layer output."""
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    from tests.conftest import _save_tiny_bert

    bert = _save_tiny_bert(tmp_path / "bert", seed=0)
    tok = PreTrainedTokenizerFast.from_pretrained(bert)
    torch.manual_seed(0)
    cfg = ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                           eos_token_id=3, cls_token_id=2, sep_token_id=3, global_attn_every_n_layers=1)
    model = ModernBertModel(cfg).eval()
    with torch.no_grad():
        model.final_norm.weight.mul_(3.0)  # make the final norm visible
    model.save_pretrained(tmp_path / "mb")
    tok.save_pretrained(tmp_path / "mb")
    e = Encoder(tmp_path / "mb", pooling="mean", normalize=True, device="cpu")
    model = e.model
    a = e.encode(TEXTS, ["3x32"])[Size(3, 32)]
    b = e.encode(TEXTS, ["3x32", "1x8"])[Size(3, 32)]
    np.testing.assert_allclose(a, b, atol=1e-5)
    ref, seen = [], []
    # the third layer's own output (transformers' hidden_states[-1] is after the final norm)
    h = model.layers[2].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        for t in TEXTS:
            with torch.no_grad():
                model(**tok([t], return_tensors="pt"))
            ref.append(seen.pop().mean(1)[0].numpy())
    finally:
        h.remove()
    np.testing.assert_allclose(a, truncate(np.stack(ref), 32, True), atol=1e-4)


def test_batching_and_sorting_do_not_change_vectors(enc):
    a = enc.encode(TEXTS, [Size(4, 32)], batch_size=1, sort_by_length=False)[Size(4, 32)]
    b = enc.encode(TEXTS, [Size(4, 32)], batch_size=4)[Size(4, 32)]
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_bad_sizes_name_the_model_shape(enc):
    with pytest.raises(AdaError, match=r"shortlist size 2x64: dim 64 exceeds the model's hidden size 32"):
        enc.check_sizes(["2x64"], "shortlist size")
    with pytest.raises(AdaError, match=r"layer 5 is outside 1..4"):
        enc.encode(["x"], ["5x8"])


def test_weights_hash_tells_models_apart(enc, other_tiny_model):
    other = Encoder(other_tiny_model, device="cpu")
    assert enc.weights_hash() != other.weights_hash()
    assert enc.weights_hash() == Encoder(enc.path, device="cpu").weights_hash()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(AdaError, match="model folder .* does not exist"):
        Encoder(str(tmp_path / "nothing-here"), device="cpu")


def test_mpnet_alias_prefers_the_assembled_folder(tmp_path, monkeypatch):
    from adaretrieve.modeling.encoder import resolve_model

    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model("mpnet") == "sentence-transformers/all-mpnet-base-v2"  # no folder: the Hub id
    folder = tmp_path / ".cache" / "mpnet" / "all-mpnet-base-v2"
    folder.mkdir(parents=True)
    assert resolve_model("mpnet") == str(folder.resolve())


def test_vectors_are_keyed_by_size_or_by_its_string(enc):
    """newcomer-3: ``encode_queries(texts, ["2x8"])["2x8"]`` was a KeyError (the keys are Size values)."""
    v = enc.encode_queries(["the cell"], ["2x8"])
    np.testing.assert_array_equal(v["2x8"], v[Size(2, 8)])
    assert "2x8" in v and "4x32" not in v and "junk" not in v and v.get("1x4") is None


def test_help_shows_the_install_lines_of_the_extras():
    """newcomer-3: Rich markup ate ``[onnx]`` / ``[ray]`` in --help."""
    from typer.testing import CliRunner

    from adaretrieve.cli.main import app

    out = CliRunner().invoke(app, ["index", "--help"], env={"COLUMNS": "300"}).output
    assert "'adaretrieve[onnx]'" in out and "pip install 'adaretrieve[ray]'" in out  # the help may wrap after "install"
