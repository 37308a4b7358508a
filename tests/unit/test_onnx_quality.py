"""benchmarks/onnx_quality.py's adapted section (issue 23, code review 3 A7) on the tiny BERT with a
random adaptor: every configuration gets a row per backend, onnx fp32 queries give torch's top 10,
and the nDCG floor is a check that --check enforces."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_corpus, module_or_skip

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_quality.py"
CONFIGS = [("single 2x16", "2x16", None, None), ("single 3x32", "3x32", None, None),
           ("2x16 k=20 -> 4x32", "2x16", 20, "4x32")]


def _bench():
    spec = importlib.util.spec_from_file_location("onnx_quality_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def setting(tiny_model, tmp_path, monkeypatch):
    import torch

    from adaretrieve.modeling import Encoder
    from adaretrieve.modeling.adaptor import Adaptor

    module_or_skip("onnxruntime", "pip install -e '.[dev]' installs it (the onnx backend's tests)")
    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    model = shutil.copytree(tiny_model, tmp_path / "adapted")
    ad = Adaptor(32, {1: 16, 2: 24, 3: 32}, {1: [0, 1], 2: [1, 2], 3: [2, 3]},
                 meta={"backbone_sha256": Encoder(model, device="cpu").backbone_hash()})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_()
    ad.save(model)
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    make_corpus(data / "corpus.jsonl", n=60)
    words = ["cell cancer risk", "gene protein", "brain study mouse", "immune therapy virus", "heart blood dose"]
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(words)))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{3 * i}\t1\n" for i in range(5)))
    out = tmp_path / "out"
    out.mkdir()
    # the base section as an earlier run left it (--skip-base keeps it as it is)
    base = {"command": "python benchmarks/onnx_quality.py --threads 1", "date": "earlier", "size": "4x32",
            "model": {"name": "tiny", "n_layers": 4, "hidden_size": 32, "max_length": 48}, "n_docs": 60, "n_queries": 5,
            "threads": 1, "machine": {"cpu": "cpu", "cores": 2}, "uptime_before": "-",
            "rows": [{"corpus": "torch (index)", "queries": q, "metrics": {"nDCG@10": 0.5, "RR@10": 0.5, "R@100": 1.0},
                      "nDCG@10_minus_torch": 0.0} for q in ("torch", "onnx", "onnx-int8")]}
    (out / "results.json").write_text(json.dumps(base))
    bench = _bench()
    monkeypatch.setattr(bench, "ADAPTED_CONFIGS", CONFIGS)
    args = ["--data", str(data), "--adapted", str(model), "--adapted-index", str(tmp_path / "ix"), "--skip-base",
            "--threads", "1", "--out", str(out)]
    return bench, args, out, base


def test_adapted_rows_per_configuration_and_backend_and_the_floor_check(setting):
    bench, args, out, base = setting
    bench.main(args)
    r = json.loads((out / "results.json").read_text())
    assert r["rows"] == base["rows"] and r["command"] == base["command"]  # the base section is kept as it was
    rows = {(x["config"], x["queries"]): x for x in r["adapted"]["rows"]}
    assert set(rows) == {(c[0], b) for c in CONFIGS for b in ("torch", "onnx", "onnx-int8")}
    assert [rows[(c[0], "torch")]["depth"] for c in CONFIGS] == [2, 3, 4]
    for c in CONFIGS:
        t, o = rows[(c[0], "torch")], rows[(c[0], "onnx")]
        assert t["identical_top10"] == 5 and t["overlap@10_with_torch"] == 1.0 and t["nDCG@10_minus_torch"] == 0.0
        assert o["identical_top10"] == 5 and o["min_query_cosine_to_torch"] > 0.9999, o
        assert 0 <= rows[(c[0], "onnx-int8")]["identical_top10"] <= 5
    assert len(r["checks"]) == 2 + 2 * len(CONFIGS) and all("ok" in c for c in r["checks"])
    md = (out / "results.md").read_text()
    assert "| 2x16 k=20 -> 4x32 | 4 | onnx-int8 |" in md and "## Checks" in md
    with pytest.raises(SystemExit, match="failed: .*nDCG@10 minus torch"):
        bench.main([*args, "--max-ndcg-drop", "-0.5", "--check"])  # a floor above torch's own score fails every row


def test_the_readme_renders_the_adapted_section(setting, tmp_path, monkeypatch):
    """benchmarks/readme.py's encoding block, over the real results with this run's adapted section."""
    bench, args, out, _ = setting
    bench.main(args)
    spec = importlib.util.spec_from_file_location("readme_figures", BENCH.parent / "readme.py")
    readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme)
    results = shutil.copytree(readme.RESULTS, tmp_path / "results")
    real = json.loads((results / "onnx-quality" / "results.json").read_text())
    ours = json.loads((out / "results.json").read_text())
    real["adapted"], real["checks"] = ours["adapted"], ours["checks"]
    (results / "onnx-quality" / "results.json").write_text(json.dumps(real))
    monkeypatch.setattr(readme, "RESULTS", results)
    text = readme.encoding()
    print(text[text.index("Quality,") : text.index("Rerank of")])
    assert "| 2x16 k=20 -> 4x32 | " in text and "+0.00000 (5/5)" in text
