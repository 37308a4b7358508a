"""Resident memory of every dense configuration of a bench suite, measured (issue 12, item 8).

For each row, a fresh process (numpy + FAISS + adaretrieve.search, no torch) opens the suite's
index, answers every query at batch 1 with that row's configuration, and reports the private memory
it gained and the pages of the index's memory-mapped files (rerank rows, doc ids) mapped into it
(``adaretrieve.search.resident``). Twice per row: with the index files dropped from the page cache
first (cold: what the queries really read from disk) and with them cached (warm: the kernel also
maps cached neighbours of every page touched). Nothing is timed. Uses the suite's existing index.

    python benchmarks/resident.py --config benchmarks/scifact-minilm.yaml

Writes benchmarks/results/<suite>/resident.json and resident.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.bench import Suite, dense_pipeline, ensure_index, shortlist_resident_bytes_per_doc  # noqa: E402
from adaretrieve.bench.run import query_encoder, suite_encoder  # noqa: E402
from adaretrieve.data import read_qrels, read_queries  # noqa: E402
from adaretrieve.eval.pagecache import evict  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "scifact-minilm.yaml"))
    ap.add_argument("--out", default=None, help="folder (default benchmarks/results/<suite>)")
    args = ap.parse_args()
    suite = Suite.load(args.config)
    enc = suite_encoder(suite)
    reader = ensure_index(suite, enc, rebuild=False, progress=False)
    enc = query_encoder(suite, reader, enc)  # queries as the index encodes them
    qrels = read_qrels(suite.qrels)
    queries = {q: t for q, t in read_queries(suite.queries).items() if q in qrels}
    plans = suite.plans(reader.manifest)
    sizes = sorted({s for p in plans for s in p.sizes()}, key=lambda s: (s.layer, s.dim))
    qv = enc.encode_queries(list(queries.values()), sizes, batch_size=64)
    files = [p for p in reader.gen_dir.iterdir() if p.suffix in (".npy", ".txt")]
    rows = []
    for c in plans:
        p = dense_pipeline(c, reader)
        need = {s: v for s, v in qv.items() if s in p.need}
        for f in files:
            evict(f)
        cold = p.resident(need)
        warm = p.resident(need)
        rows.append({"config": c.name, "estimated_bytes_per_doc": shortlist_resident_bytes_per_doc(reader.manifest, p.shortlist),
                     "cold": cold, "warm": warm})
        print(f"{c.name:24} private {cold['anon_bytes'] / 2**20:6.1f} MB ({cold['anon_bytes_per_doc']} B/doc)  "
              f"index files mapped cold {cold['file_bytes'] / 2**20:6.2f} MB, warm {warm['file_bytes'] / 2**20:6.2f} MB",
              flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / suite.name)
    out.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/resident.py --config {args.config}"
    res = {"suite": suite.name, "command": command, "n_docs": reader.n_docs, "n_queries": len(queries),
           "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    (out / "resident.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# {suite.name}: resident memory per configuration, measured", "", f"Command: `{command}`  ",
             f"{reader.n_docs} docs, {len(queries)} queries, every one searched at batch 1 in a fresh process per row "
             "(numpy + FAISS + adaretrieve.search; no torch, no encoder). Private = anonymous memory gained from before "
             "opening the index to after the last query (the shortlist index in RAM, a flat index built from a stored "
             "prefix, doc-id offsets). Index files mapped = resident pages of the index's memory-mapped files (rerank "
             "rows float16, docids.txt): cold = page cache dropped before the row, so what the queries read from disk; "
             "warm = files cached, where the kernel also maps cached neighbours of each page touched. "
             f"{res['date']}.", "",
             "| configuration | estimated B/doc | private B/doc | private MB | index files mapped MB cold | warm |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        c, w = r["cold"], r["warm"]
        est = "-" if r["estimated_bytes_per_doc"] is None else f"{r['estimated_bytes_per_doc']:g}"
        lines.append(f"| {r['config']} | {est} | {c['anon_bytes_per_doc']:g} | {c['anon_bytes'] / 2**20:.2f} | "
                     f"{c['file_bytes'] / 2**20:.2f} | {w['file_bytes'] / 2**20:.2f} |")
    (out / "resident.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'resident.md'}")


if __name__ == "__main__":
    main()
