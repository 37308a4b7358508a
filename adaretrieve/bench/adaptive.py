"""Adaptive-depth rows of a bench suite (issue 25): the suite key ``adaptive:``.

An entry names one cascade plan, the unlabelled texts its stop rule is fitted on, and its targets:

    adaptive:
      - {shortlist: 2x64, k: 200, then: [{size: 4x128, k: 50}], rerank: 6x384, deep_k: null,
         fit_queries: ../data/beir/scifact, query_split: train,      # or pseudo_queries: 2000
         measure: ndcg, confidence: linear, targets: [0.99, 0.95]}

For each target the rule is fitted as ``adaretrieve calibrate`` fits it (``Retriever.calibrate``; the
fit texts run every stage once, for all the targets together), and one row searches the suite's
queries with it as ``search --adaptive`` does (``retriever.adaptive_search``), named
``adaptive ndcg:linear 0.99: 2x64 k=200 -> 4x128 k=50 -> 6x384``. The fit reads the fit texts and the
index, never qrels: a split names its queries by the first column of ``qrels/<split>.tsv`` alone
(``data.split_query_ids``), and fit queries that are the suite's own scored ones (same id, same text)
are refused. How the row is timed: ``measure.ResultRow``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from adaretrieve.errors import AdaError
from adaretrieve.search.plan import FunnelPlan, resolve_plan

PLAN_KEYS = ("shortlist", "k", "then", "rerank", "top", "deep_k", "nprobe", "ef_search")
FIT_KEYS = ("fit_queries", "query_split", "pseudo_queries", "measure", "confidence", "targets", "rank")
REQUIRED = ("shortlist", "k", "rerank", "targets")
# the cascade's own stage names, as the bench's stage table names them
STAGE_NAMES = {"encode": "encode_to_shortlist_layer", "encode_more": "encode_deeper"}


def _count(name: str, v, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise AdaError(f"{name} {v!r} should be a whole number of at least {least}")
    return v


@dataclass(frozen=True)
class AdaptiveEntry:
    """One ``adaptive:`` entry, checked: the plan's ``resolve_plan`` arguments, the fit's texts (a
    queries file or BEIR folder, optionally one split of it; or N pseudo-queries from the suite's
    corpus) and design, and the targets (one row each)."""

    plan_args: dict
    targets: tuple[float, ...]
    measure: str = "ndcg"
    confidence: str = "linear"
    rank: int = 10
    fit_queries: str | None = None
    query_split: str | None = None
    pseudo_queries: int | None = None

    @classmethod
    def parse(cls, entry) -> AdaptiveEntry:
        """AdaError in one line naming the first bad value (the plan itself: ``plan``)."""
        from adaretrieve.search.calibrate import check_target

        if not isinstance(entry, dict):
            raise AdaError(f"entry {entry!r:.60} should be a mapping with {', '.join(REQUIRED)} and fit_queries or "
                           "pseudo_queries")
        unknown = set(entry) - set(PLAN_KEYS) - set(FIT_KEYS)
        if unknown:
            raise AdaError(f"unknown keys {sorted(unknown)}; known keys are {sorted(PLAN_KEYS + FIT_KEYS)}")
        missing = [k for k in REQUIRED if entry.get(k) is None]
        if missing:
            raise AdaError(f"missing {missing}: an entry needs {', '.join(REQUIRED)}")
        measure, confidence = entry.get("measure") or "ndcg", entry.get("confidence") or "linear"
        check_target(1.0, measure, confidence)
        targets = entry["targets"]
        targets = [targets] if isinstance(targets, (int, float)) and not isinstance(targets, bool) else targets
        if not isinstance(targets, list) or not targets:
            raise AdaError(f"targets {targets!r} should be a list of numbers in (0, 1] (the mean {measure}@10 to keep; "
                           "one row each)")
        for t in targets:
            check_target(t, measure, confidence)
        if entry.get("then") is not None and not isinstance(entry["then"], list):
            raise AdaError(f"then {entry['then']!r:.60} should be a list of {{size, k}}")
        rank = _count("rank", entry.get("rank", 10), 2)
        fq, pq, split = entry.get("fit_queries"), entry.get("pseudo_queries"), entry.get("query_split")
        if (fq is None) == (pq is None):
            raise AdaError("give the texts to fit the rule on: fit_queries (a queries file or BEIR folder, with "
                           "query_split) or pseudo_queries N, one of them; never the queries the suite scores")
        check_fit_source(fq, split, pq)
        return cls({k: entry[k] for k in PLAN_KEYS if entry.get(k) is not None}, tuple(float(t) for t in targets),
                   measure, confidence, rank, fq, split, pq)

    def plan(self, manifest) -> FunnelPlan:
        """The cascade's plan over ``manifest`` (``resolve_plan``: ``top`` omitted keeps what the last
        stage ranks); AdaError unless it has two stages or more, each no shallower than the one before."""
        from adaretrieve.search.cascade import check_cascade

        a = self.plan_args
        plan = resolve_plan(manifest, a["shortlist"], a["k"], a.get("then") or [], a["rerank"], a.get("top"),
                            a.get("nprobe"), a.get("ef_search"), deep_k=a.get("deep_k"))
        if plan.stages < 2:
            raise AdaError(f"{plan.name}: a cascade needs at least two stages (a rerank or a then stage) to stop between")
        check_cascade(plan)
        return plan

    def fit_texts(self, corpus: str) -> dict[str, str]:
        """``{id: text}`` the rule is fitted on: the fit queries (those the split names, when given), or
        the pseudo-queries drawn from ``corpus`` (``data.pseudo_queries``, deterministic)."""
        from adaretrieve.data import pseudo_queries, read_queries, split_query_ids

        if self.pseudo_queries is not None:
            return {f"pseudo-{i}": t for i, t in enumerate(pseudo_queries(corpus, self.pseudo_queries))}
        qs = read_queries(self.fit_queries)
        if self.query_split is not None:
            ids = split_query_ids(self.fit_queries, self.query_split)
            qs = {q: t for q, t in qs.items() if q in ids}
            if not qs:
                raise AdaError(f"no query of {self.fit_queries} is named in qrels/{self.query_split}.tsv")
        return qs

    def fitted_on(self, corpus: str, n: int) -> dict:
        """What a rule file's ``fitted_on`` says (as ``calibrate`` writes it)."""
        return {"queries": self.fit_queries or corpus, "query_split": self.query_split, "n_queries": n,
                **({"pseudo_queries": self.pseudo_queries} if self.pseudo_queries is not None else {})}


