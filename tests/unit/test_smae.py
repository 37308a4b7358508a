import json

import pytest
import torch
import torch.nn.functional as F

from adaretrieve import Size
from adaretrieve.errors import AdaError
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


def test_decoder_sees_only_the_pairs_sub_vector(tiny_model):
    enc = Encoder(tiny_model, device="cpu")
    smae = SMAE(enc, [Size(2, 8)])
    b = enc.tokenizer(["the cell gene", "a protein study of blood"], padding=True, return_tensors="pt")
    ids, mask = b["input_ids"], b["attention_mask"]
    hs = enc.hidden_states({"input_ids": ids, "attention_mask": mask}, 2)
    h = hs[2].detach().requires_grad_(True)
    first = smae.head.transform(enc.pool(h, mask)[:, :8])
    out = smae.decoder(first, ids, mask)
    out.sum().backward()
    assert h.grad[..., 8:].abs().max() == 0  # nothing past the pair's dims reaches the decoder
    assert h.grad[..., :8].abs().max() > 0


def test_mlm_loss_falls_and_output_loads(tiny_model, tmp_path):
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=32)
    out = tmp_path / "smae"
    cfg = PretrainConfig(model=str(tiny_model), data=[str(corpus)], output=str(out), steps=30, batch_size=8,
                         max_length=32, lr=2e-3, device="cpu", save_every=10)
    s = pretrain(cfg, progress=False)
    # random words, each pair's loss the mean of its two: the floor is about ln(30) = 3.4 from a start of about 4.15
    assert s["final_loss"] < s["first_loss"] - 0.3
    enc = Encoder(out, device="cpu")  # the output is a plain encoder folder, ready for `train`
    assert enc.n_layers == 4 and json.loads((out / "adaretrieve.json").read_text())["pretraining"] == "smae"
    # the same command again resumes from the final checkpoint: its own run takes no step
    s2 = pretrain(cfg, progress=False)
    assert s2["steps_this_run"] == 0 and s2["steps"] == 30
    # more steps would change the learning-rate schedule of the steps already taken: refused, naming it
    from adaretrieve import AdaError

    cfg.steps = 32
    with pytest.raises(AdaError, match="steps 30 -> 32"):
        pretrain(cfg, progress=False)


def test_pretrain_rejects_bad_pairs(tiny_model, tmp_path):
    from adaretrieve import AdaError

    cfg = PretrainConfig(model=str(tiny_model), data=[str(make_corpus(tmp_path / "c.jsonl"))], output=str(tmp_path / "o"),
                         pairs=["9x8"], device="cpu")
    with pytest.raises(AdaError, match="layer 9 is outside"):
        pretrain(cfg, progress=False)


def test_resume_after_interruption_gives_same_weights(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import adaretrieve.training.smae as S

    corpus = make_corpus(tmp_path / "corpus.jsonl", n=24)

    def cfg(out):
        return PretrainConfig(model=str(tiny_model), data=[str(corpus)], output=str(out), steps=6, batch_size=4,
                              max_length=24, lr=1e-3, device="cpu", save_every=2, pack=True, whole_word_mask=True)

    pretrain(cfg(tmp_path / "straight"), progress=False)
    real = S._save

    def crash_after_step_4(smae, enc, ck, opt, sched, step, *rest):
        real(smae, enc, ck, opt, sched, step, *rest)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(S, "_save", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg(tmp_path / "broken"), progress=False)
    monkeypatch.setattr(S, "_save", real)
    changed = cfg(tmp_path / "broken")
    changed.lr, changed.encoder_mask = 0.1, 0.3
    with pytest.raises(AdaError, match=r"encoder_mask 0.2 -> 0.3; lr 0.001 -> 0.1"):
        pretrain(changed, progress=False)
    assert pretrain(cfg(tmp_path / "broken"), progress=False)["steps_this_run"] == 2
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "broken" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_loss_that_becomes_nan_stops_before_the_step(tiny_model, tmp_path, monkeypatch):
    """Code review 3 A15.3 (code-review-2 #14, as trainer.py does): the check runs before
    ``opt.step()``, so a non-finite loss leaves the weights as they were and says so in one line."""
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=16)
    real = SMAE.losses
    seen: dict = {"calls": 0}

    def nan_at_step_2(self, *a):
        loss, logs = real(self, *a)
        seen["calls"] += 1
        if seen["calls"] == 2:  # the weights after step 1: what a failed step 2 must leave
            seen["smae"], seen["before"] = self, {k: v.detach().clone() for k, v in self.state_dict().items()}
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(SMAE, "losses", nan_at_step_2)
    cfg = PretrainConfig(model=str(tiny_model), data=[str(corpus)], output=str(tmp_path / "o"), steps=4, batch_size=4,
                         max_length=24, lr=1e-3, device="cpu", save_every=10)
    with pytest.raises(AdaError, match=r"^SMAE loss became nan at step 2; lower the learning rate$"):
        pretrain(cfg, progress=False)
    after = seen["smae"].state_dict()
    assert all(torch.equal(v, after[k]) for k, v in seen["before"].items())


