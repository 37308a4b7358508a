import gzip
import json

import pytest

from adaretrieve import AdaError
from adaretrieve.data import doc_text, iter_corpus, read_qrels, read_queries, validate_corpus


def test_beir_qrels_crlf_and_header(tmp_path):
    p = tmp_path / "test.tsv"
    p.write_bytes(b"query-id\tcorpus-id\tscore\r\n1\t31715818\t1\r\n3\t14717500\t1\r\n3\t13\t2\r\n")
    assert read_qrels(p) == {"1": {"31715818": 1}, "3": {"14717500": 1, "13": 2}}


def test_trec_qrels(tmp_path):
    p = tmp_path / "qrels.txt"
    p.write_text("19335 Q0 1017759 0\n19335 0 1082489 3\n")
    assert read_qrels(p) == {"19335": {"1017759": 0, "1082489": 3}}


def test_corpus_jsonl_gz_and_tsv(tmp_path):
    p = tmp_path / "corpus.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"_id": "a", "title": "T", "text": "body"}) + "\n")
        f.write(json.dumps({"_id": 7, "text": "no title"}) + "\n")
    docs = list(iter_corpus(tmp_path))  # a folder resolves to the corpus inside
    assert [(d.docid, d.title, d.text) for d in docs] == [("a", "T", "body"), ("7", "", "no title")]
    assert doc_text("T", "body") == "T body" and doc_text("", " x ") == "x"
    t = tmp_path / "collection.tsv"
    t.write_text("1\tfirst passage\n2\tsecond\n")
    assert [d.docid for d in iter_corpus(t)] == ["1", "2"]


def test_bad_json_line_is_named(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n')
    with pytest.raises(AdaError, match=r"corpus.jsonl:2: not valid JSON"):
        validate_corpus(p)


def test_duplicate_ids_and_empty(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n')
    with pytest.raises(AdaError, match=r"duplicate doc id 'a' \(documents 1 and 3\)"):
        validate_corpus(p)
    e = tmp_path / "empty.jsonl"
    e.write_text("\n")
    with pytest.raises(AdaError, match="empty"):
        validate_corpus(e)
    with pytest.raises(AdaError, match="does not exist"):
        validate_corpus(tmp_path / "nope.jsonl")


def test_queries(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"_id": "1", "text": "hello"}\n{"_id": "2", "text": "  "}\n')
    with pytest.raises(AdaError, match=r"q.jsonl:2: query '2' has an empty text"):
        read_queries(p)
    t = tmp_path / "q.tsv"
    t.write_text("1\thello\n2\tworld\n")
    assert read_queries(t) == {"1": "hello", "2": "world"}
