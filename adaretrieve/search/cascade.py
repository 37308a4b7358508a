"""Adaptive depth: each query stops at the stage whose answer it can trust (issue 25).

A cascade runs a ``FunnelPlan`` stage by stage. After each stage but the last, a ``StopRule``
looks at each query's own scores at that stage (no labels) and decides whether the next stages can
still change its top; a query that stops is answered from the stage it reached (its candidates
ranked at that stage's size), the others go on, and only they pay for the deeper layers: the
caller's ``encode_more(rows, sizes)`` continues their query encoding (``Encoder.resume``) instead
of encoding them again. With ``StopRule.never()`` the results are the funnel's exactly; with
``StopRule.always(0)`` they are the single-stage search at the shortlist size.

Search stays torch-free: encoding is the caller's callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.search.plan import FunnelPlan
from adaretrieve.search.twostage import add_time, deep_candidates, exact_search, rerank_candidates
from adaretrieve.sizes import Size

FEATURES = ("gap", "gap2", "gap5", "top1", "agree", "same_top1")
"""What a rule may read of a query at a stage (its own scores and lists, no labels): ``gap`` the best
score minus the ``rank``-th best; ``gap2`` / ``gap5`` the best minus the 2nd / 5th; ``top1`` the best
score; ``agree`` the share of this stage's top 10 in the previous stage's top 10 (0 at the shortlist,
which has none); ``same_top1`` 1 when both stages rank the same document first."""


def features(scores: np.ndarray, rows: np.ndarray, prev_rows: np.ndarray | None, rank: int = 10) -> np.ndarray:
    """[n, len(FEATURES)] the ``FEATURES`` of each query at a stage: ``scores`` / ``rows`` [n, k] of
    this stage (best first, -inf / -1 past the end), ``prev_rows`` the previous stage's (None at the shortlist)."""
    n = len(scores)
    out = np.zeros((n, len(FEATURES)), dtype=np.float64)
    if n == 0 or scores.shape[1] == 0:
        return out
    out[:, 0] = gap(scores, rank)
    out[:, 1] = gap(scores, 2)
    out[:, 2] = gap(scores, 5)
    out[:, 3] = scores[:, 0]
    if prev_rows is not None and prev_rows.shape[1]:
        for i, (a, b) in enumerate(zip(rows, prev_rows)):
            sa, sb = {int(x) for x in a[:10] if x >= 0}, {int(x) for x in b[:10] if x >= 0}
            out[i, 4] = len(sa & sb) / max(1, min(10, len(sb)))
        out[:, 5] = (rows[:, 0] == prev_rows[:, 0]) & (rows[:, 0] >= 0)
    return out


@dataclass(frozen=True)
class StopRule:
    """Stop a query after exit stage ``i`` (0 = the shortlist) when its confidence there is at least
    ``thresholds[i]`` (None: never stop there). The confidence is the gap between its best score and
    its ``rank``-th best (a wide gap: the top is settled), or, where ``weights[i]`` is given, the
    linear score ``weights[i] . [FEATURES..., 1]`` of the query's own scores and lists at that stage
    (``features``). It reads nothing but the query's own scores and rows."""

    thresholds: tuple[float | None, ...]
    rank: int = 10
    weights: tuple[tuple[float, ...] | None, ...] = ()

    def __post_init__(self):
        if self.rank < 2:
            raise AdaError(f"stop rule rank {self.rank} must be at least 2 (a gap between two scores)")
        for w in self.weights:
            if w is not None and len(w) != len(FEATURES) + 1:
                raise AdaError(f"stop rule weights {list(w)[:8]} should be one per feature {FEATURES} and a constant")

    @classmethod
    def never(cls) -> StopRule:
        return cls(())

    @classmethod
    def always(cls, stage: int) -> StopRule:
        """Every query stops after exit stage ``stage`` (a threshold no gap is below)."""
        return cls(tuple([None] * stage + [-np.inf]))

    def linear(self, stage: int) -> bool:
        return stage < len(self.weights) and self.weights[stage] is not None

    def confidence(self, stage: int, scores: np.ndarray, rows: np.ndarray | None = None,
                   prev_rows: np.ndarray | None = None) -> np.ndarray:
        """[n] each query's confidence after ``stage`` (see the class doc)."""
        if not self.linear(stage):
            return gap(scores, self.rank)
        if rows is None:
            raise AdaError(f"the rule's confidence at stage {stage} reads the candidate rows too")
        f = features(scores, rows, prev_rows, self.rank)
        w = np.asarray(self.weights[stage], dtype=np.float64)
        return f @ w[:-1] + w[-1]

    def stops(self, stage: int, scores: np.ndarray, rows: np.ndarray | None = None,
              prev_rows: np.ndarray | None = None) -> np.ndarray:
        """[n] bool: which queries of ``scores`` [n, k] (best first, -inf past the end; ``rows`` and the
        previous stage's ``prev_rows`` for a linear rule) stop after ``stage``."""
        t = self.thresholds[stage] if stage < len(self.thresholds) else None
        if t is None:
            return np.zeros(len(scores), dtype=bool)
        return self.confidence(stage, scores, rows, prev_rows) >= t

    def to_dict(self) -> dict:
        d = {"thresholds": [None if t is None else float(t) for t in self.thresholds], "rank": self.rank}
        if any(w is not None for w in self.weights):
            d["features"] = list(FEATURES)
            d["weights"] = [None if w is None else [float(x) for x in w] for w in self.weights]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StopRule:
        weights = d.get("weights") or []
        if weights and list(d.get("features", [])) != list(FEATURES):
            raise AdaError(f"the rule reads features {d.get('features')}, this version knows {list(FEATURES)}")
        return cls(tuple(None if t is None else float(t) for t in d["thresholds"]), int(d.get("rank", 10)),
                   tuple(None if w is None else tuple(float(x) for x in w) for w in weights))


