"""The command line end to end on a tiny model, and every bad input as one line + non-zero exit."""

import json
import re

import pytest
from typer.testing import CliRunner

from adaretrieve.cli.main import app
from adaretrieve.index.format import current_generation

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def err_line(res):
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert lines, f"no stderr; output: {res.output}"
    return lines[-1]


def build(tiny_model, corpus, out, *extra):
    return run("index", "--corpus", corpus, "--model", tiny_model, "--shortlist", "1x8", "--shortlist", "2x16",
               "--rerank", "4x32", "--out", out, "--quiet", *extra)


@pytest.fixture
def index_dir(tiny_model, corpus, tmp_path):
    res = build(tiny_model, corpus, tmp_path / "ix")
    assert res.exit_code == 0, res.output
    return tmp_path / "ix"


def test_index_search_eval(index_dir, queries_qrels, tmp_path):
    m = json.loads((current_generation(index_dir) / "manifest.json").read_text())
    assert m["n_docs"] == 40 and m["rerank"]["dtype"] == "float16"
    assert [s["size"] for s in m["shortlist"]] == ["1x8", "2x16"]
    assert len(m["model"]["weights_sha256"]) == 64 and m["model"]["pooling"] == "mean"
    q, r = queries_qrels
    out = tmp_path / "run.trec"
    res = run("search", "--index", index_dir, "--queries", q, "--qrels", r, "--shortlist", "2x16", "--rerank", "4x32",
              "--k", 10, "--top", 20, "--out", out, "--json", "--quiet")
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(scores) == {"nDCG@10", "RR@10", "R@10"}  # a run of 10 per query: R@100 and R@1000 are R@10
    assert re.search(r"\[shortlist [0-9.]+, gather [0-9.]+, rerank [0-9.]+\]", res.stderr), res.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 8 * 10  # k=10 candidates per query, top 20 asked
    res2 = run("eval", "--run", out, "--qrels", r, "--metrics", "nDCG@10,RR@10,R@10", "--json")
    assert res2.exit_code == 0 and json.loads(res2.stdout) == scores
    # derived shortlist (1x4 from 1x8) and single stage
    res3 = run("search", "--index", index_dir, "--queries", q, "--shortlist", "1x4", "--rerank", "none", "--top", 5,
               "--out", tmp_path / "r2.trec", "--quiet")
    assert res3.exit_code == 0, res3.output
    assert len((tmp_path / "r2.trec").read_text().splitlines()) == 8 * 5


def test_one_off_query_prints_titles(index_dir):
    res = run("search", "--index", index_dir, "cancer risk", "--quiet")
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0].split()
    assert first[0] == "1" and first[2].startswith("d") and len(first) > 3


@pytest.mark.parametrize("sizes,msg", [
    (["--shortlist", "4by32"], "size '4by32' is not of the form LAYERSxDIMS"),
    (["--shortlist", "2x64"], "shortlist size 2x64: dim 64 exceeds the model's hidden size 32"),
    (["--shortlist", "9x8"], "shortlist size 9x8: layer 9 is outside 1..4"),
])
def test_index_bad_sizes(tiny_model, corpus, tmp_path, sizes, msg):
    res = run("index", "--corpus", corpus, "--model", tiny_model, *sizes, "--out", tmp_path / "ix", "--quiet")
    assert res.exit_code == 2 and msg in err_line(res)
    assert not (tmp_path / "ix").exists()


