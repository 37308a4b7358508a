"""Crafted index folders and inputs that used to be followed or silently give wrong results
(issue 27, items 2-5): symlinks out of an index, non-finite vectors, rerank rows of another dtype,
ids that break a TREC line, a BOM in a tsv, lone surrogates, invisible queries, --out inside an index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve import AdaError, Size
from adaretrieve.cli.main import app
from adaretrieve.data.readers import iter_corpus, read_queries, visible
from adaretrieve.index.format import current_generation
from adaretrieve.index.writer import IndexWriter
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
from adaretrieve.sizes import truncate
from tests.conftest import make_corpus

N, D = 60, 32
SHORT, FULL = Size(1, 8), Size(2, D)
MODEL = {"name": "random", "path": "random", "weights_sha256": "abc", "normalize": True, "pooling": "mean",
         "max_length": 32, "n_layers": 2, "hidden_size": D}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "base"
    rng = np.random.default_rng(0)
    x = truncate(rng.normal(size=(N, D)).astype(np.float32), D, True)
    w = IndexWriter(out, N, [SHORT], FULL)
    w.add([f"d{i}" for i in range(N)], {SHORT: truncate(x[:, :8], 8, True), FULL: x})
    w.close(MODEL, corpus="random")
    return out


def crafted(base: Path, tmp_path: Path, name: str = "ix") -> tuple[Path, Path]:
    """A copy of ``base`` and its generation folder."""
    ix = Path(shutil.copytree(base, tmp_path / name))
    return ix, current_generation(ix)


def search(ix: Path, short=SHORT, rerank=FULL):
    r = IndexReader(ix)
    q = truncate(np.random.default_rng(1).normal(size=(3, D)).astype(np.float32), D, True)
    _, rows = two_stage(r, short, rerank, 20, 5, q)
    return [[r.docids[int(j)] for j in row if j >= 0] for row in rows]


def two_stage(reader, short, rerank, k, top, q):
    """(scores, rows) of a shortlist at ``short`` (k candidates) reranked at ``rerank``; ``q`` [n, rerank.dim]."""
    s = FunnelSearcher(reader, FunnelPlan(short, k, rerank=rerank, top=top))
    return s.search({short: truncate(q[:, : short.dim], short.dim, True), rerank: q})


# -- item 2: nothing of an index is read through a link to outside its folder ---------------------------


@pytest.mark.parametrize("what", ["generation", "rerank_abs", "rerank_rel", "manifest", "docids", "faiss"])
def test_a_link_out_of_the_index_is_refused(base, tmp_path, what):
    ix, g = crafted(base, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    if what == "generation":
        shutil.copytree(g, outside / "gen")
        shutil.rmtree(g)
        g.symlink_to(outside / "gen")
    else:
        name = {"rerank_abs": "rerank-2x32.npy", "rerank_rel": "rerank-2x32.npy", "manifest": "manifest.json",
                "docids": "docids.txt", "faiss": "shortlist-1x8.faiss"}[what]
        shutil.move(g / name, outside / name)
        (g / name).symlink_to(outside / name if what != "rerank_rel" else Path("../../outside") / name)
    with pytest.raises(AdaError, match="outside the index folder"):
        search(ix)


def test_links_inside_the_index_and_a_linked_index_folder_are_fine(base, tmp_path):
    ix, g = crafted(base, tmp_path)
    shutil.move(g / "rerank-2x32.npy", g / "rows.npy")
    (g / "rerank-2x32.npy").symlink_to(Path("rows.npy"))
    want = search(base)
    assert search(ix) == want
    (tmp_path / "link").symlink_to(base)  # the user's own link to an index: its files resolve inside its target
    assert search(tmp_path / "link") == want


# -- item 3: non-finite vectors and rows of another dtype ----------------------------------------------


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_non_finite_rerank_rows_are_refused_at_first_use(base, tmp_path, fill):
    ix, g = crafted(base, tmp_path)
    rows = np.load(g / "rerank-2x32.npy")
    rows[7] = fill
    np.save(g / "rerank-2x32.npy", rows)
    r = IndexReader(ix)
    q = truncate(np.random.default_rng(1).normal(size=(2, D)).astype(np.float32), D, True)
    with pytest.raises(AdaError, match=r"rerank-2x32.npy: row 7 holds NaN or inf"):
        two_stage(r, SHORT, FULL, N, 5, q)
    with pytest.raises(AdaError, match="row 7 holds NaN or inf"):  # the one-query float16 path too
        two_stage(r, SHORT, FULL, N, 5, q[:1])
    with pytest.raises(AdaError, match="row 7 holds NaN or inf"):  # a shortlist derived from the rows
        r.shortlist_index(Size(2, 16))


def test_non_finite_shortlist_vectors_are_refused_at_open(base, tmp_path):
    ix, g = crafted(base, tmp_path)
    flat = faiss.read_index(str(g / "shortlist-1x8.faiss"))
    x = faiss.rev_swig_ptr(flat.get_xb(), N * 8).reshape(N, 8).copy()
    x[3] = np.nan
    bad = faiss.IndexFlatIP(8)
    bad.add(x)
    faiss.write_index(bad, str(g / "shortlist-1x8.faiss"))
    with pytest.raises(AdaError, match="row 3 holds NaN or inf"):
        search(ix)


def test_an_hnsw_file_declared_flat_is_refused(base, tmp_path):
    ix, g = crafted(base, tmp_path)
    flat = faiss.read_index(str(g / "shortlist-1x8.faiss"))
    hnsw = faiss.IndexHNSWFlat(8, 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(faiss.rev_swig_ptr(flat.get_xb(), N * 8).reshape(N, 8).copy())
    faiss.write_index(hnsw, str(g / "shortlist-1x8.faiss"))
    with pytest.raises(AdaError, match="IndexHNSWFlat, the manifest says factory 'Flat'"):
        search(ix)


def test_nan_vectors_are_never_written():
    w = IndexWriter.__new__(IndexWriter)
    w.row, w.n_docs = 0, 2
    with pytest.raises(AdaError, match="not finite"):
        w.add(["a", "b"], {SHORT: np.full((2, 8), np.nan, np.float32)})


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, np.float32])
def test_rerank_rows_of_another_dtype_are_refused(base, tmp_path, dtype):
    ix, g = crafted(base, tmp_path)
    rows = np.load(g / "rerank-2x32.npy")
    np.save(g / "rerank-2x32.npy", (rows > 0) if dtype == np.bool_ else rows.astype(dtype))
    with pytest.raises(AdaError, match=f"holds {np.dtype(dtype)} values, the manifest says float16"):
        search(ix)


def test_big_endian_float16_rows_are_the_same_rows(base, tmp_path):
    ix, g = crafted(base, tmp_path)
    np.save(g / "rerank-2x32.npy", np.load(g / "rerank-2x32.npy").astype(">f2"))
    assert search(ix) == search(base)


def test_int8_rerank_without_scale_file_is_one_line(base, tmp_path):
    ix, g = crafted(base, tmp_path)
    m = json.loads((g / "manifest.json").read_text())
    m["rerank"]["dtype"] = "int8"
    (g / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdaError, match="need a 'scale_file'"):
        search(ix)


@pytest.mark.parametrize("row0, words", [("a b", "a space"), ("d0\r", "a CR"), ("d0\0", "a NUL"), ("a\u2028b", "not allowed"),
                                         ("a\u00a0b", "not allowed"), (b"\xff\xfe", "not UTF-8")])
def test_a_docid_that_breaks_a_run_line_is_refused(base, tmp_path, row0, words):
    ix, g = crafted(base, tmp_path)
    lines = (g / "docids.txt").read_bytes().split(b"\n")
    lines[0] = row0 if isinstance(row0, bytes) else row0.encode()
    (g / "docids.txt").write_bytes(b"\n".join(lines))
    with pytest.raises(AdaError, match=f"docids.txt:1: .*{words}"):
        IndexReader(ix)  # at open, before any model loads


def test_non_ascii_ids_are_read_as_written(base, tmp_path):
    ix, g = crafted(base, tmp_path)
    ids = ["caf\u00e9", "\U0001f600", "\u05e9\u05dc\u05d5\u05dd"] + [f"d{i}" for i in range(3, N)]
    (g / "docids.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    assert list(IndexReader(ix).docids) == ids


def test_a_binary_current_is_named(base, tmp_path):
    ix, _ = crafted(base, tmp_path)
    (ix / "CURRENT").write_bytes(b"\xff\x00gen")
    with pytest.raises(AdaError, match="CURRENT is not UTF-8 text"):
        IndexReader(ix)


# -- items 3-5: corpora and queries --------------------------------------------------------------------


def test_a_utf8_bom_never_joins_the_first_id(tmp_path):
    (tmp_path / "c.tsv").write_bytes(b"\xef\xbb\xbfd1\tcell\nd2\tgene\n")
    assert [d.docid for d in iter_corpus(tmp_path / "c.tsv")] == ["d1", "d2"]
    (tmp_path / "c.jsonl").write_bytes(b'\xef\xbb\xbf{"_id": "d1", "text": "cell"}\n')
    assert [d.docid for d in iter_corpus(tmp_path / "c.jsonl")] == ["d1"]
    (tmp_path / "q.tsv").write_bytes(b"\xef\xbb\xbfq1\tcell\nq2\tgene\n")
    assert list(read_queries(tmp_path / "q.tsv")) == ["q1", "q2"]


@pytest.mark.parametrize("line, words", [('{"_id": "x\\ud800", "text": "cell"}', "doc id holds a lone surrogate"),
                                         ('{"_id": "x", "text": "cell \\udc00 membrane"}', "text holds a lone surrogate")])
def test_lone_surrogates_in_a_corpus_are_refused_at_their_line(tmp_path, line, words):
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "text": "gene"}\n' + line + "\n")
    with pytest.raises(AdaError, match=f"c.jsonl:2: {words}"):
        list(iter_corpus(tmp_path / "c.jsonl"))


@pytest.mark.parametrize("text", ["\u0000\u0000", "\u0001\u001f", "\u200b\u200c\ufeff", " \u2028 ", "\u200e"])
def test_a_query_of_invisible_characters_is_empty(tmp_path, text):
    assert not visible(text)
    (tmp_path / "q.jsonl").write_text(json.dumps({"_id": "1", "text": text}) + "\n")
    with pytest.raises(AdaError, match="has an empty text"):
        read_queries(tmp_path / "q.jsonl")


def test_visible_text_is_kept():
    assert all(visible(t) for t in ["a", "\u200bcell", "\U0001f600", "\u05e9\u05dc\u05d5\u05dd", "e\u0301"])


def test_a_query_with_a_lone_surrogate_is_refused(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "cells \\ud800 x"}\n')
    with pytest.raises(AdaError, match="q.jsonl:1: query '1' holds a lone surrogate"):
        read_queries(tmp_path / "q.jsonl")


# -- the CLI: one line, and --out that must not be written ---------------------------------------------


@pytest.fixture(scope="module")
def cli_index(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("integrity-cli")
    corpus = make_corpus(d / "corpus.jsonl", n=30)
    r = CliRunner().invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "1x8",
                                 "--rerank", "4x32", "--out", str(d / "ix")])
    assert r.exit_code == 0, r.output
    return d / "ix", corpus


def test_search_out_inside_an_index_is_refused(cli_index, tmp_path):
    ix, _ = cli_index
    before = (ix / "CURRENT").read_bytes()
    for out in (ix / "CURRENT", current_generation(ix) / "run.trec"):
        r = CliRunner().invoke(app, ["search", "-q", "--index", str(ix), "--out", str(out), "cell"])
        assert r.exit_code == 2 and "is inside the index folder" in r.output, r.output
    assert (ix / "CURRENT").read_bytes() == before and not (current_generation(ix) / "run.trec").exists()


def test_search_out_dash_writes_the_run_to_stdout(cli_index, tmp_path, monkeypatch):
    ix, _ = cli_index
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"_id": "q1", "text": "cell gene"}) + "\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["search", "-q", "--index", str(ix), "--queries", str(q), "--k", "5", "--top", "3", "--out", "-"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(len(x.split()) == 6 and x.startswith("q1 Q0 ") for x in lines), r.stdout
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("text", ["\u0000\u0000", "\u200b", "cells \ud800 x"])
def test_search_one_bad_query_text_is_one_line(cli_index, text):
    ix, _ = cli_index
    r = CliRunner().invoke(app, ["search", "-q", "--index", str(ix), text])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output, r.output


def test_index_with_a_nan_model_is_refused_naming_the_size(tiny_model, tmp_path):
    import torch
    from transformers import AutoModel

    bad = Path(shutil.copytree(tiny_model, tmp_path / "nan-model"))
    m = AutoModel.from_pretrained(bad)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.save_pretrained(bad)
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=10)
    r = CliRunner().invoke(app, ["index", "-q", "--model", str(bad), "--corpus", str(corpus), "--shortlist", "1x8",
                                 "--out", str(tmp_path / "ix")])
    assert r.exit_code == 2 and "1x8 vectors are not finite" in r.output, r.output
    assert not (tmp_path / "ix").exists() or not any((tmp_path / "ix").glob("gen-*"))


# -- item 4: a file-size limit while writing is one line naming the file, and leaves nothing ------------

LIMITED = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from adaretrieve.errors import AdaError
what, target = sys.argv[1], sys.argv[2]
try:
    if what == "writer":
        from adaretrieve import Size
        from adaretrieve.index.writer import IndexWriter
        try:
            IndexWriter(target, 1000, [Size(1, 8)], Size(1, 64))
        except OSError as e:
            from adaretrieve.errors import io_reason
            print(io_reason(e))
            sys.exit(2)
    elif what == "run":
        from adaretrieve.eval import write_run
        write_run({f"q{i}": {f"d{j}": float(j) for j in range(100)} for i in range(100)}, target)
    else:
        from adaretrieve import Size
        from adaretrieve.index.encode import write_chunk
        write_chunk(__import__("pathlib").Path(target), 0, ["a"] * 100, {Size(1, 64): np.ones((100, 64), np.float32)})
except AdaError as e:
    print(e)
    sys.exit(2)
"""


