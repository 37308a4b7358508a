"""Starbucks masked autoencoding (SMAE) pre-training.

For every (layer, dim) pair of the ladder, two losses from the encoder's pass over a lightly
masked input (~20% of tokens):

- MLM from the first ``dim`` dims of layer ``layer``'s hidden states: the MLM head's transform
  reads the sub-vector through ``dense.weight[:, :dim]`` ([hidden x dim]: all output rows, the
  first ``dim`` input columns) plus the full bias, then the activation and the full-width
  LayerNorm, so the small sub-vector alone must predict the masked tokens;
- a masked-autoencoder loss: a shallow decoder (one transformer layer) reconstructs a more heavily
  masked copy of the input (~40%) from the pair's pooled sub-vector alone. The sub-vector
  [batch, dim] goes through that same sliced transform (dense -> activation -> LayerNorm, out
  [batch, hidden]) and replaces the decoder input's first position (its whole embedding).

Per pair the two losses are averaged, ``(mlm + mae) / 2``, and the pair losses are averaged over
the ladder. This is the mapping of the reference code, ielab/Starbucks ``smae/modeling.py``
(``BertPredictionHeadTransformForwardDecorator``, ``BertFor2DMaekMatryoshkaMaskedLM``). Where
this differs: the reference hands the decoder the CLS token's sub-vector (its retriever pools CLS);
here it is the encoder's own pooled vector, which is the CLS token for CLS-pooled models and the
embedding that is actually retrieved with for mean-pooled ones such as MiniLM. The reference's
decoder layer starts from the checkpoint's first layer; here it is a copy of the encoder's last
layer. The activation is gelu (BERT's and MiniLM's ``hidden_act``).

The MLM head comes from the checkpoint when it has one (e.g. ``BertForMaskedLM``), else it is
initialised with its output layer tied to the word embeddings.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adaretrieve._version import __version__
from adaretrieve.errors import AdaError
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.sizes import Size
from adaretrieve.training.checkpoint import (
    check_resume,
    load_state,
    mark_complete,
    mark_incomplete,
    replace_dir,
    restore_rng,
    rng_states,
)
from adaretrieve.training.config import check_at_least, check_types, load_config

log = logging.getLogger(__name__)


class SlicedMLMHead(nn.Module):
    """BERT's MLM head (dense -> gelu -> LayerNorm -> vocab) whose dense layer can read a prefix.

    ``transform(x)``: x [..., d] -> [..., hidden] through ``dense.weight[:, :d]``, the full bias,
    gelu and the full LayerNorm. ``forward(h, dim)``: h[..., :dim] -> logits [..., vocab]. At
    ``dim`` = hidden size both are the ordinary head.
    """

    def __init__(self, hidden: int, vocab: int, word_embeddings: nn.Embedding, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied, as in BERT
        self.bias = nn.Parameter(torch.zeros(vocab))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return self.norm(F.gelu(F.linear(x, self.dense.weight[:, :d], self.dense.bias)))

    def forward(self, h: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        d = h.shape[-1] if dim is None else dim
        return self.decoder(self.transform(h[..., :d])) + self.bias

    def load_from_hf(self, state: dict[str, torch.Tensor]) -> bool:
        """Copy the MLM head of a masked-LM checkpoint when it has one: BERT's ``cls.predictions.*``
        or RoBERTa/MPNet's ``lm_head.*``. False when neither is complete."""
        ours = [self.dense.weight, self.dense.bias, self.norm.weight, self.norm.bias, self.bias]
        for names in (["cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                       "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
                       "cls.predictions.bias"],
                      ["lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
                       "lm_head.layer_norm.bias", "lm_head.bias"]):
            if all(n in state and state[n].shape == p.shape for n, p in zip(names, ours)):
                with torch.no_grad():
                    for n, p in zip(names, ours):
                        p.copy_(state[n])
                return True
        return False


