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


def test_calibration_meets_its_target_on_the_queries_it_was_fitted_on_and_reads_no_qrels(retriever, tmp_path,
                                                                                         monkeypatch):
    from adaretrieve import data
    from adaretrieve.search.calibrate import load_stop_rule, overlap_at, write_stop_rule

    def no_qrels(*a, **k):
        raise AssertionError("calibration read qrels")

    monkeypatch.setattr(data, "read_qrels", no_qrels)
    texts = [f"{a} {b}" for a in TEXTS for b in ("risk", "gene", "dose")]
    plan = retriever.plan(shortlist="1x8", k=40, then=[("2x16", 20)], rerank="4x32", top=10)
    full = retriever.search(texts, plan=plan)
    from adaretrieve.search.calibrate import MEASURES

    ranks = retriever.stage_rankings(texts, plan)
    ids = {d: i for i, d in enumerate(retriever.reader.docids)}
    full_rows = np.array([[ids[d] for d, _ in h] for h in full])
    for measure in MEASURES:
        for confidence in ("gap", "linear"):
            for target in (1.0, 0.9, 0.6):
                fit = retriever.calibrate(texts, plan, target, measure=measure, confidence=confidence, rankings=ranks)
                hits, res = retriever.search_adaptive(texts, plan, fit.rule)
                got_rows = np.array([[ids[d] for d, _ in h] for h in hits])
                got = MEASURES[measure](got_rows, full_rows)
                assert got.mean() >= target - 1e-9 and abs(got.mean() - fit.kept) < 1e-9, (measure, confidence, target)
                assert abs(overlap_at(got_rows, full_rows).mean() - fit.overlap) < 1e-9
                assert abs(res.layers.mean() - fit.mean_layers) < 1e-9
    fit = retriever.calibrate(texts, plan, 0.6, rankings=ranks)
    assert fit.mean_layers < 4  # at 0.6 some queries stop early
    path = tmp_path / "rule.json"
    write_stop_rule(path, fit, plan, retriever.reader.manifest, 0.6, {"queries": "test texts", "n": len(texts)})
    rule, described = load_stop_rule(path, retriever.reader.manifest)
    assert rule == fit.rule and described == plan.describe()
    other = retriever.reader.manifest.__class__(**{**retriever.reader.manifest.__dict__, "generation": "gen-0000000000000-1"})
    with pytest.raises(AdaError, match="generation"):
        load_stop_rule(path, other)
    path.write_text("{}")
    with pytest.raises(AdaError, match="not a stop rule file"):
        load_stop_rule(path, retriever.reader.manifest)


