import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from adaretrieve.bench import ResultRow, Suite, check_expected, config_name, load_rows, to_markdown
from adaretrieve.cli.main import app
from adaretrieve.eval.timing import REPEATS, WARMUP
from adaretrieve.index.format import current_generation
from adaretrieve.search import FunnelPlan
from adaretrieve.sizes import Size

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_suite_grid(tmp_path):
    s = Suite(name="x", model="m", corpus="c", queries="q", qrels="r", index="i", shortlist=["2x64"], rerank="6x384",
              single=["2x64", "6x384"], two_stage=[{"shortlist": ["2x64", "4x128"], "k": [50, 200], "rerank": ["6x384"]}])
    configs = s.plans()
    assert configs[2] == FunnelPlan(Size(2, 64), 50, rerank=Size(6, 384), top=1000) and configs[0].rerank is None
    names = [c.name for c in configs]
    assert names == [config_name(c) for c in configs]
    assert names == ["single 2x64", "single 6x384", "2x64 k=50 -> 6x384", "2x64 k=200 -> 6x384",
                     "4x128 k=50 -> 6x384", "4x128 k=200 -> 6x384"]


def test_suite_grid_runs_funnels_and_refuses_what_a_plan_refuses():
    """A two_stage entry with ``then`` is a funnel; k below 1 and a widening funnel are refused as
    resolve_plan refuses them (code-review-3 A15.2: k=0 never silently becomes 1)."""
    from adaretrieve.errors import AdaError

    base = dict(name="x", model="m", corpus="c", queries="q", qrels="r", index="i", shortlist=["2x32"], rerank="6x384")
    s = Suite(**base, two_stage=[{"shortlist": "2x32", "k": [1000], "then": [{"size": "4x128", "k": 100}],
                                  "rerank": "6x384"}])
    (p,) = s.plans()
    assert p.name == "2x32 k=1000 -> 4x128 k=100 -> 6x384" and p.depth == 100 and p.sizes()[1] == Size(4, 128)
    for bad, words in (({"k": [0]}, "at least 1"), ({"k": [10], "then": [{"size": "4x128", "k": 100}]}, "funnel narrows"),
                       ({"k": [10], "then": [{"size": "4x128"}]}, "exactly 'size' and 'k'")):
        entry = {"shortlist": "2x32", "rerank": "6x384", **bad}
        with pytest.raises(AdaError, match=words):
            Suite(**base, two_stage=[entry]).check()


def test_check_expected():
    rows = [{"config": "single 6x384", "metrics": {"nDCG@10": 0.6451}}]
    ok = check_expected(rows, {"single 6x384": {"nDCG@10": [0.64508, 0.001]}})
    bad = check_expected(rows, {"single 6x384": {"nDCG@10": [0.70, 0.001]}, "single 2x64": {"nDCG@10": [0.1, 0.01]}})
    assert [c["ok"] for c in ok] == [True]
    assert [c["ok"] for c in bad] == [False, False] and bad[1]["got"] is None


