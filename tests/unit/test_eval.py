import math

import pytest

from adaretrieve import AdaError
from adaretrieve.eval import Evaluator, read_run, write_run


def test_ndcg_rr_by_hand():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"z": 1}}
    run = {"q1": {"x": 3.0, "b": 2.0, "a": 1.0}, "q2": {"y": 1.0}}
    res = Evaluator(qrels, ["nDCG@10", "RR@10", "RR(rel=2)@10", "R@100"])(run)
    # ir-measures' nDCG (pytrec_eval) uses linear gain: rel / log2(rank + 1)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert res["nDCG@10"] == pytest.approx((dcg / idcg + 0) / 2, abs=1e-6)
    assert res["RR@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert res["RR(rel=2)@10"] == pytest.approx((1 / 2) / 2)
    assert res["R@100"] == pytest.approx((1 + 0) / 2)


def test_missing_query_scores_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert Evaluator(qrels, ["RR@10"])({"q1": {"a": 1.0}})["RR@10"] == pytest.approx(0.5)


def test_run_roundtrip(tmp_path):
    run = {"q1": {"a": 0.5, "b": 0.25}, "q2": {"c": 1.0}}
    for fmt in ("trec", "jsonl"):
        write_run(run, tmp_path / f"r.{fmt}", fmt=fmt)
        assert read_run(tmp_path / f"r.{fmt}") == run
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0].split()[:4] == ["q1", "Q0", "a", "1"]


def test_bad_metric():
    with pytest.raises(AdaError, match="not an ir-measures measure"):
        Evaluator({"q": {"d": 1}}, ["nDCG@ten"])


def test_recall_beyond_the_run_depth_is_named_by_the_depth():
    from adaretrieve.eval import recall_within_depth

    names, renamed = recall_within_depth(["nDCG@1000,RR@10", "R@100", "R(rel=2)@1000", "R@1000", "R@50"], 200)
    assert names == ["nDCG@1000", "RR@10", "R@100", "R(rel=2)@200", "R@200", "R@50"]
    assert renamed == {"R(rel=2)@1000": "R(rel=2)@200", "R@1000": "R@200"}
    assert recall_within_depth(["R@1000"], 1000) == (["R@1000"], {})


def test_concurrent_writers_of_one_run_file_leave_one_whole_run(tmp_path):
    """Four writers of one --out each write a temporary file of their own (issue 12, item 3)."""
    import threading

    from adaretrieve.eval import read_run, write_run

    out = tmp_path / "run.trec"
    runs = [{f"q{i}": {f"d{j}": float(100 - j) for j in range(200)} for i in range(50)} for _ in range(4)]
    errors = []

    def go(run):
        try:
            for _ in range(5):
                write_run(run, out)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=go, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert read_run(out) == runs[0]
    assert len(out.read_text().splitlines()) == 50 * 200
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]


def test_trec_eval_names_beside_ir_measures_names():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"z": 1}}
    run = {"q1": {"x": 3.0, "b": 2.0, "a": 1.0}, "q2": {"y": 1.0}}
    trec = Evaluator(qrels, ["ndcg_cut_10,recip_rank", "recall_100", "map", "P_10", "ndcg_cut.5"])(run)
    same = Evaluator(qrels, ["nDCG@10", "RR", "R@100", "AP", "P@10", "nDCG@5"])(run)
    assert trec == same
    with pytest.raises(AdaError, match="trec_eval"):
        Evaluator(qrels, ["ndcg_cut_ten"])


def test_per_query_scores_average_to_the_means():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"z": 1}, "q3": {"c": 1}}
    run = {"q1": {"x": 3.0, "b": 2.0, "a": 1.0}, "q2": {"y": 1.0, "z": 0.5}}
    ev = Evaluator(qrels, ["nDCG@10", "RR@10"])
    per = ev.per_query(run)
    assert list(per) == ["q1", "q2", "q3"] and per["q3"] == {"nDCG@10": 0.0, "RR@10": 0.0}  # unjudged in run: 0
    assert per["q2"]["RR@10"] == pytest.approx(0.5)
    means = ev(run)
    for name in ev.names:
        assert sum(p[name] for p in per.values()) / 3 == pytest.approx(means[name])


def test_eval_names_recall_at_the_runs_depth_as_search_does(tmp_path):
    """newcomer-3: one run of 200 per query was 'R@200' to search and 'R@1000' to eval."""
    import json

    from typer.testing import CliRunner

    from adaretrieve.cli.main import app

    run = tmp_path / "run.trec"
    run.write_text("".join(f"q{i} Q0 d{j} {j + 1} {1 - j / 10:.2f} t\n" for i in range(3) for j in range(5)))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q0\td1\t1\nq1\td9\t1\nq2\td4\t1\n")
    r = CliRunner().invoke(app, ["eval", "--run", str(run), "--qrels", str(qrels), "--metrics", "nDCG@10,R@3,R@100,R@1000",
                                 "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert list(got) == ["nDCG@10", "R@3", "R@5"], got  # R@100 and R@1000 of a 5-deep run are R@5, named once
    assert got["R@5"] == pytest.approx(2 / 3, abs=1e-5)
    assert "R@100 is R@5" in r.stderr and "R@1000 is R@5" in r.stderr
