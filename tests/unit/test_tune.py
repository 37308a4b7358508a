"""Choosing an operating point under budgets, on the Starbucks SciFact suite's own measurements,
and the RAM a shortlist index keeps per document, checked against FAISS's serialised indexes."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from adaretrieve.bench import config_name
from adaretrieve.cli.main import app
from adaretrieve.faiss_util import resident_bytes_per_doc
from adaretrieve.sizes import parse_size
from adaretrieve.spec import VectorSpec
from adaretrieve.tune import best_within_budget, latency_ms, resident_mb

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "scifact-minilm-starbucks" / "results.json"


@pytest.fixture(scope="module")
def starbucks():
    data = json.loads(RESULTS.read_text())
    return data["results"], data["index"]["n_docs"]


def pick(rows, n_docs, **budgets):
    row = best_within_budget(rows, "nDCG@10", n_docs, **budgets)
    return None if row is None else config_name(row)


def brute_force(rows, n_docs, metric, budget_ms, budget_ram_mb):
    """Every row that fits both budgets, best metric, then lowest latency."""
    fits = [r for r in rows if latency_ms(r) <= budget_ms and resident_mb(r, n_docs) <= budget_ram_mb]
    return config_name(min(fits, key=lambda r: (-r["metrics"][metric], latency_ms(r)))) if fits else None


def test_ram_budget_is_applied_before_choosing(starbucks):
    rows, n = starbucks
    assert n == 5183 and len(rows) == 18
    # one memory model (code-review-3 A1): a two-stage row needs its shortlist and the float16 rerank
    # rows its latency reads (768 B/doc here, unmeasured, so the whole file); single stage its index
    assert resident_mb(rows[0], n) == pytest.approx(64 * n / 1e6)
    two = next(r for r in rows if r["config"] == "3x64 k=1000 -> 6x384")
    assert resident_mb(two, n) == pytest.approx((256 + 768) * n / 1e6)
    # single 6x384 (0.620) needs 8 MB; the 3x64 shortlist (1.3 MB) reranked at 6x384 (4 MB of rows) is as good
    assert pick(rows, n, budget_ms=40, budget_ram_mb=6) == "3x64 k=1000 -> 6x384"
    assert pick(rows, n, budget_ms=30.5, budget_ram_mb=6) == "3x64 k=200 -> 6x384"
    assert pick(rows, n, budget_ms=30.5, budget_ram_mb=8) == pick(rows, n, budget_ms=30.5) == "single 6x384"
    assert pick(rows, n, budget_ram_mb=3) == "single 4x128"  # no two-stage row fits: the rerank rows alone are 4 MB
    assert pick(rows, n, budget_ms=10) == "single 1x16"
    assert pick(rows, n, budget_ms=5) is None and pick(rows, n, budget_ms=40, budget_ram_mb=0.1) is None
    for ms in (7, 15, 20, 22.5, 29.6, 30, 30.2, 31, 32, 40):
        for mb in (0.5, 1.5, 3, 5, 6, 7, 10):
            assert pick(rows, n, budget_ms=ms, budget_ram_mb=mb) == brute_force(rows, n, "nDCG@10", ms, mb), (ms, mb)


def test_a_measured_row_is_charged_its_private_memory_and_the_index_file_pages_it_mapped():
    row = {"resident_bytes_per_doc": 64, "rerank_bytes_per_doc_on_disk": 768,
           "resident_measured": {"anon_bytes": 1_000_000, "file_bytes": 250_000}}
    assert resident_mb(row, 5000) == pytest.approx(1.25)


def test_equal_quality_goes_to_the_faster():
    rows = [{"config": name, "shortlist": "1x8", "k": None, "rerank": None, "metrics": {"nDCG@10": q},
             "encode_ms_batch1": {"p50": enc}, "search_ms_batch1": {"p50": 1.0}, "resident_bytes_per_doc": 32}
            for name, q, enc in (("slow", 0.5, 9.0), ("fast", 0.5, 2.0), ("worse", 0.4, 1.0))]
    assert best_within_budget(rows, "nDCG@10", 100, budget_ms=20)["config"] == "fast"
    rows[2]["resident_bytes_per_doc"] = None  # unknown RAM never fits a RAM budget
    assert best_within_budget(rows, "nDCG@10", 100, budget_ms=2.5, budget_ram_mb=1) is None


def test_tune_command_picks_within_every_budget(starbucks, monkeypatch, tmp_path):
    """The command on the suite's measurements (the sweep itself is replaced by them)."""
    rows, n = starbucks
    manifest = SimpleNamespace(model={"path": "minilm", "name": "minilm", "max_length": 512}, corpus="corpus.jsonl",
                               shortlist_sizes=[parse_size(s) for s in ("1x16", "2x32", "3x64", "4x128", "5x256")],
                               shortlist=[{"size": s, "factory": "Flat"} for s in ("1x16", "2x32", "3x64", "4x128", "5x256")],
                               rerank_size=parse_size("6x384"), rerank={"size": "6x384"},
                               vector_spec=VectorSpec(weights_sha256="x", pooling="mean", normalize=True, max_length=512))
    # run_suite first: patching it imports adaretrieve.bench.run, which must bind the real IndexReader
    monkeypatch.setattr("adaretrieve.bench.run_suite", lambda suite, progress=True: {"results": rows})
    monkeypatch.setattr("adaretrieve.search.IndexReader", lambda path: SimpleNamespace(manifest=manifest, n_docs=n))
    args = ["tune", "--index", str(tmp_path / "ix"), "--queries", "q.jsonl", "--qrels", "qrels.tsv", "--quiet"]
    res = CliRunner().invoke(app, [*args, "--budget-ms", "30.5", "--budget-ram-mb", "10"])
    assert res.exit_code == 0, res.output
    assert "best within budget: single 6x384: nDCG@10 0.6198" in res.stdout
    res = CliRunner().invoke(app, [*args, "--budget-ms", "40", "--budget-ram-mb", "6"])
    assert res.exit_code == 0 and "best within budget: 3x64 k=1000 -> 6x384: nDCG@10 0.6198" in res.stdout
    assert res.stdout.strip().splitlines()[-1].endswith("--shortlist 3x64 --k 1000 --rerank 6x384 --top 1000")
    res = CliRunner().invoke(app, [*args, "--budget-ms", "40", "--budget-ram-mb", "0.1"])
    assert res.exit_code == 2 and "no configuration fits 40.0 ms and 0.1 MB" in res.stderr