@pytest.mark.parametrize("what", ["run", "chunk", "writer"])
def test_a_file_size_limit_names_the_file_and_leaves_nothing(tmp_path, what):
    import os
    import subprocess
    import sys

    target = tmp_path / {"run": "run.trec", "chunk": "build", "writer": "ix"}[what]
    if what == "run":
        target.write_text("old\n")
    elif what == "chunk":
        target.mkdir()
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", LIMITED, what, str(target)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert p.returncode == 2, p.stderr
    assert "ulimit -f" in p.stdout, p.stdout
    if what == "run":
        assert str(target) in p.stdout and target.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["run.trec"]
    elif what == "chunk":
        assert ".chunk-000000." in p.stdout and not list(target.iterdir())
    else:  # the writer that could not create its rerank file removed its partial generation and the folder it made
        assert not target.exists(), sorted(x.name for x in target.iterdir())


# -- trial 3's PARTLY cases (issue 27, remaining): the message names what is really wrong ---------------


def test_a_utf16_file_without_a_bom_is_named_utf16(tmp_path):
    """co-utf16le_nobom: UTF-16 bytes decode as 'UTF-8' (a NUL is valid UTF-8), so JSON was blamed."""
    lines = ['{"_id": "a", "text": "cell"}', '{"_id": "b", "text": "gene"}']
    for enc in ("utf-16-le", "utf-16-be"):
        (tmp_path / "c.jsonl").write_bytes(("\n".join(lines) + "\n").encode(enc))
        with pytest.raises(AdaError, match=r"c.jsonl:1: .*UTF-16.*convert the file to UTF-8"):
            list(iter_corpus(tmp_path / "c.jsonl"))
        (tmp_path / "q.tsv").write_bytes("q1\tcell\nq2\tgene\n".encode(enc))
        with pytest.raises(AdaError, match=r"q.tsv:1: .*UTF-16"):
            read_queries(tmp_path / "q.tsv")


