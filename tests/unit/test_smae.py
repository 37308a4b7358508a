import json

import pytest
import torch
import torch.nn.functional as F

from adaretrieve import Size
from adaretrieve.modeling import Encoder
from adaretrieve.training.smae import SMAE, PretrainConfig, SlicedMLMHead, pretrain
from tests.conftest import make_corpus


def test_sliced_head_at_full_width_is_the_plain_head():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 16)
    head = SlicedMLMHead(16, 50, emb)
    h = torch.randn(3, 5, 16)
    plain = head.decoder(head.norm(F.gelu(head.dense(h)))) + head.bias
    assert torch.allclose(head(h, 16), plain, atol=1e-6)
    assert torch.allclose(head(h), plain, atol=1e-6)
    # at a smaller dim only the first columns of the projection are used
    h2 = h.clone()
    h2[..., 8:] = 100.0
    assert torch.allclose(head(h, 8), head(h2, 8))


def test_decoder_sees_only_the_pairs_pooled_vector(tiny_model):
    enc = Encoder(tiny_model, device="cpu")
    smae = SMAE(enc, [Size(2, 8)])
    b = enc.tokenizer(["the cell gene", "a protein study of blood"], padding=True, return_tensors="pt")
    ids, mask = b["input_ids"], b["attention_mask"]
    hs = enc.hidden_states({"input_ids": ids, "attention_mask": mask}, 2)
    h = hs[2].detach().requires_grad_(True)
    pooled = enc.pool(h, mask)[:, :8]
    out = smae.decoder(pooled, ids, mask)
    out.sum().backward()
    assert h.grad[..., 8:].abs().max() == 0  # nothing past the pair's dims reaches the decoder
    assert h.grad[..., :8].abs().max() > 0


def test_mlm_loss_falls_and_output_loads(tiny_model, tmp_path):
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=32)
    out = tmp_path / "smae"
    cfg = PretrainConfig(model=str(tiny_model), data=[str(corpus)], output=str(out), steps=30, batch_size=8,
                         max_length=32, lr=2e-3, device="cpu", save_every=10)
    s = pretrain(cfg, progress=False)
    # random words: the floor is about 2 x ln(30) = 6.8 from a start of about 8.3
    assert s["final_loss"] < s["first_loss"] - 0.6
    enc = Encoder(out, device="cpu")  # the output is a plain encoder folder, ready for `train`
    assert enc.n_layers == 4 and json.loads((out / "adaretrieve.json").read_text())["pretraining"] == "smae"
    # resume: asking for more steps continues from the checkpoint
    cfg.steps = 32
    s2 = pretrain(cfg, progress=False)
    assert s2["steps"] == 32


def test_pretrain_rejects_bad_pairs(tiny_model, tmp_path):
    from adaretrieve import AdaError

    cfg = PretrainConfig(model=str(tiny_model), data=[str(make_corpus(tmp_path / "c.jsonl"))], output=str(tmp_path / "o"),
                         pairs=["9x8"], device="cpu")
    with pytest.raises(AdaError, match="layer 9 is outside"):
        pretrain(cfg, progress=False)
