"""Sizing arithmetic for docs/scale.md: bytes per document and totals at 10M, 100M and 1B documents
for the shortlist and rerank layouts adaretrieve writes, and for the same data in Qdrant.

Folder index figures use ``adaretrieve.faiss_util.resident_bytes_per_doc`` (the estimate that
benchmarks/resident.py checked against measured private memory: within 1-3% on SciFact); Qdrant
figures use Qdrant's own rule of thumb (vectors x dim x 4 bytes x 1.5 for a vector kept in RAM with
its HNSW graph; on-disk vectors cost disk, with scalar int8 or binary copies in RAM when quantised).
This is arithmetic, not a measurement.

    python benchmarks/sizing.py   # writes benchmarks/results/sizing/sizing.md and the block in docs/scale.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.faiss_util import resident_bytes_per_doc  # noqa: E402

DOCID = 12  # bytes per doc id in docids.txt (MS MARCO ids are 1-7 digits, BEIR ids up to ~24) + offset 4
SCALES = {"10M": 10**7, "100M": 10**8, "1B": 10**9}
LAYOUTS = [  # (name, shortlist dim, factory, rerank dim, rerank bytes per dim)
    ("shortlist 2x32 Flat + rerank 12x768 float16", 32, "Flat", 768, 2),
    ("shortlist 4x64 Flat + rerank 12x768 float16", 64, "Flat", 768, 2),
    ("shortlist 2x64 HNSW32 + rerank 12x768 float16", 64, "HNSW32", 768, 2),
    ("shortlist 4x128 SQ8 + rerank 12x768 int8", 128, "SQ8", 768, 1),
    ("shortlist 4x256 binary (BFlat) + rerank 12x768 int8", 256, "BFlat", 768, 1),
    ("exact 12x768 Flat (one stage, for scale)", 768, "Flat", 0, 0),
    ("FAISS HNSW32 over 12x768 (one stage)", 768, "HNSW32", 0, 0),
]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def render() -> list[str]:
    lines = ["# Sizing arithmetic", "", "Command: `python benchmarks/sizing.py` (arithmetic from the formulas in its docstring; "
             "not measured). RAM = the shortlist index (and doc-id offsets); disk = the whole index folder (shortlist + "
             "rerank rows + doc ids). Rerank rows are memory-mapped: the page cache holds the rows queries touch, not the file.",
             "", "## Folder index (FAISS shortlist in RAM, rerank rows on disk)", "",
             "| layout | RAM B/doc | disk B/doc | " + " | ".join(f"RAM {k} | disk {k}" for k in SCALES) + " |",
             "| --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in SCALES) + " |"]
    for name, d, factory, rd, rb in LAYOUTS:
        ram = resident_bytes_per_doc(d, factory) + 4
        rerank = rd * rb + (4 if rb == 1 and rd else 0)
        disk = ram - 4 + rerank + DOCID
        lines.append(f"| {name} | {ram:g} | {disk:g} | " + " | ".join(f"{human(ram * n)} | {human(disk * n)}" for n in SCALES.values())
                     + " |")
    lines += ["", "## The same in Qdrant (one named vector per size, float32)", "",
              "Shortlist vector in RAM with HNSW (m 16): dim x 4 x 1.5 bytes; rerank vector on disk without a graph: dim x 4 "
              "bytes of disk, plus its quantised copy in RAM when `--quantization scalar` (dim bytes) or `binary` (dim / 8).",
              "", "| layout | RAM B/doc | disk B/doc | " + " | ".join(f"RAM {k} | disk {k}" for k in SCALES) + " |",
              "| --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in SCALES) + " |"]
    for name, d, q in (("2x64 + 12x768", 64, "none"), ("2x64 + 12x768, rerank scalar-quantised", 64, "scalar"),
                       ("4x128 + 12x768, rerank binary-quantised", 128, "binary")):
        ram = d * 4 * 1.5 + {"none": 0, "scalar": 768, "binary": 768 / 8}[q]
        disk = d * 4 * 1.5 + 768 * 4 + DOCID
        lines.append(f"| {name} | {ram:g} | {disk:g} | " + " | ".join(f"{human(ram * n)} | {human(disk * n)}" for n in SCALES.values())
                     + " |")
    return lines


DOC = ROOT / "docs" / "scale.md"
BLOCK = re.compile(r"(<!-- BEGIN generated:sizing -->\n).*?(<!-- END generated:sizing -->)", re.S)


def doc_block(lines: list[str]) -> str:
    """docs/scale.md with its sizing block re-rendered (the tables, without the title)."""
    body = "\n".join(line.replace("## ", "#### ") for line in lines[2:]) + "\n"
    return BLOCK.sub(lambda m: m.group(1) + body + m.group(2), DOC.read_text())


def main() -> None:
    lines = render()
    out = ROOT / "benchmarks" / "results" / "sizing" / "sizing.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    DOC.write_text(doc_block(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