def test_cr_only_line_ends_are_named(tmp_path):
    """co-cr_only: a classic-Mac file is one 'line' to a \\n reader: 'Extra data at column 1998' blamed JSON."""
    (tmp_path / "c.jsonl").write_bytes(b'{"_id": "a", "text": "cell"}\r{"_id": "b", "text": "gene"}\r')
    with pytest.raises(AdaError, match=r"c.jsonl:1: .*carriage returns \(CR\) alone"):
        list(iter_corpus(tmp_path / "c.jsonl"))
    (tmp_path / "q.tsv").write_bytes(b"q1\tcell\rq2\tgene\r")
    with pytest.raises(AdaError, match=r"q.tsv:1: .*CR"):
        read_queries(tmp_path / "q.tsv")
    (tmp_path / "ok.jsonl").write_bytes(b'{"_id": "a", "text": "cell"}\r\n{"_id": "b", "text": "gene"}\r')  # CRLF, last CR alone
    assert [d.docid for d in iter_corpus(tmp_path / "ok.jsonl")] == ["a", "b"]


@pytest.mark.parametrize("value, kind", [('["a", "b"]', "a JSON array"), ('{"k": "v"}', "a JSON object"), ("true", "JSON true")])
@pytest.mark.parametrize("key", ["text", "title"])
def test_a_text_that_is_not_a_string_is_refused(tmp_path, value, kind, key):
    """co-text_types: a list / object / bool text was indexed as its Python repr."""
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "text": "gene"}\n' + f'{{"_id": "b", "{key}": {value}}}\n')
    with pytest.raises(AdaError, match=f"c.jsonl:2: {key} is {kind}; it must be a string"):
        list(iter_corpus(tmp_path / "c.jsonl"))


