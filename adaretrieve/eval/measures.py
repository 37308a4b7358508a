"""ir-measures wrapper: measures are values (``nDCG@10``, ``RR(rel=2)@10``, ``R@1000``); one
evaluator is built per qrels and reused for every run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ir_measures

from adaretrieve.errors import AdaError

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100", "R@1000")
# TREC DL: nDCG on the graded labels, RR and recall with grade >= 2 as relevant.
DL_METRICS = ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@100", "R(rel=2)@1000")


def parse_measures(names: Iterable[str]) -> list:
    """ir-measures names (``nDCG@10``, ``RR(rel=2)@10``) or trec_eval names (``ndcg_cut_10``,
    ``recip_rank``, ``recall_100``, ``map``, ``P_10``), comma-separated or in a list. A trec_eval
    name is computed, and reported, as its ir-measures equivalent (``ndcg_cut_10`` is ``nDCG@10``)."""
    out = []
    for name in names:
        for part in str(name).replace(",", " ").split():
            try:
                out.append(ir_measures.parse_measure(part))
                continue
            except Exception:
                pass
            try:
                out.extend(ir_measures.parse_trec_measure(part))
            except Exception:
                raise AdaError(f"metric {part!r} is not an ir-measures measure (e.g. nDCG@10, RR@10, R@1000, "
                               "RR(rel=2)@10) nor a trec_eval one (e.g. ndcg_cut_10, recip_rank, recall_100, map)") from None
    if not out:
        raise AdaError("no metrics given")
    return out


def recall_within_depth(names: Iterable[str], depth: int) -> tuple[list[str], dict[str, str]]:
    """Measure names to compute on runs of at most ``depth`` results per query: a recall cut off
    above the depth (``R@1000`` on a run of 200) equals the recall at the depth, so it is computed
    and named as that (``R@200``); duplicates are dropped. Returns (names, {asked: named as})."""
    out, renamed = [], {}
    for m in parse_measures(names):
        cutoff = m.params.get("cutoff")
        if m.NAME == "R" and cutoff is not None and cutoff > depth:
            renamed[str(m)] = str(m(cutoff=depth))
            m = m(cutoff=depth)
        out.append(str(m))
    return list(dict.fromkeys(out)), renamed


class Evaluator:
    """Mean scores of runs against one qrels ``{qid: {docid: grade}}``, over the judged queries.

    A judged query missing from the run scores 0, as in trec_eval with ``-c``.
    """

    def __init__(self, qrels: Mapping[str, Mapping[str, int]], metrics: Iterable[str] = DEFAULT_METRICS):
        self.metrics = parse_measures(metrics)
        self.names = [str(m) for m in self.metrics]
        self.qrels = {q: dict(d) for q, d in qrels.items()}
        self._ev = ir_measures.evaluator(self.metrics, self.qrels)

    def __call__(self, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        sums = {n: 0.0 for n in self.names}
        for m in self._ev.iter_calc(run):
            sums[str(m.measure)] += float(m.value)
        n = len(self.qrels)
        return {k: v / n for k, v in sums.items()}

    def per_query(self, run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
        """``{qid: {measure: value}}`` for every judged query, in qrels order; a judged query the run
        lacks scores 0 (so the means of these are ``self(run)``)."""
        out = {q: {n: 0.0 for n in self.names} for q in self.qrels}
        for m in self._ev.iter_calc(run):
            if m.query_id in out:
                out[m.query_id][str(m.measure)] = float(m.value)
        return out
