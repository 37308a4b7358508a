"""The fine-tuning loop: contrastive loss over (layer, dim) pairs, checkpoints, resume, DDP.

Run as one process (CPU or one GPU) or under ``torchrun``/``accelerate launch`` (several
processes, DDP-style: every rank encodes its own batch, passages are gathered across ranks so all
of them serve as in-batch negatives, gradients are averaged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adaretrieve._version import __version__
from adaretrieve.errors import AdaError
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.modeling.st_format import write_encoder_st_files
from adaretrieve.sizes import Size, parse_sizes
from adaretrieve.training.checkpoint import (
    check_resume,
    gather_object,
    load_state,
    mark_complete,
    mark_incomplete,
    replace_dir,
    restore_rng,
    rng_states,
)
from adaretrieve.training.config import check_at_least, check_types, load_config
from adaretrieve.training.data import BatchSampler, Example, load_beir, load_records
from adaretrieve.training.losses import ALIASES, PairSampler, default_ladder, matryoshka_loss, pair_scores

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str = "minilm"
    loss: str = "starbucks"  # starbucks | 2dmse-paper (= 2dmse) | 2dmse-st | 2dmse-inhouse | mrl | single
    pairs: list[str] | None = None  # default: the ladder for the model's shape
    data: str = ""  # BEIR folder, jsonl/tsv of records, or a Hub dataset id
    split: str = "train"
    negatives: str | None = None  # hard-negative cache from `adaretrieve mine`
    output: str = "checkpoints/run"
    steps: int = 200
    batch_size: int = 16
    n_negatives: int = 1
    lr: float = 2e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    temperature: float | None = None  # default 0.05 for normalised models, 1.0 otherwise
    kl_weight: float = 1.0
    layer_kl_weight: float = 0.0  # sentence-transformers' layer-to-last embedding KL (the 2dmse-st form: 1.0)
    layer_kl_temperature: float = 0.3
    query_max_length: int = 64
    passage_max_length: int = 256
    grad_accum: int = 1
    seed: int = 42
    dtype: str | None = None  # bfloat16/float16 autocast on CUDA (default bfloat16); bfloat16 (or float32) on CPU
    keep_full: float = 0.0  # > 0: a frozen copy of the starting model teaches the full size (and every pair's KL)
    freeze_backbone: bool = False  # train only the adaptor of an adapted model (the full size cannot move)
    gradient_checkpointing: bool = False
    save_every: int = 50
    keep_checkpoints: int = 2
    pooling: str | None = None
    normalize: bool | None = None
    device: str | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        check_types(self, "training")
        check_at_least(self, "training", {"steps": 1, "batch_size": 1, "n_negatives": 0, "lr": 0, "warmup": 0,
                                          "weight_decay": 0, "temperature": 0, "kl_weight": 0, "query_max_length": 1,
                                          "passage_max_length": 1, "grad_accum": 1, "keep_full": 0, "save_every": 1,
                                          "keep_checkpoints": 1}, above=("lr", "temperature"))

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
        return load_config(cls, path, overrides, "training", lists=("pairs",),
                           paths={"model": False, "data": False, "negatives": True, "output": True})


# settings that do not change what a run computes: a checkpoint resumes under other values of these
RESUME_MAY_DIFFER = {"output", "save_every", "keep_checkpoints", "device", "notes", "gradient_checkpointing"}


def rank_and_world() -> tuple[int, int]:
    """This process's (rank, world size): (0, 1) alone; under ``torchrun`` (``WORLD_SIZE`` > 1) the
    process group is initialised on first call (nccl with CUDA, else gloo). Used by ``train`` and
    ``pretrain``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _gather(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Concatenate ``x`` from every rank; this rank's slice keeps its gradient (the others are
    copies), so a loss over the gathered batch backpropagates through this rank's own rows."""
    if world == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