def check_fit_source(fit_queries, query_split=None, pseudo_queries=None) -> None:
    """AdaError unless the fit texts can be read: ``fit_queries`` exists (and its
    ``qrels/<query_split>.tsv`` when a split is named), or ``pseudo_queries`` is a count."""
    if pseudo_queries is not None:
        _count("pseudo_queries", pseudo_queries, 1)
        if query_split is not None:
            raise AdaError(f"query_split {query_split!r} picks queries of fit_queries; pseudo_queries are drawn from "
                           "the corpus")
        return
    if not isinstance(fit_queries, str) or not Path(fit_queries).exists():
        raise AdaError(f"fit_queries {fit_queries} does not exist")
    if query_split is not None:
        if not isinstance(query_split, str) or not query_split.strip():
            raise AdaError(f"query_split {query_split!r} should be the name of a split (train)")
        split = Path(fit_queries) / "qrels" / f"{query_split}.tsv"
        if not split.exists():
            raise AdaError(f"query_split {query_split}: {split} does not exist")


def fit_entry(retriever, entry: AdaptiveEntry, plan: FunnelPlan, corpus: str, scored: dict[str, str] | None = None):
    """(the fit texts ``{id: text}``, one ``calibrate.Fit`` per target) for ``plan``, fitted as
    ``Retriever.calibrate`` fits (the stage rankings made once). ``scored``: ``{qid: text}`` of the
    queries the suite scores; fit texts among them (same id and text) are refused before any fit."""
    texts = entry.fit_texts(corpus)
    same = [q for q, t in texts.items() if scored is not None and scored.get(q) == t]
    if same:
        raise AdaError(f"its fit queries include {len(same)} of the queries the suite scores (e.g. {same[0]!r}): fit on "
                       "another split (query_split) or on pseudo_queries")
    fit_on = list(texts.values())
    rankings = retriever.stage_rankings(fit_on, plan)
    return texts, [retriever.calibrate(fit_on, plan, t, rank=entry.rank, measure=entry.measure,
                                       confidence=entry.confidence, rankings=rankings) for t in entry.targets]


