"""Label-free calibration of a cascade's stop rule, and the plain-JSON file that keeps it (issue 25).

The rule is fitted on unlabelled query texts (train-split queries, never the test ones) against the
index's own full-depth ranking: every query runs every stage once, and for each exit stage we know
its score gap there and how much of the final top 10 that stage already has (``overlap@10``).
``fit_stop_rule`` then picks, stage by stage from the shallowest, the lowest gap threshold such that
the mean overlap@10 with the full cascade over all queries stays at or above the target (a query
that goes on to the end counts 1). No qrels are read.

A rule file names the index generation, the model's weights and the plan it was fitted for;
``load_stop_rule`` refuses it (one line) for any other index, generation or model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.search.cascade import StopRule, check_cascade, features, gap, stage_sizes
from adaretrieve.search.plan import FunnelPlan
from adaretrieve.search.twostage import funnel

RULE_FORMAT = 1
RULE_KIND = "adaretrieve-stop-rule"


def stage_rankings(plan: FunnelPlan, index, sources: dict, normalize: bool, queries: dict, params=None, deep=None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores, rows) after every stage of ``plan`` for every query (full-depth query vectors
    ``{size: [n, dim]}``): what a cascade that never stops sees, stage by stage."""
    check_cascade(plan)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    funnel(plan, index, queries, sources, normalize, params, record=out, deep=deep)
    return out


def overlap_at(rows_a: np.ndarray, rows_b: np.ndarray, m: int = 10) -> np.ndarray:
    """[n] |top m of a & top m of b| / m, per query (rows -1 are no document)."""
    out = np.empty(len(rows_a))
    for i, (a, b) in enumerate(zip(rows_a, rows_b)):
        sa, sb = {int(x) for x in a[:m] if x >= 0}, {int(x) for x in b[:m] if x >= 0}
        out[i] = len(sa & sb) / max(1, min(m, len(sb)))
    return out


def pseudo_ndcg_at(rows_a: np.ndarray, rows_b: np.ndarray, m: int = 10) -> np.ndarray:
    """[n] nDCG@m of ranking a judged by ranking b alone: b's r-th document (r = 1..m) has gain m + 1 - r,
    every other document 0 (no labels: the deeper ranking stands in for them). 1 when a's top m is b's in
    order; a swap near the top costs more than one near m, as it does for nDCG against real judgments."""
    disc = 1.0 / np.log2(np.arange(2, m + 2))
    out = np.empty(len(rows_a))
    for i, (a, b) in enumerate(zip(rows_a, rows_b)):
        gain = {int(d): m - r for r, d in enumerate(b[:m]) if d >= 0}
        ideal = sorted(gain.values(), reverse=True)
        idcg = sum(g * disc[r] for r, g in enumerate(ideal))
        dcg = sum(gain.get(int(d), 0) * disc[r] for r, d in enumerate(a[:m]) if d >= 0)
        out[i] = dcg / idcg if idcg > 0 else 1.0
    return out


def identical_at(rows_a: np.ndarray, rows_b: np.ndarray, m: int = 10) -> np.ndarray:
    """[n] 1.0 where a's top m is b's top m in the same order, else 0."""
    return np.array([float([int(x) for x in a[:m]] == [int(x) for x in b[:m]]) for a, b in zip(rows_a, rows_b)])


MEASURES = {"overlap": overlap_at, "ndcg": pseudo_ndcg_at, "identical": identical_at}
"""How a stage's top 10 is scored against the full cascade's, for a target: mean ``overlap`` @10,
mean ``ndcg`` (``pseudo_ndcg_at``: nDCG@10 with the full ranking as the judgments, so ``--target
0.99`` is "expected nDCG@10 loss about 1%"), or the share of queries whose top 10 is ``identical``."""
CONFIDENCES = ("gap", "linear")