def test_bench_end_to_end_and_check(tiny_model, corpus, queries_qrels, tmp_path):
    q, r = queries_qrels
    cfg = {"name": "tiny", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
           "index": str(tmp_path / "ix"), "shortlist": ["1x8", "2x16"], "rerank": "4x32", "single": ["1x8", "4x32"],
           "two_stage": [{"shortlist": ["2x16"], "k": [10], "rerank": ["4x32"]}], "latency_queries": 3, "refine": [1, 4],
           "expected": {"single 4x32": {"nDCG@10": [2.0, 0.01]}}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert [x["config"] for x in data["results"]] == ["single 1x8", "single 4x32", "2x16 k=10 -> 4x32",
                                                      "faiss RefineFlat(SQ8) 4x32 kf=1", "faiss RefineFlat(SQ8) 4x32 kf=4"]
    # refine with k factor 4 over 40 docs is exact: it must match exact full-size search
    by = {x["config"]: x["metrics"] for x in data["results"]}
    assert by["faiss RefineFlat(SQ8) 4x32 kf=4"]["nDCG@10"] == pytest.approx(by["single 4x32"]["nDCG@10"], abs=1e-3)
    assert data["results"][0]["encode_layers"] == 1 and data["machine"]["cores"] >= 1
    assert "| single 4x32 |" in (tmp_path / "rep" / "results.md").read_text()
    by_row = {x["config"]: x for x in data["results"]}
    # per-stage latency: encoding to each layer, then the three search stages, each within the search time
    two = by_row["2x16 k=10 -> 4x32"]
    assert set(two["stages_ms_batch1"]) == {"encode_to_shortlist_layer", "encode_to_rerank_layer", "shortlist", "gather",
                                           "rerank"}
    assert set(two["stages_ms_batched"]) == set(two["stages_ms_batch1"])
    search_stages = sum(two["stages_ms_batch1"][k]["mean"] for k in ("shortlist", "gather", "rerank"))
    assert 0 < search_stages <= two["search_ms_batch1"]["mean"]
    assert two["end_to_end_ms_batch1"]["p50"] > 0 and two["qps_batch1"] > 0 and two["qps_batched"] > 0
    assert set(by_row["single 1x8"]["stages_ms_batch1"]) == {"encode_to_shortlist_layer", "shortlist"}
    assert two["disk_bytes_per_doc"] > two["rerank_bytes_per_doc_on_disk"] >= 64  # 32 float16 dims + ids + shortlist
    assert "| 2x16 k=10 -> 4x32 | " in (tmp_path / "rep" / "results.md").read_text().split("Latency per stage")[1]
    # resident memory measured per dense row in a process serving only that row (refine rows: estimate only)
    assert {c for c, x in by_row.items() if x["resident_measured"]} == {"single 1x8", "single 4x32", "2x16 k=10 -> 4x32"}
    assert two["resident_measured"]["n_queries"] == data["n_queries"] and not two["resident_measured"]["torch_loaded"]
    assert "| 2x16 k=10 -> 4x32 | " in (tmp_path / "rep" / "results.md").read_text().split("index-file pages mapped")[1]
    # the pinned nDCG@10 of 2.0 cannot be met: --check fails, and the index is reused, not rebuilt
    mtime = (current_generation(tmp_path / "ix") / "manifest.json").stat().st_mtime
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--check", "--quiet"])
    assert res.exit_code == 1 and "expected 2.0" in res.stderr
    assert (current_generation(tmp_path / "ix") / "manifest.json").stat().st_mtime == mtime
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnonsense: 1\n")
    res = runner.invoke(app, ["bench", "--config", str(bad)])
    assert res.exit_code == 2 and "unknown keys ['nonsense']" in res.stderr


def test_tune_prints_a_search_command_within_budget(tiny_model, corpus, queries_qrels, tmp_path):
    q, r = queries_qrels
    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "1x8",
                              "--shortlist", "2x16", "--rerank", "4x32", "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms", "1000",
                              "--k", "5", "--k", "10", "--latency-queries", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    cmd = res.stdout.strip().splitlines()[-1]
    assert cmd.startswith(f"adaretrieve search --index {ix}") and "--shortlist" in cmd
    res = runner.invoke(app, ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms", "0.000001",
                              "--latency-queries", "3", "--quiet"])
    assert res.exit_code == 2 and "no configuration fits" in res.stderr


def test_bench_never_replaces_an_index_that_does_not_match_unless_told(tiny_model, corpus, queries_qrels, tmp_path):
    """Issue 12, item 3: an index at the suite's path built with other sizes is the user's; --rebuild replaces it."""
    q, r = queries_qrels
    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "1x8",
                              "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    before = current_generation(ix).name
    cfg = {"name": "tiny", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
           "index": str(ix), "shortlist": ["2x16"], "rerank": "4x32", "single": ["2x16"], "latency_queries": 2}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 2 and "--rebuild" in res.stderr
    assert current_generation(ix).name == before
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet", "--rebuild"])
    assert res.exit_code == 0, res.output
    assert current_generation(ix).name != before