class _WordPieceTok:
    mask_token_id = 1

    def __len__(self):
        return 50

    def convert_ids_to_tokens(self, row):
        vocab = {0: "[CLS]", 2: "[SEP]", 3: "[PAD]", 10: "pro", 11: "##tein", 12: "##s", 13: "cell", 14: "gene"}
        return [vocab[i] for i in row]


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    from adaretrieve.training.smae import mask_tokens, word_groups

    tok = _WordPieceTok()
    ids = torch.tensor([[0, 10, 11, 12, 13, 14, 2, 3]] * 64)
    mask = (ids != 3).long()
    special = (ids == 0) | (ids == 2) | (ids == 3)
    groups = word_groups(ids, tok, special)
    assert groups[0].tolist() == [-1, 0, 0, 0, 1, 2, -1, -1]
    _, labels = mask_tokens(ids, mask, 0.5, tok, torch.Generator().manual_seed(0), special, groups)
    chosen = labels != -100
    # "pro ##tein ##s" is one word: its three pieces are chosen together or not at all
    assert torch.equal(chosen[:, 1], chosen[:, 2]) and torch.equal(chosen[:, 1], chosen[:, 3])
    assert 0 < chosen[:, 1].float().mean() < 1 and not chosen[:, [0, 6, 7]].any()
    assert not torch.equal(chosen[:, 1], chosen[:, 4])  # different words are drawn independently


def test_packing_fills_rows_and_interleaves_sources(tiny_model, tmp_path):
    from itertools import islice

    from adaretrieve.training.smae import iter_batches, iter_texts

    a = make_corpus(tmp_path / "a.jsonl", n=5)
    b = tmp_path / "b.txt"
    b.write_text("only line of b\n")
    assert list(islice(iter_texts([str(a), str(b)]), 4))[1::2] == ["only line of b", "only line of b"]
    enc = Encoder(tiny_model, device="cpu")
    cfg = PretrainConfig(data=[str(a), str(b)], batch_size=3, max_length=16, pack=True)
    ids, mask, special = next(iter_batches(cfg, enc.tokenizer))
    assert ids.shape == (3, 16) and bool(mask.all())
    assert (ids[:, 0] == enc.tokenizer.cls_token_id).all() and (ids[:, -1] == enc.tokenizer.sep_token_id).all()
    assert bool(special[:, 0].all())


