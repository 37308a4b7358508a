"""One plan value, one resolver: defaults, "none", funnels and nprobe resolve the same way whoever
asks (the CLI, HTTP, Retriever, bench, Qdrant), and every surface returns the same results for the
same configuration (code-review-3 A9, A13; issue 23)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve.errors import AdaError
from adaretrieve.index.format import Manifest, default_nprobe, ivf_lists
from adaretrieve.search.plan import DEFAULT, FunnelPlan, resolve_plan
from adaretrieve.sizes import Size
from tests.conftest import make_corpus, module_or_skip


def manifest(factory="Flat", rerank="4x32", nprobe=None, shortlist=("1x8", "2x16")) -> Manifest:
    entries = [{"size": s, "factory": factory, "file": f"shortlist-{s}.faiss", **({"nprobe": nprobe} if nprobe else {})}
               for s in shortlist]
    return Manifest(model={"name": "m", "pooling": "mean", "normalize": True, "max_length": 32}, n_docs=100,
                    shortlist=entries, rerank={"size": rerank, "file": "r.npy"} if rerank else None, corpus="c")


# -- the resolver ------------------------------------------------------------------------------


def test_omitted_rerank_is_the_index_rerank_size_and_none_is_single_stage():
    m = manifest()
    p = resolve_plan(m)
    assert (p.shortlist, p.rerank, p.k, p.top, p.depth) == (Size(1, 8), Size(4, 32), 200, 200, 200)
    for none in (None, "none", "None", " NONE "):
        q = resolve_plan(m, rerank=none)
        assert q.single and q.rerank is None and q.stages == 1
    assert resolve_plan(m, rerank=DEFAULT) == p
    assert resolve_plan(manifest(rerank=None)).single  # an index without rerank rows: single stage by default


def test_top_defaults_to_what_the_plan_ranks_and_depth_names_the_run():
    m = manifest()
    assert resolve_plan(m, k=50).top == 50 and resolve_plan(m, k=50).depth == 50
    f = resolve_plan(m, "1x8", 300, [("2x16", 40)], "4x32")
    assert (f.top, f.depth, f.layers) == (40, 40, 4)
    assert f.name == "1x8 k=300 -> 2x16 k=40 -> 4x32"
    # a deeper top than the funnel keeps is allowed; the depth says what comes back
    assert resolve_plan(m, k=50, top=1000).depth == 50
    # single stage: the shortlist is asked for top results, and k is that number
    s = resolve_plan(m, rerank="none", top=1000)
    assert (s.k, s.top, s.depth, s.name) == (1000, 1000, 1000, "single 1x8")
    assert resolve_plan(m, rerank="none", k=30) == resolve_plan(m, rerank="none", top=30)


def test_then_stages_as_pairs_or_json_objects_give_one_plan():
    m = manifest()
    a = resolve_plan(m, then=[("2x16", 20)], k=100)
    b = resolve_plan(m, then=[{"size": "2x16", "k": 20}], k=100)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AdaError, match="funnel narrows"):
        resolve_plan(m, k=10, then=[("2x16", 20)])
    with pytest.raises(AdaError, match="exactly 'size' and 'k'"):
        resolve_plan(m, then=[{"size": "2x16"}])


@pytest.mark.parametrize("bad, words", [
    (dict(k=0), "at least 1"), (dict(top=-1), "at least 1"), (dict(nprobe=0), "at least 1"),
    (dict(ef_search=0), "at least 1"), (dict(k=True), "whole number"), (dict(shortlist="4y32"), "LAYERSxDIMS"),
    (dict(rerank="big"), "LAYERSxDIMS"),
])
def test_bad_values_are_one_line(bad, words):
    with pytest.raises(AdaError, match=words):
        resolve_plan(manifest(), **bad)


def test_ivf_nprobe_default_is_recorded_or_derived_never_faiss_one():
    assert ivf_lists("IVF4096,SQ8") == 4096 and ivf_lists("OPQ16,IVF256,PQ16") == 256 and ivf_lists("BIVF64") == 64
    assert ivf_lists("Flat") is None and ivf_lists("HNSW32") is None
    assert (default_nprobe(4096), default_nprobe(256), default_nprobe(64), default_nprobe(2)) == (128, 32, 16, 2)
    assert resolve_plan(manifest("IVF64,Flat")).nprobe == 16  # an index from before the default was recorded
    assert resolve_plan(manifest("IVF64,Flat", nprobe=5)).nprobe == 5  # recorded at build time
    assert resolve_plan(manifest("IVF64,Flat"), nprobe=3).nprobe == 3  # asked for
    assert resolve_plan(manifest("IVF64,Flat"), shortlist="1x4").nprobe is None  # derived: searched by a flat index
    assert resolve_plan(manifest("HNSW32")).nprobe is None and resolve_plan(manifest()).nprobe is None


def test_qdrant_plans_have_no_nprobe():
    assert resolve_plan(manifest("IVF64,Flat"), engine="qdrant").nprobe is None
    with pytest.raises(AdaError, match="Qdrant"):
        resolve_plan(manifest(), nprobe=4, engine="qdrant")


def test_plan_is_a_value_and_describes_every_setting():
    p = FunnelPlan("2x16", 50, rerank="4x32", top=10, ef_search=64)
    assert p == FunnelPlan(Size(2, 16), 50, (), Size(4, 32), 10, None, 64) and len({p, p.with_top(10)}) == 1
    assert p.describe() == {"shortlist": "2x16", "k": 50, "then": [], "rerank": "4x32", "top": 10, "nprobe": None,
                            "ef_search": 64, "deep_k": None, "depth": 10}
    assert p.sizes() == [Size(2, 16), Size(4, 32)]


# -- every surface ------------------------------------------------------------------------------

CONFIGS = [  # what a user gives: omitted rerank, "none", a funnel, nprobe on the IVF index
    dict(),
    dict(rerank="none", top=7),
    dict(shortlist="2x16", k=30, top=5),
    dict(shortlist="2x16", k=40, then=[("4x16", 12)], rerank="4x32"),
    dict(shortlist="4x16", rerank="none", top=9),  # derived from the rerank rows: a flat shortlist
    dict(shortlist="1x8", nprobe=2, k=20, rerank="4x16", top=6),
]


@pytest.fixture(scope="module")
def ivf_index(tiny_model, tmp_path_factory):
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    d = tmp_path_factory.mktemp("surfaces")
    corpus = make_corpus(d / "corpus.jsonl", n=80)
    build_index(corpus, Encoder(tiny_model, device="cpu"), d / "ix", ["1x8", "2x16"], "4x32", factory="IVF4,Flat",
                progress=False)
    queries = d / "queries.jsonl"
    texts = ["the cell gene", "cancer risk in patients", "drug dose", "immune therapy of virus infection"]
    queries.write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return d / "ix", queries, texts


def _cli_args(cfg: dict) -> list[str]:
    args = []
    if "shortlist" in cfg:
        args += ["--shortlist", cfg["shortlist"]]
    if "k" in cfg:
        args += ["--k", str(cfg["k"])]
    for s, kk in cfg.get("then", []):
        args += ["--then", s, "--k", str(kk)]
    if "rerank" in cfg:
        args += ["--rerank", cfg["rerank"]]
    for key, opt in (("top", "--top"), ("nprobe", "--nprobe")):
        if key in cfg:
            args += [opt, str(cfg[key])]
    return args


def _ids(hits):
    return [[d for d, _ in h] for h in hits]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: json.dumps(c))
def test_every_surface_resolves_the_same_plan_and_returns_the_same_results(ivf_index, cfg, tmp_path):
    from adaretrieve import Retriever
    from adaretrieve.cli.main import app
    from adaretrieve.eval import read_run
    from adaretrieve.search import IndexReader

    ix, queries, texts = ivf_index
    want = resolve_plan(IndexReader(ix).manifest, **cfg)
    stored = want.shortlist in IndexReader(ix).manifest.shortlist_sizes
    assert (want.nprobe is not None) == stored  # the IVF index's default, never FAISS's 1 unseen; a derived size is flat

    r = Retriever(ix, device="cpu")
    assert r.plan(**cfg) == want
    lib = r.search(texts, **cfg)
    assert all(len(h) == min(want.depth, 80) for h in lib)

    run = tmp_path / "run.trec"
    res = CliRunner().invoke(app, ["search", "--index", str(ix), "--queries", str(queries), "--out", str(run),
                                   "--device", "cpu", "-q", *_cli_args(cfg)])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output  # the CLI's own defaults never warn
    got = read_run(run)
    assert [[d for d, _ in sorted(got[f"q{i}"].items(), key=lambda x: -x[1])] for i in range(len(texts))] == _ids(lib)

    module_or_skip("fastapi", "pip install 'adaretrieve[serve]'")
    from fastapi.testclient import TestClient

    from adaretrieve.serve.app import create_app
    from adaretrieve.serve.service import SearchService

    body = {"queries": texts, **{k: v for k, v in cfg.items() if k != "then"},
            **({"then": [{"size": s, "k": kk} for s, kk in cfg["then"]]} if "then" in cfg else {})}
    with TestClient(create_app(SearchService(ix, device="cpu", max_wait_ms=0))) as client:
        resp = client.post("/search", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["config"] == want.describe()
    assert [[h["id"] for h in hits] for hits in resp.json()["results"]] == _ids(lib)


def _suite_grid(cfg: dict, m) -> dict:
    """The same configuration as a bench suite writes it: a suite names every stage, so what the
    other surfaces may omit (shortlist, rerank) is the index's default written out; k, then, top and
    nprobe are left as given, for the suite to resolve."""
    shortlist = cfg.get("shortlist", str(m.shortlist_sizes[0]))
    rerank = cfg.get("rerank", str(m.rerank_size))
    kw = {"top": cfg.get("top"), "nprobe": [cfg["nprobe"]] if "nprobe" in cfg else []}
    if rerank == "none" and not cfg.get("then"):
        return {"single": [shortlist], **kw} if "k" not in cfg else {"single": [shortlist], **kw, "top": cfg["k"]}
    entry = {"shortlist": [shortlist], "k": [cfg.get("k", 200)], "rerank": [rerank],
             **({"then": [{"size": s, "k": kk} for s, kk in cfg["then"]]} if "then" in cfg else {})}
    return {"two_stage": [entry], **kw}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: json.dumps(c))
def test_bench_resolves_the_same_plan_and_returns_the_same_results(ivf_index, tiny_model, cfg):
    """The bench surface: a Suite over the index, holding the same configuration, makes the same
    FunnelPlan (resolve_plan, the index's nprobe default included) and its rows search what the
    Retriever returns (bench's own pipeline: its query encoder and dense_pipeline)."""
    from adaretrieve import Retriever
    from adaretrieve.bench import Suite, dense_pipeline
    from adaretrieve.bench.run import query_encoder, suite_encoder, with_search_params
    from adaretrieve.search import IndexReader

    ix, _, texts = ivf_index
    reader = IndexReader(ix)
    want = resolve_plan(reader.manifest, **cfg)
    suite = Suite(name="surfaces", model=str(tiny_model), corpus="-", queries="-", qrels="-", index=str(ix),
                  shortlist=[str(s) for s in reader.manifest.shortlist_sizes], rerank=str(reader.manifest.rerank_size),
                  factory="IVF4,Flat", **_suite_grid(cfg, reader.manifest))
    suite.check()
    (plan,) = with_search_params(suite.plans(reader.manifest), reader, suite.nprobe, suite.ef_search)
    assert plan == want and plan.name == want.name
    enc = query_encoder(suite, reader, suite_encoder(suite))
    qv = enc.encode_queries(texts, plan.sizes())
    scores, rows = dense_pipeline(plan, reader).search(list(range(len(texts))), qv, None)
    got = [[reader.docids[j] for j in row if j >= 0] for row in rows]
    assert got == _ids(Retriever(ix, device="cpu").search(texts, plan=want))


def test_qdrant_surface_resolves_like_the_folder(ivf_index, tmp_path):
    module_or_skip("qdrant_client", "pip install 'adaretrieve[qdrant]'")
    from adaretrieve.qdrant import QdrantIndex, upload
    from adaretrieve.retriever import load_index_encoder
    from adaretrieve.search import FunnelSearcher, IndexReader

    ix, _, texts = ivf_index
    reader = IndexReader(ix)
    upload(reader, f"qdrant:{tmp_path / 'q'}", progress=False)
    qi = QdrantIndex(f"qdrant:{tmp_path / 'q'}")
    try:
        enc = load_index_encoder(qi, device="cpu")
        for cfg in [dict(), dict(rerank="none", top=7), dict(shortlist="2x16", k=30, top=5)]:
            plan = qi.plan(**cfg)
            folder = resolve_plan(reader.manifest, **cfg)
            assert plan == FunnelPlan(folder.shortlist, folder.k, folder.then, folder.rerank, folder.top)  # no nprobe
            qv = enc.encode_queries(texts, plan.sizes())
            hits = qi.search(qv, plan)
            # Qdrant searches exactly where FAISS probes lists: compare with the folder searched at every list
            _, rows = FunnelSearcher(reader, FunnelPlan(folder.shortlist, folder.k, folder.then, folder.rerank,
                                                        folder.top, nprobe=4)).search(qv)
            assert _ids(hits) == [[reader.docids[j] for j in row if j >= 0] for row in rows]
    finally:
        qi.close()


def test_build_records_the_nprobe_default_and_search_uses_it(ivf_index, tmp_path, tiny_model):
    """A13: an IVF index records the nprobe its searches use; a plan without nprobe gets it, not FAISS's 1."""
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.search import IndexReader

    ix, _, _ = ivf_index
    m = IndexReader(ix).manifest
    assert all(e["nprobe"] == default_nprobe(4) for e in m.shortlist)
    out = tmp_path / "ix5"
    build_index(make_corpus(tmp_path / "c.jsonl", n=40), Encoder(tiny_model, device="cpu"), out, ["1x8"], None,
                factory="IVF4,Flat", nprobe=3, progress=False)
    assert resolve_plan(IndexReader(out).manifest).nprobe == 3
    with pytest.raises(AdaError, match="nprobe applies to IVF"):
        build_index(make_corpus(tmp_path / "c2.jsonl", n=40), Encoder(tiny_model, device="cpu"), tmp_path / "ix6",
                    ["1x8"], None, factory="Flat", nprobe=3, progress=False)


def test_ivf_search_without_nprobe_keeps_recall(tmp_path):
    """A13's check: IVF64 over 5k clustered documents, searched with no nprobe: recall@10 against
    exact search is at least 0.9 (FAISS's default nprobe 1 gives far less)."""
    from adaretrieve.index.writer import IndexWriter
    from adaretrieve.search import FunnelSearcher, IndexReader
    from adaretrieve.sizes import truncate

    rng = np.random.default_rng(0)
    n, d = 5000, 32
    centres = rng.standard_normal((50, d))
    x = truncate((centres[rng.integers(0, 50, n)] + 1.5 * rng.standard_normal((n, d))).astype(np.float32), d, True)
    w = IndexWriter(tmp_path / "ix", n, [Size(1, d)], None, factory="IVF64,Flat")
    w.add([f"d{i}" for i in range(n)], {Size(1, d): x})
    w.close({"name": "m", "pooling": "mean", "normalize": True, "max_length": 8}, corpus="none")
    reader = IndexReader(tmp_path / "ix")
    q = truncate((centres[rng.integers(0, 50, 100)] + 1.5 * rng.standard_normal((100, d))).astype(np.float32), d, True)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]

    def recall(plan):
        rows = FunnelSearcher(reader, plan).search({Size(1, d): q})[1]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])

    default = resolve_plan(reader.manifest, top=10)
    assert default.nprobe == 16
    assert recall(default) >= 0.9
    assert recall(FunnelPlan(Size(1, d), top=10, nprobe=1)) < 0.7  # what the default used to be (0.55)