SUITE_REPORTS = [p for p in sorted(RESULTS.glob("*/results.json")) if "suite" in json.loads(p.read_text())]


def test_every_suite_report_is_checked():
    assert {p.parent.name for p in SUITE_REPORTS} >= {"scifact-minilm", "dl19-minilm", "nfcorpus-minilm", "scifact-mpnet",
                                                     "scifact-minilm-starbucks"}


@pytest.mark.parametrize("path", SUITE_REPORTS, ids=lambda p: p.parent.name)
def test_committed_results_still_load_and_render(path):
    res = json.loads(path.read_text())
    rows = load_rows(res)
    assert [r.config for r in rows] == [r["config"] for r in res["results"]]
    for row, raw in zip(rows, res["results"]):
        assert row.to_dict()["metrics"] == raw["metrics"] and row.kind in ("dense", "bm25", "hybrid", "rrf", "refine")
    md = to_markdown(res, res.get("command", "?"))
    assert all(f"| {r.config} |" in md for r in rows)


class FakeLucene:
    """pyserini's LuceneSearcher stand-in: counts how often it is opened; ranks documents d0, d1, ..."""

    opened = 0

    def __init__(self, index):
        FakeLucene.opened += 1

    def set_bm25(self, k1, b):
        pass

    def search(self, text, k):
        return [SimpleNamespace(docid=f"d{j}", score=float(100 - j)) for j in range(min(k, 40))]

    def batch_search(self, texts, qids, k, threads):
        return {q: self.search(t, k) for q, t in zip(qids, texts)}


def test_bench_bm25_hybrid_rrf_rows_time_their_own_path_with_one_searcher(tiny_model, corpus, queries_qrels, tmp_path,
                                                                          monkeypatch):
    import adaretrieve.baselines.bm25 as bm25
    import adaretrieve.eval.pagecache as pagecache
    from adaretrieve.bench import run_suite

    FakeLucene.opened = 0
    monkeypatch.setattr(bm25, "start_jvm", lambda: None)
    monkeypatch.setattr(bm25, "_open_lucene", FakeLucene)
    monkeypatch.setattr(bm25, "build_bm25_index", lambda corpus, out, **kw: Path(out))
    evicted = []
    real_evict = pagecache.evict
    monkeypatch.setattr(pagecache, "evict", lambda path, arrays=(): (evicted.append(path), real_evict(path, arrays)))
    q, r = queries_qrels
    suite = Suite(name="tiny", model=str(tiny_model), corpus=str(corpus), queries=str(q), qrels=str(r),
                  index=str(tmp_path / "ix"), shortlist=["1x8", "2x16"], rerank="4x32", single=["2x16"],
                  two_stage=[{"shortlist": ["2x16"], "k": [10], "rerank": ["4x32"]}], latency_queries=3, bm25=True,
                  hybrid=[{"k": 20, "rerank": "4x32"}], rrf=["2x16"])
    res = run_suite(suite, progress=False)
    rows = {x["config"]: x for x in res["results"]}
    assert FakeLucene.opened == 1  # one searcher for the suite, not one per call
    bm, hy, rrf = rows["bm25 (k1=0.9, b=0.4)"], rows["bm25 k=20 -> 4x32"], rows["rrf(bm25, single 2x16)"]
    assert (bm["kind"], hy["kind"], rrf["kind"]) == ("bm25", "hybrid", "rrf")
    assert set(bm["bm25_setup_seconds"]) == {"jvm_start", "searcher_open"}
    # hybrid and RRF carry their own timings: their stages, and the dense encoding end to end
    assert set(hy["stages_ms_batch1"]) == {"encode_to_rerank_layer", "bm25", "gather", "rerank"}
    assert set(rrf["stages_ms_batch1"]) == {"encode_to_shortlist_layer", "bm25", "shortlist", "fusion"}
    assert hy["search_ms_batch1"] != bm["search_ms_batch1"] and rrf["search_ms_batch1"] != bm["search_ms_batch1"]
    assert hy["encode_ms_batch1"]["p50"] > 0 and hy["encode_layers"] == 4 and rrf["encode_layers"] == 2
    assert hy["end_to_end_ms_batch1"]["p50"] > hy["stages_ms_batch1"]["bm25"]["p50"]
    # every row: the same latency queries, warm-up and batched repeats
    assert res["timing"]["warmup"] == WARMUP and res["timing"]["repeats"] == REPEATS > 1
    for row in res["results"]:
        assert row["search_ms_batch1"]["repeats"] == 3 and row["end_to_end_ms_batch1"]["repeats"] == 3, row["config"]
        assert row["batched_repeats"] == REPEATS, row["config"]
    # rows that read float16 rerank rows through the memory map are also timed cold
    two = rows["2x16 k=10 -> 4x32"]
    assert two["search_ms_batch1_cold"]["repeats"] == 3 and hy["search_ms_batch1_cold"]["repeats"] == 3
    assert "search_ms_batch1_cold" not in {k for k, v in rows["single 2x16"].items() if v is not None}
    assert len(evicted) == 2 * (WARMUP + 3) and all(str(p).endswith(".npy") for p in evicted)
    md = to_markdown(res, "cmd")
    assert "BM25 set-up, once per suite" in md and "| bm25 k=20 -> 4x32 |" in md.split("Latency per stage")[1]