def test_cli_calibrate_then_search_adaptive(retriever, tmp_path):
    """calibrate on some texts, search others with --adaptive; bad rule files and plan flags are one line."""
    import json

    from typer.testing import CliRunner

    from adaretrieve.cli.main import app

    ix = retriever.reader.dir
    fit_q, test_q = tmp_path / "fit.jsonl", tmp_path / "test.jsonl"
    fit_q.write_text("".join(json.dumps({"_id": f"f{i}", "text": f"{t} {w}"}) + "\n"
                             for i, (t, w) in enumerate((t, w) for t in TEXTS for w in ("risk", "dose"))))
    test_q.write_text("".join(json.dumps({"_id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    rule = tmp_path / "runs" / "rule.json"  # a folder that does not exist yet
    run = CliRunner().invoke
    res = run(app, ["calibrate", "--index", str(ix), "--queries", str(fit_q), "--shortlist", "1x8", "--k", "40",
                    "--then", "2x16", "--k", "20", "--rerank", "4x32", "--top", "10", "--target", "0.7", "--out", str(rule),
                    "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "mean layers" in res.output and json.loads(rule.read_text())["fitted_on"]["n_queries"] == 16
    out = tmp_path / "run.trec"
    res = run(app, ["search", "--index", str(ix), "--queries", str(test_q), "--adaptive", str(rule), "--out", str(out),
                    "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "adaptive: answered per stage" in res.output
    from adaretrieve.eval import read_run
    from adaretrieve.search.calibrate import load_stop_rule

    r, d = load_stop_rule(rule, retriever.reader.manifest)
    hits, _ = retriever.search_adaptive(TEXTS, retriever.plan(d["shortlist"], d["k"], d["rerank"],
                                                              [(s["size"], s["k"]) for s in d["then"]], d["top"]), r)
    got = read_run(out)
    assert [[x for x, _ in sorted(got[f"t{i}"].items(), key=lambda kv: -kv[1])] for i in range(len(TEXTS))] == \
        [[x for x, _ in h] for h in hits]
    bad = run(app, ["search", "--index", str(ix), "--queries", str(test_q), "--adaptive", str(rule), "--k", "5",
                    "--out", str(out), "--device", "cpu"])
    assert bad.exit_code == 2 and "fixes the plan" in bad.output
    (tmp_path / "junk.json").write_text("[1]")
    bad = run(app, ["search", "--index", str(ix), "--queries", str(test_q), "--adaptive", str(tmp_path / "junk.json"),
                    "--out", str(out), "--device", "cpu"])
    assert bad.exit_code == 2 and "not a stop rule file" in bad.output
    bad = run(app, ["calibrate", "--index", str(ix), "--queries", str(fit_q), "--rerank", "none", "--out",
                    str(tmp_path / "r2.json"), "--device", "cpu"])
    assert bad.exit_code == 2 and "at least two stages" in bad.output


def test_stage_rankings_are_each_stage_of_the_funnel(retriever):
    """calibrate.stage_rankings reads the funnel's own stages (funnel(record=...)): its last stage is
    the funnel's answer, and every stage equals the shorter plan that ends there, searched on its own."""
    from adaretrieve.search.calibrate import stage_rankings

    plan = retriever.plan(shortlist="1x8", k=40, then=[("2x16", 20)], rerank="4x32", top=10)
    s = retriever.searcher(plan)
    qv = retriever.encoder.encode_queries(TEXTS, plan.sizes())
    stages = stage_rankings(plan, s.index, s.sources, retriever.reader.normalize, qv, s.params)
    assert len(stages) == 3
    scores, rows = s.search(qv)
    np.testing.assert_array_equal(stages[-1][1][:, :10], rows)
    one = retriever.searcher(retriever.plan(shortlist="1x8", rerank="none", top=40))
    np.testing.assert_array_equal(stages[0][1], one.search(qv)[1])
    two = retriever.searcher(retriever.plan(shortlist="1x8", k=40, rerank="2x16", top=20))
    np.testing.assert_array_equal(stages[1][1], two.search(qv)[1])


def _brute(retriever, texts, size, rows_of):
    """Exact scores at ``size`` of each query's candidate rows ``rows_of[i]`` (from the stored rows), top 10."""
    from adaretrieve.sizes import truncate

    q = retriever.encoder.encode_queries(texts, [size])[retriever.encoder.check_sizes([size])[0]]
    x = truncate(np.asarray(retriever.reader.rerank_source(retriever.encoder.check_sizes([size])[0]), dtype=np.float32)
                 [:, : q.shape[1]], q.shape[1], True)
    ids = retriever.reader.docids
    out = []
    for qi, rows in zip(q, rows_of):
        rows = np.array(sorted(set(int(r) for r in rows)))
        s = x[rows] @ qi
        o = np.argsort(-s, kind="stable")[:10]
        out.append([ids[r] for r in rows[o]])
    return out


def test_the_deep_path_reranks_the_union_with_the_rerank_sizes_shortlist(retriever):
    """deep_k: the last stage reranks the shortlist's candidates together with the top deep_k of the
    index's shortlist over the rerank size, against brute force; with deep_k covering the corpus, the
    result is the exact full-size search however few candidates the small size found."""
    plan = retriever.plan(shortlist="1x8", k=5, rerank="4x32", top=10, deep_k=7)
    assert plan.name == "1x8 k=5 -> 4x32 (+4x32 shortlist k=7)" and plan.describe()["deep_k"] == 7
    hits = retriever.search(TEXTS, plan=plan)
    small = [[r for _, r in h] for h in _rows(retriever, TEXTS, "1x8", 5)]
    deep = [[r for _, r in h] for h in _rows(retriever, TEXTS, "4x32", 7)]
    want = _brute(retriever, TEXTS, "4x32", [a + b for a, b in zip(small, deep)])
    assert [[d for d, _ in h] for h in hits] == want
    assert hits != retriever.search(TEXTS, shortlist="1x8", k=5, rerank="4x32", top=10)  # the deep path changed some
    every = retriever.search(TEXTS, plan=retriever.plan(shortlist="1x8", k=5, rerank="4x32", top=10, deep_k=80))
    exact = retriever.search(TEXTS, shortlist="4x32", rerank="none", top=10)
    assert [[d for d, _ in h] for h in every] == [[d for d, _ in h] for h in exact]  # scores: float16 rows, to 1e-3


def _rows(retriever, texts, size, k):
    plan = retriever.plan(shortlist=size, rerank="none", top=k)
    s = retriever.searcher(plan)
    scores, rows = s.search(retriever.encoder.encode_queries(texts, plan.sizes()))
    return [list(zip(sc, rr)) for sc, rr in zip(scores, rows)]


def test_a_cascade_with_a_deep_path_never_stopping_equals_the_funnel_and_always_stopping_skips_it(retriever):
    plan = retriever.plan(shortlist="1x8", k=5, then=[("2x16", 4)], rerank="4x32", top=10, deep_k=7)
    hits, res = retriever.search_adaptive(TEXTS, plan, StopRule.never(), batch_size=3)
    _same(hits, retriever.search(TEXTS, plan=plan, batch_size=3))
    hits, res = retriever.search_adaptive(TEXTS, plan, StopRule.always(1))
    _same(hits, retriever.search(TEXTS, shortlist="1x8", k=5, then=[("2x16", 4)], rerank="none", top=10))
    with pytest.raises(AdaError, match="deep_k .* needs a rerank size"):
        retriever.plan(shortlist="1x8", rerank="none", deep_k=5)


def _saved_by_brute_force(conf, loss, layers, full, budget):
    """The most layers any pair of thresholds (each a confidence value or "never") saves within budget."""
    n = len(loss[0])
    best = 0
    for t0 in [np.inf, *conf[0]]:
        for t1 in [np.inf, *conf[1]]:
            s0 = conf[0] >= t0
            s1 = ~s0 & (conf[1] >= t1)
            if loss[0][s0].sum() + loss[1][s1].sum() <= budget + 1e-9:
                best = max(best, int(s0.sum()) * (full - layers[0]) + int(s1.sum()) * (full - layers[1]))
    assert n
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_fit_shares_its_budget_between_stages_as_well_as_brute_force(seed):
    """fit_stop_rule against every pair of thresholds on small random rankings: the split it picks saves
    as many layers as the best pair within the target (shallowest-first greedy, the old fit, could not
    give budget to the deeper exit when the shallow one spends it badly)."""
    from adaretrieve.search.calibrate import fit_stop_rule, overlap_at
    from adaretrieve.search.plan import FunnelPlan

    rng = np.random.default_rng(seed)
    n, docs = 14, 30
    plan = FunnelPlan("1x8", 20, (("2x16", 12),), "4x32", 10)
    final = np.stack([rng.permutation(docs)[:10] for _ in range(n)])
    ranks = []
    for k in (20, 12):
        rows = np.stack([np.r_[f[: rng.integers(0, 11)], rng.permutation(np.setdiff1d(np.arange(docs), f))][:k]
                         for f in final])
        rows = np.stack([rng.permutation(r[:10]).tolist() + r[10:].tolist() for r in rows])
        scores = np.sort(rng.random((n, k)), axis=1)[:, ::-1].astype(np.float32)
        ranks.append((scores, rows))
    ranks.append((np.sort(rng.random((n, 10)), axis=1)[:, ::-1], final))
    loss = [1 - overlap_at(r, final) for _, r in ranks[:2]]
    from adaretrieve.search.cascade import gap

    conf = [gap(sc, 10).astype(np.float64) for sc, _ in ranks[:2]]
    for target in (0.95, 0.85, 0.7, 0.5):
        fit = fit_stop_rule(plan, ranks, target, grid=4 * n)
        saved = n * 4 - fit.mean_layers * n
        assert saved == pytest.approx(_saved_by_brute_force(conf, loss, [1, 2], 4, (1 - target) * n)), target
        assert fit.overlap >= target - 1e-9


def test_measures_and_a_linear_rule():
    from adaretrieve.search.calibrate import check_target, identical_at, pseudo_ndcg_at
    from adaretrieve.search.cascade import FEATURES, StopRule, features

    b = np.array([np.arange(10)])
    assert pseudo_ndcg_at(b, b)[0] == 1.0 and identical_at(b, b)[0] == 1.0
    top_swap, low_swap = b.copy(), b.copy()
    top_swap[0, [0, 1]], low_swap[0, [8, 9]] = [1, 0], [9, 8]
    assert pseudo_ndcg_at(top_swap, b)[0] < pseudo_ndcg_at(low_swap, b)[0] < 1.0 and identical_at(low_swap, b)[0] == 0
    for bad in [dict(measure="recall"), dict(confidence="margin"), dict(target=1.5)]:
        with pytest.raises(AdaError):
            check_target(**{"target": 0.9, **bad})
    scores = np.array([[0.9, 0.5, 0.4, 0.3, 0.2, 0.1], [0.8, 0.79, 0.5, 0.4, 0.3, 0.2]])
    rows, prev = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 1, 2, 3]]), np.array([[1, 2, 3, 4, 5, 6], [8, 7, 10, 11, 12, 13]])
    f = features(scores, rows, prev, rank=5)
    np.testing.assert_allclose(f[:, FEATURES.index("gap")], [0.7, 0.5])
    np.testing.assert_allclose(f[:, FEATURES.index("gap2")], [0.4, 0.01], atol=1e-9)
    np.testing.assert_allclose(f[:, FEATURES.index("agree")], [1.0, 2 / 6])
    np.testing.assert_allclose(f[:, FEATURES.index("same_top1")], [1, 0])
    w = tuple([0.0] * len(FEATURES) + [0.0])
    w = tuple(1.0 if i == FEATURES.index("agree") else 0.0 for i in range(len(FEATURES))) + (0.0,)
    rule = StopRule((0.5,), rank=5, weights=(w,))
    assert rule.stops(0, scores, rows, prev).tolist() == [True, False]
    assert StopRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(AdaError, match="features"):
        StopRule.from_dict({**rule.to_dict(), "features": ["gap"]})


def test_cli_calibrate_on_pseudo_queries_with_a_deep_path_and_a_linear_ndcg_rule(retriever, tmp_path):
    """calibrate --pseudo-queries (texts drawn from the index's corpus, no queries file), --deep-k,
    --measure ndcg --confidence linear; search --adaptive then runs the rule's plan, deep path
    included, as the library does; bad targets and measures are one line, exit 2."""
    import json

    from typer.testing import CliRunner

    from adaretrieve.cli.main import app
    from adaretrieve.data import pseudo_queries
    from adaretrieve.search.calibrate import load_stop_rule

    ix = retriever.reader.dir
    run = CliRunner().invoke
    rule = tmp_path / "rule.json"
    base = ["calibrate", "--index", str(ix), "--shortlist", "1x8", "--k", "5", "--then", "2x16", "--k", "4",
            "--rerank", "4x32", "--top", "10", "--deep-k", "6", "--device", "cpu", "-q"]
    res = run(app, [*base, "--pseudo-queries", "30", "--measure", "ndcg", "--confidence", "linear", "--target", "0.8",
                    "--out", str(rule)])
    assert res.exit_code == 0, res.output
    doc = json.loads(rule.read_text())
    assert doc["plan"]["deep_k"] == 6 and doc["fitted_on"]["pseudo_queries"] == 30
    assert doc["target"] == {"measure": "ndcg", "at": 10, "value": 0.8} and "weights" in doc["rule"]
    test_q = tmp_path / "test.jsonl"
    test_q.write_text("".join(json.dumps({"_id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "run.trec"
    res = run(app, ["search", "--index", str(ix), "--queries", str(test_q), "--adaptive", str(rule), "--out", str(out),
                    "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    r, d = load_stop_rule(rule, retriever.reader.manifest)
    plan = retriever.plan(d["shortlist"], d["k"], d["rerank"], [(s["size"], s["k"]) for s in d["then"]], d["top"],
                          deep_k=d["deep_k"])
    hits, _ = retriever.search_adaptive(TEXTS, plan, r)
    from adaretrieve.eval import read_run

    got = read_run(out)
    assert [[x for x, _ in sorted(got[f"t{i}"].items(), key=lambda kv: -kv[1])] for i in range(len(TEXTS))] == \
        [[x for x, _ in h] for h in hits]
    assert pseudo_queries(retriever.reader.manifest.corpus, 30) == pseudo_queries(retriever.reader.manifest.corpus, 30)
    for bad, msg in [(["--measure", "recall"], "unknown target measure"), (["--confidence", "x"], "unknown rule confidence"),
                     (["--target", "1.5"], "must be a number in"), ([], "--queries FILE or --pseudo-queries")]:
        res = run(app, [*base, *(["--pseudo-queries", "5"] if bad else []), *bad, "--out", str(tmp_path / "r.json")])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (bad, res.output)


def test_on_exit_reports_each_query_once_before_the_deeper_stages_run_and_changes_nothing(retriever):
    """cascade(on_exit=...) (issue 25, serving): the server answers the queries that stop at a stage before
    the rest resume. The callback gets every query exactly once, at the stage it exits, with the scores and
    rows the result holds for it, and is called before encode_more runs the next stage's layers."""
    from adaretrieve.search.cascade import cascade, stage_sizes

    plan = retriever.plan(shortlist="1x8", k=40, then=[("2x16", 20)], rerank="4x32", top=10)
    s = retriever.searcher(plan)
    qv = retriever.encoder.encode_queries(TEXTS, plan.sizes())
    from adaretrieve.search import exact_search

    g = gap(exact_search(s.index, qv[plan.shortlist], 40)[0], 10)
    rule = StopRule((float(np.median(g)),), rank=10)
    events = []

    def encode_more(rows, sizes):
        events.append(("encode", sizes[0].layer, rows.tolist()))
        return {z: qv[z][rows] for z in sizes}

    def on_exit(stage, positions, scores, rows):
        events.append(("exit", stage, positions.tolist()))
        got[stage] = (positions.copy(), scores.copy(), rows.copy())

    got: dict = {}
    first = {plan.shortlist: qv[plan.shortlist]}
    plain = cascade(plan, rule, s.index, s.sources, retriever.reader.normalize, first, encode_more, s.params)
    events.clear()
    res = cascade(plan, rule, s.index, s.sources, retriever.reader.normalize, first, encode_more, s.params,
                  on_exit=on_exit)
    np.testing.assert_array_equal(res.rows, plain.rows)
    np.testing.assert_array_equal(res.scores, plain.scores)
    np.testing.assert_array_equal(res.exit_stage, plain.exit_stage)
    seen = np.concatenate([p for p, _, _ in got.values()])
    assert sorted(seen.tolist()) == list(range(len(TEXTS)))
    for stage, (pos, sc, rw) in got.items():
        assert (res.exit_stage[pos] == stage).all()
        w = res.rows.shape[1]
        np.testing.assert_array_equal(rw[:, :w], res.rows[pos])
        np.testing.assert_array_equal(sc[:, :w], res.scores[pos])
        assert (rw[:, w:] == -1).all()
    kinds = [(e[0], e[1]) for e in events]
    assert kinds[0] == ("exit", 0) and kinds.index(("exit", 0)) < kinds.index(("encode", 2))
    assert len(stage_sizes(plan)) == 3 and kinds[-1] == ("exit", 2)
