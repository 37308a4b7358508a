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
from dataclasses import MISSING, asdict, dataclass, field, fields
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
    if not isinstance(data, dict):
        raise AdaError(f"{p}: expected a JSON object, got a {type(data).__name__}; rebuild the index")
    if data.get("format") != FORMAT_VERSION:
        raise AdaError(f"{p}: index format {data.get('format')} is not {FORMAT_VERSION}, the one this version reads; rebuild it")
    _check_manifest(p, data)
    return Manifest(**data)


# key -> the JSON types its value may have; entries of "shortlist" and "rerank" must name these keys
_MANIFEST_TYPES = {"model": (dict,), "n_docs": (int,), "shortlist": (list,), "rerank": (dict, type(None)),
                   "corpus": (str,), "build": (dict,), "version": (str,), "format": (int,)}
_ENTRY_KEYS = ("size", "file")


def _check_manifest(p: Path, data: dict) -> None:
    """Keys, value types and the size entries of a manifest, each failure naming the key."""
    required = {f.name for f in fields(Manifest) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise AdaError(f"{p}: manifest lacks {', '.join(map(repr, missing))}; rebuild the index")
    unknown = sorted(set(data) - set(_MANIFEST_TYPES))
    if unknown:
        raise AdaError(f"{p}: manifest has unknown keys {', '.join(map(repr, unknown))}; it was written by another tool "
                       f"or version")
    for key, kinds in _MANIFEST_TYPES.items():
        if key in data and (not isinstance(data[key], kinds) or isinstance(data[key], bool)):
            raise AdaError(f"{p}: manifest {key!r} should be {' or '.join(_json_name(k) for k in kinds)}, got {data[key]!r:.80}")
    if data["n_docs"] < 1:
        raise AdaError(f"{p}: manifest 'n_docs' is {data['n_docs']}, expected at least 1")
    entries = [("shortlist", e) for e in data["shortlist"]] + ([("rerank", data["rerank"])] if data["rerank"] else [])
    if not data["shortlist"]:
        raise AdaError(f"{p}: manifest 'shortlist' lists no FAISS index")
    for key, e in entries:
        if not isinstance(e, dict) or any(not isinstance(e.get(k), str) for k in _ENTRY_KEYS):
            raise AdaError(f"{p}: manifest {key!r} entry {e!r:.80} should be an object with string 'size' and 'file'")
        try:
            parse_size(e["size"])
        except AdaError as err:
            raise AdaError(f"{p}: manifest {key!r} entry: {err}") from None


def _json_name(kind: type) -> str:
    return {dict: "an object", list: "a list", int: "an integer", str: "a string", type(None): "null"}[kind]


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
