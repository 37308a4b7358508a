"""Matryoshka losses over (layer, dim) pairs.

Starbucks, 2DMSE, MRL and single-size training share one loss: for every pair chosen this step,
InfoNCE over the pair's truncated vectors, plus a KL term pulling the pair's score distribution
toward the full model's (detached). The modes differ only in ``PairSampler.step_pairs()``: which
pairs are scored and with what weight. One more term is a shared option of the loss, not of a
mode: ``layer_kl_weight``, the sentence-transformers AdaptiveLayerLoss KL between each earlier
layer's embedding and the last layer's (what the ``2dmse-st`` form adds; off by default).

The 2DMSE forms, by name:

- ``2dmse-paper`` (also plain ``2dmse``): the Starbucks paper's 2DMSE baseline, ielab/Starbucks
  ``retrieval/modeling.py`` with ``sub_model_sampling``: each step one earlier ladder layer drawn
  uniformly plus the last layer, each at every dim of the ladder, every term weight 1 (the score
  KL to the full size on every pair but the full one, as for Starbucks).
- ``2dmse-st``: sentence-transformers ``Matryoshka2dLoss`` with its defaults (AdaptiveLayerLoss over
  MatryoshkaLoss): the last layer at one random ladder dim (weight 1), one prior layer drawn from
  every layer below the last at its own random ladder dim, weight 1 / layer (1-based). Its KL is
  the embedding KL (``layer_kl_weight=1``, ``layer_kl_temperature=0.3``), not the score KL: run it
  as published with ``kl_weight=0 layer_kl_weight=1``.
- ``2dmse-inhouse``: this project's earlier three-pair variant: the full size, the last layer at
  one random ladder dim and one random earlier ladder layer at one random dim, weight 1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_sizes

LOSSES = ("starbucks", "2dmse-paper", "2dmse-st", "2dmse-inhouse", "mrl", "single")
ALIASES = {"2dmse": "2dmse-paper"}  # the plain name is the published (Starbucks paper) form


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
    - ``2dmse-paper`` (alias ``2dmse``), ``2dmse-st``, ``2dmse-inhouse``: the 2DMSE forms of the
      module docstring.
    - ``mrl``: the last layer at every dim of the ladder.
    - ``single``: one size (the only pair of the ladder).
    """

    mode: str
    pairs: list[Size]
    full: Size
    seed: int = 0

    def __post_init__(self):
        self.mode = ALIASES.get(self.mode, self.mode)
        if self.mode not in LOSSES:
            names = [*LOSSES, *(f"{a} (= {m})" for a, m in ALIASES.items())]
            raise AdaError(f"loss {self.mode!r} is not one of {', '.join(names)}")
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
        last = self.full.layer
        if self.mode == "2dmse-st":
            # MatryoshkaLoss draws the last layer's dim, AdaptiveLayerLoss a prior layer (0-based
            # index i over layers 1..last-1, weight 1 / (1 + i)), MatryoshkaLoss that layer's dim
            d_last = self.rng.choice(dims)
            chosen = [(Size(last, d_last), 1.0)]
            if last > 1:
                layer = self.rng.randrange(1, last)
                chosen.append((Size(layer, self.rng.choice(dims)), 1.0 / layer))
            return chosen
        earlier = sorted({p.layer for p in self.pairs if p.layer < last})
        if self.mode == "2dmse-paper":
            layers = ([self.rng.choice(earlier)] if earlier else []) + [last]
            return [(Size(layer, d), 1.0) for layer in layers for d in dims]
        chosen = [self.full, Size(last, self.rng.choice(dims))]
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
    layer_kl_weight: float = 0.0,
    layer_kl_temperature: float = 0.3,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over pairs of weight * (InfoNCE + kl_weight * KL(full.detach() || pair)).

    q_layers[L]: pooled queries [n_q, H] after layer L; p_layers[L]: pooled passages [n_p, H]
    (positives and negatives of every query, in-batch negatives included); labels [n_q]: the
    column of each query's positive. Returns the loss and each pair's InfoNCE for logging.

    ``target_scores`` [n_q, n_p] (a frozen teacher's full-size scores, already / temperature)
    replace the student's own full-size scores as the KL target. With ``keep_full`` > 0 the full
    size is trained only to keep the target (keep_full * KL(target || full)), never on labels, so
    it stays where the teacher is while the smaller pairs learn.

    ``layer_kl_weight`` > 0 adds, for every layer L < full.layer among the pairs, sentence-
    transformers AdaptiveLayerLoss's term T * w * KL(softmax(e_last / T) || softmax(e_L / T)): e
    the full-width pooled vectors [n_q + n_p, H] (normalised when ``normalize``), the softmax over
    the H dims, batchmean, the last layer's side not detached (T = ``layer_kl_temperature``).
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
    if layer_kl_weight > 0:
        def emb(layer: int) -> torch.Tensor:
            e = torch.cat([q_layers[layer], p_layers[layer]])
            return F.normalize(e, dim=-1) if normalize else e

        target = F.log_softmax(emb(full.layer) / layer_kl_temperature, -1)
        for layer in sorted({p.layer for p, _ in pairs if p.layer < full.layer}):
            kl = F.kl_div(F.log_softmax(emb(layer) / layer_kl_temperature, -1), target, log_target=True,
                          reduction="batchmean")
            total = total + layer_kl_temperature * layer_kl_weight * kl
            logs["layer_kl"] = logs.get("layer_kl", 0.0) + float(kl.detach())
    return total, logs
