"""Every class of bad input from the bad-input trial ends in one `error:` line naming the thing and
exit status 2, never a traceback (issue 12, items 5 and 7)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve import AdaError
from adaretrieve.cli.main import app
from adaretrieve.index.format import current_generation
from tests.conftest import WORDS, make_corpus

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_error(res, *names):
    """Exit 2, one `error:` line on stderr naming every one of ``names``, no traceback; the line."""
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def build(tiny_model, corpus, out, *extra):
    return run("index", "--corpus", corpus, "--model", tiny_model, "--shortlist", "1x8", "--shortlist", "2x16",
               "--rerank", "4x32", "--out", out, "--quiet", *extra)


@pytest.fixture(scope="module")
def base_index(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    corpus = make_corpus(d / "corpus.jsonl")
    res = build(tiny_model, corpus, d / "ix")
    assert res.exit_code == 0, res.output
    return d / "ix"


@pytest.fixture
def ix(base_index, tmp_path):
    """A fresh copy of a good index, to break."""
    return shutil.copytree(base_index, tmp_path / "ix")


@pytest.fixture
def queries(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(4)))
    return q


def search(ix, queries, tmp_path, *extra):
    return run("search", "--index", ix, "--queries", queries, "--out", tmp_path / "run.trec", "--quiet", *extra)


# -- ids (item 5) --------------------------------------------------------------------------------

BAD_IDS = {"tab": "a\tb", "space": "a b", "newline": "a\nb", "cr": "a\rb", "ls": "a\u2028b", "nel": "a\u0085b",
           "empty": "", "nul": "a\x00b"}


@pytest.mark.parametrize("name", BAD_IDS)
def test_bad_doc_id_is_refused_at_the_reader_with_line_and_rule(tiny_model, tmp_path, name):
    corpus = make_corpus(tmp_path / "c.jsonl", n=6)
    lines = corpus.read_text().splitlines()
    lines[3] = json.dumps({"_id": BAD_IDS[name], "title": "", "text": "cell gene"})
    corpus.write_text("\n".join(lines) + "\n")
    msg = one_error(build(tiny_model, corpus, tmp_path / "ix"), f"{corpus}:4", repr(BAD_IDS[name]))
    assert "whitespace" in msg or "empty" in msg
    assert not (tmp_path / "ix").exists() and not (tmp_path / ".ix.build").exists()


@pytest.mark.parametrize("name", ["tab", "space", "ls", "empty"])
def test_bad_query_id_is_refused(ix, tmp_path, name):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"_id": "q0", "text": "cell"}) + "\n" + json.dumps({"_id": BAD_IDS[name], "text": "gene"}) + "\n")
    one_error(search(ix, q, tmp_path), f"{q}:2")


def test_bad_ids_in_qrels_and_runs_are_refused(tmp_path):
    from adaretrieve.data import read_qrels
    from adaretrieve.errors import AdaError
    from adaretrieve.eval import read_run

    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\nq2\td\x01x\t1\n")
    with pytest.raises(AdaError, match=r"qrels.tsv:2: .*'d\\x01x'"):
        read_qrels(qrels)
    r = tmp_path / "run.trec"
    r.write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d\x02 2 0.5 t\n")
    with pytest.raises(AdaError, match=r"run.trec:2: .*'d\\x02'"):
        read_run(r)


def test_numeric_ids_still_work(tiny_model, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": 100 + i, "text": w}) + "\n" for i, w in enumerate(WORDS[:5])))
    assert build(tiny_model, corpus, tmp_path / "ix").exit_code == 0


# -- encodings and compression ---------------------------------------------------------------------

def test_non_utf8_corpus_names_file_and_line(tiny_model, tmp_path):
    corpus = make_corpus(tmp_path / "c.jsonl", n=8)
    data = corpus.read_bytes().split(b"\n")
    data[5] = data[5].replace(b"cell", b"c\xe9ll").replace(b'"title": "', b'"title": "\xe9')
    corpus.write_bytes(b"\n".join(data))
    one_error(build(tiny_model, corpus, tmp_path / "ix"), f"{corpus}:6", "UTF-8")


def test_binary_corpus(tiny_model, tmp_path):
    corpus = tmp_path / "binary.jsonl"
    corpus.write_bytes(np.random.default_rng(0).bytes(4096))
    one_error(build(tiny_model, corpus, tmp_path / "ix"), str(corpus))


def test_truncated_gzip_corpus(tiny_model, tmp_path):
    corpus = make_corpus(tmp_path / "c.jsonl", n=200)
    gz = tmp_path / "corpus.jsonl.gz"
    data = gzip.compress(corpus.read_bytes())
    gz.write_bytes(data[: len(data) // 2])
    one_error(build(tiny_model, gz, tmp_path / "ix"), str(gz), "gzip")


def test_non_utf8_queries_runs_and_qrels(ix, queries, tmp_path):
    bad = tmp_path / "q_bad.jsonl"
    bad.write_bytes(queries.read_bytes().replace(b"the", b"th\xe9", 1))
    one_error(search(ix, bad, tmp_path), f"{bad}:1", "UTF-8")
    run_file = tmp_path / "r.trec"
    run_file.write_bytes(b"q1 Q0 d1 1 1.0 t\nq\xe9 Q0 d1 1 1.0 t\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\n")
    one_error(run("eval", "--run", run_file, "--qrels", qrels), f"{run_file}:2", "UTF-8")
    qrels.write_bytes(b"q1\td1\t1\nq\xe9\td1\t1\n")
    run_file.write_text("q1 Q0 d1 1 1.0 t\n")
    one_error(run("eval", "--run", run_file, "--qrels", qrels), f"{qrels}:2", "UTF-8")


# -- index files -------------------------------------------------------------------------------------

def _manifest(ix):
    return json.loads((current_generation(ix) / "manifest.json").read_text())


@pytest.mark.parametrize("case", ["missing", "extra", "list", "wrongtype", "wrongtype-shortlist"])
def test_manifest_keys_and_types(ix, queries, tmp_path, case):
    m = _manifest(ix)
    if case == "missing":
        del m["model"]
        want = "'model'"
    elif case == "extra":
        m["colour"] = "red"
        want = "'colour'"
    elif case == "list":
        m = [m]
        want = "JSON object"
    elif case == "wrongtype":
        m["n_docs"] = "forty"
        want = "n_docs"
    else:
        m["shortlist"] = [{"size": "1x8"}]
        want = "shortlist"
    (current_generation(ix) / "manifest.json").write_text(json.dumps(m))
    one_error(search(ix, queries, tmp_path), "manifest.json", want)


def _break(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        path.write_bytes(data[:50])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(1).bytes(len(data)))


@pytest.mark.parametrize("how", ["truncate", "header", "garbage"])
def test_damaged_rerank_npy(ix, queries, tmp_path, how):
    _break(current_generation(ix) / "rerank-4x32.npy", how)
    one_error(search(ix, queries, tmp_path), "rerank-4x32.npy")


@pytest.mark.parametrize("shape", [(10, 32), (40, 20), (40,)])
def test_misshaped_rerank_npy(ix, queries, tmp_path, shape):
    np.save(current_generation(ix) / "rerank-4x32.npy", np.zeros(shape, np.float16))
    one_error(search(ix, queries, tmp_path), "rerank-4x32.npy", "40")


def test_pickled_rerank_npy(ix, queries, tmp_path):
    np.save(current_generation(ix) / "rerank-4x32.npy", np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)
    one_error(search(ix, queries, tmp_path), "rerank-4x32.npy")


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_damaged_faiss(ix, queries, tmp_path, how):
    _break(current_generation(ix) / "shortlist-1x8.faiss", how)
    one_error(search(ix, queries, tmp_path, "--shortlist", "1x8"), "shortlist-1x8.faiss")


def test_faiss_from_another_corpus(ix, queries, tmp_path):
    import faiss

    other = faiss.IndexFlatIP(8)
    other.add(np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32))
    faiss.write_index(other, str(current_generation(ix) / "shortlist-1x8.faiss"))
    one_error(search(ix, queries, tmp_path, "--shortlist", "1x8", "--rerank", "none"), "shortlist-1x8.faiss", "500", "40")


def test_missing_docids(ix, queries, tmp_path):
    (current_generation(ix) / "docids.txt").unlink()
    one_error(search(ix, queries, tmp_path), "docids.txt")


# -- configs -------------------------------------------------------------------------------------------

def test_yaml_syntax_error_train_and_bench(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: minilm\nsteps: [1, 2\nlr: 0.1\n")
    one_error(run("train", "-q", "--config", cfg), str(cfg), "YAML", "line")
    one_error(run("bench", "-q", "--config", cfg, "--out", tmp_path / "o"), str(cfg), "YAML")
    one_error(run("pretrain", "-q", "--config", cfg), str(cfg), "YAML")
    one_error(run("train", "-q", "--set", "steps=[1,"), "steps")


@pytest.mark.parametrize("text,key", [("steps: [1, 2]", "steps"), ("lr: {a: 1}", "lr"), ("batch_size: 2.5", "batch_size"),
                                      ("loss: 3", "loss"), ("pairs: {a: 1}", "pairs"), ("freeze_backbone: maybe", "freeze_backbone")])
def test_wrongly_typed_train_settings(tmp_path, text, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: minilm\n{text}\n")
    one_error(run("train", "-q", "--config", cfg), key)


def test_top_level_not_a_mapping(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- minilm\n- steps\n")
    one_error(run("train", "-q", "--config", cfg), str(cfg), "mapping")


def test_wrongly_typed_bench_value(tmp_path):
    cfg = tmp_path / "b.yaml"
    cfg.write_text("name: x\nmodel: minilm\ncorpus: c\nqueries: q\nqrels: r\nindex: i\nshortlist: [1x8]\nrerank: 4x32\n"
                   "two_stage: [{shortlist: 1x8, k: abc, rerank: 4x32}]\n")
    one_error(run("bench", "-q", "--config", cfg, "--out", tmp_path / "o"), str(cfg), "'abc'")


@pytest.mark.parametrize("setting", ["steps=0", "batch_size=0", "batch_size=-2", "lr=0", "lr=-1", "grad_accum=0",
                                     "save_every=0", "warmup=-0.5", "n_negatives=-1"])
def test_zero_or_negative_train_settings(tmp_path, setting):
    one_error(run("train", "-q", "--set", setting, "--set", "data=x.jsonl"), setting.split("=")[0])


@pytest.mark.parametrize("setting", ["steps=0", "batch_size=0", "lr=-1", "max_length=0"])
def test_zero_or_negative_pretrain_settings(tmp_path, setting):
    one_error(run("pretrain", "-q", "--set", setting), setting.split("=")[0])


# -- CLI numbers, devices, output paths ------------------------------------------------------------------

@pytest.mark.parametrize("opt", [("--batch-size", 0), ("--chunk-size", 0), ("--chunk-size", -5), ("--max-length", 0),
                                 ("--batch-size", -1)])
def test_zero_or_negative_index_options(tiny_model, tmp_path, opt):
    corpus = make_corpus(tmp_path / "c.jsonl", n=6)
    one_error(build(tiny_model, corpus, tmp_path / "ix", *map(str, opt)), opt[0])
    assert not (tmp_path / ".ix.build").exists()


def test_zero_search_batch_size(ix, queries, tmp_path):
    one_error(search(ix, queries, tmp_path, "--batch-size", "0"), "--batch-size")


@pytest.mark.parametrize("opt", [("--latency-queries", "0"), ("--k", "0"), ("--k", "-3")])
def test_zero_tune_options(ix, queries, tmp_path, opt):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q0\td1\t1\n")
    one_error(run("tune", "-q", "--index", ix, "--queries", queries, "--qrels", qrels, "--budget-ms", "50", *opt), opt[0])


@pytest.mark.parametrize("device,want", [("tpu", "'tpu'"), ("cuda", "CUDA")])
def test_bad_device(tiny_model, tmp_path, device, want, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    corpus = make_corpus(tmp_path / "c.jsonl", n=6)
    one_error(build(tiny_model, corpus, tmp_path / "ix", "--device", device), "device", want)


def test_out_is_a_directory_or_unwritable(ix, queries, tmp_path):
    (tmp_path / "runs").mkdir()
    one_error(search(ix, queries, tmp_path, "--out", tmp_path / "runs"), str(tmp_path / "runs"))
    assert not (tmp_path / "runs.tmp").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_error(search(ix, queries, tmp_path, "--out", blocker / "run.trec"), str(blocker))


def test_qrels_and_run_given_a_folder(ix, queries, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    one_error(search(ix, queries, tmp_path, "--qrels", folder), str(folder), "folder")
    good = tmp_path / "good.trec"
    good.write_text("q1 Q0 d1 1 1.0 t\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\n")
    one_error(run("eval", "--run", folder, "--qrels", qrels), str(folder), "folder")
    one_error(run("eval", "--run", good, "--qrels", folder), str(folder), "folder")


# -- run files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,text,want", [
    ("badscore.trec", "q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 notanumber t\n", ":2"),
    ("badjsonl.trec", '{"qid": "q1", "hits": [{"docid": "d1", "score": 1.0}]}\n{"qid": "q2", "hits": [\n', ":2"),
    ("nohits.trec", '{"qid": "q1"}\n', ":1"),
    ("badhit.trec", '{"qid": "q1", "hits": [{"docid": "d1"}]}\n', ":1"),
    ("bad.json", '[{"query": "x", "hits": [{"qid": "q1", "docid": "d1"}]}]', "score"),
    ("bad2.json", "not json", "JSON"),
    ("bad3.json", '{"a": 1}', "list"),
])
def test_bad_run_files(tmp_path, name, text, want):
    r = tmp_path / name
    r.write_text(text)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\n")
    one_error(run("eval", "--run", r, "--qrels", qrels), str(r), want)


# -- training data -----------------------------------------------------------------------------------------

def _records(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_training_folder_is_not_a_hub_id(tmp_path, monkeypatch):
    from adaretrieve.errors import AdaError
    from adaretrieve.training.data import load_records

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in [str(tmp_path / "no" / "such"), "./nope", "data/nope", "../nope/x"]:
        with pytest.raises(AdaError, match="does not exist"):
            load_records(source)
    one_error(run("train", "-q", "--set", f"data={tmp_path / 'no' / 'such'}"), "does not exist", str(tmp_path / "no" / "such"))


def test_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    import adaretrieve.hub as H
    from adaretrieve.errors import AdaError
    from adaretrieve.training import data as D

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdaError, match="HF_HUB_OFFLINE"):
        D.load_records("Tevatron/msmarco-passage")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(H, "hub_reachable", lambda: False)
    with pytest.raises(AdaError, match="cannot reach"):
        D.load_records("Tevatron/msmarco-passage")


def test_sentence_transformers_columns_are_mapped(tmp_path):
    from adaretrieve.training.data import load_records

    p = _records(tmp_path / "st.jsonl", [{"anchor": f"q{i}", "positive": f"p{i}", "negative": f"n{i}"} for i in range(3)])
    ex = load_records(str(p))
    assert [(e.query, e.positives, e.negatives) for e in ex] == [(f"q{i}", [f"p{i}"], [f"n{i}"]) for i in range(3)]
    p2 = _records(tmp_path / "st2.jsonl", [{"anchor": f"q{i}", "positive": f"p{i}"} for i in range(3)])
    assert [(e.query, e.positives, e.negatives) for e in load_records(str(p2))] == [(f"q{i}", [f"p{i}"], []) for i in range(3)]


def test_tevatron_id_only_and_unknown_columns_are_refused(tmp_path):
    from adaretrieve.errors import AdaError
    from adaretrieve.training.data import load_records

    p = _records(tmp_path / "tev.jsonl", [{"query_id": "1", "query": "a b", "positive_passages": [{"docid": "7"}],
                                           "negative_passages": [{"docid": "8"}]}])
    with pytest.raises(AdaError, match=r"tev.jsonl:1: .*doc ids only.*'docid'.*'text'"):
        load_records(str(p))
    p = _records(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(AdaError, match=r"qa.jsonl:1: .*columns \['answer', 'question'\].*anchor"):
        load_records(str(p))
    p = _records(tmp_path / "noq.jsonl", [{"positive": "b"}])
    with pytest.raises(AdaError, match=r"noq.jsonl:1: .*no query text"):
        load_records(str(p))


def test_negatives_cache_missing_says_run_mine(tmp_path):
    from adaretrieve.errors import AdaError
    from adaretrieve.training.data import load_beir

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "x"}) + "\n")
    (root / "qrels" / "train.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(AdaError, match=r"negatives file .*cache/neg.jsonl does not exist.*adaretrieve mine"):
        load_beir(root, "train", tmp_path / "cache" / "neg.jsonl")


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no network"])
def test_a_hub_model_id_fails_at_once_when_it_cannot_be_loaded(monkeypatch, tmp_path, offline):
    """Issue 12, item 7: a Hub id not in the cache, offline, is one line at once (not minutes of retries)."""
    import transformers

    import adaretrieve.hub as H
    from adaretrieve.modeling import Encoder

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(H, "hub_reachable", lambda timeout=3.0: False)

    def never(*a, **k):
        raise AssertionError("from_pretrained was called: the download would have been retried")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    with pytest.raises(AdaError, match="not in the local cache") as e:
        Encoder("some-org/some-model")
    assert ("HF_HUB_OFFLINE is set" in str(e.value)) == (offline == "HF_HUB_OFFLINE")


@pytest.mark.parametrize("name", ["ckpt/tny", "./chekpoints/x", "ckpt/tny/", "ckpt\\tny", "my model/x", "ckpt/file.txt"])
def test_a_mistyped_local_model_folder_is_named_not_taken_for_a_hub_id(monkeypatch, tmp_path, name):
    """newcomer-3: `--model ckpt/tny` (ckpt exists, tny does not) got 'is a Hub id that is not in the local cache'."""
    import adaretrieve.hub as H

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "file.txt").write_text("x")
    monkeypatch.setattr(H, "hub_reachable", lambda timeout=3.0: pytest.fail("the Hub was asked about a local path"))
    res = run("index", "--model", name, "--corpus", make_corpus(tmp_path / "c.jsonl", n=3), "--shortlist", "1x8",
              "--out", tmp_path / "ix", "-q")
    line = one_error(res, name.rstrip("/"))
    assert "Hub id" not in line.split("(")[0] and ("does not exist" in line or "not a model folder" in line), line


def test_a_hub_id_that_is_no_local_folder_still_gets_the_hub_message(monkeypatch, tmp_path):
    import adaretrieve.hub as H

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(H, "hub_reachable", lambda timeout=3.0: False)
    res = run("index", "--model", "some-org/some-model", "--corpus", make_corpus(tmp_path / "c.jsonl", n=3),
              "--shortlist", "1x8", "--out", tmp_path / "ix", "-q")
    one_error(res, "'some-org/some-model'", "not in the local cache", "cannot reach the Hub", "no local folder")


def test_paths_in_a_config_file_are_read_from_the_config_files_folder(tmp_path, monkeypatch):
    """Issue 12, item 7: a config run from another directory finds what it names; --set values stay
    relative to where the command runs; aliases and Hub ids are left alone."""
    from adaretrieve.bench import Suite
    from adaretrieve.training.smae import PretrainConfig
    from adaretrieve.training.trainer import TrainConfig

    proj = tmp_path / "proj"
    (proj / "configs").mkdir(parents=True)
    (proj / "data" / "nf").mkdir(parents=True)
    (proj / "mymodel").mkdir()
    (proj / "configs" / "t.yaml").write_text("model: minilm\ndata: ../data/nf\nnegatives: ../cache/n.jsonl\n"
                                             "output: ../checkpoints/run\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = TrainConfig.from_file(proj / "configs" / "t.yaml")
    assert cfg.model == "minilm"
    assert cfg.data == str(proj / "data" / "nf") and cfg.negatives == str(proj / "cache" / "n.jsonl")
    assert cfg.output == str(proj / "checkpoints" / "run")
    cfg = TrainConfig.from_file(proj / "configs" / "t.yaml", ["output=here", "model=../proj/mymodel"])
    assert cfg.output == "here" and cfg.model == "../proj/mymodel"
    (proj / "configs" / "p.yaml").write_text("model: ../mymodel\ndata: [../data/nf, some-org/some-dataset]\noutput: out\n")
    p = PretrainConfig.from_file(proj / "configs" / "p.yaml")
    assert p.model == str(proj / "mymodel") and p.data == [str(proj / "data" / "nf"), "some-org/some-dataset"]
    assert p.output == str(proj / "configs" / "out")
    (proj / "configs" / "s.yaml").write_text("name: s\nmodel: minilm\ncorpus: ../data/nf\nqueries: ../data/nf/q.jsonl\n"
                                             "qrels: ../data/nf/qrels.tsv\nindex: ../indexes/nf\nshortlist: [2x32]\n"
                                             "rerank: 6x384\n")
    s = Suite.load(proj / "configs" / "s.yaml")
    assert (s.corpus, s.index) == (str(proj / "data" / "nf"), str(proj / "indexes" / "nf"))
    assert s.model == "minilm"
