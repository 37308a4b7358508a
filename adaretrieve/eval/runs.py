"""Runs: ``{qid: {docid: score}}``, written as TREC (``qid Q0 docid rank score tag``) or JSON lines."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adaretrieve.data.readers import check_id, text_lines
from adaretrieve.errors import AdaError, io_reason

Run = dict[str, dict[str, float]]


def run_from_arrays(qids: Sequence[str], scores: np.ndarray, rows: np.ndarray, docids: Sequence[str]) -> Run:
    """Turn searcher output (scores, rows) [n_queries, top] into a run; rows of -1 are dropped."""
    run: Run = {}
    for qid, s, r in zip(qids, scores, rows):
        keep = r >= 0
        run[qid] = {docids[j]: float(v) for j, v in zip(r[keep], s[keep])}
    return run


def _write_lines(run: Run, f, tag: str, fmt: str) -> None:
    for qid, hits in run.items():
        ranked = sorted(hits.items(), key=lambda x: -x[1])
        if fmt == "jsonl":
            f.write(json.dumps({"qid": qid, "hits": [{"docid": d, "score": s} for d, s in ranked]}) + "\n")
        else:
            for rank, (docid, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def write_run(run: Run, path: str | Path, tag: str = "adaretrieve", fmt: str = "trec") -> None:
    """Write ``run`` to ``path`` (``-``: standard output), replaced whole; a failed write (a full
    disk, a file-size limit) is an AdaError naming the file, and the old file stays."""
    if str(path) == "-":
        _write_lines(run, sys.stdout, tag, fmt)
        sys.stdout.flush()
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of this writer's own, replaced into place whole: concurrent writers of one
    # path leave one complete run (the last to finish), never a mix or a missing file
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _write_lines(run, f, tag, fmt)
        os.chmod(tmp, 0o644)
        tmp.replace(p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if io_reason(e) is None or e.filename is not None:
            raise
        raise AdaError(f"{p}: the run could not be written ({io_reason(e)}); the old file, if any, is unchanged") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_hits_json(p: Path) -> Run:
    """A JSON list of ``{"query": ..., "hits": [{"qid", "docid", "score"}, ...]}`` (pyserini/rankllm
    style, as the DL19 candidate lists in ../shared are stored), optionally gzipped."""
    text = "\n".join(line for _, line in text_lines(p, "run file"))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdaError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list):
        raise AdaError(f"{p}: expected a JSON list of {{\"query\", \"hits\": [{{\"qid\", \"docid\", \"score\"}}]}}")
    run: Run = {}
    for i, entry in enumerate(data, 1):
        where = f"{p}: entry {i}"
        for h in _field(entry, "hits", list, where):
            qid = check_id(str(_field(h, "qid", object, where)), where, "query id")
            docid = check_id(str(_field(h, "docid", object, where)), where, "doc id")
            run.setdefault(qid, {})[docid] = _score(_field(h, "score", object, where), where)
    return run


def _field(obj, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise AdaError(f"{where}: expected a JSON object with {key!r}, got {str(obj)[:80]}")
    if not isinstance(obj[key], kind):
        raise AdaError(f"{where}: {key!r} should be a {kind.__name__}, got {obj[key]!r:.80}")
    return obj[key]


def _score(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AdaError(f"{where}: score {value!r} is not a number") from None


def read_run(path: str | Path) -> Run:
    """A TREC run, JSON lines from ``write_run(fmt="jsonl")``, or a JSON list of queries with hits.
    Every malformed line is an AdaError naming the file and line."""
    p = Path(path)
    if p.name.endswith((".json", ".json.gz")):
        return _read_hits_json(p)
    run: Run = {}
    for lineno, line in text_lines(p, "run file"):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise AdaError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            qid = check_id(str(_field(obj, "qid", object, where)), where, "query id")
            hits = run.setdefault(qid, {})
            for h in _field(obj, "hits", list, where):
                hits[check_id(str(_field(h, "docid", object, where)), where, "doc id")] = _score(_field(h, "score", object, where), where)
            continue
        parts = line.split()
        if len(parts) != 6:
            raise AdaError(f"{where}: expected a TREC run line 'qid Q0 docid rank score tag'")
        check_id(parts[0], where, "query id")
        run.setdefault(parts[0], {})[check_id(parts[2], where, "doc id")] = _score(parts[4], where)
    if not run:
        raise AdaError(f"run file {p} is empty")
    return run