class PairDecoder(nn.Module):
    """One transformer layer that sees the heavily masked input's embeddings with position 0
    replaced by ``first`` [batch, hidden] (a pair's sub-vector after the head's sliced transform),
    and nothing else from the encoder."""

    def __init__(self, layer: nn.Module, embeddings: nn.Module, hidden: int):
        super().__init__()
        self.layer = layer
        self.embeddings = embeddings  # shared with the encoder (token + position embeddings)
        self.hidden = hidden

    def forward(self, first: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if first.shape[-1] != self.hidden:
            raise AdaError(f"decoder input width {first.shape[-1]}: the first position needs the hidden width {self.hidden}")
        emb = self.embeddings(input_ids=input_ids)
        x = torch.cat([first[:, None, :].to(emb.dtype), emb[:, 1:]], dim=1)
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        out = self.layer(x, attention_mask=ext)
        return out[0] if isinstance(out, tuple) else out


def word_groups(input_ids: torch.Tensor, tokenizer, special: torch.Tensor) -> torch.Tensor:
    """Per token the index of the word it belongs to (-1 for special tokens and padding), for
    whole-word masking. Word pieces are recognised by WordPiece's ``##`` prefix (BERT, MPNet) or,
    for SentencePiece vocabularies, by the absence of the ``▁`` word-start mark."""
    toks = [tokenizer.convert_ids_to_tokens(row) for row in input_ids.tolist()]
    sp = any(t.startswith("▁") for row in toks for t in row)
    groups = torch.full(input_ids.shape, -1, dtype=torch.long)
    for b, row in enumerate(toks):
        g = -1
        for i, t in enumerate(row):
            if special[b, i]:
                continue
            cont = (not t.startswith("▁")) if sp else t.startswith("##")
            if not cont or g < 0:
                g += 1
            groups[b, i] = g
    return groups


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, rate: float, tokenizer,
                generator: torch.Generator, special: torch.Tensor,
                groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of ``rate`` of the real tokens (80% [MASK], 10% random, 10% kept), or of
    ``rate`` of the words when ``groups`` (from :func:`word_groups`) is given: every piece of a
    chosen word is masked. Returns (masked ids, labels with -100 where nothing is predicted)."""
    real = attention_mask.bool() & ~special
    if groups is None:
        prob = torch.full(input_ids.shape, rate)
        prob[~real] = 0.0
        chosen = torch.bernoulli(prob, generator=generator).bool()
    else:
        n_words = int(groups.max()) + 1 if groups.numel() else 0
        pick = torch.bernoulli(torch.full((input_ids.shape[0], max(n_words, 1)), rate), generator=generator).bool()
        chosen = real & (groups >= 0) & torch.gather(pick, 1, groups.clamp(min=0))
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    ids = input_ids.clone()
    r = torch.rand(input_ids.shape, generator=generator)
    ids[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)
    ids[rand_pos] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[rand_pos]
    return ids, labels


@dataclass
class PretrainConfig:
    model: str = "minilm"
    data: list[str] = field(default_factory=list)  # BEIR corpora, collection.tsv[.gz], .txt files or Hub datasets
    output: str = "checkpoints/smae"
    pairs: list[str] | None = None  # default: the ladder
    steps: int = 100
    batch_size: int = 16
    max_length: int = 128
    pack: bool = False  # concatenate texts into full max_length blocks instead of truncating each
    whole_word_mask: bool = False
    encoder_mask: float = 0.2
    decoder_mask: float = 0.4
    lr: float = 5e-5
    warmup: float = 0.1
    seed: int = 42
    device: str | None = None
    save_every: int = 50

    def __post_init__(self):
        check_types(self, "pretraining")
        check_at_least(self, "pretraining", {"steps": 1, "batch_size": 1, "max_length": 1, "encoder_mask": 0,
                                             "decoder_mask": 0, "lr": 0, "warmup": 0, "save_every": 1}, above=("lr",))

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
        return load_config(cls, path, overrides, "pretraining", lists=("data", "pairs"),
                           paths={"model": False, "data": False, "output": True})


def _hub_texts(name: str):
    """A Hub dataset streamed with `datasets` (``name`` or ``name:split``); title + text, or text."""
    try:
        from datasets import load_dataset
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise AdaError("reading a Hub dataset needs the `datasets` package") from e
    repo, _, split = name.partition(":")
    try:
        ds = load_dataset(repo, split=split or "train", streaming=True)
    except Exception as e:
        raise AdaError(f"pretraining data {name!r} is neither a local file/folder nor a loadable Hub dataset: {e}") from e
    for row in ds:
        text = row.get("text") or row.get("contents") or row.get("passage") or ""
        title = row.get("title") or ""
        if text or title:
            yield f"{title} {text}".strip()


def _source_texts(src: str):
    from adaretrieve.data.readers import doc_text, iter_corpus

    p = Path(src)
    if not p.exists():
        yield from _hub_texts(src)
    elif p.suffix == ".txt":
        with open(p, encoding="utf-8") as f:
            yield from (line.strip() for line in f if line.strip())
    else:
        yield from (doc_text(d.title, d.text) for d in iter_corpus(p))


def iter_texts(sources: list[str]):
    """Texts from BEIR corpora / MS MARCO collections (title + text), plain .txt lines or Hub
    datasets (streamed). Sources are interleaved one text at a time, each restarting when it ends,
    so a short run still sees all of them."""
    if not sources:
        raise AdaError("pretraining needs data: BEIR folders, collection.tsv[.gz], .txt files or Hub dataset ids")
    its = [_source_texts(s) for s in sources]
    while True:
        for i, src in enumerate(sources):
            text = next(its[i], None)
            if text is None:  # this source ended: start it again
                its[i] = _source_texts(src)
                text = next(its[i], None)
                if text is None:
                    raise AdaError(f"pretraining data {src} has no text")
            yield text


def iter_batches(cfg: PretrainConfig, tok):
    """Token batches (input_ids, attention_mask, special_tokens_mask), in a fixed order.

    Truncation: one text per row, padded to the longest. Packing: texts' tokens joined with [SEP]
    and cut into rows of exactly ``max_length`` tokens ([CLS] ... [SEP]), so no compute is spent on
    padding."""
    texts = iter_texts(cfg.data)
    if not cfg.pack:
        while True:
            b = tok([next(texts) for _ in range(cfg.batch_size)], padding=True, truncation=True,
                    max_length=cfg.max_length, return_tensors="pt", return_special_tokens_mask=True)
            yield b["input_ids"], b["attention_mask"], b["special_tokens_mask"].bool()
    body = cfg.max_length - 2
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    if cls_id is None or sep_id is None:
        raise AdaError("packing needs a tokenizer with [CLS] and [SEP] tokens; set pack=false")
    buf: list[int] = []
    while True:
        while len(buf) < body * cfg.batch_size:
            buf += tok(next(texts), add_special_tokens=False, verbose=False)["input_ids"] + [sep_id]
        rows = [[cls_id] + buf[i * body:(i + 1) * body] + [sep_id] for i in range(cfg.batch_size)]
        buf = buf[body * cfg.batch_size:]
        ids = torch.tensor(rows)
        special = (ids == cls_id) | (ids == sep_id)
        yield ids, torch.ones_like(ids), special


class SMAE(nn.Module):
    def __init__(self, enc: Encoder, pairs: list[Size]):
        super().__init__()
        self.enc = enc
        self.model = enc.model
        cfg = self.model.config
        emb = self.model.get_input_embeddings()
        self.head = SlicedMLMHead(cfg.hidden_size, cfg.vocab_size, emb, getattr(cfg, "layer_norm_eps", 1e-12))
        self.decoder = PairDecoder(copy.deepcopy(enc.layers[-1]), self.model.embeddings, cfg.hidden_size)
        self.pairs = pairs

    def _mlm(self, h: torch.Tensor, labels: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        # logits only where something is predicted: the vocabulary projection dominates the cost
        sel = labels != -100
        if not bool(sel.any()):
            return h.sum() * 0.0
        return F.cross_entropy(self.head(h[sel], dim), labels[sel])

    def losses(self, ids, mask, enc_ids, enc_labels, dec_ids, dec_labels) -> tuple[torch.Tensor, dict]:
        depth = max(p.layer for p in self.pairs)
        hs = self.enc.hidden_states({"input_ids": enc_ids, "attention_mask": mask}, depth)
        total, logs = 0.0, {}
        for p in self.pairs:
            h = hs[p.layer]
            mlm = self._mlm(h, enc_labels, p.dim)
            first = self.head.transform(self.enc.pool(h, mask)[:, : p.dim])  # [batch, dim] -> [batch, hidden]
            mae = self._mlm(self.decoder(first, dec_ids, mask), dec_labels)
            pair = (mlm + mae) / 2
            total = total + pair
            logs[str(p)] = float(pair.detach())
        return total / len(self.pairs), logs


# settings that do not change what a run computes: a checkpoint resumes under other values of these
RESUME_MAY_DIFFER = {"output", "save_every", "device"}


def pretrain(cfg: PretrainConfig, progress: bool = True, resume: bool = True) -> dict:
    """Run SMAE; one process, or several under ``torchrun`` (each rank takes its own batches,
    gradients are averaged, rank 0 writes checkpoints). Resumes from ``output/checkpoint``."""
    from adaretrieve.training.losses import default_ladder
    from adaretrieve.training.trainer import rank_and_world

    rank, world = rank_and_world()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output)
    ck = out / "checkpoint"
    start = ck if resume and (ck / "state.pt").exists() else None
    if start is not None:
        check_resume(load_state(ck / "state.pt").get("config"), asdict(cfg), RESUME_MAY_DIFFER, ck)
    device = cfg.device or (f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else None)
    enc = Encoder(start or cfg.model, device=device)
    if enc.tokenizer.mask_token_id is None:
        raise AdaError(f"model {cfg.model!r} has no [MASK] token: SMAE needs a masked-LM tokenizer")
    pairs = enc.check_sizes(cfg.pairs, "pretraining pair") if cfg.pairs else default_ladder(enc.n_layers, enc.hidden_size)
    smae = SMAE(enc, pairs).to(enc.device)
    if start is None:
        try:
            from safetensors.torch import load_file

            files = list(Path(enc.path).glob("*.safetensors"))
            state = {k: v for f in files for k, v in load_file(f).items()}
            loaded = smae.head.load_from_hf(state)
        except Exception:
            loaded = False
        log.info("MLM head %s", "loaded from the checkpoint" if loaded else "initialised (tied to the word embeddings)")
    opt = torch.optim.AdamW([p for p in smae.parameters() if p.requires_grad], lr=cfg.lr)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    step = 0
    if start is not None:
        st = load_state(ck / "state.pt")
        smae.head.load_state_dict(st["head"])
        smae.decoder.layer.load_state_dict(st["decoder"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        restore_rng(st.get("rng", [{"torch": st.get("torch_rng")}]), rank)  # dropout draws continue where they stopped
        step = st["step"]
    tok = enc.tokenizer
    batches = iter_batches(cfg, tok)
    for _ in range(step * world):  # skip what earlier runs consumed
        next(batches)
    smae.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="smae", disable=not progress or rank != 0)
    t0, tokens, first_loss, last, start_step = time.perf_counter(), 0, None, None, step
    if rank == 0:
        mark_incomplete(out)  # until the final model is written whole
    while step < cfg.steps:
        for r in range(world):  # every rank reads the same stream and keeps its own share
            b = next(batches)
            if r == rank:
                ids, mask, special = b
        # masks depend on the step and rank only, so a resumed run draws what an uninterrupted one would
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        groups = word_groups(ids, tok, special) if cfg.whole_word_mask else None
        enc_ids, enc_labels = mask_tokens(ids, mask, cfg.encoder_mask, tok, gen, special, groups)
        dec_ids, dec_labels = mask_tokens(ids, mask, cfg.decoder_mask, tok, gen, special, groups)
        dev = enc.device
        loss, logs = smae.losses(ids.to(dev), mask.to(dev), enc_ids.to(dev), enc_labels.to(dev), dec_ids.to(dev), dec_labels.to(dev))
        last = float(loss.detach())
        bad = not math.isfinite(last)
        if world > 1:  # each rank has its own loss: all stop together, or the others would wait in all_reduce
            flag = torch.tensor([float(bad)], device=dev)
            torch.distributed.all_reduce(flag)
            bad = bool(flag.item())
        if bad:  # before any step: the weights stay good
            what = str(last) if not math.isfinite(last) else "non-finite on another rank"
            raise AdaError(f"SMAE loss became {what} at step {step + 1}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            for p in smae.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        torch.nn.utils.clip_grad_norm_(smae.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        tokens += int(mask.sum())
        first_loss = first_loss if first_loss is not None else last
        bar.update(1)
        bar.set_postfix(loss=f"{last:.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            rngs = rng_states(rank, world)  # collective: every rank's state goes into the checkpoint
            if rank == 0:
                _save(smae, enc, ck, opt, sched, step, rngs, asdict(cfg))
        if world > 1:
            torch.distributed.barrier()
    bar.close()
    secs = time.perf_counter() - t0
    summary = {"steps": cfg.steps, "steps_this_run": step - start_step, "first_loss": first_loss, "final_loss": last,
               "seconds": round(secs, 1), "tokens_per_second": round(tokens * world / max(secs, 1e-9), 1),
               "world_size": world, "pairs": [str(p) for p in pairs]}
    smae.eval()
    if rank == 0:
        enc.model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "adaretrieve.json").write_text(json.dumps({
            "pooling": enc.pooling, "normalize": enc.normalize, "max_length": enc.max_length, "pretraining": "smae",
            "config": asdict(cfg), "summary": summary, "adaretrieve": __version__}, indent=2) + "\n")
        mark_complete(out)
    if world > 1:
        torch.distributed.barrier()
    global _last_model
    _last_model = smae  # for tests that compare ranks
    return summary


_last_model = None


def _save(smae: SMAE, enc: Encoder, ck: Path, opt, sched, step: int, rngs: list, config: dict | None = None) -> None:
    tmp = ck.with_name(ck.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(tmp)
    enc.tokenizer.save_pretrained(tmp)
    (tmp / "adaretrieve.json").write_text(json.dumps({"pooling": enc.pooling, "normalize": enc.normalize,
                                                      "max_length": enc.max_length}))
    torch.save({"head": smae.head.state_dict(), "decoder": smae.decoder.layer.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": rngs, "step": step, "config": config}, tmp / "state.pt")
    replace_dir(tmp, ck)  # the old checkpoint goes only once the new one stands
