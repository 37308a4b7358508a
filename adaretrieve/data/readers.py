"""BEIR (`corpus.jsonl[.gz]`, `queries.jsonl`, `qrels/<split>.tsv`) and MS MARCO
(`collection.tsv[.gz]`, queries tsv, TREC qrels) readers.

Corpora are streamed (one `Doc` at a time) so millions of lines are never Python objects at once.
Queries and qrels are small and come back as dicts. Every parse error names the file and line.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adaretrieve.errors import AdaError


@dataclass(frozen=True)
class Doc:
    docid: str
    title: str
    text: str


def doc_text(title: str, text: str) -> str:
    """The text an encoder sees for a document: title and body joined by a space, as MTEB/BEIR do."""
    return f"{title} {text}".strip() if title else text.strip()


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline=None)
    # newline=None folds CRLF into "\n": BEIR's SciFact test qrels ship with CRLF line ends.
    return open(path, encoding="utf-8", newline=None)


def _lines(p: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) for the non-blank lines of a text file."""
    with _open_text(p) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.strip():
                yield lineno, line


def _json(p: Path, lineno: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise AdaError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def resolve_corpus(path: str | Path) -> Path:
    """A corpus file, or a BEIR / MS MARCO folder holding one."""
    p = Path(path)
    if p.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv", "collection.tsv.gz"):
            if (p / name).exists():
                return p / name
        raise AdaError(f"corpus folder {p} has no corpus.jsonl[.gz] or collection.tsv[.gz]")
    if not p.exists():
        raise AdaError(f"corpus {p} does not exist")
    return p


def _is_tsv(path: Path) -> bool:
    return ".tsv" in path.suffixes or ".txt" in path.suffixes


def iter_corpus(path: str | Path) -> Iterator[Doc]:
    """Stream documents from a BEIR jsonl (``_id``, ``title``, ``text``) or a tsv (id, text
    or id, title, text). Raises AdaError naming the line for a line that cannot be parsed."""
    p = resolve_corpus(path)
    tsv = _is_tsv(p)
    for lineno, line in _lines(p):
        if tsv:
            parts = line.split("\t")
            if len(parts) == 2:
                yield Doc(parts[0], "", parts[1])
            elif len(parts) == 3:
                yield Doc(parts[0], parts[1], parts[2])
            else:
                raise AdaError(f"{p}:{lineno}: expected 'id<TAB>text' or 'id<TAB>title<TAB>text', got {len(parts)} fields")
            continue
        obj = _json(p, lineno, line)
        if not isinstance(obj, dict):
            raise AdaError(f"{p}:{lineno}: expected a JSON object with _id, title, text")
        docid = obj.get("_id", obj.get("id", obj.get("docid")))
        if docid is None:
            raise AdaError(f"{p}:{lineno}: document has no '_id'")
        yield Doc(str(docid), str(obj.get("title") or ""), str(obj.get("text") or obj.get("contents") or ""))


def validate_corpus(path: str | Path) -> int:
    """One pass over the corpus before any encoding: parse every line, reject duplicate ids and
    an empty corpus. Returns the number of documents."""
    p = resolve_corpus(path)
    seen: dict[str, int] = {}
    n = 0
    for n, doc in enumerate(iter_corpus(p), 1):
        if doc.docid in seen:
            raise AdaError(f"{p}: duplicate doc id {doc.docid!r} (documents {seen[doc.docid]} and {n})")
        seen[doc.docid] = n
    if n == 0:
        raise AdaError(f"corpus {p} is empty: no documents to index")
    return n


def _resolve_queries(path: Path) -> Path:
    if path.is_dir():
        for name in ("queries.jsonl", "queries.jsonl.gz", "queries.tsv"):
            if (path / name).exists():
                return path / name
        raise AdaError(f"queries folder {path} has no queries.jsonl or queries.tsv")
    if not path.exists():
        raise AdaError(f"queries file {path} does not exist")
    return path


def read_queries(path: str | Path) -> dict[str, str]:
    """``{qid: text}`` from a BEIR queries.jsonl or a tsv of ``qid<TAB>text``. Empty texts and
    repeated ids are errors."""
    p = _resolve_queries(Path(path))
    out: dict[str, str] = {}
    tsv = _is_tsv(p)
    for lineno, line in _lines(p):
        if tsv:
            qid, _, text = line.partition("\t")
        else:
            obj = _json(p, lineno, line)
            qid, text = str(obj.get("_id", obj.get("id", ""))), str(obj.get("text") or obj.get("query") or "")
        if not qid:
            raise AdaError(f"{p}:{lineno}: query has no id")
        if not text.strip():
            raise AdaError(f"{p}:{lineno}: query {qid!r} has an empty text")
        if qid in out:
            raise AdaError(f"{p}:{lineno}: duplicate query id {qid!r}")
        out[qid] = text.strip()
    if not out:
        raise AdaError(f"queries file {p} is empty")
    return out


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{qid: {docid: grade}}`` from a BEIR tsv (``query-id corpus-id score``, header optional,
    CRLF tolerated) or TREC qrels (``qid 0 docid grade``)."""
    p = Path(path)
    if not p.exists():
        raise AdaError(f"qrels file {p} does not exist")
    out: dict[str, dict[str, int]] = {}
    with _open_text(p) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if lineno == 1 and parts[0].lower() in ("query-id", "qid", "query_id"):
                continue
            if len(parts) == 3:
                qid, docid, grade = parts
            elif len(parts) == 4:
                qid, _, docid, grade = parts
            else:
                raise AdaError(f"{p}:{lineno}: expected 'qid docid grade' or 'qid 0 docid grade', got {len(parts)} fields")
            try:
                out.setdefault(qid, {})[docid] = int(float(grade))
            except ValueError:
                raise AdaError(f"{p}:{lineno}: relevance grade {grade!r} is not a number") from None
    if not out:
        raise AdaError(f"qrels file {p} is empty")
    return out
