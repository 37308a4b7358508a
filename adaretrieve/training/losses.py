"""Matryoshka losses over (layer, dim) pairs.

Starbucks, 2DMSE, MRL and single-size training share one loss: for every pair chosen this step,
InfoNCE over the pair's truncated vectors, plus a KL term pulling the pair's score distribution
toward the full model's (detached). The modes differ only in ``PairSampler.pairs(step)``: which
pairs are scored and with what weight.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_sizes

LOSSES = ("starbucks", "2dmse", "mrl", "single")


def default_ladder(n_layers: int, hidden: int) -> list[Size]:
    """Six rungs: layers evenly spaced up to the last; dims the full width, then the largest power
    of two below it, halving. For 12x768 this is the paper's 2x32 4x64 6x128 8x256 10x512 12x768;
    for 6x384 (MiniLM) it is 1x16 2x32 3x64 4x128 5x256 6x384."""
    rungs = min(6, n_layers)
    layers = [round(n_layers * (i + 1) / rungs) for i in range(rungs)]
    dims = [hidden]
    p = 1 << (hidden - 1).bit_length() - 1  # largest power of two below hidden (or hidden/2)
    while len(dims) < rungs:
        dims.insert(0, max(1, p))
        p //= 2
    return [Size(layer, dim) for layer, dim in zip(layers, dims)]


@dataclass
class PairSampler:
    """Which (size, weight) pairs a training step scores.

    - ``starbucks``: every pair of the ladder, every step.
    - ``2dmse``: the full size, the last layer at a random dim of the ladder, and a random earlier
      layer of the ladder at a random dim (the 2D Matryoshka baseline).
    - ``mrl``: the last layer at every dim of the ladder.
    - ``single``: one size (the only pair of the ladder).
    """

    mode: str
    pairs: list[Size]
    full: Size
    seed: int = 0

    def __post_init__(self):
        if self.mode not in LOSSES:
            raise AdaError(f"loss {self.mode!r} is not one of {', '.join(LOSSES)}")
        self.pairs = parse_sizes(self.pairs)
        if self.mode == "single" and len(self.pairs) != 1:
            raise AdaError(f"loss 'single' trains exactly one size, got {len(self.pairs)}: {', '.join(map(str, self.pairs))}")
        self.rng = random.Random(self.seed)

    def step_pairs(self) -> list[tuple[Size, float]]:
        if self.mode in ("starbucks", "single"):
            return [(p, 1.0) for p in self.pairs]
        dims = sorted({p.dim for p in self.pairs})
        if self.mode == "mrl":
            return [(Size(self.full.layer, d), 1.0) for d in dims]
        earlier = sorted({p.layer for p in self.pairs if p.layer < self.full.layer})
        chosen = [self.full, Size(self.full.layer, self.rng.choice(dims))]
        if earlier:
            chosen.append(Size(self.rng.choice(earlier), self.rng.choice(dims)))
        return [(s, 1.0) for s in dict.fromkeys(chosen)]

    def layers_needed(self) -> int:
        """Deepest layer any step can need (the forward pass stops there)."""
        if self.mode in ("starbucks", "single"):
            return max(max(p.layer for p in self.pairs), self.full.layer if self.mode == "starbucks" else 0)
        return self.full.layer


def _cut(x: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
    x = x[:, :dim]
    return F.normalize(x, dim=-1) if normalize else x


def pair_scores(q: torch.Tensor, p: torch.Tensor, size: Size, normalize: bool, temperature: float) -> torch.Tensor:
    """Scores [n_q, n_p] of pooled query vectors q [n_q, H] against passages p [n_p, H] at ``size``."""
    return _cut(q, size.dim, normalize) @ _cut(p, size.dim, normalize).T / temperature


def matryoshka_loss(
    q_layers: dict[int, torch.Tensor],
    p_layers: dict[int, torch.Tensor],
    labels: torch.Tensor,
    pairs: Sequence[tuple[Size, float]],
    full: Size,
    normalize: bool,
    temperature: float,
    kl_weight: float = 1.0,
    target_scores: torch.Tensor | None = None,
    keep_full: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over pairs of weight * (InfoNCE + kl_weight * KL(full.detach() || pair)).

    q_layers[L]: pooled queries [n_q, H] after layer L; p_layers[L]: pooled passages [n_p, H]
    (positives and negatives of every query, in-batch negatives included); labels [n_q]: the
    column of each query's positive. Returns the loss and each pair's InfoNCE for logging.

    ``target_scores`` [n_q, n_p] (a frozen teacher's full-size scores, already / temperature)
    replace the student's own full-size scores as the KL target. With ``keep_full`` > 0 the full
    size is trained only to keep the target (keep_full * KL(target || full)), never on labels, so
    it stays where the teacher is while the smaller pairs learn.
    """
    full_scores = target_scores.detach() if target_scores is not None else None
    if full_scores is None and kl_weight > 0 and full.layer in q_layers:
        full_scores = pair_scores(q_layers[full.layer], p_layers[full.layer], full, normalize, temperature).detach()
    total = q_layers[next(iter(q_layers))].new_zeros(())
    logs = {}
    pairs = list(pairs)
    if keep_full > 0 and full_scores is not None and full not in [p for p, _ in pairs]:
        pairs.append((full, 1.0))
    for size, weight in pairs:
        s = pair_scores(q_layers[size.layer], p_layers[size.layer], size, normalize, temperature)
        ce = F.cross_entropy(s, labels)
        if keep_full > 0 and full_scores is not None and size == full:
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(full_scores, -1), log_target=True, reduction="batchmean")
            total = total + weight * keep_full * kl
            logs[str(size)] = float(ce.detach())
            logs["keep"] = float(kl.detach())
            continue
        term = ce
        if full_scores is not None and size != full:
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(full_scores, -1), log_target=True, reduction="batchmean")
            term = term + kl_weight * kl
        total = total + weight * term
        logs[str(size)] = float(ce.detach())
    return total, logs
