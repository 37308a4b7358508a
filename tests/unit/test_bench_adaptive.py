"""Adaptive depth in bench and tune (issue 25): a suite's ``adaptive:`` rows score what
``Retriever.search_adaptive`` scores with the same calibrated rule, the fit reads no qrels, bad entries
are one line, and ``tune --adaptive`` writes a rule that ``search --adaptive`` runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from adaretrieve.cli.main import app
from adaretrieve.errors import AdaError
from tests.conftest import WORDS

FIT_TEXTS = [f"{a} {b} {c}" for a in WORDS[10:18] for b in ("risk", "gene", "dose") for c in ("study", "trial")]
PLAN = {"shortlist": "1x8", "k": 20, "then": [{"size": "2x16", "k": 10}], "rerank": "4x32"}


def fit_folder(root: Path) -> Path:
    """A BEIR-like folder of fit queries: its train split names them (the grade column is not a number,
    so a reader that took it for qrels would fail); q0, the suite's first scored query, is in the
    queries file but not in the split."""
    d = root / "fit"
    (d / "qrels").mkdir(parents=True, exist_ok=True)
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": f"f{i}", "text": t}) + "\n" for i, t in enumerate(FIT_TEXTS))
                                     + json.dumps({"_id": "q0", "text": " ".join(WORDS[0:4])}) + "\n")
    (d / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                           + "".join(f"f{i}\tnone\tx\n" for i in range(len(FIT_TEXTS))))
    return d


def suite_cfg(tiny_model, corpus, queries_qrels, tmp_path, **adaptive) -> dict:
    q, r = queries_qrels
    entry = {**PLAN, "fit_queries": str(fit_folder(tmp_path)), "query_split": "train", "measure": "ndcg",
             "confidence": "linear", "targets": [0.9, 0.6], **adaptive}
    return {"name": "tiny", "model": str(tiny_model), "corpus": str(corpus), "queries": str(q), "qrels": str(r),
            "index": str(tmp_path / "ix"), "shortlist": ["1x8", "2x16"], "rerank": "4x32",
            "two_stage": [{"shortlist": "1x8", "k": 20, "then": [{"size": "2x16", "k": 10}], "rerank": "4x32"}],
            "adaptive": [entry], "metrics": ["nDCG@10", "RR@10", "R@100"], "latency_queries": 2}


def test_an_adaptive_row_scores_what_search_adaptive_scores_with_its_rule(tiny_model, corpus, queries_qrels, tmp_path,
                                                                          monkeypatch):
    """One row per target, named by its design and plan; its metrics, layers and exit shares are
    those of Retriever.search_adaptive over the suite's queries with the rule Retriever.calibrate fits
    on the fit queries, scored by the suite's evaluator; its latency is end to end (the cascade
    encodes as it goes); the suite reads its own qrels only; the row loads back and renders."""
    import numpy as np

    import adaretrieve.bench.run as run_mod
    import adaretrieve.data as data_mod
    import adaretrieve.data.readers as readers
    from adaretrieve import Retriever
    from adaretrieve.bench import ResultRow, Suite, run_suite, to_markdown
    from adaretrieve.bench.measure import DepthEvaluator
    from adaretrieve.bench.verdicts import latency_ms
    from adaretrieve.data import read_queries
    from adaretrieve.eval import run_from_arrays
    from adaretrieve.search.cascade import StopRule

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite_cfg(tiny_model, corpus, queries_qrels, tmp_path)))
    suite = Suite.load(path)
    read = []
    real = readers.read_qrels

    def spy(p):
        read.append(str(p))
        return real(p)

    for mod in (run_mod, data_mod, readers):
        monkeypatch.setattr(mod, "read_qrels", spy)
    res = run_suite(suite, progress=False)
    monkeypatch.undo()
    assert read == [suite.qrels]  # the fit's split file is read for its ids only, never as qrels
    rows = {x["config"]: x for x in res["results"]}
    full_name = "1x8 k=20 -> 2x16 k=10 -> 4x32"
    assert list(rows) == [full_name, f"adaptive ndcg:linear 0.9: {full_name}", f"adaptive ndcg:linear 0.6: {full_name}"]

    r = Retriever(tmp_path / "ix", device="cpu")
    plan = r.plan("1x8", 20, "4x32", [("2x16", 10)])
    fit_texts = FIT_TEXTS  # the train split: q0 is left out
    q, qrels_path = queries_qrels
    queries = read_queries(q)
    qrels = real(qrels_path)
    qids = [x for x in queries if x in qrels]
    ev = DepthEvaluator(qrels, suite.metrics)
    for target in (0.9, 0.6):
        row = rows[f"adaptive ndcg:linear {target:g}: {full_name}"]
        fit = r.calibrate(fit_texts, plan, target, measure="ndcg", confidence="linear")
        assert StopRule.from_dict(row["adaptive"]["rule"]) == fit.rule
        assert row["adaptive"]["fitted_on"]["n_queries"] == len(FIT_TEXTS)
        hits, got = r.search_adaptive([queries[x] for x in qids], plan, fit.rule)
        want = ev(run_from_arrays(qids, got.scores, got.rows, r.reader.docids), plan.depth)
        assert set(row["metrics"]) == {"nDCG@10", "RR@10", "R@10"}  # named at the plan's depth, 10
        for k, v in want.items():
            assert row["metrics"][k] == pytest.approx(v, abs=1e-5), (target, k)
        assert row["kind"] == "adaptive" and row["mean_layers"] == pytest.approx(got.layers.mean(), abs=1e-4)
        assert row["encoder_cost"] == pytest.approx(got.layers.mean() / 4, abs=1e-4)
        assert row["stop_share"] == pytest.approx([float(np.mean(got.exit_stage == s)) for s in range(3)], abs=1e-4)
        assert row["search_includes_encoding"] is True and row["encode_ms_batch1"] is None
        assert row["end_to_end_ms_batch1"]["repeats"] == 2 and latency_ms(row) == row["end_to_end_ms_batch1"]["p50"]
        assert "encode_to_shortlist_layer" in row["stages_ms_batch1"]
        assert ResultRow.from_dict(row).to_dict() == row
    assert "search_includes_encoding" not in rows[full_name] and "mean_layers" not in rows[full_name]
    md = to_markdown(res, "cmd")
    assert f"| adaptive ndcg:linear 0.6: {full_name} |" in md and "encoder cost" in md.split("## Adaptive depth")[1]


def test_the_adaptive_fit_reads_no_qrels(tiny_model, corpus, tmp_path, monkeypatch):
    """The fit's texts and rule come from the fit queries and the index alone: with every qrels reader
    raising, the entry's texts are its split's (ids from the split file's first column), and each
    target's fit is what Retriever.calibrate fits on them; pseudo-queries come from the corpus."""
    import adaretrieve.bench.run as run_mod
    import adaretrieve.data as data_mod
    import adaretrieve.data.readers as readers
    from adaretrieve import Retriever
    from adaretrieve.bench.adaptive import AdaptiveEntry, fit_entry
    from adaretrieve.data import pseudo_queries
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    build_index(corpus, Encoder(tiny_model, device="cpu"), tmp_path / "ix", ["1x8", "2x16"], "4x32", progress=False)
    r = Retriever(tmp_path / "ix", device="cpu")

    def no_qrels(*a, **k):
        raise AssertionError("the fit read qrels")

    for mod in (run_mod, data_mod, readers):
        monkeypatch.setattr(mod, "read_qrels", no_qrels)
    entry = AdaptiveEntry.parse({**PLAN, "fit_queries": str(fit_folder(tmp_path)), "query_split": "train",
                                 "targets": [0.8]})
    plan = entry.plan(r.reader.manifest)
    texts, fits = fit_entry(r, entry, plan, str(corpus))
    assert list(texts) == [f"f{i}" for i in range(len(FIT_TEXTS))]
    assert fits[0].rule == r.calibrate(FIT_TEXTS, plan, 0.8, measure="ndcg", confidence="linear").rule
    entry = AdaptiveEntry.parse({**PLAN, "pseudo_queries": 12, "targets": [0.8], "measure": "overlap",
                                 "confidence": "gap"})
    texts, fits = fit_entry(r, entry, plan, str(corpus))
    assert list(texts.values()) == pseudo_queries(corpus, 12)
    assert fits[0].rule == r.calibrate(pseudo_queries(corpus, 12), plan, 0.8).rule


@pytest.mark.parametrize("bad,words", [
    ({"measure": "recall"}, "unknown target measure 'recall'"),
    ({"confidence": "margin"}, "unknown rule confidence 'margin'"),
    ({"targets": [0.9, 1.5]}, "target 1.5 must be a number in (0, 1]"),
    ({"targets": [0]}, "target 0 must be a number in (0, 1]"),
    ({"targets": []}, "targets [] should be a list of numbers in (0, 1]"),
    ({"shortlist": "2x16", "then": [{"size": "1x8", "k": 10}]}, "a cascade runs deeper stage by stage: 1x8 after 2x16"),
    ({"rerank": "none", "then": []}, "at least two stages"),
    ({"fit_queries": None}, "fit_queries"),
    ({"fit_queries": "nowhere"}, "adaptive[0]: fit_queries"),
    ({"query_split": "dev"}, "qrels/dev.tsv does not exist"),
    ({"pseudo_queries": 10}, "one of them"),
    ({"targets": None}, "missing ['targets']"),
    ({"nonsense": 1}, "unknown keys ['nonsense']"),
    ({"k": 0}, "k 0 must be at least 1"),
])
def test_bad_adaptive_entries_are_one_line_errors(tiny_model, corpus, queries_qrels, tmp_path, bad, words):
    from adaretrieve.bench import Suite

    cfg = suite_cfg(tiny_model, corpus, queries_qrels, tmp_path)
    entry = {k: v for k, v in {**cfg["adaptive"][0], **bad}.items() if v is not None}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**cfg, "adaptive": [entry]}))
    with pytest.raises(AdaError) as e:
        Suite.load(path)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith(str(path)), msg


