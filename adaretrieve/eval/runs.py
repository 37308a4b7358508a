"""Runs: ``{qid: {docid: score}}``, written as TREC (``qid Q0 docid rank score tag``) or JSON lines."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adaretrieve.errors import AdaError

Run = dict[str, dict[str, float]]


def run_from_arrays(qids: Sequence[str], scores: np.ndarray, rows: np.ndarray, docids: Sequence[str]) -> Run:
    """Turn searcher output (scores, rows) [n_queries, top] into a run; rows of -1 are dropped."""
    run: Run = {}
    for qid, s, r in zip(qids, scores, rows):
        keep = r >= 0
        run[qid] = {docids[j]: float(v) for j, v in zip(r[keep], s[keep])}
    return run


def write_run(run: Run, path: str | Path, tag: str = "adaretrieve", fmt: str = "trec") -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of this writer's own, replaced into place whole: concurrent writers of one
    # path leave one complete run (the last to finish), never a mix or a missing file
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for qid, hits in run.items():
                ranked = sorted(hits.items(), key=lambda x: -x[1])
                if fmt == "jsonl":
                    f.write(json.dumps({"qid": qid, "hits": [{"docid": d, "score": s} for d, s in ranked]}) + "\n")
                else:
                    for rank, (docid, score) in enumerate(ranked, 1):
                        f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
        os.chmod(tmp, 0o644)
        tmp.replace(p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_hits_json(p: Path) -> Run:
    """A JSON list of ``{"query": ..., "hits": [{"qid", "docid", "score"}, ...]}`` (pyserini/rankllm
    style, as the DL19 candidate lists in ../shared are stored), optionally gzipped."""
    import gzip

    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        data = json.load(f)
    run: Run = {}
    for entry in data:
        for h in entry["hits"]:
            run.setdefault(str(h["qid"]), {})[str(h["docid"])] = float(h["score"])
    return run


def read_run(path: str | Path) -> Run:
    """A TREC run, JSON lines from ``write_run(fmt="jsonl")``, or a JSON list of queries with hits."""
    p = Path(path)
    if not p.exists():
        raise AdaError(f"run file {p} does not exist")
    if p.name.endswith((".json", ".json.gz")):
        return _read_hits_json(p)
    run: Run = {}
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                obj = json.loads(line)
                run[str(obj["qid"])] = {str(h["docid"]): float(h["score"]) for h in obj["hits"]}
                continue
            parts = line.split()
            if len(parts) != 6:
                raise AdaError(f"{p}:{lineno}: expected a TREC run line 'qid Q0 docid rank score tag'")
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    if not run:
        raise AdaError(f"run file {p} is empty")
    return run
