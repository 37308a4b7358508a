"""BEIR (`corpus.jsonl[.gz]`, `queries.jsonl`, `qrels/<split>.tsv`) and MS MARCO
(`collection.tsv[.gz]`, queries tsv, TREC qrels) readers.

Corpora are streamed (one `Doc` at a time) so millions of lines are never Python objects at once.
Queries and qrels are small and come back as dicts. Every parse error names the file and line.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
import zlib
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


# Ids end up as fields of whitespace-separated TREC lines and as lines of docids.txt: any
# whitespace (Python's str.isspace, so U+2028, U+0085 and NBSP too) or control character would
# split or corrupt them downstream.
_BAD_ID_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
ID_RULE = "ids must be non-empty and contain no whitespace or control characters"


def check_id(value: str, where: str, what: str = "id") -> str:
    """``value`` when it is a usable doc/query id; else AdaError naming ``where`` (file:line), the id and the rule."""
    if not value or _BAD_ID_CHAR.search(value):
        raise AdaError(f"{where}: {what} {value!r} is not allowed: {ID_RULE}")
    return check_unicode(value, where, what)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_unicode(value: str, where: str, what: str = "text") -> str:
    """``value`` unless it holds a lone surrogate (JSON can spell one, ``"\\ud800"``; it is not a
    character, so it cannot be written as UTF-8 or tokenized): AdaError naming ``where`` then."""
    m = _SURROGATE.search(value)
    if m:
        raise AdaError(f"{where}: {what} holds a lone surrogate (U+{ord(m.group()):04X} at character {m.start()}), "
                       "which is not valid Unicode text")
    return value


def visible(text: str) -> bool:
    """True when ``text`` has a character that shows: not only whitespace, control characters (NUL,
    C0/C1) or invisible format characters (zero-width space and joiners, BOM, bidi marks), which
    would be encoded as a query of nothing and give an arbitrary ranking."""
    return any(not (c.isspace() or unicodedata.category(c) in ("Cc", "Cf")) for c in text)


def _looks_utf16(raw: bytes) -> bool:
    """True when ``raw`` (one line's bytes) is UTF-16: a byte-order mark FF FE / FE FF, or NULs in
    most of the odd or the even bytes (what ASCII text in UTF-16 is). Such bytes can decode as UTF-8,
    since NUL is valid UTF-8, and then a parser would blame the syntax for what is an encoding."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    body = raw.rstrip(b"\r\n\x00")
    if len(body) < 4 or b"\x00" not in body:
        return False
    return max(body[0::2].count(0), body[1::2].count(0)) >= 0.4 * (len(body) // 2)


def text_lines(path: str | Path, what: str = "file") -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) for every line of a UTF-8 text file, gzipped when it
    ends in .gz. A folder, undecodable bytes or a corrupt gzip stream is an AdaError naming the
    file (and the line), and so is a UTF-16 file or one whose lines end in CR alone (classic Mac),
    named as such. Lines are split at \\n only (CRLF is tolerated), never at U+2028. A UTF-8
    byte-order mark at the start is dropped (Windows editors write one), so it never joins an id."""
    p = Path(path)
    if p.is_dir():
        raise AdaError(f"{what} {p} is a folder, not a file")
    if not p.exists():
        raise AdaError(f"{what} {p} does not exist")
    lineno = 0
    try:
        with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                if _looks_utf16(raw):
                    raise AdaError(f"{p}:{lineno}: the file is UTF-16 text (a byte-order mark FF FE / FE FF, or a NUL "
                                   "byte between the characters); convert the file to UTF-8")
                if not raw.endswith(b"\n") and b"\r" in raw.rstrip(b"\r"):  # the last 'line' holds every line
                    raise AdaError(f"{p}:{lineno}: the lines of the file end in carriage returns (CR) alone, as on a "
                                   "classic Mac; convert the line ends to LF (\\n) or CRLF")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise AdaError(f"{p}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line); "
                                   f"convert the file to UTF-8") from None
                if lineno == 1 and line.startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the first line
                    line = line[1:]
                yield lineno, line.rstrip("\r\n")
    except (EOFError, OSError, zlib.error) as e:
        if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile):
            raise
        raise AdaError(f"{p}: corrupt or truncated gzip file after line {lineno} ({e})") from None


def _lines(p: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) for the non-blank lines of a text file."""
    for lineno, line in text_lines(p):
        if line.strip():
            yield lineno, line


def _json(p: Path, lineno: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise AdaError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def _json_kind(value) -> str:
    """'a JSON object', 'JSON true', ...: what a value parsed from JSON was."""
    if isinstance(value, bool) or value is None:
        return f"JSON {json.dumps(value)}"
    return "a JSON " + {dict: "object", list: "array", float: "number with a fraction or exponent",
                        int: "number"}.get(type(value), type(value).__name__)


def json_id(value, where: str, what: str = "id") -> str:
    """A JSON id as text: a string as it is, an integer as its decimal digits. Anything else (an
    object, array, bool, or a number with a fraction or exponent, which ``json`` reads as a float
    and would respell: 1e400 as 'inf') is an AdaError naming ``where``."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise AdaError(f"{where}: {what} {json.dumps(value)[:40]} is {_json_kind(value)}; ids are strings (or whole "
                   "numbers): write it in quotes")


def json_text(value, where: str, what: str = "text") -> str:
    """A JSON text field as text: a string, a number as it is spelled by Python, null (or absent) as ''.
    An array, object or bool is an AdaError naming ``where`` (it used to become its Python repr)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise AdaError(f"{where}: {what} is {_json_kind(value)}; it must be a string")


def _first_given(obj: dict, *keys: str):
    """The value of the first of ``keys`` that ``obj`` has with a value other than null or ''."""
    for key in keys:
        if obj.get(key) not in (None, ""):
            return obj[key]
    return None


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
                yield Doc(check_id(parts[0], f"{p}:{lineno}", "doc id"), "", parts[1])
            elif len(parts) == 3:
                yield Doc(check_id(parts[0], f"{p}:{lineno}", "doc id"), parts[1], parts[2])
            else:
                raise AdaError(f"{p}:{lineno}: expected 'id<TAB>text' or 'id<TAB>title<TAB>text', got {len(parts)} fields")
            continue
        obj = _json(p, lineno, line)
        if not isinstance(obj, dict):
            raise AdaError(f"{p}:{lineno}: expected a JSON object with _id, title, text")
        where = f"{p}:{lineno}"
        docid = obj.get("_id", obj.get("id", obj.get("docid")))
        if docid is None:
            raise AdaError(f"{where}: document has no '_id'")
        title = json_text(obj.get("title"), where, "title")
        text = json_text(_first_given(obj, "text", "contents"), where, "text")
        yield Doc(check_id(json_id(docid, where, "doc id"), where, "doc id"), check_unicode(title, where, "title"),
                  check_unicode(text, where, "text"))


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
            if not isinstance(obj, dict):
                raise AdaError(f"{p}:{lineno}: expected a JSON object with _id and text")
            where = f"{p}:{lineno}"
            qid = _first_given(obj, "_id", "id")
            qid = "" if qid is None else json_id(qid, where, "query id")
            text = json_text(_first_given(obj, "text", "query"), where, f"query {qid!r} text")
        if not qid:
            raise AdaError(f"{p}:{lineno}: query has no id")
        check_id(qid, f"{p}:{lineno}", "query id")
        if not visible(text):
            raise AdaError(f"{p}:{lineno}: query {qid!r} has an empty text"
                           + (f" (only invisible or control characters: {text!r:.40})" if text.strip() else ""))
        check_unicode(text, f"{p}:{lineno}", f"query {qid!r}")
        if qid in out:
            raise AdaError(f"{p}:{lineno}: duplicate query id {qid!r}")
        out[qid] = text.strip()
    if not out:
        raise AdaError(f"queries file {p} is empty")
    return out


def split_query_ids(folder: str | Path, split: str) -> set[str]:
    """Query ids named in ``folder/qrels/<split>.tsv``: its first column only, no grade is read (what
    a split of unlabelled fit queries needs: ``calibrate --query-split``, a suite's ``adaptive:``)."""
    p = Path(folder) / "qrels" / f"{split}.tsv"
    if not p.exists():
        raise AdaError(f"query split {split}: {p} does not exist")
    ids = set()
    for _, line in text_lines(p, "qrels file"):
        qid = line.split("\t", 1)[0].strip()
        if qid and qid not in ("query-id", "qid", "query_id"):
            ids.add(qid)
    return ids


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{qid: {docid: grade}}`` from a BEIR tsv (``query-id corpus-id score``, header optional,
    CRLF tolerated) or TREC qrels (``qid 0 docid grade``)."""
    p = Path(path)
    out: dict[str, dict[str, int]] = {}
    for lineno, line in text_lines(p, "qrels file"):
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
        check_id(qid, f"{p}:{lineno}", "query id")
        check_id(docid, f"{p}:{lineno}", "doc id")
        try:
            out.setdefault(qid, {})[docid] = int(float(grade))
        except ValueError:
            raise AdaError(f"{p}:{lineno}: relevance grade {grade!r} is not a number") from None
    if not out:
        raise AdaError(f"qrels file {p} is empty")
    return out