def test_result_row_round_trips():
    row = ResultRow.from_dict({"config": "single 2x64", "shortlist": "2x64", "k": None, "rerank": None,
                               "metrics": {"nDCG@10": 0.5}, "search_ms_batch1": {"p50": 1.0, "p95": 2.0, "mean": 1.2,
                                                                                 "repeats": 5},
                               "search_ms_batched": 0.5, "build_seconds": 3.0})
    assert row.kind == "dense" and row.extra == {"build_seconds": 3.0}
    assert ResultRow.from_dict(row.to_dict()) == row


def _ann_suite(tiny_model, corpus, queries_qrels, tmp_path, factory, **extra):
    q, r = queries_qrels
    cfg = {"name": "ann", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
           "index": str(tmp_path / "ix"), "shortlist": ["2x16"], "rerank": "4x32", "factory": factory,
           "single": ["2x16", "4x16"], "two_stage": [{"shortlist": ["2x16"], "k": [5], "rerank": ["4x32"]}],
           "latency_queries": 2, "metrics": ["R@10"], **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_sweeps_nprobe_over_ivf_shortlists_and_leaves_flat_ones_alone(tiny_model, tmp_path, queries_qrels):
    """Issue 13, item 3: each configuration over an IVF shortlist runs once per nprobe (a flat one,
    here the derived 4x16, once); the setting reaches FAISS, so recall rises to exact at nprobe = nlist."""
    from tests.conftest import make_corpus

    corpus = make_corpus(tmp_path / "corpus.jsonl", n=200)
    path = _ann_suite(tiny_model, corpus, queries_qrels, tmp_path, "IVF8,Flat", nprobe=[1, 8])
    res = CliRunner().invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "rep" / "results.json").read_text())
    by = {x["config"]: x for x in data["results"]}
    assert list(by) == ["single 2x16 nprobe=1", "single 2x16 nprobe=8", "single 4x16",
                        "2x16 k=5 nprobe=1 -> 4x32", "2x16 k=5 nprobe=8 -> 4x32"]
    assert by["single 2x16 nprobe=8"]["nprobe"] == 8 and by["single 4x16"].get("nprobe") is None
    assert by["single 2x16 nprobe=1"]["metrics"]["R@10"] <= by["single 2x16 nprobe=8"]["metrics"]["R@10"]
    rows = load_rows(data)
    assert rows[1].nprobe == 8 and config_name(data["results"][1]) == "single 2x16 nprobe=8"
    assert "| single 2x16 nprobe=8 |" in (tmp_path / "rep" / "results.md").read_text()
    # the command line overrides the suite's sweep
    res = CliRunner().invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep2"), "--quiet",
                                   "--nprobe", "2"])
    assert res.exit_code == 0, res.output
    names = [x["config"] for x in json.loads((tmp_path / "rep2" / "results.json").read_text())["results"]]
    assert names == ["single 2x16 nprobe=2", "single 4x16", "2x16 k=5 nprobe=2 -> 4x32"]