def test_numeric_texts_and_integer_ids_are_read_as_their_decimal_strings(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": 12345, "title": 7, "text": 42}\n{"_id": "x", "text": 1.5}\n')
    assert [(d.docid, d.title, d.text) for d in iter_corpus(tmp_path / "c.jsonl")] == [("12345", "7", "42"), ("x", "", "1.5")]
    (tmp_path / "q.jsonl").write_text('{"_id": 7, "text": 42}\n')
    assert read_queries(tmp_path / "q.jsonl") == {"7": "42"}


@pytest.mark.parametrize("value, kind", [("{}", "a JSON object"), ("true", "JSON true"), ("1.5", "a JSON number with a fraction or exponent"),
                                         ("1e400", "a JSON number with a fraction or exponent"), ("[1]", "a JSON array")])
def test_an_id_that_is_not_a_string_or_an_integer_is_refused(tmp_path, value, kind):
    """co-id_types, qf-q_idnum: {} became '{}', true 'True', 1.5 '1.5' and 1e400 'inf', silently."""
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "text": "gene"}\n' + f'{{"_id": {value}, "text": "cell"}}\n')
    with pytest.raises(AdaError, match=f"c.jsonl:2: doc id .* is {kind}; ids are strings"):
        list(iter_corpus(tmp_path / "c.jsonl"))
    (tmp_path / "q.jsonl").write_text(f'{{"_id": {value}, "text": "cell"}}\n')
    with pytest.raises(AdaError, match=f"q.jsonl:1: query id .* is {kind}; ids are strings"):
        read_queries(tmp_path / "q.jsonl")