def step_loss(enc: Encoder, teacher: Encoder | None, qb: dict, pb: dict, labels: list[int], step_pairs, layers: list[int],
              full: Size, cfg: TrainConfig, temperature: float, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, dict]:
    """The loss of one step over the GLOBAL batch: every rank's queries and passages are gathered
    (each rank's own rows keep their gradient), so every rank computes the same value, and the sum
    of the ranks' gradients is the gradient of that loss (what one process on the concatenated
    batch computes). Ranks must hold equal numbers of queries and passages."""
    q_layers = {L: _gather(v, rank, world) for L, v in enc.pooled(qb, layers).items()}
    p_local = enc.pooled(pb, layers)
    n_p = next(iter(p_local.values())).shape[0]
    p_layers = {L: _gather(v, rank, world) for L, v in p_local.items()}
    lab = _gather(torch.tensor(labels, device=enc.device) + rank * n_p, rank, world)
    target = tq = tp = None
    if teacher is not None:
        with torch.no_grad():
            tq = _gather(teacher.pooled(qb, [full.layer])[full.layer].float(), rank, world)
            tp = _gather(teacher.pooled(pb, [full.layer])[full.layer].float(), rank, world)
        target = pair_scores(tq, tp, full, enc.normalize, temperature)
    loss, logs = matryoshka_loss(q_layers, p_layers, lab, step_pairs, full, enc.normalize, temperature,
                                 cfg.kl_weight if cfg.loss != "single" else 0.0, target_scores=target, keep_full=cfg.keep_full,
                                 layer_kl_weight=cfg.layer_kl_weight, layer_kl_temperature=cfg.layer_kl_temperature)
    if teacher is not None:
        # the vectors themselves, not only in-batch score distributions: squared distance between
        # the student's and the teacher's full-size vectors, on the score scale
        rep = _vector_drift(q_layers[full.layer], tq, enc.normalize) + _vector_drift(p_layers[full.layer], tp, enc.normalize)
        loss = loss + cfg.keep_full * rep / temperature
        logs["drift"] = float(rep.detach())
    return loss, logs


def load_examples(cfg: TrainConfig) -> list[Example]:
    if not cfg.data:
        raise AdaError("no training data: set data (a BEIR folder, a jsonl/tsv file, or a Hub dataset id)")
    p = Path(cfg.data)
    if p.is_dir():
        return load_beir(p, cfg.split, cfg.negatives)
    return load_records(cfg.data, cfg.split)


def _checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    if not d.exists():
        return []
    return sorted((c for c in d.iterdir() if c.name.startswith("step-") and (c / "state.pt").exists()),
                  key=lambda c: int(c.name.split("-")[1]))


