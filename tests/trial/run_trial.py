"""Re-run the bad-input cases of the trial (/work/shared/reviews/bad-input-and-crash-trial.md, section 1)
on inputs this script builds itself: a tiny random BERT (tests/conftest.py) and a 40-doc corpus.
Each case is named by the review's case id and classified GOOD (exit 2 and one `error:` line, or exit 0
where the input is valid), MINOR (exit 2 but not one line) or BAD (traceback, other exit status, or exit 0
on an input that must be refused). Runs in-process through typer's CliRunner (about a minute).

    .venv/bin/python tests/trial/run_trial.py [--out benchmarks/results/trial/results.md]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from typer.testing import CliRunner  # noqa: E402

from adaretrieve.cli.main import app  # noqa: E402
from tests.conftest import WORDS, _save_tiny_bert, make_corpus  # noqa: E402


def build_inputs(d: Path) -> dict:
    model = _save_tiny_bert(d / "model", seed=0)
    data = d / "data"
    data.mkdir()
    corpus = make_corpus(data / "corpus.jsonl", n=40)
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(WORDS[i:i + 3])}) + "\n"
                                                for i in range(6)))
    (data / "qrels.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    bad = d / "bad"
    bad.mkdir()
    lines = corpus.read_text().splitlines()[:6]

    def corpus_with(name, line6):
        (bad / name).write_text("\n".join(lines[:5] + [line6]) + "\n")

    for name, idv in {"emptyid": "", "tabid": "a\tb", "spaceid": "a b", "nlid": "a\nb", "crid": "a\rb", "lsid": "a\u2028b"}.items():
        corpus_with(f"{name}.jsonl", json.dumps({"_id": idv, "text": "cell"}))
    corpus_with("numid.jsonl", json.dumps({"_id": 12345, "text": "cell"}))
    corpus_with("nulltext.jsonl", json.dumps({"_id": "x", "title": None, "text": None}))
    corpus_with("noid.jsonl", json.dumps({"text": "cell"}))
    corpus_with("array.jsonl", "[1, 2]")
    corpus_with("badjson.jsonl", '{"_id": "x", "text": ')
    corpus_with("dupid.jsonl", lines[2])
    (bad / "empty.jsonl").write_text("")
    (bad / "binary.jsonl").write_bytes(np.random.default_rng(0).bytes(4096))
    (bad / "nonutf8.jsonl").write_bytes(("\n".join(lines[:5]) + "\n").encode() + b'{"_id": "x", "text": "c\xe9ll"}\n')
    gz = gzip.compress(corpus.read_bytes())
    (bad / "corrupt.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    q = (data / "queries.jsonl").read_text().splitlines()
    (bad / "q_empty.jsonl").write_text("")
    (bad / "q_blanktext.jsonl").write_text("\n".join(q[:3] + [json.dumps({"_id": "99", "text": "  "})]) + "\n")
    (bad / "q_noid.jsonl").write_text("\n".join(q[:3] + [json.dumps({"text": "x"})]) + "\n")
    (bad / "q_array.jsonl").write_text("\n".join(q[:3] + ["[1]"]) + "\n")
    (bad / "q_badjson.jsonl").write_text("\n".join(q[:3] + ["{x"]) + "\n")
    (bad / "q_nonutf8.jsonl").write_bytes(b'{"_id": "1", "text": "c\xe9ll"}\n')
    (bad / "q_dup.jsonl").write_text("\n".join(q[:3] + [q[1]]) + "\n")
    (bad / "q_big.jsonl").write_text(json.dumps({"_id": "big", "text": " ".join(WORDS * 400)[:100_000]}) + "\n")
    beir = bad / "beir"  # a BEIR folder with a train split only (tr-badsplit asks for dev)
    (beir / "qrels").mkdir(parents=True)
    shutil.copy(corpus, beir / "corpus.jsonl")
    shutil.copy(data / "queries.jsonl", beir / "queries.jsonl")
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    (bad / "qrels_badline.tsv").write_text("q1\td1\t1\nq2 a b c d\n")
    (bad / "qrels_badgrade.tsv").write_text("q1\td1\tyes\n")
    (bad / "qrels_empty.tsv").write_text("")
    (bad / "qrels_nomatch.tsv").write_text("zz\td1\t1\n")
    (bad / "run_badline.trec").write_text("q1 Q0 d1 1\n")
    (bad / "run_badscore.trec").write_text("q1 Q0 d1 1 notanumber t\n")
    (bad / "run_badjsonl.trec").write_text('{"qid": "q1", "hits": [\n')
    (bad / "run_jsonl_nokey.trec").write_text('{"qid": "q1"}\n')
    (bad / "run_empty.trec").write_text("")
    (bad / "run_nonutf8.trec").write_bytes(b"q\xe9 Q0 d1 1 1.0 t\n")
    (bad / "run_bad.json").write_text('[{"query": "x", "hits": [{"qid": "q1", "docid": "d1"}]}]')
    (bad / "run_bad2.json").write_text("not json")
    cfgs = {"cfg_badtype": "steps: abc", "cfg_badtype2": "steps: [1, 2]", "cfg_badtype3": "lr: {a: 1}",
            "cfg_unknown": "stpes: 3", "cfg_syntax": "steps: [1, 2\nlr: 1", "cfg_list": "- minilm",
            "cfg_badloss": "loss: bogus", "cfg_badpairs": "pairs: '4x,9x32'", "cfg_bs0": "batch_size: 0",
            "cfg_steps0": "steps: 0", "cfg_nodata": f"data: {d / 'nope' / 'folder'}",
            "cfg_badsplit": f"data: {bad / 'beir'}\nsplit: dev\nsteps: 1\nbatch_size: 2"}
    for name, text in cfgs.items():
        (bad / f"{name}.yaml").write_text(f"model: {model}\n{text}\n")
    bench = (f"name: t\nmodel: {model}\ncorpus: {corpus}\nqueries: {data / 'queries.jsonl'}\nqrels: {data / 'qrels.tsv'}\n"
             f"index: {d / 'idx' / 'bench'}\nshortlist: [1x8]\nrerank: 4x32\nlatency_queries: 2\n")
    (bad / "bench_unknown.yaml").write_text(bench + "colour: red\n")
    (bad / "bench_missingkey.yaml").write_text("name: t\n")
    (bad / "bench_badsize.yaml").write_text(bench.replace("[1x8]", "[9x8]"))
    (bad / "bench_badtype.yaml").write_text(bench + "two_stage: [{shortlist: 1x8, k: abc, rerank: 4x32}]\n")
    return {"model": model, "data": data, "corpus": corpus, "bad": bad}


def index_cases(model, data, bad, d):
    ix = ["index", "-q", "--model", str(model), "--corpus", str(data), "--shortlist"]
    n1 = ["--out", str(d / "idx" / "n1")]
    cases = [(f"ix-size-{k}", ix + [v] + n1, "error") for k, v in
             {"4x": "4x", "0x32": "0x32", "4x0": "4x0", "4x32x1": "4x32x1", "abc": "abc", "depth": "7x8", "width": "4x999"}.items()]
    cases.append(("ix-size-neg", ix[:-1] + ["--shortlist=-1x8"] + n1, "error"))
    cases += [("ix-rerank-depth", ix + ["1x8", "--rerank", "7x32"] + n1, "error"),
              ("ix-rerank-abc", ix + ["1x8", "--rerank", "abc"] + n1, "error")]
    cor = ["index", "-q", "--model", str(model), "--shortlist", "1x8", "--out", str(d / "idx" / "n1"), "--corpus"]
    cases += [("ix-corpus-missing", cor + [str(d / "nope")], "error"), ("ix-corpus-dir-empty", cor + [str(bad)], "error")]
    for name in ["empty", "binary", "nonutf8", "noid", "array", "badjson", "dupid", "emptyid", "tabid", "spaceid",
                 "nlid", "crid", "lsid"]:
        cases.append((f"ix-corpus-{name}", cor + [str(bad / f"{name}.jsonl")], "error"))
    cases.append(("ix-corpus-gzip", cor + [str(bad / "corrupt.jsonl.gz")], "error"))
    for name in ["numid", "nulltext"]:
        cases.append((f"ix-corpus-{name}", ["index", "-q", "--model", str(model), "--shortlist", "1x8", "--out",
                                            str(d / "idx" / name), "--corpus", str(bad / f"{name}.jsonl")], "ok"))
    base = ["index", "-q", "--model", str(model), "--corpus", str(data), "--shortlist", "1x8"]
    cases += [
        ("ix-out-exists", base + ["--out", str(d / "idx" / "base")], "error"),
        ("ix-out-nonindex", base + ["--out", str(bad), "--overwrite"], "error"),
        ("ix-out-file", base + ["--out", str(bad / "empty.jsonl"), "--overwrite"], "error"),
        ("ix-ow-badcorpus", ["index", "-q", "--model", str(model), "--corpus", str(bad / "dupid.jsonl"), "--shortlist", "1x8",
                             "--out", str(d / "idx" / "base"), "--overwrite"], "error"),
        ("ix-factory", base + ["--factory", "Bogus"] + n1, "error"),
        ("ix-factory-bin", base[:-1] + ["1x12", "--factory", "BFlat"] + n1, "error"),
        ("ix-rerank-dtype", base + ["--rerank-dtype", "int4"] + n1, "error"),
        ("ix-shard-form", base + ["--shard", "abc"] + n1, "error"),
        ("ix-shard-range", base + ["--shard", "2/2"] + n1, "error"),
        ("ix-shard-zero", base + ["--shard", "0/0"] + n1, "error"),
        ("ix-chunk0", base + ["--chunk-size", "0"] + n1, "error"),
        ("ix-chunkneg", base + ["--chunk-size", "-5"] + n1, "error"),
        ("ix-batch0", base + ["--batch-size", "0"] + n1, "error"),
        ("ix-maxlen0", base + ["--max-length", "0"] + n1, "error"),
        ("ix-model-missing", base + ["--model", "./no/such/folder"] + n1, "error"),
        ("ix-model-notmodel", base + ["--model", str(bad)] + n1, "error"),
        ("ix-device", base + ["--device", "tpu"] + n1, "error"),
        ("ix-dtype", base + ["--dtype", "int8"] + n1, "error"),
        ("ix-pooling", base + ["--pooling", "max"] + n1, "error"),
        ("ix-merge-nobuild", ["index", "merge", "--out", str(d / "idx" / "nope")], "error"),
    ]
    return cases


def corrupt_indexes(base: Path, cidx: Path) -> None:
    import faiss

    from adaretrieve.index.format import current_generation

    def copy(name):  # the copied index's current generation folder, where its files are
        return current_generation(Path(shutil.copytree(base, cidx / name)))

    def edit(name, fn):
        p = copy(name) / "manifest.json"
        m = json.loads(p.read_text())
        p.write_text(json.dumps(fn(m)))

    (copy("nomanifest") / "manifest.json").unlink()
    (copy("badmanifest") / "manifest.json").write_text("{x")
    edit("future", lambda m: {**m, "format": 2})
    edit("missingkey", lambda m: {k: v for k, v in m.items() if k != "model"})
    edit("extrakey", lambda m: {**m, "colour": "red"})
    edit("nonobj", lambda m: [m])
    # security: files named by a manifest outside the index folder (a relative climb, an absolute path)
    edit("traversal", lambda m: {**m, "rerank": {**m["rerank"], "file": "../../secret/rerank-4x32.npy"}})
    edit("absolute", lambda m: {**m, "shortlist": [{**e, "file": str(cidx / "secret" / "x.faiss")} for e in m["shortlist"]]})
    npy = "rerank-4x32.npy"
    p = copy("trunc_npy") / npy
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    p = copy("trunc_npy_hdr") / npy
    p.write_bytes(p.read_bytes()[:50])
    p = copy("trunc_faiss") / "shortlist-1x8.faiss"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    p = copy("garbage_faiss") / "shortlist-1x8.faiss"
    p.write_bytes(np.random.default_rng(1).bytes(p.stat().st_size))
    other = faiss.IndexFlatIP(8)
    other.add(np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32))
    faiss.write_index(other, str(copy("wrong_faiss") / "shortlist-1x8.faiss"))
    p = copy("docids_missing_line") / "docids.txt"
    p.write_text("\n".join(p.read_text().splitlines()[:-1]) + "\n")
    (copy("docids_missing") / "docids.txt").unlink()
    np.save(copy("short_npy") / npy, np.zeros((10, 32), np.float16))
    np.save(copy("wrongdim_npy") / npy, np.zeros((40, 20), np.float16))
    np.save(copy("pickle_npy") / npy, np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)


def search_cases(model, other_model, data, bad, d):
    base = d / "idx" / "base"
    q = str(data / "queries.jsonl")
    qr = str(data / "qrels.tsv")
    runs = d / "runs"
    runs.mkdir(exist_ok=True)
    se = ["search", "-q", "--index", str(base), "--queries", q]
    out = ["--out", str(runs / "x.trec")]
    cases = [("se-k0", se + ["--k", "0"] + out, "error"), ("se-kneg", se + ["--k=-5"] + out, "error"),
             ("se-top0", se + ["--top", "0"] + out, "error"),
             ("se-kbig", se + ["--qrels", qr, "--k", "100000"] + out, "ok"),
             ("se-topbig", se + ["--qrels", qr, "--rerank", "none", "--top", "100000"] + out, "ok")]
    for name, v in {"4x": "4x", "abc": "abc", "depth": "7x8", "width": "2x999", "notstored": "3x8", "wider": "1x16"}.items():
        cases.append((f"se-size-{name}", se + ["--shortlist", v] + out, "error"))
    cases += [("se-rerank-width", se + ["--rerank", "4x999"] + out, "error"), ("se-rerank-bad", se + ["--rerank", "4x"] + out, "error"),
              ("se-then-nok", se + ["--then", "2x16"] + out, "error"),
              ("se-funnel-widen", se + ["--k", "10", "--then", "2x16", "--k", "20"] + out, "error"),
              ("se-index-missing", ["search", "-q", "--index", str(d / "idx" / "nope"), "--queries", q] + out, "error")]
    for name in ["nomanifest", "badmanifest", "future", "missingkey", "extrakey", "nonobj", "trunc_npy", "trunc_npy_hdr",
                 "trunc_faiss", "garbage_faiss", "docids_missing_line", "docids_missing", "short_npy", "wrongdim_npy",
                 "pickle_npy", "traversal", "absolute"]:
        cases.append((f"se-{name.replace('_', '-')}", ["search", "-q", "--index", str(d / "cidx" / name), "--queries", q] + out, "error"))
    cases.append(("se-wrong-faiss", ["search", "-q", "--index", str(d / "cidx" / "wrong_faiss"), "--queries", q,
                                     "--rerank", "none"] + out, "error"))
    cases.append(("se-othermodel", se + ["--model", str(other_model)] + out, "error"))
    # an index built by one model (the review: a fine-tuned checkpoint) searched with another, both ways
    cases += [("se-realmodel-1", ["search", "-q", "--index", str(d / "idx" / "other"), "--model", str(model), "x"], "error"),
              ("se-realmodel-2", ["search", "-q", "--index", str(base), "--model", str(other_model), "x"], "error"),
              ("se-q-big", se[:-1] + [str(bad / "q_big.jsonl")] + out, "ok"),
              ("se-metrics", se + ["--qrels", qr, "--metrics", "Bogus@10", "--out", str(runs / "metrics.trec")], "error")]
    for name in ["empty", "blanktext", "noid", "array", "badjson", "nonutf8", "dup"]:
        cases.append((f"se-q-{name}", ["search", "-q", "--index", str(base), "--queries", str(bad / f"q_{name}.jsonl")] + out, "error"))
    cases += [("se-q-arg-empty", ["search", "-q", "--index", str(base), ""], "error"),
              ("se-q-arg-ws", ["search", "-q", "--index", str(base), "   "], "error"),
              ("se-q-and-file", ["search", "-q", "--index", str(base), "x", "--queries", q], "error")]
    for name in ["badline", "badgrade", "empty", "nomatch"]:
        cases.append((f"se-qrels-{name}", se + ["--qrels", str(bad / f"qrels_{name}.tsv")] + out, "error"))
    cases += [("se-qrels-missing", se + ["--qrels", str(bad / "none.tsv")] + out, "error"),
              ("se-format", se + ["--format", "csv"] + out, "error"),
              ("se-out-dir", se + ["--out", str(runs)], "error"),
              ("se-out-unwritable", se + ["--out", "/proc/nope/run.trec"], "error"),
              ("se-model-other", se + ["--model", str(bad)] + out, "error"),
              ("se-batch0", se + ["--batch-size", "0"] + out, "error")]
    return cases


def other_cases(model, data, bad, d):
    runs = d / "runs"
    qr = str(data / "qrels.tsv")
    good = runs / "good.trec"
    good.write_text("".join(f"q{i} Q0 d{i} 1 1.0 t\n" for i in range(6)))
    ev = ["eval", "--qrels", qr, "--run"]
    cases = [("ev-missing", ev + [str(bad / "none.trec")], "error")]
    for name in ["badline", "badscore", "badjsonl", "jsonl_nokey", "empty", "nonutf8"]:
        cases.append((f"ev-{name.replace('_', '-')}", ev + [str(bad / f"run_{name}.trec")], "error"))
    cases += [("ev-json-bad", ev + [str(bad / "run_bad.json")], "error"),
              ("ev-json-notjson", ev + [str(bad / "run_bad2.json")], "error"),
              ("ev-run-dir", ev + [str(runs)], "error")]
    for name in ["badline", "badgrade", "empty"]:
        cases.append((f"ev-qrels-{name}", ["eval", "--run", str(good), "--qrels", str(bad / f"qrels_{name}.tsv")], "error"))
    cases += [("ev-qrels-gz", ["eval", "--run", str(good), "--qrels", str(bad / "corrupt.jsonl.gz")], "error"),
              ("ev-metric", ["eval", "--run", str(good), "--qrels", qr, "--metrics", "Bogus@10"], "error"),
              ("ev-metric-empty", ["eval", "--run", str(good), "--qrels", qr, "--metrics", ""], "error")]
    tr = ["train", "-q", "--config"]
    cases.append(("tr-cfg-missing", tr + [str(bad / "none.yaml")], "error"))
    for name in ["badtype", "badtype2", "badtype3", "unknown", "syntax", "list", "badloss", "badpairs", "bs0", "steps0", "nodata",
                 "badsplit"]:
        cases.append((f"tr-cfg-{name}" if not name.startswith(("bs0", "steps0", "nodata", "badsplit")) else f"tr-{name}",
                       tr + [str(bad / f"cfg_{name}.yaml")], "error"))
    s0 = tr + [str(bad / "cfg_steps0.yaml")]
    cases += [("tr-set-badkey", s0 + ["--set", "stpes=3"], "error"), ("tr-set-noeq", s0 + ["--set", "steps"], "error"),
              ("tr-set-badval", s0 + ["--set", "steps=ten"], "error"),
              ("tr-set-neglr", s0 + ["--set", "lr=-1", "--set", "steps=1"], "error"),
              ("tr-pairs-bad", s0 + ["--pairs", "4x"], "error"),
              ("tr-nodata-file", tr + [str(bad / "cfg_badloss.yaml"), "--set", "loss=mrl", "--set", f"data={d / 'no.jsonl'}"], "error")]
    be = ["bench", "-q", "--out", str(d / "bench-out"), "--config"]
    for name in ["unknown", "missingkey", "badsize", "badtype"]:
        cases.append((f"be-{name}", be + [str(bad / f"bench_{name}.yaml")], "error"))
    cases += [("be-missing", be + [str(bad / "none.yaml")], "error"), ("be-syntax", be + [str(bad / "cfg_syntax.yaml")], "error")]
    # be-overwrite: a suite whose `index:` is an existing index built with other sizes must not replace it
    victim = d / "idx" / "victim"
    shutil.copytree(d / "idx" / "base", victim)
    (bad / "bench_overwrite.yaml").write_text(json.dumps({
        "name": "overwrite", "model": str(model), "corpus": str(data), "queries": str(data / "queries.jsonl"), "qrels": qr,
        "index": str(victim), "shortlist": ["1x16"], "rerank": "4x32", "single": ["1x16"], "latency_queries": 2}))
    cases.append(("be-overwrite", be + [str(bad / "bench_overwrite.yaml")], "error"))
    tu = ["tune", "-q", "--index", str(d / "idx" / "base"), "--queries", str(data / "queries.jsonl"), "--qrels", qr]
    cases += [("tu-missing-index", ["tune", "-q", "--index", str(d / "idx" / "nope"), "--queries", str(data), "--qrels", qr,
                                    "--budget-ms", "50"], "error"),
              ("tu-bad-index", ["tune", "-q", "--index", str(d / "cidx" / "badmanifest"), "--queries", str(data), "--qrels", qr,
                                "--budget-ms", "50"], "error"),
              ("tu-metric", tu + ["--budget-ms", "50", "--metric", "Bogus@10"], "error"),
              ("tu-k0", tu + ["--budget-ms", "500", "--k", "0", "--latency-queries", "2"], "error"),
              ("tu-lat0", tu + ["--budget-ms", "500", "--k", "10", "--latency-queries", "0"], "error"),
              ("tu-budget-neg", tu + ["--budget-ms", "-1", "--k", "10", "--latency-queries", "2"], "error"),
              ("tu-queries-bad", ["tune", "-q", "--index", str(d / "idx" / "base"), "--queries", str(bad / "q_nonutf8.jsonl"),
                                  "--qrels", qr, "--budget-ms", "50", "--k", "10", "--latency-queries", "2"], "error")]
    return cases


# -- trial 3 (/work/shared/reviews/trial-3.md): links out of an index, non-finite and mistyped rows, ids that
# break a run line, BOMs, lone surrogates, invisible queries, --out inside an index or '-' (issue 27) --------

TRIAL3_INDEXES = ["gen_symlink", "file_symlink", "file_symlink_rel", "manifest_symlink", "docids_symlink_etc", "npy_i32",
                  "npy_bool", "npy_complex", "npy_nan", "npy_inf", "docids_space", "docids_crlf", "docids_nul",
                  "docids_nonutf8", "man_dtype_int8_noscale", "faiss_hnsw_as_flat", "cur_binary", "shortlist_nan",
                  "man_normalize_str", "man_maxlen_neg"]


def trial3_indexes(base: Path, cidx: Path, outside: Path) -> None:
    import faiss

    from adaretrieve.index.format import current_generation

    outside.mkdir()

    def copy(name):
        return current_generation(Path(shutil.copytree(base, cidx / name)))

    npy = "rerank-4x32.npy"
    g = copy("gen_symlink")
    shutil.copytree(g, outside / "gencopy")
    shutil.rmtree(g)
    g.symlink_to(outside / "gencopy")
    g = copy("file_symlink")
    shutil.copy(g / npy, outside / "rerank.npy")
    (g / npy).unlink()
    (g / npy).symlink_to(outside / "rerank.npy")
    g = copy("file_symlink_rel")
    (g / npy).unlink()
    (g / npy).symlink_to(Path("../../..") / outside.name / "rerank.npy")
    g = copy("manifest_symlink")
    shutil.copy(g / "manifest.json", outside / "manifest.json")
    (g / "manifest.json").unlink()
    (g / "manifest.json").symlink_to(outside / "manifest.json")
    g = copy("docids_symlink_etc")
    (outside / "hostname").write_text("a-host\n")
    (g / "docids.txt").unlink()
    (g / "docids.txt").symlink_to(outside / "hostname")
    for name, fn in {"npy_i32": lambda r: r.astype(np.int32), "npy_bool": lambda r: r > 0,
                     "npy_complex": lambda r: r.astype(np.complex64), "npy_nan": lambda r: np.full_like(r, np.nan),
                     "npy_inf": lambda r: np.full_like(r, np.inf)}.items():
        g = copy(name)
        np.save(g / npy, fn(np.load(g / npy)))
    for name, row0 in {"docids_space": b"a b", "docids_crlf": None, "docids_nul": b"d0\0", "docids_nonutf8": b"\xff\xfe"}.items():
        g = copy(name)
        lines = (g / "docids.txt").read_bytes().split(b"\n")
        lines = [x + b"\r" for x in lines[:-1]] + [b""] if row0 is None else [row0] + lines[1:]
        (g / "docids.txt").write_bytes(b"\n".join(lines))
    g = copy("man_dtype_int8_noscale")
    m = json.loads((g / "manifest.json").read_text())
    m["rerank"]["dtype"] = "int8"
    (g / "manifest.json").write_text(json.dumps(m))
    g = copy("faiss_hnsw_as_flat")
    flat = faiss.read_index(str(g / "shortlist-2x16.faiss"))
    x = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d).copy()
    hnsw = faiss.IndexHNSWFlat(flat.d, 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(x)
    faiss.write_index(hnsw, str(g / "shortlist-2x16.faiss"))
    g = copy("shortlist_nan")
    bad = faiss.IndexFlatIP(flat.d)
    bad.add(np.full_like(x, np.nan))
    faiss.write_index(bad, str(g / "shortlist-2x16.faiss"))
    (Path(shutil.copytree(base, cidx / "cur_binary")) / "CURRENT").write_bytes(b"\xff\xfe\x00gen\n")
    for name, key, value in [("man_normalize_str", "normalize", "false"), ("man_maxlen_neg", "max_length", -5)]:
        g = copy(name)
        m = json.loads((g / "manifest.json").read_text())
        m["model"][key] = value
        (g / "manifest.json").write_text(json.dumps(m))


def trial3_cases(model, data, bad, d):
    """(cases, checks): checks[name](result) -> (verdict, message) or None, run after the exit status is classified."""
    import torch
    from transformers import AutoModel

    lines = [json.loads(x) for x in (data / "corpus.jsonl").read_text().splitlines()[:8]]
    (bad / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + "".join(f"{x['_id']}\t{x['text']}\n" for x in lines).encode())
    (bad / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(x) + "\n" for x in lines).encode())
    qs = [json.loads(x) for x in (data / "queries.jsonl").read_text().splitlines()]
    (bad / "q_bom.tsv").write_bytes(b"\xef\xbb\xbf" + "".join(f"{q['_id']}\t{q['text']}\n" for q in qs).encode())
    head = "".join(json.dumps(x) + "\n" for x in lines[:3])
    (bad / "surrogate_id.jsonl").write_text(head + '{"_id": "x\\ud800", "text": "cell"}\n')
    (bad / "surrogate_text.jsonl").write_text(head + '{"_id": "x", "text": "cell \\udc00 gene"}\n')
    (bad / "q_surrogate.jsonl").write_text('{"_id": "1", "text": "cell \\ud800 x"}\n')
    for name, text in {"q_nul": "\u0000\u0000", "q_ctrl_only": "\u0001\u001f", "q_zw_only": "\u200b\u200c"}.items():
        (bad / f"{name}.jsonl").write_text(json.dumps({"_id": "1", "text": text}) + "\n")
    corpus_lines = (data / "corpus.jsonl").read_text().splitlines()[:8]
    (bad / "utf16le_nobom.jsonl").write_bytes(("\n".join(corpus_lines) + "\n").encode("utf-16-le"))
    (bad / "cr_only.jsonl").write_bytes(("\r".join(corpus_lines) + "\r").encode())
    for name, value in {"list": '["a", "b"]', "obj": '{"k": "v"}', "bool": "true"}.items():
        (bad / f"text_{name}.jsonl").write_text(head + f'{{"_id": "x", "text": {value}}}\n')
    for name, value in {"obj": "{}", "bool": "true", "float": "1.5"}.items():
        (bad / f"id_{name}.jsonl").write_text(head + f'{{"_id": {value}, "text": "cell"}}\n')
    (bad / "q_textlist.jsonl").write_text('{"_id": "1", "text": ["a", "b"]}\n')
    (bad / "q_idnum.jsonl").write_text('{"_id": 1e400, "text": "cell"}\n')
    from adaretrieve.modeling.adaptor import Adaptor

    fl_neg = Path(shutil.copytree(model, d / "fl-neg-model"))  # am-fl_neg: an adaptor whose feature layer is -1
    Adaptor(32, {2: 16}, {2: [1, 2]}).save(fl_neg)
    cfg = json.loads((fl_neg / "adaptor.json").read_text())
    cfg["feature_layers"]["2"] = [-1, 2]
    (fl_neg / "adaptor.json").write_text(json.dumps(cfg))
    nan = Path(shutil.copytree(model, d / "nan-model"))
    m = AutoModel.from_pretrained(nan)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.save_pretrained(nan)
    base = d / "idx" / "base"
    q = str(data / "queries.jsonl")
    runs = d / "runs"
    x = ["--out", str(runs / "t3.trec")]
    ix = ["index", "-q", "--model", str(model), "--shortlist", "1x8", "--corpus"]
    cases = [("co-bomtsv", ix + [str(bad / "bom.tsv"), "--out", str(d / "idx" / "bomtsv")], "ok"),
             ("co-bom", ix + [str(bad / "bom.jsonl"), "--out", str(d / "idx" / "bomjsonl")], "ok"),
             ("co-surrogate_id", ix + [str(bad / "surrogate_id.jsonl"), "--out", str(d / "idx" / "sur")], "error"),
             ("co-surrogate_id-rerun", ix + [str(bad / "surrogate_id.jsonl"), "--out", str(d / "idx" / "sur")], "error"),
             ("co-surrogate_text", ix + [str(bad / "surrogate_text.jsonl"), "--out", str(d / "idx" / "sur")], "error"),
             ("am-nan", ["index", "-q", "--model", str(nan), "--shortlist", "1x8", "--corpus", str(data), "--out",
                         str(d / "idx" / "amnan")], "error"),
             ("qf-bomtsv", ["search", "-q", "--index", str(base), "--queries", str(bad / "q_bom.tsv"), "--qrels",
                            str(data / "qrels.tsv"), "--out", str(runs / "qbom.trec")], "ok"),
             ("qf-q_surrogate", ["search", "-q", "--index", str(base), "--queries", str(bad / "q_surrogate.jsonl")] + x, "error")]
    cases += [("co-utf16le_nobom", ix + [str(bad / "utf16le_nobom.jsonl"), "--out", str(d / "idx" / "u16")], "error"),
              ("co-cr_only", ix + [str(bad / "cr_only.jsonl"), "--out", str(d / "idx" / "cr")], "error")]
    cases += [(f"co-text_types-{n}", ix + [str(bad / f"text_{n}.jsonl"), "--out", str(d / "idx" / "tt")], "error")
              for n in ("list", "obj", "bool")]
    cases += [(f"co-id_types-{n}", ix + [str(bad / f"id_{n}.jsonl"), "--out", str(d / "idx" / "it")], "error")
              for n in ("obj", "bool", "float")]
    cases += [(f"qf-{n}", ["search", "-q", "--index", str(base), "--queries", str(bad / f"{n}.jsonl")] + x, "error")
              for n in ("q_textlist", "q_idnum")]
    cases += [("am-fl_neg", ["index", "-q", "--model", str(fl_neg), "--shortlist", "2x16", "--corpus", str(data), "--out",
                             str(d / "idx" / "flneg")], "error"),
              ("qd-path-missing", ["search", "-q", "--index", f"qdrant:{d / 'qd' / 'nope'}", "cell"], "error"),
              ("nc-eval-depth", ["eval", "--run", str(runs / "good.trec"), "--qrels", str(data / "qrels.tsv")], "ok"),
              # newcomer-3: a mistyped folder under one that exists (ckpt/tny beside ckpt/) is not a Hub id
              ("nc-model-typo", ["index", "-q", "--model", "idx/chekpoint", "--shortlist", "1x8", "--corpus",  # cwd: d
                                 str(data), "--out", str(d / "idx" / "typo")], "error")]
    for name in ("q_nul", "q_ctrl_only", "q_zw_only"):
        cases.append((f"qf-invisible-{name}", ["search", "-q", "--index", str(base), "--queries", str(bad / f"{name}.jsonl")] + x,
                      "error"))
    cases += [("qf-invisible-arg", ["search", "-q", "--index", str(base), "\u200b\u200b"], "error"),
              ("qf-surrogate-arg", ["search", "-q", "--index", str(base), "cell \ud800"], "error")]
    for name in TRIAL3_INDEXES:
        extra = {"faiss_hnsw_as_flat": ["--shortlist", "2x8"], "shortlist_nan": ["--shortlist", "2x16"]}.get(name, [])
        cases.append((f"ci-{name}", ["search", "-q", "--index", str(d / "cidx" / name), "--queries", q, *extra] + x, "error"))
    victim = d / "idx" / "victim3"
    shutil.copytree(base, victim)
    cases += [("se-out-current", ["search", "-q", "--index", str(victim), "--queries", q, "--out", str(victim / "CURRENT")],
               "error"),
              ("se-out-dash", ["search", "-q", "--index", str(base), "--queries", q, "--top", "3", "--out", "-"], "ok")]

    def first_id(index):
        from adaretrieve.index.format import current_generation

        return (current_generation(index) / "docids.txt").read_bytes().split(b"\n")[0]

    def bom_corpus(name):
        return lambda r: None if first_id(d / "idx" / name) == lines[0]["_id"].encode() else ("BAD", "the BOM joined the first id")

    def qbom(r):
        ok = {ln.split()[0] for ln in (runs / "qbom.trec").read_text().splitlines()} == {q["_id"] for q in qs}
        return None if ok else ("BAD", "the first query id was changed by the BOM")

    def current_intact(r):
        ok = (victim / "CURRENT").read_bytes() == (base / "CURRENT").read_bytes()
        return None if ok else ("BAD", "the index's CURRENT was replaced")

    def dash(r):
        rows = [ln for ln in r.stdout.splitlines() if " Q0 " in ln]
        ok = len(rows) == 3 * len(qs) and all(len(ln.split()) == 6 for ln in rows) and not Path("-").exists()
        return None if ok else ("BAD", f"{len(rows)} run lines on stdout; a file named '-': {Path('-').exists()}")

    def surrogate_rerun(r):
        left = list((d / "idx").glob(".sur.build"))
        return None if not left else ("MINOR", f"left {left[0].name}")

    def names(*words):  # the error line must name what is wrong, not blame something else
        def check(r):
            line = next((ln for ln in r.stderr.splitlines() if ln.startswith("error: ")), "")
            missing = [w for w in words if w not in line]
            return None if not missing else ("MINOR", f"the error does not name {missing}: {line[:100]}")
        return check

    def qd_nothing_made(r):
        return None if not (d / "qd").exists() else ("MINOR", "searching a missing qdrant:PATH created the folder")

    checks = {"co-utf16le_nobom": names("UTF-16"), "co-cr_only": names("carriage returns (CR) alone"),
              "ci-man_normalize_str": names("manifest model 'normalize'"), "ci-man_maxlen_neg": names("manifest model 'max_length'"),
              "am-fl_neg": names("adaptor.json"), "nc-model-typo": names("does not exist"),
              "nc-eval-depth": lambda r: None if "R@1\t" in r.stdout and "R@1000" not in r.stdout
              else ("MINOR", "eval names recall beyond the run's depth (1 per query)"), "qd-path-missing": qd_nothing_made,
              **{f"co-text_types-{n}": names("text is") for n in ("list", "obj", "bool")},
              **{f"co-id_types-{n}": names("doc id") for n in ("obj", "bool", "float")},
              "qf-q_textlist": names("text is a JSON array"), "qf-q_idnum": names("query id"),
              "co-bomtsv": bom_corpus("bomtsv"), "co-bom": bom_corpus("bomjsonl"), "qf-bomtsv": qbom,
              "se-out-current": current_intact, "se-out-dash": dash, "co-surrogate_id-rerun": surrogate_rerun}
    return cases, checks


# (case, body bytes, status wanted, words the one-line error must hold): trial 3's HTTP cases, in process
HTTP_CASES = [("h-size-empty", b'{"queries": ["cell"], "shortlist": ""}', 422, "size ''"),
              ("h-deep", b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
              ("h-string-body", b'"x"', 422, "must be a JSON object")]


def http_cases(index: Path, d: Path) -> list[tuple[str, str, int, str]]:
    """Rows (case, verdict, status, message) of ``HTTP_CASES`` against ``serve``'s app over ``index``, then
    sv-index-bad (a service over trial 3's int8 index without scale_file must not start) and sv-index-moved
    (the served folder moved away: a size not used yet is answered or a 5xx, never a 4xx; /health not ok)."""
    from fastapi.testclient import TestClient

    from adaretrieve.errors import AdaError
    from adaretrieve.serve.app import create_app
    from adaretrieve.serve.service import SearchService

    rows = []
    try:
        SearchService(d / "cidx" / "man_dtype_int8_noscale", device="cpu")
        rows.append(("sv-index-bad", "BAD", 0, "the service started on an index whose rerank entry has no scale_file"))
    except AdaError as e:
        rows.append(("sv-index-bad", "GOOD" if "scale_file" in str(e) else "MINOR", 2, str(e).replace(str(d), "<tmp>")[:160]))
    moved = Path(shutil.copytree(index, d / "idx" / "srv"))
    with TestClient(create_app(SearchService(moved, device="cpu"))) as c:
        shutil.move(moved, d / "idx" / "srv-moved")
        r = c.post("/search", json={"queries": ["cell"], "shortlist": "2x8", "k": 10, "top": 2})
        h = c.get("/health")
        good = r.status_code not in range(400, 500) and h.status_code == 503 and h.json().get("status") != "ok"
        rows.append(("sv-index-moved", "GOOD" if good else "BAD", r.status_code,
                     f"search {r.status_code}, /health {h.status_code} {h.json().get('status')}"))
    rows.append(slowloris(index))
    with TestClient(create_app(SearchService(index, device="cpu"))) as c:
        for name, body, status, words in HTTP_CASES:
            r = c.post("/search", content=body, headers={"content-type": "application/json"})
            try:
                msg = r.json().get("error", "") if isinstance(r.json(), dict) else ""
            except ValueError:
                msg = r.text[:160]
            good = r.status_code == status and words in msg and "\n" not in msg
            rows.append((name, "GOOD" if good else ("BAD" if r.status_code >= 500 or r.status_code < 400 else "MINOR"),
                         r.status_code, msg.replace("|", "\\|")[:160]))
        r = c.get("/docs")  # newcomer-3: Swagger UI from a CDN is a blank page offline
        urls = re.findall(r"https?://[^\s\"'<>]+", r.text)
        rows.append(("nc-docs-offline", "GOOD" if r.status_code == 200 and not urls else "MINOR", r.status_code,
                     f"/docs fetches {urls[:2]}" if urls else "/docs needs nothing from the network"))
    return rows


def slowloris(index: Path, n: int = 50, timeout: float = 1.0) -> tuple[str, str, int, str]:
    """sv-slowloris: ``n`` connections that send headers and half a body (or half the headers) then stall,
    against a real uvicorn server running serve's protocol with its read timeout cut to ``timeout``
    seconds: each must be closed by the server within a few timeouts, and /health answered meanwhile."""
    import socket
    import threading
    import time

    import uvicorn

    from adaretrieve.serve import protocol
    from adaretrieve.serve.app import create_app
    from adaretrieve.serve.service import SearchService

    cls = type("TrialProtocol", (protocol.TimedH11Protocol,), {"read_timeout": timeout})
    server = uvicorn.Server(uvicorn.Config(create_app(SearchService(index, device="cpu")), http=cls, log_level="warning"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        heads = [b"POST /search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"q",
                 b"POST /search HTTP/1.1\r\nHost: x\r\ncontent-"]
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        for i, s in enumerate(socks):
            s.sendall(heads[i % 2])
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as ok:
            ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ok.settimeout(5)
            healthy = ok.recv(100).startswith(b"HTTP/1.1 200")
        open_ = 0
        for s in socks:
            s.settimeout(max(0.1, 5 * timeout - (time.perf_counter() - t0)))
            try:
                while s.recv(4096):
                    pass
            except TimeoutError:
                open_ += 1
            except OSError:
                pass
            s.close()
        waited = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(10)
    good = healthy and open_ == 0
    return ("sv-slowloris", "GOOD" if good else "BAD", 0,
            f"{n - open_} of {n} stalled connections closed by the server within {waited:.1f} s (read timeout {timeout} s); "
            f"/health answered meanwhile: {healthy}")


def classify(res, expect: str) -> tuple[str, str]:
    err = [x for x in (res.stderr or "").splitlines() if x.strip()]
    errors = [x for x in err if x.startswith("error: ")]
    tb = res.exception is not None and not isinstance(res.exception, SystemExit)
    first = errors[0] if errors else (repr(res.exception)[:160] if tb else (err[-1] if err else ""))
    if tb:
        return "BAD", first
    if expect == "ok":
        return ("GOOD" if res.exit_code == 0 else "BAD"), first
    if res.exit_code == 0:
        return "BAD", "exit 0 on an input that must be refused"
    if res.exit_code == 2 and len(errors) == 1:
        return "GOOD", first
    return "MINOR", first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "trial" / "results.md"))
    args = ap.parse_args()
    runner = CliRunner()
    out = Path(args.out).resolve()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        os.chdir(d)  # every case names absolute paths but nc-model-typo's relative one; nothing lands in the checkout
        inp = build_inputs(d)
        other = _save_tiny_bert(d / "other-model", seed=1)
        res = runner.invoke(app, ["index", "-q", "--model", str(inp["model"]), "--corpus", str(inp["data"]),
                                  "--shortlist", "1x8", "--shortlist", "2x16", "--rerank", "4x32", "--out", str(d / "idx" / "base")])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["index", "-q", "--model", str(other), "--corpus", str(inp["data"]), "--shortlist", "1x8",
                                  "--out", str(d / "idx" / "other")])
        assert res.exit_code == 0, res.output
        corrupt_indexes(d / "idx" / "base", d / "cidx")
        trial3_indexes(d / "idx" / "base", d / "cidx", d / "outside")
        cases = (index_cases(inp["model"], inp["data"], inp["bad"], d) + search_cases(inp["model"], other, inp["data"], inp["bad"], d)
                 + other_cases(inp["model"], inp["data"], inp["bad"], d))
        t3_cases, checks = trial3_cases(inp["model"], inp["data"], inp["bad"], d)
        cases += t3_cases
        victim = d / "idx" / "victim"

        def snapshot():
            return {str(p.relative_to(victim)): p.read_bytes() for p in sorted(victim.rglob("*")) if p.is_file()}

        victim_before = snapshot()
        rows = []
        for name, argv, expect in cases:
            r = runner.invoke(app, argv)
            verdict, msg = classify(r, expect)
            rows.append((name, verdict, r.exit_code, msg.replace(tmp, "<tmp>").replace("|", "\\|")[:160]))
            if name == "be-overwrite" and snapshot() != victim_before:
                rows[-1] = (name, "BAD", r.exit_code, "the existing index was replaced")
            if name in checks and verdict == "GOOD":
                seen = checks[name](r)
                if seen is not None:
                    rows[-1] = (name, seen[0], r.exit_code, seen[1])
            if name == "se-metrics" and (d / "runs" / "metrics.trec").exists():
                rows[-1] = (name, "MINOR", r.exit_code, "refused only after searching: the run file was written")
            print(f"{verdict:5} {name:22} {r.exit_code} {rows[-1][3]}", flush=True)
        for row in http_cases(d / "idx" / "base", d):
            rows.append(row)
            print(f"{row[1]:5} {row[0]:22} {row[2]} {row[3]}", flush=True)
        os.chdir(cwd)
    counts = {v: sum(1 for r in rows if r[1] == v) for v in ("GOOD", "MINOR", "BAD")}
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Bad-input trial, re-run", "", "Command: `.venv/bin/python tests/trial/run_trial.py`", "",
             f"{len(rows)} cases: GOOD {counts['GOOD']}, MINOR {counts['MINOR']}, BAD {counts['BAD']}", "",
             "| case | verdict | exit | message |", "| --- | --- | ---: | --- |"]
    lines += [f"| {n} | {v} | {e} | {m} |" for n, v, e, m in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} cases: {counts}; table in {out}")


if __name__ == "__main__":
    main()