@pytest.mark.parametrize("value, kind", [('["a", "b"]', "a JSON array"), ('{"k": 1}', "a JSON object"), ("false", "JSON false")])
def test_a_query_text_that_is_not_a_string_is_refused(tmp_path, value, kind):
    """qf-q_textlist: text ["a", "b"] was searched as the query "['a', 'b']"."""
    (tmp_path / "q.jsonl").write_text(f'{{"_id": "1", "text": {value}}}\n')
    with pytest.raises(AdaError, match=f"q.jsonl:1: query '1' text is {kind}"):
        read_queries(tmp_path / "q.jsonl")


@pytest.mark.parametrize("key, value, words", [("normalize", "false", "'normalize' should be true or false"),
                                               ("max_length", -5, "'max_length' should be a whole number of at least 1"),
                                               ("lowercase", 1, "'lowercase' should be true or false"),
                                               ("n_layers", "2", "'n_layers' should be a whole number of at least 1")])
def test_model_entries_of_the_wrong_type_are_refused_naming_the_manifest(base, tmp_path, key, value, words):
    """ci-man_normalize_str: "false" was read as True; ci-man_maxlen_neg: -5 was blamed on --max-length."""
    ix, g = crafted(base, tmp_path)
    m = json.loads((g / "manifest.json").read_text())
    m["model"][key] = value
    (g / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdaError, match=f"manifest.json: manifest model {words}, got"):
        IndexReader(ix)


def test_a_spec_entry_of_the_wrong_type_is_refused(base, tmp_path):
    from adaretrieve.spec import VectorSpec

    ix, g = crafted(base, tmp_path)
    m = json.loads((g / "manifest.json").read_text())
    m["spec"] = {**VectorSpec.from_model(m["model"]).to_dict(), "normalize": "false"}
    (g / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdaError, match="manifest.json: .*normalize 'false' is not true or false"):
        IndexReader(ix)


def test_an_adaptor_config_error_names_the_file(tmp_path):
    """am-fl_neg: 'adaptor layer 2: feature layers [-1, 2] must lie in 0..2' named no file."""
    from adaretrieve.modeling.adaptor import Adaptor

    Adaptor(8, {2: 4}, {2: [1, 2]}).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "adaptor.json").read_text())
    cfg["feature_layers"]["2"] = [-1, 2]
    (tmp_path / "m" / "adaptor.json").write_text(json.dumps(cfg))
    with pytest.raises(AdaError, match=r"m/adaptor.json: adaptor layer 2: feature layers \[-1, 2\] must lie in 0..2"):
        Adaptor.load(tmp_path / "m")


def test_searching_a_missing_qdrant_folder_creates_nothing(tmp_path):
    """qd-path-missing: the read made an empty storage folder qd/nope as a side effect."""
    from tests.conftest import module_or_skip

    module_or_skip("qdrant_client", "pip install 'adaretrieve[qdrant]'")
    from adaretrieve.qdrant import QdrantIndex

    with pytest.raises(AdaError, match="no Qdrant storage folder"):
        QdrantIndex(f"qdrant:{tmp_path / 'qd' / 'nope'}")
    assert not (tmp_path / "qd").exists()