def check_target(target: float, measure: str = "overlap", confidence: str = "gap") -> None:
    if measure not in MEASURES:
        raise AdaError(f"unknown target measure {measure!r}: use one of {', '.join(MEASURES)}")
    if confidence not in CONFIDENCES:
        raise AdaError(f"unknown rule confidence {confidence!r}: use one of {', '.join(CONFIDENCES)}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise AdaError(f"target {target!r} must be a number in (0, 1] (the mean {measure}@10 to keep)")


@dataclass
class Fit:
    rule: StopRule
    stop_share: list[float]  # share of the queries answered at each stage (the last: those that go all the way)
    mean_layers: float
    full_layers: int
    overlap: float  # mean overlap@10 with the full cascade, as fitted
    measure: str = "overlap"
    kept: float | None = None  # the target's measure, as fitted

    def to_dict(self) -> dict:
        return {"stop_share": [round(x, 4) for x in self.stop_share], "mean_layers": round(self.mean_layers, 4),
                "full_layers": self.full_layers, "encoder_cost": round(self.mean_layers / self.full_layers, 4),
                "overlap_at_10": round(self.overlap, 4), "measure": self.measure,
                "kept": round(self.overlap if self.kept is None else self.kept, 4)}

    @classmethod
    def from_dict(cls, d: dict, rule: StopRule) -> Fit:
        """The fit ``to_dict`` wrote (its figures as rounded there), with its ``rule``."""
        return cls(rule, list(d["stop_share"]), float(d["mean_layers"]), int(d["full_layers"]), float(d["overlap_at_10"]),
                   d.get("measure", "overlap"), d.get("kept"))


def linear_weights(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Least squares (a small ridge, features standardised) of ``y`` [n] on ``x`` [n, f] and a constant:
    [f + 1] weights in the features' own units, constant last."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-12] = 1.0
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    a = z.T @ z + ridge * len(x) * np.diag([1.0] * x.shape[1] + [0.0])
    w = np.linalg.solve(a, z.T @ y)
    return np.r_[w[:-1] / sd, w[-1] - float((w[:-1] * mu / sd).sum())]


def _greedy(conf: np.ndarray, loss: np.ndarray, active: np.ndarray, budget: float) -> int:
    """How many of the ``active`` queries, most confident first, stop within ``budget`` (summed loss),
    never splitting queries of equal confidence."""
    idx = np.flatnonzero(active)
    order = idx[np.argsort(-conf[idx], kind="stable")]
    spent = np.cumsum(loss[order])
    fits = np.flatnonzero(spent <= budget + 1e-9)
    count = int(fits[-1]) + 1 if len(fits) else 0
    while count and count < len(order) and conf[order[count]] == conf[order[count - 1]]:
        count -= 1
    return count


def fit_stop_rule(plan: FunnelPlan, rankings: list[tuple[np.ndarray, np.ndarray]], target: float, rank: int = 10,
                  m: int = 10, measure: str = "overlap", confidence: str = "gap", grid: int = 64) -> Fit:
    """The rule that saves the most encoder layers while the mean ``measure``@``m`` (``MEASURES``) of
    the answered top ``m`` against the full cascade's, over all queries, stays >= ``target`` (a query
    that goes on to the end counts 1). ``confidence``: ``gap`` (best minus ``rank``-th best score) or
    ``linear`` (least squares of the measure on the stage's ``FEATURES``, fitted on these queries).
    The budget is shared between the exit stages: for each of ``grid`` thresholds at the first exit
    stage (its confidence quantiles, and "none"), the later stages are filled most confident first
    with what is left; the split saving the most layers wins."""
    check_target(target, measure, confidence)
    score = MEASURES[measure]
    stages = stage_sizes(plan)
    n = len(rankings[0][0])
    final_rows = rankings[-1][1]
    exits = len(stages) - 1
    full = stages[-1][0].layer
    loss, conf, weights = [], [], []
    for s in range(exits):
        scores, rows = rankings[s]
        kept = score(rows, final_rows, m)
        loss.append(1.0 - kept)
        if confidence == "linear":
            f = features(scores, rows, rankings[s - 1][1] if s else None, rank)
            w = linear_weights(f, kept)
            weights.append(tuple(float(x) for x in w))
            conf.append(f @ w[:-1] + w[-1])
        else:
            weights.append(None)
            conf.append(gap(scores, rank).astype(np.float64))
    budget = (1.0 - target) * n
    best = None
    first: list = [None]
    if exits:
        g0 = _greedy(conf[0], loss[0], np.ones(n, dtype=bool), budget)  # shallowest first, as far as it goes
        top0 = [float(np.sort(conf[0])[::-1][g0 - 1])] if g0 else []
        first += [*np.unique(np.quantile(conf[0], np.linspace(0, 1, grid + 1))), *top0]
    for t0 in first:
        active = np.ones(n, dtype=bool)
        exit_at = np.full(n, exits)
        left, saved, ths = budget, 0, []
        for s in range(exits):
            if s == 0 and t0 is not None:
                stop = np.flatnonzero(conf[0] >= t0)
                spent = float(loss[0][stop].sum())
                if spent > left + 1e-9:
                    break
                t = float(t0)
            else:
                count = 0 if (s == 0 and t0 is None) else _greedy(conf[s], loss[s], active, left)
                idx = np.flatnonzero(active)
                order = idx[np.argsort(-conf[s][idx], kind="stable")]
                stop = order[:count]
                spent = float(loss[s][stop].sum())
                t = float(conf[s][order[count - 1]]) if count else None
            if t is None or not len(stop):
                ths.append(None)
                continue
            rest = np.setdiff1d(np.flatnonzero(active), stop)
            if len(rest):  # midway to the next query's confidence: float noise of a resumed encode cannot flip it
                below = conf[s][rest][conf[s][rest] < t]
                if len(below):
                    t = float((t + below.max()) / 2) if s or t0 is None else float((conf[s][stop].min() + below.max()) / 2)
            left -= spent
            active[stop] = False
            exit_at[stop] = s
            saved += len(stop) * (full - stages[s][0].layer)
            ths.append(t)
        else:
            if best is None or saved > best[0]:
                best = (saved, ths, exit_at.copy())
    _, ths, exit_at = best
    while ths and ths[-1] is None:
        ths.pop()
    ws = tuple(weights[: len(ths)]) if confidence == "linear" else ()
    rule = StopRule(tuple(ths), rank=rank, weights=ws)
    layers = np.array([stages[e][0].layer for e in exit_at])
    ov, kept = np.ones(n), np.ones(n)
    for s in range(exits):
        sel = exit_at == s
        ov[sel] = overlap_at(rankings[s][1][sel], final_rows[sel], m)
        kept[sel] = score(rankings[s][1][sel], final_rows[sel], m)
    share = [float(np.mean(exit_at == s)) for s in range(len(stages))]
    return Fit(rule, share, float(layers.mean()), full, float(ov.mean()), measure, float(kept.mean()))


def write_stop_rule(path: str | Path, fit: Fit, plan: FunnelPlan, manifest, target: float, fitted_on: dict) -> dict:
    doc = {"format": RULE_FORMAT, "kind": RULE_KIND, "plan": plan.describe(), "rule": fit.rule.to_dict(),
           "target": {"measure": fit.measure, "at": 10, "value": target}, "index": {"generation": manifest.generation,
                                                          "weights_sha256": manifest.model.get("weights_sha256"),
                                                          "n_docs": manifest.n_docs},
           "fitted_on": fitted_on, "fit": fit.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def load_stop_rule(path: str | Path, manifest) -> tuple[StopRule, dict]:
    """The rule in ``path`` and the plan it was fitted for (``describe()`` form); AdaError in one
    line when the file is not a rule file or was fitted for another index generation or model."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdaError(f"stop rule file {p} does not exist (make one with `adaretrieve calibrate`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdaError(f"{p}: not a stop rule file ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != RULE_KIND or doc.get("format") != RULE_FORMAT:
        raise AdaError(f"{p}: not a stop rule file of format {RULE_FORMAT} (make one with `adaretrieve calibrate`)")
    ix = doc.get("index", {})
    if ix.get("weights_sha256") != manifest.model.get("weights_sha256"):
        raise AdaError(f"{p} was fitted for another model (weights {str(ix.get('weights_sha256'))[:12]}); calibrate again")
    if ix.get("generation") != manifest.generation:
        raise AdaError(f"{p} was fitted on index generation {ix.get('generation')}, this index is at "
                       f"{manifest.generation}; calibrate again")
    try:
        rule = StopRule.from_dict(doc["rule"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdaError(f"{p}: its rule does not parse ({e})") from None
    return rule, doc["plan"]