@pytest.mark.parametrize("factory,expected", [
    ("Flat", 4 * 64), ("SQfp16", 2 * 64), ("SQbf16", 2 * 64), ("SQ8", 64), ("SQ4", 32), ("SQ6", 48),
    ("PQ16", 16), ("PQ16x4", 8), ("HNSW32", 4 * 64 + 32 * 2 * 4 + 16), ("HNSW16,SQ8", 64 + 16 * 2 * 4 + 16),
    ("IVF256,Flat", 4 * 64 + 8), ("IVF256,SQ8", 64 + 8), ("IVF256,PQ16", 16 + 8), ("IDMap,Flat", 4 * 64 + 8),
    ("PCA32,SQ8", 32), ("OPQ16_32,PQ16", 16), ("SQ8,RFlat", 64 + 4 * 64),
    ("BFlat", 8), ("BHNSW32", 8 + 32 * 2 * 4 + 16), ("BIVF256", 8 + 8),
    ("LSH", None), ("RQ4x8", None),
])
def test_resident_bytes_per_doc_by_factory(factory, expected):
    assert resident_bytes_per_doc(64, factory) == expected


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "SQ8", "SQ4", "HNSW16", "HNSW32,SQ8", "IVF16,Flat", "IVF16,SQ8",
                                     "PQ8x4", "BFlat", "BHNSW16", "BIVF16"])
def test_resident_bytes_match_what_faiss_stores(factory):
    """The estimate against the bytes FAISS writes (and reads back into RAM) per added vector: the
    growth from n to 2n vectors, so codebooks, centroids and headers cancel."""
    import faiss

    from adaretrieve.faiss_util import is_binary_factory
    from adaretrieve.index.writer import make_faiss_index

    n, d = 1000, 32
    x = np.random.default_rng(0).normal(size=(2 * n, d)).astype(np.float32)
    binary = is_binary_factory(factory)
    if binary:
        x = np.packbits(x > 0, axis=1)
    serialize = faiss.serialize_index_binary if binary else faiss.serialize_index
    ix = make_faiss_index(d, factory)
    ix.train(x[:n])
    ix.add(x[:n])
    one = serialize(ix).nbytes
    ix.add(x[n:])
    per_vector = (serialize(ix).nbytes - one) / n
    assert resident_bytes_per_doc(d, factory) == pytest.approx(per_vector, rel=0.05), per_vector