def adaptive_pipelines(entries: list[AdaptiveEntry], reader, enc, scored: dict[str, str], corpus: str) -> list:
    """One ``measure.Pipeline`` per entry and target over the queries ``scored`` (``{qid: text}``, in
    the suite's order): the rule fitted (``fit_entry``), then a cascade over the texts as
    ``search --adaptive`` runs it. Its bytes, cold timing and name follow the plan's dense row."""
    from adaretrieve.retriever import Retriever
    from adaretrieve.search.plan import check_plan_sizes

    r = Retriever.over(reader, enc)
    out = []
    for i, entry in enumerate(entries):
        try:
            plan = entry.plan(reader.manifest)
            check_plan_sizes(enc, plan)
            texts, fits = fit_entry(r, entry, plan, corpus, scored)
        except AdaError as e:
            raise AdaError(f"adaptive[{i}]: {e}") from None
        for target, fit in zip(entry.targets, fits):
            out.append(cascade_pipeline(r, plan, fit, list(scored.values()), {
                "measure": entry.measure, "confidence": entry.confidence, "target": target, "rank": entry.rank,
                "fitted_on": entry.fitted_on(corpus, len(texts))}))
    return out


def cascade_pipeline(retriever, plan: FunnelPlan, fit, texts: list[str], design: dict):
    """The row of ``plan`` searched as a cascade with ``fit``'s rule over ``texts`` (raw query texts:
    the encoder adds its prefix): the plan's dense row (``measure.dense_pipeline``: its bytes, disk and
    cold timing) with the cascade's search, which encodes as it goes."""
    import numpy as np

    from adaretrieve.bench.measure import dense_pipeline
    from adaretrieve.eval import run_from_arrays
    from adaretrieve.retriever import adaptive_search

    reader, enc, searcher = retriever.reader, retriever.encoder, retriever.searcher(plan)
    rule = fit.rule
    full = dense_pipeline(plan, reader)

    def search(rows, q, timings):
        inner = None if timings is None else {}
        res = adaptive_search(enc, searcher, [texts[i] for i in rows], rule, 64, inner)
        for k, v in (inner or {}).items():
            name = STAGE_NAMES.get(k, k)
            timings[name] = timings.get(name, 0.0) + v
        return res

    def row_fields(res) -> dict:
        mean = float(res.layers.mean())
        return {"mean_layers": round(mean, 4), "encoder_cost": round(mean / plan.layers, 4),
                "stop_share": [round(float(np.mean(res.exit_stage == s)), 4) for s in range(plan.stages)],
                "deep_k": plan.deep_k,
                "adaptive": {**design, "rule": rule.to_dict(), "fit": fit.to_dict(), "always_full": full.config}}

    name = f"adaptive {design['measure']}:{design['confidence']} {design['target']:g}: {full.config}"
    return replace(full, config=name, kind="adaptive", search=search,
                   to_run=lambda res, qids: run_from_arrays(qids, res.scores, res.rows, reader.docids),
                   resident=None, search_includes_encoding=True, row_fields=row_fields)


def tune_entry(plan: FunnelPlan, target: float, fit_queries: str | None = None, query_split: str | None = None,
               pseudo_queries: int | None = None) -> dict:
    """The ``adaptive:`` entry ``tune --adaptive`` measures: ``plan`` calibrated at ``target`` with
    ``ndcg`` and ``linear`` (the design ``benchmarks/adaptive.py`` named in advance)."""
    d = plan.describe()
    return {**{k: d[k] for k in PLAN_KEYS if d.get(k) is not None}, "targets": [target], "measure": "ndcg",
            "confidence": "linear", **{k: v for k, v in (("fit_queries", fit_queries), ("query_split", query_split),
                                                            ("pseudo_queries", pseudo_queries)) if v is not None}}


def with_middle_stage(plan: FunnelPlan, manifest) -> FunnelPlan:
    """``plan`` (a shortlist reranked at one size) with a middle stage, where a query can stop halfway:
    the stored float32 Flat shortlist size whose layer is strictly between the shortlist's and the
    rerank's and nearest their middle (the deeper, then the wider, on a tie), keeping a quarter of the shortlist's
    candidates (at least 10, at most all); ``top`` is what that middle stage passes on. The plan itself
    when the index stores no such size (its one exit is after the shortlist)."""
    from adaretrieve.sizes import parse_size

    lo, hi = plan.shortlist.layer, plan.rerank.layer
    middle = [parse_size(e["size"]) for e in manifest.shortlist if e["factory"] == "Flat"]
    middle = [s for s in middle if lo < s.layer < hi]
    if not middle or plan.then:
        return plan
    size = min(middle, key=lambda s: (abs(s.layer - (lo + hi) / 2), -s.layer, -s.dim))
    k = min(plan.k, max(10, plan.k // 4))
    return replace(plan, then=((size, k),), top=min(plan.top, k))