def test_an_adaptive_entry_reads_its_fit_queries_from_the_suites_folder_and_refuses_the_scored_ones(
        tiny_model, corpus, queries_qrels, tmp_path):
    """fit_queries is read from the suite file's folder; fitting on the suite's own queries (same ids,
    same texts) is refused when the suite runs, in one line."""
    from adaretrieve.bench import Suite, run_suite

    cfg = suite_cfg(tiny_model, corpus, queries_qrels, tmp_path)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**cfg, "adaptive": [{**cfg["adaptive"][0], "fit_queries": "fit"}]}))
    assert Suite.load(path).adaptive[0]["fit_queries"] == str(tmp_path / "fit")
    q, _ = queries_qrels
    entry = {**PLAN, "fit_queries": str(q), "targets": [0.9]}
    path.write_text(yaml.safe_dump({**cfg, "two_stage": [], "adaptive": [entry]}))
    with pytest.raises(AdaError, match=r"adaptive\[0\]: its fit queries include 8 of the queries the suite scores"):
        run_suite(Suite.load(path), progress=False)


def test_a_middle_stage_goes_between_the_plans_layers():
    """tune --adaptive's cascade: the best two-stage plan with a middle stage at a stored float size
    between its layers (nearest the middle layer), keeping a quarter of the shortlist's candidates;
    without such a size, the plan itself (one exit, after the shortlist)."""
    from adaretrieve.bench.adaptive import with_middle_stage
    from adaretrieve.search import FunnelPlan
    from adaretrieve.sizes import parse_size

    entries = [("1x8", "Flat"), ("2x16", "Flat"), ("3x16", "sign"), ("5x32", "Flat"), ("6x32", "Flat")]
    m = SimpleNamespace(shortlist=[{"size": s, "factory": f} for s, f in entries],
                        shortlist_sizes=[parse_size(s) for s, _ in entries], rerank_size=parse_size("8x64"))
    got = with_middle_stage(FunnelPlan("1x8", 200, rerank="8x64", top=1000), m)
    assert got.name == "1x8 k=200 -> 5x32 k=50 -> 8x64" and got.top == 50
    assert with_middle_stage(FunnelPlan("1x8", 20, rerank="3x64", top=1000), m).name == "1x8 k=20 -> 2x16 k=10 -> 3x64"
    alone = FunnelPlan("6x32", 30, rerank="8x64", top=1000)
    assert with_middle_stage(alone, m) == alone