def test_index_bad_corpora(tiny_model, tmp_path):
    cases = {
        "missing": (None, "does not exist"),
        "empty": ("", "is empty"),
        "badjson": ('{"_id": "a", "text": "x"}\n{"_id": "b" "text": "y"}\n', "bad.jsonl:2: not valid JSON"),
        "dups": ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "duplicate doc id 'a'"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / ("bad.jsonl" if name == "badjson" else f"{name}.jsonl")
        if content is not None:
            p.write_text(content)
        res = run("index", "--corpus", p, "--model", tiny_model, "--shortlist", "1x8", "--out", tmp_path / name, "--quiet")
        assert res.exit_code == 2, (name, res.output)
        assert msg in err_line(res), (name, err_line(res))
        assert not (tmp_path / name).exists()


def test_failures_leave_existing_index_untouched(index_dir, tiny_model, tmp_path):
    def snapshot():
        return {str(p.relative_to(index_dir)): p.read_bytes() for p in sorted(index_dir.rglob("*")) if p.is_file()}

    before = snapshot()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\nnot json\n')
    res = build(tiny_model, bad, index_dir, "--overwrite")
    assert res.exit_code == 2 and "bad.jsonl:2" in err_line(res)
    res = build(tiny_model, bad, index_dir)  # no --overwrite
    assert res.exit_code == 2 and "already exists" in err_line(res)
    assert snapshot() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_search_errors(index_dir, queries_qrels, other_tiny_model, tmp_path):
    q, r = queries_qrels
    keep = ("--out", tmp_path / "run.trec")
    res = run("search", "--index", index_dir, "--queries", q, "--shortlist", "3x8", "--quiet", *keep)
    assert res.exit_code == 2
    assert "shortlist size 3x8 is not in index" in err_line(res) and "shortlist 1x8, 2x16; rerank 4x32" in err_line(res)
    res = run("search", "--index", index_dir, "--queries", q, "--rerank", "4x64", "--quiet", *keep)
    assert res.exit_code == 2 and "rerank size 4x64: dim 64 exceeds the model's hidden size 32" in err_line(res)
    res = run("search", "--index", index_dir, "--queries", q, "--model", other_tiny_model, "--quiet", *keep)
    assert res.exit_code == 2 and "is not the model that built" in err_line(res)
    empty = tmp_path / "empty_q.jsonl"
    empty.write_text('{"_id": "1", "text": "cell"}\n{"_id": "2", "text": ""}\n')
    res = run("search", "--index", index_dir, "--queries", empty, "--quiet", *keep)
    assert res.exit_code == 2 and "query '2' has an empty text" in err_line(res)
    res = run("search", "--index", index_dir, "   ", "--quiet")
    assert res.exit_code == 2 and "empty" in err_line(res)
    res = run("search", "--index", tmp_path / "nope", "--queries", q, *keep)
    assert res.exit_code == 2 and "does not exist" in err_line(res)
    res = run("search", "--index", index_dir, "--queries", q, "--ef-search", "-1", "--quiet", *keep)
    assert res.exit_code == 2 and "--ef-search -1 must be at least 1" in err_line(res)
    res = run("search", "--index", index_dir, "--queries", q, "--nprobe", "4", "--quiet", *keep)
    assert res.exit_code == 2 and "nprobe applies to IVF shortlists" in err_line(res)


def test_search_with_nowhere_for_the_results_is_refused(index_dir, queries_qrels):
    q, _ = queries_qrels
    res = run("search", "--index", index_dir, "--queries", q, "--quiet")
    assert res.exit_code == 2
    assert "pass --out FILE to keep the run or --qrels FILE to score it" in err_line(res)
    assert len([x for x in res.stderr.splitlines() if x.strip()]) == 1


def test_search_top_above_last_k_warns_and_names_recall_by_the_real_depth(index_dir, queries_qrels, tmp_path):
    q, r = queries_qrels
    common = ("search", "--index", index_dir, "--queries", q, "--qrels", r, "--shortlist", "2x16", "--json", "--quiet")
    res = run(*common, "--k", 10)  # --top omitted: all the last stage ranks, no warning (newcomer-3)
    assert res.exit_code == 0 and "warning" not in res.stderr, res.output
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    assert list(scores) == ["nDCG@10", "RR@10", "R@10"]
    res = run(*common, "--k", 10, "--top", 1000)
    assert res.exit_code == 0, res.output
    warning = ("warning: --top 1000 > --k 10: a two-stage search returns at most 10 results per query; "
               "R@100 is R@10, R@1000 is R@10")
    assert warning in res.stderr.splitlines()
    assert json.loads(res.stdout.strip().splitlines()[-1]) == scores
    exact = run(*common, "--k", 10, "--top", 10, "--metrics", "R@10")
    assert exact.exit_code == 0 and "warning" not in exact.stderr
    assert json.loads(exact.stdout.strip().splitlines()[-1])["R@10"] == scores["R@10"]
    # a funnel is capped by its last k; text output names the measures the same way
    res = run("search", "--index", index_dir, "--queries", q, "--qrels", r, "--k", 20, "--then", "4x24", "--k", 6,
              "--top", 50, "--metrics", "nDCG@10,R@5,R@100", "--quiet")
    assert res.exit_code == 0, res.output
    assert "warning: --top 50 > --k 6: a three-stage search returns at most 6 results per query; R@100 is R@6" in res.stderr
    assert [x.split("\t")[0] for x in res.stdout.strip().splitlines()] == ["nDCG@10", "R@5", "R@6"]
    # single stage returns --top results: no warning, and recall above --top is named by --top
    res = run("search", "--index", index_dir, "--queries", q, "--qrels", r, "--rerank", "none", "--top", 5, "--json",
              "--quiet")
    assert res.exit_code == 0 and "warning" not in res.stderr
    assert list(json.loads(res.stdout.strip().splitlines()[-1])) == ["nDCG@10", "RR@10", "R@5"]


def test_version_and_help():
    assert run("--version").stdout.startswith("adaretrieve ")
    for cmd in ("index", "search", "eval", "bench", "train", "mine", "pretrain", "tune"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.stdout


def test_funnel_and_index_kinds(tiny_model, corpus, queries_qrels, tmp_path):
    q, r = queries_qrels
    res = run("index", "--corpus", corpus, "--model", tiny_model, "--shortlist", "2x16", "--factory", "BFlat",
              "--rerank", "4x32", "--rerank-dtype", "int8", "--out", tmp_path / "b", "--quiet")
    assert res.exit_code == 0, res.output
    res = run("search", "--index", tmp_path / "b", "--queries", q, "--qrels", r, "--shortlist", "2x16", "--k", 20,
              "--then", "4x24", "--k", 10, "--rerank", "4x32", "--top", 5, "--json", "--quiet")
    assert res.exit_code == 0, res.output
    res = run("search", "--index", tmp_path / "b", "--queries", q, "--then", "4x24", "--quiet")
    assert res.exit_code == 2 and "one --k for the shortlist and one per --then" in err_line(res)
    res = run("index", "--corpus", corpus, "--model", tiny_model, "--shortlist", "1x12", "--factory", "BFlat",
              "--out", tmp_path / "c", "--quiet")
    assert res.exit_code == 2 and "divisible by 8" in err_line(res)
    res = run("index", "--corpus", corpus, "--model", tiny_model, "--shortlist", "1x8", "--factory", "Nonsense42",
              "--out", tmp_path / "c", "--quiet")
    assert res.exit_code == 2 and "faiss factory 'Nonsense42' is not valid" in err_line(res)


def test_sharded_index_and_merge_command(tiny_model, corpus, tmp_path):
    base = ["index", "--corpus", corpus, "--model", tiny_model, "--shortlist", "1x8", "--out", tmp_path / "ix",
            "--chunk-size", 16, "--quiet"]
    res = run(*base, "--shard", "0/2")
    assert res.exit_code == 0 and "index merge --out" in res.stderr
    res = run("index", "merge", "--out", tmp_path / "ix")
    assert res.exit_code == 2 and "chunks are not encoded yet" in err_line(res)
    res = run(*base, "--shard", "1/2")
    assert res.exit_code == 0 and (current_generation(tmp_path / "ix") / "manifest.json").exists()
    res = run(*base, "--shard", "two/4")
    assert res.exit_code == 2 and "not of the form i/n" in err_line(res)
    res = run("index", "--corpus", corpus)
    assert res.exit_code == 2 and "index needs --corpus and --out" in err_line(res)


def test_adapted_model_end_to_end(tiny_model, corpus, queries_qrels, tmp_path):
    """adapt -> index -> search with an adapted folder; the manifest records the adaptor and its hash;
    the two-stage run equals brute force over the adapted vectors; another adaptor is refused."""
    import numpy as np

    from adaretrieve import Size
    from adaretrieve.data import iter_corpus, read_queries
    from adaretrieve.modeling import Encoder

    q, r = queries_qrels
    ada = tmp_path / "ada"
    res = run("adapt", "--model", tiny_model, "--corpus", corpus, "--queries", q, "--ladder", "1x8,2x16,4x32",
              "--steps", 5, "--out", ada, "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["layers"] == [1, 2]
    ix = tmp_path / "ix"
    assert build(ada, corpus, ix).exit_code == 0
    m = json.loads((current_generation(ix) / "manifest.json").read_text())
    assert m["model"]["adaptor"]["layers"] == [1, 2] and m["model"]["backbone_sha256"] != m["model"]["weights_sha256"]
    out = tmp_path / "run.trec"
    res = run("search", "--index", ix, "--queries", q, "--shortlist", "1x8", "--k", 40, "--rerank", "none", "--top", 5,
              "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    # brute force at 1x8 with the adapted encoder
    enc = Encoder(ada, device="cpu")
    docs = list(iter_corpus(corpus))
    dv = enc.encode([f"{d.title} {d.text}".strip() for d in docs], ["1x8"])[Size(1, 8)]
    qs = read_queries(q)
    qv = enc.encode(list(qs.values()), ["1x8"])[Size(1, 8)]
    want = {qid: [docs[j].docid for j in np.argsort(-(dv @ v), kind="stable")[:5]] for qid, v in zip(qs, qv)}
    got: dict = {}
    for line in out.read_text().splitlines():
        qid, _, did, *_ = line.split()
        got.setdefault(qid, []).append(did)
    agree = np.mean([len(set(got[x]) & set(want[x])) / 5 for x in want])
    assert agree >= 0.95, agree
    # an index built from the adapted model refuses the plain backbone as query encoder
    res = run("search", "--index", ix, "--queries", q, "--model", tiny_model, "--quiet")
    assert res.exit_code == 2 and "error:" in err_line(res)


def test_eval_per_query_and_trec_eval_names(index_dir, queries_qrels, tmp_path):
    q, r = queries_qrels
    out = tmp_path / "run.trec"
    assert run("search", "--index", index_dir, "--queries", q, "--out", out, "--quiet").exit_code == 0
    res = run("eval", "--run", out, "--qrels", r, "--metrics", "ndcg_cut_10,recip_rank", "--per-query")
    assert res.exit_code == 0, res.output
    rows = [x.split("\t") for x in res.stdout.strip().splitlines()]
    assert {x[0] for x in rows} == {"nDCG@10", "RR"} and len(rows) == 2 * (8 + 1)
    assert [x[1] for x in rows if x[0] == "RR"] == [f"q{i}" for i in range(8)] + ["all"]  # trec_eval -q layout
    res = run("eval", "--run", out, "--qrels", r, "--metrics", "nDCG@10", "--per-query", "--json")
    data = json.loads(res.stdout)
    assert set(data) == {"per_query", "mean"} and len(data["per_query"]) == 8
    res = run("eval", "--run", out, "--qrels", r, "--metrics", "ndcg@ten")
    assert res.exit_code == 2 and "ndcg@ten" in err_line(res)


def test_shell_completion_is_offered():
    res = run("--help")
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout


def test_prefixes_are_applied_recorded_and_used_by_search(tiny_model, corpus, queries_qrels, tmp_path):
    import numpy as np

    from adaretrieve.modeling import Encoder
    from adaretrieve.search import IndexReader

    res = build(tiny_model, corpus, tmp_path / "px", "--query-prefix", "query: ", "--passage-prefix", "passage: ")
    assert res.exit_code == 0, res.output
    reader = IndexReader(tmp_path / "px")
    m = reader.manifest.model
    assert (m["query_prefix"], m["passage_prefix"]) == ("query: ", "passage: ")
    enc = Encoder(tiny_model, device="cpu")
    from adaretrieve.data import iter_corpus
    from adaretrieve.data.readers import doc_text

    docs = list(iter_corpus(corpus))
    want = enc.encode(["passage: " + doc_text(d.title, d.text) for d in docs], ["4x32"])
    stored = np.load(current_generation(tmp_path / "px") / "rerank-4x32.npy").astype(np.float32)
    np.testing.assert_allclose(stored, list(want.values())[0], atol=2e-3)  # float16 rows
    # search applies the recorded query prefix: the top hit of a query equals a by-hand prefixed search
    res = run("search", "--index", tmp_path / "px", "cell cancer risk")
    assert res.exit_code == 0, res.output
    from adaretrieve import Retriever

    r = Retriever(tmp_path / "px")
    assert r.encoder.query_prefix == "query: "
    qv = r.encoder.encode(["query: cell cancer risk"], ["4x32"])
    top = int(np.argmax(stored @ list(qv.values())[0][0]))
    assert r.search(["cell cancer risk"], shortlist="2x16", k=40, top=1)[0][0][0] == reader.docids[top]
    # an index from before prefixes (no keys in its manifest) loads and searches with none
    path = current_generation(tmp_path / "px") / "manifest.json"
    old = json.loads(path.read_text())
    old["model"].pop("query_prefix"), old["model"].pop("passage_prefix"), old.pop("spec")
    path.write_text(json.dumps(old))
    assert Retriever(tmp_path / "px").encoder.query_prefix == ""


def test_every_option_of_every_command_has_help():
    """Newcomer 3: `--device` and `--quiet` had no help text in `search`, `serve`, `adapt` and the
    rest; every option of every command now says what it does."""
    import typer

    from adaretrieve.cli.main import app

    root = typer.main.get_command(app)
    missing = [f"{name} {p.opts[0]}" for name, cmd in root.commands.items()
               for p in cmd.params if getattr(p, "help", None) in (None, "") and p.opts[0].startswith("--")
               and p.opts[0] not in ("--help",)]
    assert not missing, missing


def test_index_without_a_shortlist_stores_a_code_of_the_full_size(tiny_model, corpus, queries_qrels, tmp_path):
    """Issue 24: with no --shortlist, `index` stores what the quality-per-byte measurements say wins
    (benchmarks/results/codes): a code of the full size, reranked exactly at it (pca128: 128 sign bits
    of the corpus's principal directions for a model wider than 128 dims, its sign bits otherwise);
    single stage (--rerank none) gets the full size's float32 vectors, a Qdrant collection too."""
    from adaretrieve.cli.index_cmd import default_shortlist
    from adaretrieve.search import IndexReader
    from adaretrieve.sizes import Size

    assert default_shortlist(Size(6, 384), Size(6, 384)) == "6x384:pca128"
    assert default_shortlist(Size(12, 768), Size(12, 768)) == "12x768:pca128"
    assert default_shortlist(Size(4, 32), Size(4, 32)) == "4x32:sign"
    assert default_shortlist(Size(6, 384), None) == "6x384"
    assert default_shortlist(Size(6, 384), Size(6, 384), qdrant=True) == "6x384"
    assert default_shortlist(Size(6, 384), Size(6, 384), n_docs=127) == "6x384:sign"  # too few to fit 128 directions
    assert default_shortlist(Size(6, 384), Size(6, 384), n_docs=128) == "6x384:pca128"
    res = run("index", "--corpus", corpus, "--model", tiny_model, "--out", tmp_path / "ix", "--quiet")
    assert res.exit_code == 0, res.output
    m = IndexReader(tmp_path / "ix").manifest
    assert [(e["size"], e["factory"]) for e in m.shortlist] == [("4x32", "sign")] and str(m.rerank_size) == "4x32"
    q, r = queries_qrels
    res = run("search", "--index", tmp_path / "ix", "--queries", q, "--qrels", r, "--json", "--quiet")
    assert res.exit_code == 0, res.output
    res = run("index", "--corpus", corpus, "--model", tiny_model, "--rerank", "none", "--out", tmp_path / "single", "--quiet")
    assert res.exit_code == 0, res.output
    assert [(e["size"], e["factory"]) for e in IndexReader(tmp_path / "single").manifest.shortlist] == [("4x32", "Flat")]