def test_pretrain_under_two_ranks_keeps_ranks_identical(tiny_model, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from tests.unit.ddp_worker import worker

    corpus = make_corpus(tmp_path / "corpus.jsonl", n=16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kw = PretrainConfig(model=str(tiny_model), data=[str(corpus)], output=str(tmp_path / "ddp"), steps=3, batch_size=4,
                        max_length=24, device="cpu", save_every=3).__dict__
    mp.spawn(worker, args=(2, port, kw, str(tmp_path), "pretrain"), nprocs=2, join=True)
    h0, h1 = (tmp_path / "rank0.txt").read_text().split(), (tmp_path / "rank1.txt").read_text().split()
    assert h0 == h1 and h0[1] == "2"
    assert json.loads((tmp_path / "ddp" / "adaretrieve.json").read_text())["summary"]["world_size"] == 2


def test_head_loads_bert_or_mpnet_style_weights():
    emb = torch.nn.Embedding(50, 16)
    for prefix, ln in (("cls.predictions.transform.", "LayerNorm"), ("lm_head.", "layer_norm")):
        head = SlicedMLMHead(16, 50, emb)
        bias = "cls.predictions.bias" if prefix.startswith("cls") else "lm_head.bias"
        state = {f"{prefix}dense.weight": torch.full((16, 16), 0.5), f"{prefix}dense.bias": torch.ones(16),
                 f"{prefix}{ln}.weight": torch.full((16,), 2.0), f"{prefix}{ln}.bias": torch.zeros(16),
                 bias: torch.full((50,), 3.0)}
        assert head.load_from_hf(state)
        assert head.dense.weight.detach()[0, 0].item() == 0.5 and head.bias.detach()[0].item() == 3.0
    assert not SlicedMLMHead(16, 50, emb).load_from_hf({"lm_head.dense.weight": torch.zeros(16, 16)})


def _smae_batch(enc, seed=0):
    from adaretrieve.training.smae import mask_tokens

    b = enc.tokenizer(["the cell gene of a mouse", "a protein study of blood and brain", "drug dose trial"],
                      padding=True, return_tensors="pt", return_special_tokens_mask=True)
    ids, mask, special = b["input_ids"], b["attention_mask"], b["special_tokens_mask"].bool()
    gen = torch.Generator().manual_seed(seed)
    enc_ids, enc_labels = mask_tokens(ids, mask, 0.4, enc.tokenizer, gen, special)
    dec_ids, dec_labels = mask_tokens(ids, mask, 0.6, enc.tokenizer, gen, special)
    # at least one prediction per loss, so neither is the empty-selection zero
    enc_labels[0, 1], dec_labels[0, 2] = ids[0, 1], ids[0, 2]
    return ids, mask, enc_ids, enc_labels, dec_ids, dec_labels


def _head_transform(head, x):
    """The reference's sliced transform by hand: dense.weight[:, :d] (hidden x d), full bias,
    activation, full-width LayerNorm (ielab/Starbucks smae/modeling.py)."""
    d = x.shape[-1]
    y = F.gelu(x @ head.dense.weight[:, :d].T + head.dense.bias)
    return F.layer_norm(y, (head.norm.weight.shape[0],), head.norm.weight, head.norm.bias, head.norm.eps)


def test_decoder_first_position_is_the_head_transform_of_the_sub_vector(tiny_model):
    enc = Encoder(tiny_model, device="cpu")
    torch.manual_seed(0)
    smae = SMAE(enc, [Size(2, 8), Size(4, 32)]).eval()
    ids, mask, enc_ids, enc_labels, dec_ids, dec_labels = _smae_batch(enc)
    seen = []
    smae.decoder.layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 0].detach().clone()))
    with torch.no_grad():
        smae.losses(ids, mask, enc_ids, enc_labels, dec_ids, dec_labels)
        hs = enc.hidden_states({"input_ids": enc_ids, "attention_mask": mask}, 4)
        for got, (layer, dim) in zip(seen, [(2, 8), (4, 32)]):
            sub = enc.pool(hs[layer], mask)[:, :dim]
            want = _head_transform(smae.head, sub)  # [batch, hidden], not a zero-padded copy of sub
            assert torch.allclose(got, want, atol=1e-5)
    assert len(seen) == 2


def test_smae_loss_is_the_pair_mean_of_half_encoder_plus_half_decoder(tiny_model):
    enc = Encoder(tiny_model, device="cpu")
    torch.manual_seed(0)
    pairs = [Size(1, 4), Size(2, 8), Size(4, 32)]
    smae = SMAE(enc, pairs).eval()
    head = smae.head
    ids, mask, enc_ids, enc_labels, dec_ids, dec_labels = _smae_batch(enc, seed=3)
    with torch.no_grad():
        loss, logs = smae.losses(ids, mask, enc_ids, enc_labels, dec_ids, dec_labels)
        hs = enc.hidden_states({"input_ids": enc_ids, "attention_mask": mask}, 4)
        emb = enc.model.get_input_embeddings().weight
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

        def mlm(h, labels):
            sel = labels != -100
            return F.cross_entropy(_head_transform(head, h[sel]) @ emb.T + head.bias, labels[sel])

        per_pair = []
        for p in pairs:
            h = hs[p.layer]
            encoder_loss = mlm(h[..., : p.dim], enc_labels)
            x = enc.model.embeddings(input_ids=dec_ids)
            x = torch.cat([_head_transform(head, enc.pool(h, mask)[:, : p.dim])[:, None], x[:, 1:]], dim=1)
            out = smae.decoder.layer(x, attention_mask=ext)
            out = out[0] if isinstance(out, tuple) else out
            per_pair.append((encoder_loss + mlm(out, dec_labels)) / 2)
    assert torch.allclose(loss, torch.stack(per_pair).mean(), atol=1e-5)
    assert [round(v, 4) for v in logs.values()] == [round(float(v), 4) for v in per_pair]