@pytest.mark.parametrize("middle", [False, True])
def test_tune_adaptive_writes_a_rule_that_search_adaptive_runs(tiny_model, corpus, queries_qrels, tmp_path, monkeypatch,
                                                                middle):
    """tune --adaptive: the cascade of its best two-stage plan, calibrated at --adaptive-target on
    --fit-queries, is measured beside that plan always run in full and reported with its encoder cost;
    --adaptive-out writes its rule, which `search --adaptive` runs to the quality tune measured. The
    budget choice and the command printed last are tune's usual ones. The middle stage is chosen here
    (its rule: test_a_middle_stage_goes_between_the_plans_layers), since the best two-stage plan of
    the tiny model ties: with ``middle`` the cascade is a funnel, whose always-full row is measured
    beside it; without, the two-stage plan itself (one exit), whose row the sweep measured."""
    import adaretrieve.bench as bench
    from adaretrieve.search import FunnelPlan

    q, r = queries_qrels
    runner = CliRunner()
    ix = tmp_path / "ix"
    res = runner.invoke(app, ["index", "--corpus", str(corpus), "--model", str(tiny_model), "--shortlist", "1x8",
                              "--shortlist", "2x16", "--shortlist", "3x16", "--rerank", "4x32", "--out", str(ix), "--quiet"])
    assert res.exit_code == 0, res.output
    seen = []
    real = bench.run_suite
    monkeypatch.setattr("adaretrieve.bench.run_suite", lambda suite, progress=True: seen.append(real(suite)) or seen[-1])
    funnel = FunnelPlan("1x8", 20, (("2x16", 10),), "4x32", top=10)
    monkeypatch.setattr("adaretrieve.bench.adaptive.with_middle_stage", lambda plan, m: funnel if middle else plan)
    rule = tmp_path / "rule.json"
    args = ["tune", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--budget-ms", "1000", "--k", "20",
            "--latency-queries", "2", "--quiet"]
    res = runner.invoke(app, [*args, "--adaptive", "--fit-queries", str(fit_folder(tmp_path)), "--fit-split", "train",
                              "--adaptive-target", "0.8", "--adaptive-out", str(rule)])
    assert res.exit_code == 0, res.output
    assert len(seen) == 2
    assert [x["kind"] for x in seen[1]["results"]] == (["dense", "adaptive"] if middle else ["adaptive"])
    row = seen[1]["results"][-1]
    full = row["adaptive"]["always_full"]
    assert full == funnel.name if middle else full in {x["config"] for x in seen[0]["results"] if x["rerank"]}
    assert row["config"] == f"adaptive ndcg:linear 0.8: {full}" and row["adaptive"]["fitted_on"]["query_split"] == "train"
    out = res.stdout.strip().splitlines()
    assert any(line.startswith(row["config"]) and "encoder cost" in line and "always full" in line for line in out), res.stdout
    assert out[-2].startswith("best within budget: ") and out[-1].startswith("adaretrieve search") and "--adaptive" not in out[-1]
    doc = json.loads(rule.read_text())
    assert doc["target"] == {"measure": "ndcg", "at": 10, "value": 0.8} and doc["rule"] == row["adaptive"]["rule"]
    assert doc["fit"] == row["adaptive"]["fit"] and doc["fitted_on"] == row["adaptive"]["fitted_on"]
    assert [s["size"] for s in doc["plan"]["then"]] == (["2x16"] if middle else [])
    assert any(line.endswith(f"--adaptive {rule}") for line in out)
    res = runner.invoke(app, ["search", "--index", str(ix), "--queries", str(q), "--qrels", str(r), "--adaptive", str(rule),
                              "--metrics", "nDCG@10", "--json", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout[res.stdout.index("{"):])
    assert got["nDCG@10"] == pytest.approx(row["metrics"]["nDCG@10"], abs=1e-5)
    if middle:
        return
    for bad, words in ((["--adaptive"], "--fit-queries FILE or --pseudo-queries N"),
                       (["--adaptive-out", str(rule)], "--adaptive-out needs --adaptive"),
                       (["--adaptive", "--pseudo-queries", "5", "--adaptive-target", "2"], "target 2.0 must be"),
                       (["--adaptive", "--fit-queries", str(tmp_path / "none")], "does not exist")):
        res = runner.invoke(app, [*args, *bad])
        assert res.exit_code == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, (bad, res.output)