def gap(scores: np.ndarray, rank: int) -> np.ndarray:
    """[n] the best score minus the ``rank``-th best (the last finite one when fewer), per query."""
    if scores.shape[1] == 0:
        return np.zeros(len(scores), dtype=np.float32)
    finite = np.isfinite(scores)
    last = np.clip(np.minimum(rank, finite.sum(1)) - 1, 0, None)
    return scores[:, 0] - scores[np.arange(len(scores)), last]


@dataclass
class CascadeResult:
    scores: np.ndarray  # [n, <= top] best first
    rows: np.ndarray  # [n, <= top], -1 past the end
    exit_stage: np.ndarray  # [n] the stage each query was answered from (0 = the shortlist)
    layers: np.ndarray  # [n] encoder layers each query ran
    timings: dict = field(default_factory=dict)


def stage_sizes(plan: FunnelPlan) -> list[tuple[Size, int]]:
    """``[(size, k), ...]`` of every stage in order: the shortlist, each ``then``, the rerank (k = top)."""
    return [(plan.shortlist, plan.k), *plan.then, *([(plan.rerank, plan.top)] if plan.rerank else [])]


def check_cascade(plan: FunnelPlan) -> list[tuple[Size, int]]:
    """The stages of ``plan``; AdaError unless each runs no shallower than the one before."""
    stages = stage_sizes(plan)
    for (a, _), (b, _) in zip(stages, stages[1:]):
        if b.layer < a.layer:
            raise AdaError(f"a cascade runs deeper stage by stage: {b} after {a}")
    return stages


def cascade(plan: FunnelPlan, rule: StopRule, index, sources: dict, normalize: bool, first: dict[Size, np.ndarray],
            encode_more: Callable[[np.ndarray, Sequence[Size]], dict[Size, np.ndarray]], params=None,
            timings: dict | None = None, deep=None,
            on_exit: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None) -> CascadeResult:
    """Run ``plan`` stage by stage, stopping each query where ``rule`` says (see the module doc).
    ``first``: query vectors ``{size: [n, dim]}`` of the shortlist size (and any other size of that
    depth); ``encode_more(rows, sizes)`` returns the vectors of ``sizes`` for the queries ``rows``
    (positions), continuing their encoding deeper. Stages must run no shallower than the one before.
    ``deep``: ``(index, params)`` of the shortlist over the rerank size, for a plan with ``deep_k``: the
    queries that reach the last stage add its top ``deep_k`` to their candidates (``funnel`` does the same).
    ``on_exit(stage, positions, scores, rows)``, when given, is called as queries are answered, before
    the next stage is encoded (a server answers them then): their positions [m] and their final
    (scores, rows) [m, w] best first, -1 rows past the end (the result trims those columns)."""
    stages = check_cascade(plan)
    q0 = first[plan.shortlist]
    n = len(q0)
    t0 = time.perf_counter()
    scores, cand = exact_search(index, q0, plan.k, params)
    add_time(timings, "shortlist", time.perf_counter() - t0)
    top = plan.top
    out_s = np.full((n, min(top, scores.shape[1] + (plan.deep_k or 0))), -np.inf, dtype=np.float32)
    out_r = np.full(out_s.shape, -1, dtype=np.int64)
    exit_stage = np.zeros(n, dtype=np.int64)
    layers = np.full(n, plan.shortlist.layer, dtype=np.int64)
    active = np.arange(n)
    have = {s: v for s, v in first.items()}  # vectors of the active queries, by size, rows as in `active`
    prev = None  # the previous stage's rows of the active queries (a linear rule reads their agreement)
    for i, (size, k) in enumerate(stages[1:], start=0):
        stop = rule.stops(i, scores, cand, prev)
        if stop.any():
            w = min(top, scores.shape[1])
            out_s[active[stop], :w], out_r[active[stop], :w] = scores[stop, :w], cand[stop, :w]
            exit_stage[active[stop]] = i
            if on_exit is not None:
                on_exit(i, active[stop], out_s[active[stop]], out_r[active[stop]])
        keep = ~stop
        active, scores, cand = active[keep], scores[keep], cand[keep]
        prev = cand
        have = {s: v[keep] for s, v in have.items()}
        if not len(active):
            break
        if size not in have:
            t1 = time.perf_counter()
            have.update(encode_more(active, [size]))
            add_time(timings, "encode_more", time.perf_counter() - t1)
        layers[active] = size.layer
        if i == len(stages) - 2:
            cand = deep_candidates(plan, deep, have[size], cand, timings)
        scores, cand = rerank_candidates(have[size], cand, sources[size], size.dim, normalize, k, timings)
    if len(active):
        w = min(top, scores.shape[1])
        out_s[active, :w], out_r[active, :w] = scores[:, :w], cand[:, :w]
        exit_stage[active] = len(stages) - 1
        if on_exit is not None:
            on_exit(len(stages) - 1, active, out_s[active], out_r[active])
    width = int((out_r >= 0).sum(1).max()) if n else 0  # columns some query filled
    return CascadeResult(out_s[:, :width], out_r[:, :width], exit_stage, layers, timings if timings is not None else {})
