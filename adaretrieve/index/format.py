"""The on-disk format of an index directory (no torch here, so searchers load fast).

    NAME/
      manifest.json            what built it: model + weights hash, pooling, sizes, counts, dtypes
      docids.txt               one doc id per line; row i of every array is document i
      shortlist-<LxD>.faiss    one FAISS index per shortlist size (flat inner product by default)
      rerank-<LxD>.npy         full-size vectors, float16 [n_docs, D] (or int8 codes), opened as a memory map
      rerank-<LxD>.scale.npy   float32 [n_docs] per-vector scales, for int8 rerank rows only
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adaretrieve import __version__
from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size

MANIFEST = "manifest.json"
DOCIDS = "docids.txt"
FORMAT_VERSION = 1


def shortlist_file(size: Size) -> str:
    return f"shortlist-{size}.faiss"


def rerank_file(size: Size) -> str:
    return f"rerank-{size}.npy"


def scale_file(size: Size) -> str:
    """Per-vector float32 scales of int8 rerank rows."""
    return f"rerank-{size}.scale.npy"


@dataclass
class Manifest:
    model: dict
    n_docs: int
    shortlist: list[dict]  # [{"size": "2x64", "factory": "Flat", "metric": "ip", "file": ...}]
    rerank: dict | None  # {"size": "6x384", "dtype": "float16", "file": ...}
    corpus: str
    build: dict = field(default_factory=dict)
    version: str = __version__
    format: int = FORMAT_VERSION

    @property
    def shortlist_sizes(self) -> list[Size]:
        return [parse_size(s["size"]) for s in self.shortlist]

    @property
    def rerank_size(self) -> Size | None:
        return parse_size(self.rerank["size"]) if self.rerank else None

    @property
    def normalize(self) -> bool:
        return bool(self.model["normalize"])

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")


def read_manifest(directory: str | Path) -> Manifest:
    d = Path(directory)
    p = d / MANIFEST
    if not p.exists():
        raise AdaError(f"{d} is not an adaretrieve index: it has no {MANIFEST} (build one with `adaretrieve index`)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise AdaError(f"{p}: manifest is not valid JSON ({e.msg})") from None
    if data.get("format") != FORMAT_VERSION:
        raise AdaError(f"{p}: index format {data.get('format')} is not {FORMAT_VERSION}, the one this version reads; rebuild it")
    return Manifest(**data)


def commit_directory(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` into place at ``final``. A directory already at ``final`` is moved
    aside first and removed only after the new one stands, so a crash never leaves a half index."""
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
