"""`adaretrieve serve --adaptive RULE` (issue 25, items 2 and 5): the served index answers with the
cascade a stop rule fixes; its answers equal `search --adaptive`; a never-stop rule serves the full
funnel; within a batch every text runs each encoder layer at most once and a request is answered as
soon as the layers it needs have run (a confident query before the others resume, a shallow request
before a deep one's layers); a rule fitted on an older generation is never applied to a new one."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import make_corpus, module_or_skip

module_or_skip("fastapi", "pip install 'adaretrieve[serve]' (fastapi, uvicorn, httpx)")
module_or_skip("httpx", "pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402

from adaretrieve.serve.app import create_app  # noqa: E402
from adaretrieve.serve.service import SearchService  # noqa: E402

SIZES = dict(shortlist=["1x8", "2x16"], rerank="4x32")
PLAN = dict(shortlist="1x8", k=40, then=[("2x16", 20)], rerank="4x32", top=10)  # stages at layers 1, 2, 4
WORDS = ["the cell gene", "cancer risk in patients", "drug dose", "immune therapy of virus infection", "brain heart",
         "protein folding in yeast", "heart attack risk", "gene expression"]
FIT = [f"{a} {b}" for a in WORDS for b in ("risk", "gene", "dose")]  # calibration texts
TEXTS = [f"{a} {b}" for a in WORDS for b in ("blood", "study")]  # served texts, never fitted on


def build(model, corpus, out, overwrite=False):
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    build_index(corpus, Encoder(model, device="cpu"), out, progress=False, overwrite=overwrite, **SIZES)
    return out


def make_rule(index, path, target=0.6, never=False):
    """A rule file for PLAN fitted on FIT (``never``: one that stops no query, in the same file format)."""
    from adaretrieve import Retriever
    from adaretrieve.search.calibrate import write_stop_rule
    from adaretrieve.search.cascade import StopRule

    r = Retriever(index, device="cpu")
    plan = r.plan(**PLAN)
    fit = r.calibrate(FIT, plan, target)
    if never:
        fit = dataclasses.replace(fit, rule=StopRule.never())
    write_stop_rule(path, fit, plan, r.reader.manifest, target, {"queries": "FIT", "n_queries": len(FIT)})
    return path


@pytest.fixture(scope="module")
def index(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-adaptive")
    return build(tiny_model, make_corpus(d / "corpus.jsonl", n=80), d / "ix")


@pytest.fixture(scope="module")
def rule(index):
    return make_rule(index, index.parent / "rule.json")


@pytest.fixture(scope="module")
def retriever(index):
    from adaretrieve import Retriever

    return Retriever(index, device="cpu")


@pytest.fixture(scope="module")
def adaptive(retriever, rule):
    """What `search --adaptive` gives TEXTS through the library: (hits, CascadeResult)."""
    from adaretrieve.search.calibrate import load_stop_rule

    r, _ = load_stop_rule(rule, retriever.reader.manifest)
    return retriever.search_adaptive(TEXTS, retriever.plan(**PLAN), r)


def same(got: list[dict], want: list[tuple[str, float]], atol=1e-5):
    assert [h["id"] for h in got] == [d for d, _ in want]
    np.testing.assert_allclose([h["score"] for h in got], [s for _, s in want], atol=atol)


def test_served_adaptive_answers_equal_search_adaptive_from_the_cli(index, rule, adaptive, tmp_path):
    """The same queries through `search --adaptive RULE --format jsonl` and through `serve --adaptive RULE`:
    equal ids and scores (1e-5); the response says each query's exit stage and layers, /metrics counts them."""
    from adaretrieve.cli.main import app

    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"_id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "run.jsonl"
    res = CliRunner().invoke(app, ["search", "--index", str(index), "--queries", str(q), "--adaptive", str(rule),
                                   "--out", str(out), "--format", "jsonl", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    cli = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        cli[row["qid"]] = [(h["docid"], h["score"]) for h in row["hits"]]
    _, cascade = adaptive
    assert 0 < (cascade.exit_stage == 0).sum() < len(TEXTS), "the rule should stop some queries early, not all"
    service = SearchService(index, device="cpu", adaptive=rule, max_batch=64, max_wait_ms=5)
    with TestClient(create_app(service)) as c:
        r = c.post("/search", json={"queries": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        singles = [c.post("/search", json={"queries": t}).json() for t in TEXTS[:4]]  # each alone: same answers
        metrics = c.get("/metrics").text
        health = c.get("/health").json()
    for i, got in enumerate(body["results"]):
        same(got, cli[f"t{i}"])
    for i, s in enumerate(singles):
        same(s["results"][0], cli[f"t{i}"])
        assert s["adaptive"]["exit_stage"] == [int(cascade.exit_stage[i])]
    plan = service.plan(**PLAN)
    assert body["config"] == plan.describe()
    assert body["adaptive"] == {"active": True, "exit_stage": cascade.exit_stage.tolist(),
                                "layers": cascade.layers.tolist()}
    assert health["defaults"] == plan.describe()
    assert health["adaptive"]["active"] is True and health["adaptive"]["rule"] == str(rule)
    assert health["adaptive"]["plan"] == plan.name
    exits = np.concatenate([cascade.exit_stage, cascade.exit_stage[:4]])  # the batch of all, then 4 alone
    for stage in range(3):
        if (exits == stage).any():
            assert f'adaretrieve_adaptive_queries_total{{stage="{stage}",rule="active"}} {(exits == stage).sum()}' in metrics
    layers = np.concatenate([cascade.layers, cascade.layers[:4]])
    assert f"adaretrieve_query_layers_sum{{adaptive=\"true\"}} {int(layers.sum())}" in metrics
    assert "adaretrieve_adaptive_active 1" in metrics


def test_a_never_stop_rule_serves_the_full_funnel(index, retriever, tmp_path):
    rule = make_rule(index, tmp_path / "never.json", never=True)
    plan = retriever.plan(**PLAN)
    want = retriever.search(TEXTS, plan=plan)
    with TestClient(create_app(SearchService(index, device="cpu", adaptive=rule, max_batch=64))) as c:
        body = c.post("/search", json={"queries": TEXTS}).json()
    for g, w in zip(body["results"], want, strict=True):
        same(g, w)
    assert body["adaptive"] == {"active": True, "exit_stage": [2] * len(TEXTS), "layers": [4] * len(TEXTS)}


def test_how_a_request_chooses_the_cascade(index, rule, retriever, adaptive):
    """The rule's plan is the default plan and is answered by the cascade; "adaptive": false runs it at full
    depth; a request naming another plan runs that plan as without a rule; "adaptive": true with another
    plan, or on a server without a rule, is a 422 in one line. top may differ from the rule's."""
    hits, cascade = adaptive
    plan = retriever.plan(**PLAN)
    with TestClient(create_app(SearchService(index, device="cpu", adaptive=rule))) as c:
        full = c.post("/search", json={"queries": TEXTS, "adaptive": False}).json()
        for g, w in zip(full["results"], retriever.search(TEXTS, plan=plan), strict=True):
            same(g, w)
        assert full["config"] == plan.describe() and "adaptive" not in full
        spelled = c.post("/search", json={"queries": TEXTS[:2], "shortlist": "1x8", "k": 40,
                                          "then": [{"size": "2x16", "k": 20}], "rerank": "4x32", "top": 10}).json()
        assert spelled["adaptive"]["active"] is True  # the rule's plan, however it is spelled
        other = c.post("/search", json={"queries": TEXTS[:2], "shortlist": "2x16", "k": 30, "top": 5}).json()
        assert "adaptive" not in other and other["config"]["shortlist"] == "2x16"
        for g, w in zip(other["results"], retriever.search(TEXTS[:2], shortlist="2x16", k=30, top=5), strict=True):
            same(g, w)
        top3 = c.post("/search", json={"queries": TEXTS, "top": 3}).json()
        assert top3["config"]["top"] == 3 and top3["adaptive"]["exit_stage"] == cascade.exit_stage.tolist()
        for g, w in zip(top3["results"], hits, strict=True):
            same(g, w[:3])
        bad = c.post("/search", json={"queries": "cell", "shortlist": "2x16", "adaptive": True})
        assert bad.status_code == 422 and "\n" not in bad.json()["error"], bad.text
        assert "stop rule was fitted for 1x8 k=40" in bad.json()["error"]
    with TestClient(create_app(SearchService(index, device="cpu"))) as c:
        bad = c.post("/search", json={"queries": "cell", "adaptive": True})
        assert bad.status_code == 422 and "serve --adaptive" in bad.json()["error"], bad.text
        assert c.get("/health").json()["adaptive"] is None
        assert c.post("/search", json={"queries": "cell", "adaptive": "yes"}).status_code == 422


def _layer_calls(service):
    """Record (layer index, texts in the call) of every encoder layer call; returns (calls, remove)."""
    calls: list = []
    layers = service.encoder.model.encoder.layer
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=n: calls.append((n, a[0].shape[0])))
             for n, layer in enumerate(layers)]
    return calls, lambda: [h.remove() for h in hooks]


def _submit_as_one_batch(service, requests):
    """Submit ``requests`` [(texts, plan, adaptive)] so the batcher takes them as one batch (max batch is their
    texts: the batch closes when the last arrives); each job's future records ("done", i) in ``calls`` when
    answered, in the batcher's thread, so its place among the layer calls is the order things happened."""
    jobs = []
    for i, (texts, plan, ad) in enumerate(requests):
        jobs.append(service.submit(texts, plan, adaptive=ad))
        jobs[-1].future.add_done_callback(lambda f, i=i: service.test_calls.append(("done", i)))
    return [j.result(30) for j in jobs], jobs


def _service(index, n, **kw):
    service = SearchService(index, device="cpu", max_batch=n, max_wait_ms=5000, **kw)
    service.test_calls, remove = _layer_calls(service)
    service.start()
    return service, remove


def test_one_batch_at_three_depths_runs_each_layer_once_per_text_shallow_answered_first(index, retriever):
    """Requests needing 1, 2 and 4 layers share one batch: layer 1 runs once for all 6 texts, layer 2 for the
    5 that need it, layers 3 and 4 for the 3 of the deep request (no text goes through a layer twice, the
    deep one resumes from the shallow ones' pass), and each request is answered before any deeper layer runs."""
    plans = [dict(shortlist="1x8", rerank="none", top=5), dict(shortlist="2x16", rerank="none", top=5),
             dict(shortlist="1x8", k=20, rerank="4x32", top=5)]
    texts = [TEXTS[:1], TEXTS[1:3], TEXTS[3:6]]
    service, remove = _service(index, 6)
    try:
        got, _ = _submit_as_one_batch(service, [(t, service.plan(**p), False) for t, p in zip(texts, plans)])
    finally:
        service.stop()
        remove()
    assert service.test_calls == [(0, 6), ("done", 0), (1, 5), ("done", 1), (2, 3), (3, 3), ("done", 2)]
    for g, t, p in zip(got, texts, plans):
        for gg, w in zip(g, retriever.search(t, **p), strict=True):
            same([{"id": d, "score": s} for d, s in gg], w)


def test_an_adaptive_batch_answers_confident_queries_before_the_rest_resume(index, rule, retriever, adaptive):
    """One batch: a request whose queries all stop at the shortlist, one whose queries go on, and a fixed
    full-depth request. Layer 1 runs once for every text; the confident request is answered then, before
    layer 2 runs; the rest resume from their state: each layer runs once, for only the texts still needing it."""
    hits, cascade = adaptive
    early = [i for i in range(len(TEXTS)) if cascade.exit_stage[i] == 0]
    late = [i for i in range(len(TEXTS)) if cascade.exit_stage[i] > 0]
    assert early and late
    fixed_texts = TEXTS[:2]
    n = len(TEXTS) + len(fixed_texts)
    service, remove = _service(index, n, adaptive=rule)
    try:
        plan = service.plan(**PLAN)
        deep = service.plan(shortlist="1x8", k=20, rerank="4x32", top=5)
        got, jobs = _submit_as_one_batch(service, [([TEXTS[i] for i in early], plan, True),
                                                   ([TEXTS[i] for i in late], plan, True), (fixed_texts, deep, False)])
    finally:
        service.stop()
        remove()
    calls = service.test_calls
    assert calls[:2] == [(0, n), ("done", 0)]  # answered after layer 1, before any other layer ran
    layer_rows = [c for c in calls if c[0] != "done"]
    need = np.concatenate([cascade.layers, [4] * len(fixed_texts)])  # layers each text needs
    assert layer_rows == [(i, int((need > i).sum())) for i in range(4)]  # each layer once, for who needs it
    for g, i in zip(got[0] + got[1], early + late):
        same([{"id": d, "score": s} for d, s in g], hits[i])
    assert jobs[0].per_query == {"active": True, "exit_stage": [0] * len(early), "layers": [1] * len(early)}
    for g, w in zip(got[2], retriever.search(fixed_texts, shortlist="1x8", k=20, rerank="4x32", top=5), strict=True):
        same([{"id": d, "score": s} for d, s in g], w)


def test_a_rule_from_an_older_generation_is_never_applied(tiny_model, tmp_path):
    """After the index is rebuilt the rule no longer fits: requests that would take the cascade are answered
    at full depth (equal to the funnel on the new generation), the response and /health say why and
    adaretrieve_adaptive_active is 0. Once the rule file is calibrated again for the new generation, the
    cascade is back from the next batch."""
    from adaretrieve import Retriever

    ix = build(tiny_model, make_corpus(tmp_path / "a.jsonl", n=80), tmp_path / "ix")
    rule = make_rule(ix, tmp_path / "rule.json")
    service = SearchService(ix, device="cpu", adaptive=rule, reload_every=0)
    with TestClient(create_app(service)) as c:
        first = c.post("/search", json={"queries": TEXTS}).json()
        assert first["adaptive"]["active"] is True
        build(tiny_model, make_corpus(tmp_path / "b.jsonl", n=70, seed=3), ix, overwrite=True)
        second = c.post("/search", json={"queries": TEXTS}).json()
        assert second["generation"] != first["generation"]
        ad = second["adaptive"]
        assert ad["active"] is False and ad["exit_stage"] == [2] * len(TEXTS) and ad["layers"] == [4] * len(TEXTS)
        assert "generation" in ad["reason"] and "full depth" in ad["reason"] and "\n" not in ad["reason"]
        r = Retriever(ix, device="cpu")
        for g, w in zip(second["results"], r.search(TEXTS, plan=r.plan(**PLAN)), strict=True):
            same(g, w)
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["adaptive"]["active"] is False
        assert "calibrate again" in h.json()["adaptive"]["problem"]
        assert "adaretrieve_adaptive_active 0" in c.get("/metrics").text
        assert c.post("/search", json={"queries": "cell", "adaptive": True}).json()["adaptive"]["active"] is False
        make_rule(ix, rule)  # calibrated again, in place
        third = c.post("/search", json={"queries": TEXTS}).json()
        assert third["adaptive"]["active"] is True and c.get("/health").json()["adaptive"]["active"] is True


def test_cli_serve_adaptive_checks_the_rule_before_listening(index, rule, tiny_model, tmp_path, monkeypatch):
    import uvicorn

    from adaretrieve.cli.main import app

    other = build(tiny_model, make_corpus(tmp_path / "o.jsonl", n=30, seed=5), tmp_path / "other")
    (tmp_path / "junk.json").write_text("[1]")
    ran = []
    monkeypatch.delenv("ADARETRIEVE_SERVE", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append((app, kw)))

    def run(*args):
        return CliRunner().invoke(app, ["serve", "-q", "--port", "0", "--device", "cpu", *map(str, args)])

    for args, words in [(("--index", index, "--adaptive", tmp_path / "junk.json"), "not a stop rule file"),
                        (("--index", index, "--adaptive", tmp_path / "none.json"), "does not exist"),
                        (("--index", other, "--adaptive", rule), "calibrate again"),
                        (("--index", other, "--adaptive", rule, "--workers", 2), "calibrate again"),
                        (("--index", index, "--adaptive", rule, "--backend", "bogus"), "bogus")]:
        res = run(*args)
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], \
            (args, res.output)
    assert not ran
    res = run("--index", index, "--adaptive", rule)
    assert res.exit_code == 0, res.output
    with TestClient(ran[-1][0]) as c:
        assert c.get("/health").json()["adaptive"]["active"] is True
    res = run("--index", index, "--adaptive", rule, "--workers", 2)
    assert res.exit_code == 0 and json.loads(__import__("os").environ["ADARETRIEVE_SERVE"])["adaptive"] == str(rule)


def test_the_batcher_answers_every_request_of_a_failed_cascade(index, rule, monkeypatch):
    """A fault while a cascade runs fails its requests (and only the ones not yet answered); serving goes on."""
    from adaretrieve.errors import IndexDamaged
    from adaretrieve.search import twostage

    service = SearchService(index, device="cpu", adaptive=rule)
    with TestClient(create_app(service)) as c:
        real = twostage.rerank_candidates
        hit = threading.Event()

        def broken(*a, **k):
            hit.set()
            raise IndexDamaged("rerank-4x32.f16 is unreadable; the index is damaged, rebuild it")

        monkeypatch.setattr("adaretrieve.search.cascade.rerank_candidates", broken)
        r = c.post("/search", json={"queries": TEXTS})
        assert hit.is_set() and r.status_code == 503 and "unreadable" in r.json()["error"], r.text
        monkeypatch.setattr("adaretrieve.search.cascade.rerank_candidates", real)
        assert c.post("/search", json={"queries": TEXTS}).status_code == 200


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_the_onnx_backends_serve_the_cascade_and_mixed_depths_by_resuming(index, rule, backend):
    """onnx resumes from segment graphs (Encoder.resume): served adaptive answers equal the library's
    cascade on the same backend, and a batch of a shallow and a deep request equals each searched alone."""
    module_or_skip("onnxruntime", "pip install 'adaretrieve[onnx]'")
    from adaretrieve import Retriever
    from adaretrieve.search.calibrate import load_stop_rule

    lib = Retriever(index, device="cpu", backend=backend)
    r, _ = load_stop_rule(rule, lib.reader.manifest)
    want, _ = lib.search_adaptive(TEXTS, lib.plan(**PLAN), r)
    service = SearchService(index, device="cpu", backend=backend, threads=1, adaptive=rule, max_batch=64,
                            max_wait_ms=5000)
    plans = [dict(shortlist="1x8", rerank="none", top=5), dict(shortlist="1x8", k=20, rerank="4x32", top=5)]
    with TestClient(create_app(service)) as c:
        body = c.post("/search", json={"queries": TEXTS}).json()
        jobs = [service.submit(TEXTS[:1], service.plan(**plans[0])), service.submit(TEXTS[1:4], service.plan(**plans[1]))]
        mixed = [j.result(60) for j in jobs]
    assert body["adaptive"]["active"] is True
    if backend == "onnx":  # int8 quantises activations per batch that runs: the cascade's batches differ
        for g, w in zip(body["results"], want, strict=True):
            same(g, w, atol=1e-4)
    else:
        assert len(body["results"]) == len(want) and 0 < min(body["adaptive"]["layers"]) <= max(body["adaptive"]["layers"])
    for g, t, p in zip(mixed, [TEXTS[:1], TEXTS[1:4]], plans):
        for gg, w in zip(g, lib.search(t, **p), strict=True):
            same([{"id": d, "score": s} for d, s in gg], w, atol=1e-4 if backend == "onnx" else 5e-3)


def test_a_served_rule_with_a_deep_path_equals_the_library(index, retriever, tmp_path):
    """A rule whose plan has deep_k (the rerank also takes the top deep_k of the rerank size's shortlist):
    served answers equal Retriever.search_adaptive's, and a never-stop one the funnel's, deep path included."""
    from adaretrieve.search.calibrate import load_stop_rule, write_stop_rule
    from adaretrieve.search.cascade import StopRule

    plan = retriever.plan(shortlist="1x8", k=5, then=[("2x16", 4)], rerank="4x32", top=10, deep_k=7)
    fit = retriever.calibrate(FIT, plan, 0.6)
    for name, f in (("deep.json", fit), ("deep-never.json", dataclasses.replace(fit, rule=StopRule.never()))):
        path = write_stop_rule(tmp_path / name, f, plan, retriever.reader.manifest, 0.6, {"n_queries": len(FIT)}) and \
            tmp_path / name
        r, _ = load_stop_rule(path, retriever.reader.manifest)
        want, _ = retriever.search_adaptive(TEXTS, plan, r)
        if name == "deep-never.json":
            assert want == retriever.search(TEXTS, plan=plan)
        with TestClient(create_app(SearchService(index, device="cpu", adaptive=path, max_batch=64))) as c:
            body = c.post("/search", json={"queries": TEXTS}).json()
        assert body["config"]["deep_k"] == 7
        for got, w in zip(body["results"], want):
            same(got, w)
