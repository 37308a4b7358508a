"""Resident memory of one search configuration, measured rather than assumed.

``measure_resident`` starts a fresh Python process that imports only numpy, FAISS and this
package's search code (no torch), reads its own memory (``/proc/self/smaps_rollup``), opens the
index, builds the searcher for one configuration, answers every query one at a time, and reads
its memory again. The difference is what that configuration costs a process that serves it:

- ``anon_bytes``: private memory (the shortlist FAISS index read into RAM, a flat index built in
  memory from a stored prefix, the doc-id offsets, search buffers);
- ``file_bytes``: pages of the index's memory-mapped files (rerank rows, doc ids) mapped into the
  process by the queries: page cache, shared between processes and reclaimable, which grows with
  the rows touched (and with the kernel's fault-around of pages already cached). Code pages of the
  libraries the first search touches are not counted.

The query encoder is not part of it (torch and the model are the same for every configuration).
Linux only (smaps_rollup).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size

ROLLUP = Path("/proc/self/smaps_rollup")


def memory() -> dict[str, int]:
    """This process's resident bytes: ``rss``, ``anon`` (private anonymous) and ``file`` (the rest:
    file-backed mappings), from /proc/self/smaps_rollup."""
    fields = {}
    for line in ROLLUP.read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[key] = int(parts[0]) * 1024
    rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return {"rss": rss, "anon": anon, "file": rss - anon}


def mapped_bytes(folder: str | Path) -> int:
    """Resident bytes of this process's mappings of files inside ``folder`` (/proc/self/smaps)."""
    prefix = str(Path(folder).resolve()) + os.sep
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            inside = len(head) == 6 and head[5].startswith(prefix)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def available() -> bool:
    return ROLLUP.exists()


def measure_resident(index: str | Path, shortlist: str | Size, k: int, rerank: str | Size | None,
                     queries: dict[Size, np.ndarray], then: list[tuple[str | Size, int]] | None = None,
                     nprobe: int | None = None, ef_search: int | None = None, top: int = 1000) -> dict:
    """Measure one configuration in a fresh process (see the module doc). ``queries`` holds the
    encoded queries ``{Size: [n, dim]}`` for every size the configuration uses; all of them are
    searched one at a time. Returns bytes before/after, per document, and ``torch_loaded``."""
    if not Path(index).exists():
        raise AdaError(f"index {index} does not exist (build it with `adaretrieve index`)")
    if not available():
        raise AdaError(f"resident memory is read from {ROLLUP}, which this system does not have (Linux only)")
    spec = {"index": str(index), "shortlist": str(parse_size(shortlist)), "k": int(k),
            "rerank": str(parse_size(rerank)) if rerank else None,
            "then": [[str(parse_size(s)), int(kk)] for s, kk in (then or [])],
            "nprobe": nprobe, "ef_search": ef_search, "top": int(top)}
    with tempfile.TemporaryDirectory(prefix="ada-resident-") as tmp:
        qfile = Path(tmp) / "queries.npz"
        np.savez(qfile, **{str(s): np.ascontiguousarray(v, dtype=np.float32) for s, v in queries.items()})
        spec["queries"] = str(qfile)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run([sys.executable, "-m", "adaretrieve.search.resident", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AdaError(f"measuring resident memory failed (exit {proc.returncode}): {tail[:200]}") from None
    if "error" in out:
        raise AdaError(out["error"])
    return out


def _child(spec: dict) -> dict:
    from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader

    data = np.load(spec["queries"])
    qv = {parse_size(name): data[name] for name in data.files}
    before = memory()
    reader = IndexReader(spec["index"])
    searcher = FunnelSearcher(reader, FunnelPlan(spec["shortlist"], spec["k"], tuple(map(tuple, spec["then"])),
                                                 spec["rerank"], spec["top"], spec["nprobe"], spec["ef_search"]))
    opened = memory()
    n = min(len(v) for v in qv.values())
    for i in range(n):
        searcher.search({s: qv[s][i : i + 1] for s in searcher.sizes()})
    after = memory()
    n_docs = reader.n_docs
    anon, file = after["anon"] - before["anon"], mapped_bytes(reader.gen_dir)
    return {"n_docs": n_docs, "n_queries": n, "anon_bytes": anon, "file_bytes": file,
            "rss_bytes": after["rss"] - before["rss"], "anon_bytes_after_open": opened["anon"] - before["anon"],
            "anon_bytes_per_doc": round(anon / n_docs, 1), "file_bytes_per_doc": round(file / n_docs, 1),
            "baseline_rss_bytes": before["rss"], "torch_loaded": "torch" in sys.modules}


if __name__ == "__main__":
    try:
        result = _child(json.loads(sys.argv[1]))
    except AdaError as e:
        result = {"error": str(e)}
    print(json.dumps(result))