def test_bench_rows_count_the_stored_factory(tmp_path):
    """A row's resident bytes follow the shortlist index the reader would load: the stored factory,
    or a flat float32 index when the size is cut from a stored prefix."""
    from adaretrieve.bench import shortlist_resident_bytes_per_doc
    from adaretrieve.index.writer import IndexWriter
    from adaretrieve.search import IndexReader
    from adaretrieve.sizes import Size

    n = 64
    x = np.random.default_rng(0).normal(size=(n, 32)).astype(np.float32)
    model = {"name": "r", "path": "r", "weights_sha256": "abc", "normalize": True, "pooling": "mean", "max_length": 8,
             "n_layers": 2, "hidden_size": 32}
    w = IndexWriter(tmp_path / "ix", n, [Size(1, 16)], Size(2, 32), factory="SQ8")
    w.add([f"d{i}" for i in range(n)], {Size(1, 16): x[:, :16], Size(2, 32): x})
    w.close(model, corpus="none")
    m = IndexReader(tmp_path / "ix").manifest
    assert shortlist_resident_bytes_per_doc(m, Size(1, 16)) == 16  # SQ8: one byte per dim
    assert shortlist_resident_bytes_per_doc(m, Size(2, 8)) == 32  # cut from the rerank rows: flat float32


