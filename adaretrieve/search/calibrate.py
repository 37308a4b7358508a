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
from adaretrieve.search.cascade import StopRule, check_cascade, gap, stage_sizes
from adaretrieve.search.plan import FunnelPlan
from adaretrieve.search.twostage import funnel

RULE_FORMAT = 1
RULE_KIND = "adaretrieve-stop-rule"


def stage_rankings(plan: FunnelPlan, index, sources: dict, normalize: bool, queries: dict, params=None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores, rows) after every stage of ``plan`` for every query (full-depth query vectors
    ``{size: [n, dim]}``): what a cascade that never stops sees, stage by stage."""
    check_cascade(plan)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    funnel(plan, index, queries, sources, normalize, params, record=out)
    return out


def overlap_at(rows_a: np.ndarray, rows_b: np.ndarray, m: int = 10) -> np.ndarray:
    """[n] |top m of a & top m of b| / m, per query (rows -1 are no document)."""
    out = np.empty(len(rows_a))
    for i, (a, b) in enumerate(zip(rows_a, rows_b)):
        sa, sb = {int(x) for x in a[:m] if x >= 0}, {int(x) for x in b[:m] if x >= 0}
        out[i] = len(sa & sb) / max(1, min(m, len(sb)))
    return out


@dataclass
class Fit:
    rule: StopRule
    stop_share: list[float]  # share of the queries answered at each stage (the last: those that go all the way)
    mean_layers: float
    full_layers: int
    overlap: float  # mean overlap@10 with the full cascade, as fitted

    def to_dict(self) -> dict:
        return {"stop_share": [round(x, 4) for x in self.stop_share], "mean_layers": round(self.mean_layers, 4),
                "full_layers": self.full_layers, "encoder_cost": round(self.mean_layers / self.full_layers, 4),
                "overlap_at_10": round(self.overlap, 4)}


def fit_stop_rule(plan: FunnelPlan, rankings: list[tuple[np.ndarray, np.ndarray]], target: float, rank: int = 10,
                  m: int = 10) -> Fit:
    """The rule that stops the most queries, shallowest first, while the mean overlap@``m`` with the
    full cascade's top ``m`` over all queries stays >= ``target`` (0 < target <= 1)."""
    if not 0 < target <= 1:
        raise AdaError(f"target overlap {target} must be in (0, 1]")
    stages = stage_sizes(plan)
    n = len(rankings[0][0])
    final_rows = rankings[-1][1]
    budget = (1.0 - target) * n  # overlap that may be lost, summed over queries
    active = np.ones(n, dtype=bool)
    exit_at = np.full(n, len(stages) - 1)
    thresholds: list[float | None] = []
    for s in range(len(stages) - 1):
        scores, rows = rankings[s]
        g = gap(scores, rank)
        loss = 1.0 - overlap_at(rows, final_rows, m)
        idx = np.flatnonzero(active)
        order = idx[np.argsort(-g[idx], kind="stable")]
        spent = np.cumsum(loss[order])
        fits = np.flatnonzero(spent <= budget + 1e-9)
        count = int(fits[-1]) + 1 if len(fits) else 0
        while count and count < len(order) and g[order[count]] == g[order[count - 1]]:
            count -= 1  # a threshold cannot split queries with the same gap
        if count == 0:
            thresholds.append(None)
            continue
        t = float(g[order[count - 1]])
        stop = order[:count]
        budget -= float(spent[count - 1])
        active[stop] = False
        exit_at[stop] = s
        thresholds.append(t)
    while thresholds and thresholds[-1] is None:
        thresholds.pop()
    rule = StopRule(tuple(thresholds), rank=rank)
    layers = np.array([stages[e][0].layer for e in exit_at])
    ov = np.ones(n)
    for s in range(len(stages) - 1):
        sel = exit_at == s
        ov[sel] = overlap_at(rankings[s][1][sel], final_rows[sel], m)
    share = [float(np.mean(exit_at == s)) for s in range(len(stages))]
    return Fit(rule, share, float(layers.mean()), stages[-1][0].layer, float(ov.mean()))


def write_stop_rule(path: str | Path, fit: Fit, plan: FunnelPlan, manifest, target: float, fitted_on: dict) -> dict:
    doc = {"format": RULE_FORMAT, "kind": RULE_KIND, "plan": plan.describe(), "rule": fit.rule.to_dict(),
           "target": {"overlap_at_10": target}, "index": {"generation": manifest.generation,
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
