"""Adaptive depth (issue 25): with "never stop" a cascade equals the funnel exactly, with "always
stop at the shortlist" it equals single-stage search, and a query that stops runs fewer layers."""

from __future__ import annotations

import numpy as np
import pytest

from adaretrieve.errors import AdaError
from adaretrieve.search.cascade import StopRule, gap
from tests.conftest import make_corpus

TEXTS = ["the cell gene", "cancer risk in patients", "drug dose", "immune therapy of virus infection", "brain heart",
         "protein folding in yeast", "heart attack risk", "gene expression"]


@pytest.fixture(scope="module")
def retriever(tiny_model, tmp_path_factory):
    from adaretrieve import Retriever
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    d = tmp_path_factory.mktemp("cascade")
    build_index(make_corpus(d / "c.jsonl", n=80), Encoder(tiny_model, device="cpu"), d / "ix", ["1x8", "2x16"], "4x32",
                progress=False)
    return Retriever(d / "ix", device="cpu")


def _same(a, b):
    assert [[d for d, _ in h] for h in a] == [[d for d, _ in h] for h in b]
    np.testing.assert_allclose([s for h in a for _, s in h], [s for h in b for _, s in h], atol=1e-5)


@pytest.mark.parametrize("cfg", [dict(shortlist="1x8", k=40, rerank="4x32", top=10),
                                 dict(shortlist="1x8", k=50, then=[("2x16", 20)], rerank="4x32", top=5)])
def test_never_stopping_equals_the_funnel(retriever, cfg):
    plan = retriever.plan(**cfg)
    hits, res = retriever.search_adaptive(TEXTS, plan, StopRule.never(), batch_size=3)
    _same(hits, retriever.search(TEXTS, plan=plan, batch_size=3))
    assert (res.layers == 4).all() and (res.exit_stage == plan.stages - 1).all()


def test_always_stopping_at_the_shortlist_equals_single_stage_and_runs_its_layer_only(retriever):
    plan = retriever.plan(shortlist="1x8", k=40, rerank="4x32", top=10)
    calls = []
    layers = retriever.encoder.model.encoder.layer
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=n: calls.append(n)) for n, layer in enumerate(layers)]
    try:
        hits, res = retriever.search_adaptive(TEXTS, plan, StopRule.always(0))
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0] and (res.layers == 1).all() and (res.exit_stage == 0).all()
    _same(hits, retriever.search(TEXTS, shortlist="1x8", rerank="none", top=10))


def test_a_rule_stops_some_queries_and_the_rest_equal_the_funnel(retriever):
    plan = retriever.plan(shortlist="1x8", k=40, then=[("2x16", 20)], rerank="4x32", top=10)
    full = retriever.search(TEXTS, plan=plan)
    qv = retriever.encoder.encode_queries(TEXTS, ["1x8"])
    from adaretrieve.search import exact_search

    g = gap(exact_search(retriever.searcher(plan).index, qv[list(qv)[0]], 40)[0], 10)
    rule = StopRule((float(np.median(g)),), rank=10)  # half the queries stop at the shortlist
    hits, res = retriever.search_adaptive(TEXTS, plan, rule)
    stopped = res.exit_stage == 0
    assert 0 < stopped.sum() < len(TEXTS)
    assert (res.layers[stopped] == 1).all() and (res.layers[~stopped] == 4).all()
    single = retriever.search(TEXTS, shortlist="1x8", rerank="none", top=10)
    for i in range(len(TEXTS)):
        _same([hits[i]], [single[i] if stopped[i] else full[i]])


def test_a_cascade_must_go_deeper_and_rules_round_trip():
    assert StopRule.from_dict(StopRule((0.1, None), rank=5).to_dict()) == StopRule((0.1, None), rank=5)
    with pytest.raises(AdaError, match="at least 2"):
        StopRule((0.1,), rank=1)
    assert gap(np.array([[3.0, 2.0, 1.0, -np.inf]]), 10)[0] == 2.0  # fewer than rank finite scores: the last one


def test_a_cascade_that_goes_shallower_is_refused(retriever):
    plan = retriever.plan(shortlist="2x16", k=40, rerank="1x8", top=10)
    with pytest.raises(AdaError, match="deeper stage by stage"):
        retriever.search_adaptive(TEXTS, plan, StopRule.never())