def test_bench_sweeps_ef_search_over_hnsw_and_refuses_settings_that_do_not_apply(tiny_model, corpus, queries_qrels,
                                                                                 tmp_path):
    path = _ann_suite(tiny_model, corpus, queries_qrels, tmp_path, "HNSW8", ef_search=[4, 64])
    res = CliRunner().invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert [x["config"] for x in data["results"]][:2] == ["single 2x16 ef_search=4", "single 2x16 ef_search=64"]
    assert data["results"][1]["ef_search"] == 64
    # nprobe on a suite without an IVF shortlist, and a negative ef_search: one line each, exit 2
    res = CliRunner().invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet",
                                   "--nprobe", "4"])
    assert res.exit_code == 2 and "nprobe applies to IVF shortlists" in res.stderr and "Traceback" not in res.stderr
    res = CliRunner().invoke(app, ["bench", "--config", str(path), "--quiet", "--ef-search", "-3"])
    assert res.exit_code == 2 and "--ef-search -3 must be at least 1" in res.stderr
    bad = _ann_suite(tiny_model, corpus, queries_qrels, tmp_path, "HNSW8", ef_search=[0])
    res = CliRunner().invoke(app, ["bench", "--config", str(bad), "--quiet"])
    assert res.exit_code == 2 and "ef_search [0] should be a list of whole numbers of at least 1" in res.stderr


def test_tune_sweeps_search_parameters_and_prints_them(tiny_model, queries_qrels, tmp_path):
    from tests.conftest import make_corpus

    q, r = queries_qrels
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=200)
    ix = tmp_path / "ix"
    res = CliRunner().invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "2x16",
                                   "--rerank", "4x32", "--factory", "IVF8,Flat", "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms",
                                   "1000", "--k", "10", "--latency-queries", "2", "--nprobe", "1", "--nprobe", "8",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "nprobe=" in res.stderr
    cmd = res.stdout.strip().splitlines()[-1]
    assert cmd.startswith(f"adaretrieve search --index {ix}") and "--nprobe " in cmd
    res = CliRunner().invoke(app, ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms",
                                   "1000", "--ef-search", "16", "--quiet"])
    assert res.exit_code == 2 and "ef_search applies to HNSW shortlists" in res.stderr