def test_tune_encodes_queries_as_the_index_does(tiny_model, corpus, queries_qrels, tmp_path, monkeypatch):
    """code-review-3 A4: over an index built with cls pooling and the query prefix 'q: ' (the tiny
    model's folder says mean pooling, no prefix), tune's `single <full>` row scores what `adaretrieve
    search` scores on the same queries: bench and tune encode queries with the index's vector spec.
    A bench suite over that index with the folder's defaults is refused, naming the field."""
    import adaretrieve.bench as bench
    from adaretrieve.data import read_qrels
    from adaretrieve.eval import Evaluator, read_run

    q, r = queries_qrels
    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "2x16",
                              "--shortlist", "4x32", "--rerank", "4x32", "--pooling", "cls", "--query-prefix", "q: ",
                              "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    seen = {}
    real = bench.run_suite

    def spy(suite, progress=True):
        seen["res"] = real(suite, progress=progress)
        return seen["res"]

    monkeypatch.setattr("adaretrieve.bench.run_suite", spy)
    res = runner.invoke(app, ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms", "1000",
                              "--k", "10", "--latency-queries", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    tuned = {x["config"]: x["metrics"]["nDCG@10"] for x in seen["res"]["results"]}
    run = tmp_path / "run.trec"
    res = runner.invoke(app, ["search", "--index", str(ix), "--queries", str(q), "--shortlist", "4x32", "--rerank", "none",
                              "--top", "1000", "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    searched = Evaluator(read_qrels(r), ["nDCG@10"])(read_run(run))["nDCG@10"]
    assert tuned["single 4x32"] == pytest.approx(searched, abs=1e-5)
    monkeypatch.undo()  # bench itself from here on
    # a suite whose encoder makes other document vectors (the folder's mean pooling) is refused, naming it
    cfg = {"name": "tiny", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
           "index": str(ix), "shortlist": ["2x16"], "rerank": "4x32", "single": ["2x16"], "latency_queries": 2}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 2 and "vector spec pooling" in res.stderr and "'cls' -> 'mean'" in res.stderr, res.stderr
    # the same suite with the index's pooling reuses it, and queries it with the index's prefix
    path.write_text(yaml.safe_dump({**cfg, "pooling": "cls"}))
    res = runner.invoke(app, ["bench", "--config", str(path), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 0, res.output


def test_the_printed_search_command_runs_the_chosen_plan(tiny_model, corpus, queries_qrels, tmp_path, monkeypatch):
    """tune's last line is built from the chosen row's FunnelPlan (bench.suite.search_args): run as
    printed, `search` scores what tune measured for that row; a funnel's stages print as --then."""
    import shlex

    import adaretrieve.bench as bench
    from adaretrieve.bench.suite import plan_of, search_args
    from adaretrieve.data import read_qrels
    from adaretrieve.eval import Evaluator, read_run
    from adaretrieve.search import FunnelPlan, resolve_plan

    q, r = queries_qrels
    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "1x8",
                              "--rerank", "4x32", "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    seen = {}
    real = bench.run_suite
    monkeypatch.setattr("adaretrieve.bench.run_suite", lambda suite, progress=True: seen.setdefault("res", real(suite)))
    res = runner.invoke(app, ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms", "1000",
                              "--k", "3", "--k", "20", "--latency-queries", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    best = next(x for x in seen["res"]["results"] if res.stdout.startswith(f"best within budget: {x['config']}:"))
    cmd = shlex.split(res.stdout.strip().splitlines()[-1])
    assert cmd[:2] == ["adaretrieve", "search"] and "--k" in cmd or best["rerank"] is None
    res = runner.invoke(app, [*cmd[1:], "--out", str(tmp_path / "run.trec"), "--quiet"])
    assert res.exit_code == 0, res.output
    got = Evaluator(read_qrels(r), ["nDCG@10"])(read_run(tmp_path / "run.trec"))["nDCG@10"]
    assert got == pytest.approx(best["metrics"]["nDCG@10"], abs=1e-5)
    # the options resolve back to the plan, funnels and search settings included
    from adaretrieve.search import IndexReader

    m = IndexReader(ix).manifest
    for plan in (plan_of(best), FunnelPlan("1x8", 30, (("2x16", 10),), "4x32", top=10, nprobe=4),
                 FunnelPlan("1x8", top=1000), FunnelPlan("1x8", 50, rerank="4x32", top=1000, ef_search=64)):
        a = search_args(plan)
        ks = [int(a[i + 1]) for i, x in enumerate(a) if x == "--k"]
        then = [(a[i + 1], ks[j + 1]) for j, i in enumerate(i for i, x in enumerate(a) if x == "--then")]
        opt = {x: a[i + 1] for i, x in enumerate(a) if x.startswith("--") and x not in ("--k", "--then")}
        again = resolve_plan(m, opt["--shortlist"], ks[0] if ks else None, then, opt["--rerank"], int(opt["--top"]),
                             int(opt["--nprobe"]) if "--nprobe" in opt else None,
                             int(opt["--ef-search"]) if "--ef-search" in opt else None)
        assert again == plan, a


def test_bytes_per_document_budget():
    """Issue 24 item 4: `best_within_budget(..., budget_bytes_per_doc=N)` keeps the rows whose
    shortlist codes take at most N bytes a document (unknown: none), and picks the best of them;
    the same choice as brute force over every budget."""
    from adaretrieve.bench.verdicts import bytes_per_doc

    rows = [{"config": c, "metrics": {"nDCG@10": q}, "encode_ms_batch1": {"p50": 1.0}, "search_ms_batch1": {"p50": ms},
             "resident_bytes_per_doc": b}
            for c, q, ms, b in (("flat 2x64", 0.60, 1.0, 256), ("6x384:sign", 0.64, 2.0, 48), ("6x384:pca128", 0.645, 2.0, 16),
                                ("6x384:pca64", 0.62, 1.5, 8), ("1x16:sign", 0.40, 0.5, 2), ("unknown", 0.99, 0.1, None))]
    assert bytes_per_doc(rows[0]) == 256 and bytes_per_doc(rows[-1]) is None
    for budget in (1, 2, 4, 8, 15, 16, 47, 48, 255, 256, 1e9):
        got = best_within_budget(rows, "nDCG@10", 1000, budget_bytes_per_doc=budget)
        fits = [r for r in rows if r["resident_bytes_per_doc"] is not None and r["resident_bytes_per_doc"] <= budget]
        want = max(fits, key=lambda r: r["metrics"]["nDCG@10"]) if fits else None
        assert got is want, budget
    assert best_within_budget(rows, "nDCG@10", 1000, budget_ms=3.0, budget_bytes_per_doc=16)["config"] == "6x384:pca128"
    assert best_within_budget(rows, "nDCG@10", 1000, budget_ms=2.9, budget_bytes_per_doc=16)["config"] == "6x384:pca64"


def test_tune_budget_bytes_per_doc_tries_codes_of_the_rerank_size(tiny_model, corpus, queries_qrels, tmp_path, monkeypatch):
    """`tune --budget-bytes-per-doc N` (no latency budget needed) over an index whose rerank size is
    also stored as sign bits: the code + rescore row is among those tried, and with 4 B a document
    only the 4x32 code's rows fit (the 1x8 float shortlist takes 32)."""
    q, r = queries_qrels
    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "1x8",
                              "--shortlist", "4x32:sign", "--rerank", "4x32", "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    import adaretrieve.bench as bench

    seen = {}
    real = bench.run_suite
    monkeypatch.setattr("adaretrieve.bench.run_suite", lambda suite, progress=True: seen.setdefault("res", real(suite)))
    args = ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--k", "10", "--latency-queries", "2"]
    res = runner.invoke(app, [*args, "--budget-bytes-per-doc", "4"])
    assert res.exit_code == 0, res.output
    tried = {x["config"]: x for x in seen["res"]["results"]}
    assert set(tried) == {"single 1x8", "single 4x32:sign", "1x8 k=10 -> 4x32", "4x32:sign k=10 -> 4x32"}
    assert tried["4x32:sign k=10 -> 4x32"]["resident_bytes_per_doc"] == 4
    assert res.stdout.startswith("best within budget: ") and "1x8" not in res.stdout  # 32 B/doc: over
    assert "--shortlist 4x32 " in res.stdout.strip().splitlines()[-1]
    res = runner.invoke(app, [*args, "--budget-bytes-per-doc", "1", "--quiet"])
    assert res.exit_code == 2 and "no configuration fits 1.0 B/doc" in res.stderr, res.output
    res = runner.invoke(app, [*args[:-4], "--quiet"])
    assert res.exit_code == 2 and "--budget-ms" in res.stderr and "--budget-bytes-per-doc" in res.stderr, res.output