def train(cfg: TrainConfig, progress: bool = True, resume: bool = True) -> dict:
    """Fine-tune ``cfg.model``; writes a Hugging Face folder at ``cfg.output`` and returns a summary."""
    rank, world = rank_and_world()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.output)
    if not resume and _checkpoints(out) and rank == 0:
        log.info("--no-resume: removing the checkpoints of the earlier run in %s", out / "checkpoints")
        shutil.rmtree(out / "checkpoints")
    if world > 1:
        torch.distributed.barrier()
    ckpts = _checkpoints(out) if resume else []
    start_from = ckpts[-1] if ckpts else None
    state = load_state(start_from / "state.pt") if start_from is not None else None
    if state is not None:
        check_resume(state.get("config"), asdict(cfg), RESUME_MAY_DIFFER, start_from)
    # The encoder keeps the model's own max length (saved with the result); training truncates to
    # query_max_length / passage_max_length itself.
    device = cfg.device
    if world > 1 and torch.cuda.is_available() and (device is None or device == "cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"  # one GPU per rank, not all on cuda:0
        torch.cuda.set_device(device)
    enc = Encoder(start_from or cfg.model, pooling=cfg.pooling, normalize=cfg.normalize, device=device)
    full = enc.full_size
    pairs = enc.check_sizes(cfg.pairs, "training pair") if cfg.pairs else default_ladder(enc.n_layers, enc.hidden_size)
    if cfg.loss == "single" and not cfg.pairs:
        raise AdaError("loss 'single' needs pairs: the one size to train, e.g. --set pairs=1x16")
    sampler = PairSampler(cfg.loss, pairs, full, seed=cfg.seed + rank)
    temperature = cfg.temperature or (0.05 if enc.normalize else 1.0)
    examples = load_examples(cfg)  # all data checks happen here, before any training step
    batches = BatchSampler(examples, cfg.batch_size, cfg.n_negatives, seed=cfg.seed)

    model = enc.model
    model.train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.freeze_backbone:
        if enc.adaptor is None:
            raise AdaError("freeze_backbone needs an adapted model (run `adaretrieve adapt` first): nothing else would train")
        model.requires_grad_(False)
    teacher = None
    if cfg.keep_full > 0 and not cfg.freeze_backbone:
        # the starting model, frozen: its full-size scores are the target the full size must keep
        teacher = Encoder(cfg.model, pooling=enc.pooling, normalize=enc.normalize, device=device)
        teacher.model.requires_grad_(False)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    if enc.adaptor is not None:
        enc.adaptor.train()
        groups.append({"params": list(enc.adaptor.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        pair_rngs = state["pair_rng"] if isinstance(state["pair_rng"], list) else [state["pair_rng"]]
        if rank >= len(pair_rngs):
            raise AdaError(f"{start_from} was written by {len(pair_rngs)} process(es); resume with the same number")
        sampler.rng.setstate(_as_rng_state(pair_rngs[rank]))
        restore_rng(state.get("rng", [{"torch": state.get("torch_rng")}]), rank)
        step = state["step"]
        if rank == 0:
            log.info("resuming from %s (step %d of %d)", start_from, step, cfg.steps)
    if cfg.dtype not in (None, "float32", "bfloat16", "float16"):
        raise AdaError(f"dtype {cfg.dtype!r} is not one of float32, bfloat16, float16")
    amp = None
    if enc.device.type == "cuda":
        amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype or "bfloat16")
    elif cfg.dtype == "bfloat16":
        amp = torch.bfloat16  # CPU autocast: fast on CPUs with AVX512-BF16 / AMX
    elif cfg.dtype == "float16":
        raise AdaError("dtype float16 needs CUDA; on CPU use bfloat16 or float32")
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    depth = sampler.layers_needed()
    if (cfg.kl_weight > 0 and cfg.loss != "single") or cfg.keep_full > 0 or cfg.layer_kl_weight > 0:
        depth = max(depth, full.layer)
    tok = enc.tokenizer
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc=f"train {cfg.loss}", disable=not progress or rank != 0)
    t0, tokens, losses = time.perf_counter(), 0, []
    start_step = step
    if rank == 0:
        mark_incomplete(out)  # until the final model is written whole
    while step < cfg.steps:
        opt.zero_grad(set_to_none=True)
        logs_acc: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            qs, ps, labels = batches.batch((step * cfg.grad_accum + micro) * world + rank)
            qs, ps = enc.tokenizer_texts(enc.queries(qs)), enc.tokenizer_texts(enc.passages(ps))  # the model's prefixes, as search sees them
            qb = tok(qs, padding=True, truncation=True, max_length=cfg.query_max_length, return_tensors="pt").to(enc.device)
            pb = tok(ps, padding=True, truncation=True, max_length=cfg.passage_max_length, return_tensors="pt").to(enc.device)
            tokens += int(qb["attention_mask"].sum() + pb["attention_mask"].sum())
            step_pairs = sampler.step_pairs()
            layers = sorted({s.layer for s, _ in step_pairs}
                            | ({full.layer} if (cfg.kl_weight > 0 or cfg.keep_full > 0 or cfg.layer_kl_weight > 0)
                               and full.layer <= depth else set()))
            ctx = torch.autocast(enc.device.type, dtype=amp) if amp else contextlib.nullcontext()
            with ctx:
                loss, logs = step_loss(enc, teacher, qb, pb, labels, step_pairs, layers, full, cfg, temperature, rank, world)
            if not math.isfinite(float(loss.detach())):  # before any step: the weights stay good
                raise AdaError(f"loss became {float(loss.detach())} at step {step + 1}; lower the learning rate or use float32")
            # every rank holds the same global loss; its gradient reaches only this rank's own
            # slice, so the ranks' gradients sum to the global one: scale by world before averaging
            scaled = loss * world / cfg.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            for k, v in logs.items():
                logs_acc[k] = logs_acc.get(k, 0.0) + v / cfg.grad_accum
        trainable = [p for g in groups for p in g["params"]]
        if world > 1:
            for p in trainable:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix({k: f"{v:.2f}" for k, v in list(logs_acc.items())[:6]})
        if step % cfg.save_every == 0 or step == cfg.steps:
            rngs = rng_states(rank, world)  # collective: every rank's state goes into the checkpoint
            pair_rngs = gather_object(sampler.rng.getstate(), world)
            if rank == 0:
                _save_checkpoint(out, step, enc, opt, sched, pair_rngs, rngs, cfg.keep_checkpoints, asdict(cfg))
        if world > 1:
            torch.distributed.barrier()
    bar.close()
    seconds = time.perf_counter() - t0
    summary = {
        "steps": cfg.steps, "steps_this_run": step - start_step, "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens * world / max(seconds, 1e-9), 1),
        "steps_per_second": round((step - start_step) / max(seconds, 1e-9), 4),
        "final_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "world_size": world, "n_examples": len(examples), "temperature": temperature,
        "pairs": [str(p) for p in pairs], "device": str(enc.device), "loss": sampler.mode,
    }
    if rank == 0:
        _save_final(out, enc, cfg, summary, pairs)
        mark_complete(out)
    if world > 1:
        torch.distributed.barrier()
    global _last_model
    _last_model = model  # for tests that compare ranks
    return summary


_last_model = None


def _vector_drift(student: torch.Tensor, teacher: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Mean squared distance [()] between student and teacher vectors [n, H] (normalised first when
    the model normalises: then it is 2 - 2 cos)."""
    s, t = student.float(), teacher.float()
    if normalize:
        s, t = torch.nn.functional.normalize(s, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    return ((s - t) ** 2).sum(-1).mean()


def _save_model(d: Path, enc: Encoder) -> None:
    enc.model.save_pretrained(d)
    enc.tokenizer.save_pretrained(d)
    if enc.adaptor is not None:  # its backbone hash follows the trained weights
        enc.reset_hash()
        enc.adaptor.meta["backbone_sha256"] = enc.backbone_hash()
        enc.adaptor.save(d)
    meta = {"pooling": enc.pooling, "normalize": enc.normalize, "max_length": enc.max_length,
            **({"query_prefix": enc.query_prefix} if enc.query_prefix else {}),
            **({"passage_prefix": enc.passage_prefix} if enc.passage_prefix else {})}
    (d / "adaretrieve.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_encoder_st_files(d, enc)  # sentence-transformers loads the full size as adaretrieve encodes it


def _as_rng_state(st) -> tuple:
    """random.Random state back from its saved form (weights_only loading gives lists for tuples)."""
    version, internal, gauss = st
    return (int(version), tuple(int(x) for x in internal), gauss)


def _save_checkpoint(out: Path, step: int, enc, opt, sched, pair_rngs: list, rngs: list, keep: int,
                     config: dict | None = None) -> None:
    d = out / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_model(tmp, enc)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "pair_rng": pair_rngs,
                "rng": rngs, "step": step, "config": config}, tmp / "state.pt")
    replace_dir(tmp, d / f"step-{step}")
    for old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _save_final(out: Path, enc: Encoder, cfg: TrainConfig, summary: dict, pairs: list[Size]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    enc.model.eval()
    _save_model(out, enc)
    meta = json.loads((out / "adaretrieve.json").read_text())
    meta.update({"trained_pairs": [str(p) for p in parse_sizes(pairs)], "loss": ALIASES.get(cfg.loss, cfg.loss), "data": cfg.data,
                 "split": cfg.split, "negatives": cfg.negatives, "config": asdict(cfg), "summary": summary,
                 "adaretrieve": __version__, "base_model": cfg.model})
    (out / "adaretrieve.json").write_text(json.dumps(meta, indent=2) + "\n")