def test_each_row_names_its_measures_for_the_depth_it_returns(tiny_model, corpus, queries_qrels, tmp_path):
    """code-review-3 A3: a two-stage k=5 row returns 5 results per query, so the R@100 asked of the
    suite is computed and named R@5 for it (recall_within_depth), and the Markdown table shows it
    under R@5, with "-" under R@100; a single-stage row keeps R@100."""
    from adaretrieve.bench import run_suite
    from adaretrieve.eval import Evaluator

    q, r = queries_qrels
    suite = Suite(name="depth", model=str(tiny_model), corpus=str(corpus), queries=str(q), qrels=str(r),
                  index=str(tmp_path / "ix"), shortlist=["2x16"], rerank="4x32", single=["2x16"],
                  two_stage=[{"shortlist": ["2x16"], "k": [5], "rerank": ["4x32"]}], metrics=["nDCG@10", "R@100"],
                  latency_queries=2)
    res = run_suite(suite, progress=False)
    rows = {x["config"]: x for x in res["results"]}
    two, single = rows["2x16 k=5 -> 4x32"], rows["single 2x16"]
    assert two["depth"] == 5 and list(two["metrics"]) == ["nDCG@10", "R@5"]
    assert single["depth"] == 1000 and list(single["metrics"]) == ["nDCG@10", "R@100"]
    # the value is the recall of the 5 results returned
    from adaretrieve.data import read_qrels
    from adaretrieve.retriever import Retriever

    qrels = read_qrels(r)
    texts = {x["_id"]: x["text"] for x in map(json.loads, q.read_text().splitlines()) if x["_id"] in qrels}
    hits = Retriever(tmp_path / "ix", device="cpu").search(list(texts.values()), shortlist="2x16", k=5, rerank="4x32",
                                                          top=1000)
    run = {qid: dict(h) for qid, h in zip(texts, hits)}
    assert two["metrics"]["R@5"] == pytest.approx(Evaluator(qrels, ["R@5"])(run)["R@5"], abs=1e-5)
    md = to_markdown(res, "cmd").splitlines()
    header = next(line for line in md if line.startswith("| configuration | nDCG@10"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = {name: [c.strip() for c in next(line for line in md if line.startswith(f"| {name} |")).strip("|").split("|")]
             for name in rows}
    at = {name: dict(zip(cols, c)) for name, c in cells.items()}
    assert cols[1:4] == ["nDCG@10", "R@5", "R@100"]
    assert at["2x16 k=5 -> 4x32"]["R@100"] == "-" and at["2x16 k=5 -> 4x32"]["R@5"] == f"{two['metrics']['R@5']:.4f}"
    assert at["single 2x16"]["R@5"] == "-" and at["single 2x16"]["R@100"] == f"{single['metrics']['R@100']:.4f}"


def test_bench_backend_is_the_corpus_one_and_query_backend_the_queries(tiny_model, corpus, queries_qrels, tmp_path):
    """An index built by torch is refused to a suite whose corpus backend is onnx (its documents
    would differ: spec.DOCUMENT_FIELDS), naming the field; --query-backend onnx queries it as built."""
    from tests.conftest import module_or_skip

    module_or_skip("onnxruntime", "pip install 'adaretrieve[onnx]'")
    q, r = queries_qrels
    cfg = {"name": "tiny", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
           "index": str(tmp_path / "ix"), "shortlist": ["2x16"], "rerank": "4x32", "single": ["2x16"],
           "latency_queries": 2}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "a"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "b"), "--quiet", "--backend", "onnx"])
    assert res.exit_code == 2 and "vector spec backend" in res.stderr and "'torch' -> 'onnx'" in res.stderr, res.stderr
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "c"), "--quiet",
                              "--query-backend", "onnx"])
    assert res.exit_code == 0, res.output
    torch_run, onnx_run = (json.loads((tmp_path / d / "results.json").read_text())["results"][0] for d in ("a", "c"))
    assert onnx_run["metrics"]["nDCG@10"] == pytest.approx(torch_run["metrics"]["nDCG@10"], abs=1e-3)
    rep = json.loads((tmp_path / "c" / "results.json").read_text())
    assert (rep["backend"], rep["query_backend"]) == ("torch", "onnx")
    assert "Query encoder backend: onnx" in (tmp_path / "c" / "results.md").read_text()


