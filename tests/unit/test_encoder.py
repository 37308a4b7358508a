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
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, layer in enumerate(enc.model.encoder.layer)]
    try:
        enc.encode(["the cell"], [Size(2, 8)])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1]
    assert len(enc.model.encoder.layer) == 4  # the full model is restored


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