def test_a_suite_names_a_kind_per_size_and_reports_quality_per_byte(tiny_model, corpus, queries_qrels, tmp_path):
    """Issue 24 item 4: a suite's `shortlist:` takes SIZE:KIND (as `index --shortlist` does); the
    index is built with that code; a code of the rerank size is reranked at it (binary + rescore);
    rows are named by their code and charged its bytes; the report has a bytes-per-document Pareto
    table and plot. Another kind at that size is a mismatch, named."""
    q, r = queries_qrels
    cfg = {"name": "codes", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
           "index": str(tmp_path / "ix"), "shortlist": ["1x8", "4x32:sign"], "rerank": "4x32", "single": ["1x8"],
           "two_stage": [{"shortlist": ["1x8", "4x32"], "k": [10], "rerank": ["4x32"]}], "latency_queries": 2,
           "metrics": ["nDCG@10", "R@10"]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 0, res.output
    from adaretrieve.search import IndexReader

    m = IndexReader(tmp_path / "ix").manifest
    assert {e["size"]: e["factory"] for e in m.shortlist} == {"1x8": "Flat", "4x32": "sign"}
    data = json.loads((tmp_path / "rep" / "results.json").read_text())
    by = {x["config"]: x for x in data["results"]}
    assert list(by) == ["single 1x8", "1x8 k=10 -> 4x32", "4x32:sign k=10 -> 4x32"]
    sign = by["4x32:sign k=10 -> 4x32"]
    assert sign["shortlist_kind"] == "sign" and sign["resident_bytes_per_doc"] == 4  # 32 bits
    assert by["1x8 k=10 -> 4x32"]["resident_bytes_per_doc"] == 32 and "shortlist_kind" not in by["single 1x8"]
    # the row is what `search` gives for the same options
    res = runner.invoke(app, ["search", "--index", str(tmp_path / "ix"), "--queries", str(q), "--qrels", str(r),
                              "--shortlist", "4x32", "--k", "10", "--rerank", "4x32", "--top", "10", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["nDCG@10"] == pytest.approx(sign["metrics"]["nDCG@10"], abs=1e-6)
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "## Quality per byte" in md and "| 4x32:sign k=10 -> 4x32 | 4 |" in md
    assert (tmp_path / "rep" / "quality_vs_memory.png").exists()
    # the same suite reuses the index; another kind at 4x32 is named as the difference
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep2"), "--quiet"])
    assert res.exit_code == 0, res.output
    cfg["shortlist"] = ["1x8", "4x32:sq8"]
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep3"), "--quiet"])
    assert res.exit_code == 2 and "4x32 sign (the suite's: SQ8)" in res.stderr, res.output


def test_quality_per_byte_names_recall_as_the_suite_asked_at_each_rows_depth():
    """The bytes table's recall column is the suite's first recall (R@100), each row's at its depth (a
    k=50 row's R@50), not whichever depth-named column happens to come first (the demo's R@50)."""
    from adaretrieve.bench.measure import ResultRow
    from adaretrieve.bench.report import quality_per_byte

    def row(config, depth, b, metrics):
        return ResultRow.from_dict({"config": config, "kind": "dense", "shortlist": "2x64", "metrics": metrics,
                                    "search_ms_batch1": {"p50": 1, "p95": 1, "mean": 1}, "search_ms_batched": 1.0,
                                    "depth": depth, "resident_bytes_per_doc": b})
    rows = [row("2x64 k=50 -> 6x384", 50, 256, {"nDCG@10": 0.2, "R@50": 0.22}),
            row("6x384:pca128 k=200 -> 6x384", 200, 16, {"nDCG@10": 0.6, "R@100": 0.9})]
    lines = quality_per_byte(rows, ["nDCG@10", "RR@10", "R@100", "R@1000"])
    assert "| configuration | B/doc | nDCG@10 | R@100 | front |" in lines
    assert "| 2x64 k=50 -> 6x384 | 256 | 0.2000 | 0.2200 |  |" in lines
    assert "| 6x384:pca128 k=200 -> 6x384 | 16 | 0.6000 | 0.9000 | yes |" in lines


def test_the_reports_bytes_table_uses_the_suites_recall():
    """At the call site: the SciFact report (metrics nDCG@10, RR@10, R@100, R@1000; k=50 rows named R@50)
    puts R@100 in its bytes table, a k=50 row's value being its R@50."""
    from adaretrieve.bench.report import to_markdown

    res = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "scifact-minilm" / "results.json").read_text())
    md = to_markdown(res, "x").split("## Quality per byte")[1]
    assert "| configuration | B/doc | nDCG@10 | R@100 | front |" in md
    k50 = next(r for r in res["results"] if r["config"] == "2x64 k=50 -> 6x384")
    assert f"| 2x64 k=50 -> 6x384 | 256 | {k50['metrics']['nDCG@10']:.4f} | {k50['metrics']['R@50']:.4f} |" in md
