"""The on-disk format of an index directory (no torch here, so searchers load fast).

    NAME/
      CURRENT                    the name of the current generation, one line, replaced atomically
      gen-<id>/                  one complete, immutable generation of the index:
        manifest.json            what built it: model + weights hash, pooling, sizes, counts, dtypes, generation
        docids.txt               one doc id per line; row i of every array is document i
        shortlist-<LxD>.faiss    one FAISS index per shortlist size (flat inner product by default)
        rerank-<LxD>.npy         full-size vectors, float16 [n_docs, D] (or int8 codes), opened as a memory map
        rerank-<LxD>.scale.npy   float32 [n_docs] per-vector scales, for int8 rerank rows only
        reader.lock              readers hold a shared flock on it; a generation is removed only under an exclusive one

A rebuild writes a new generation beside the current one and switches ``CURRENT`` to it with one
rename, so a reader sees one complete generation, old or new, and an index is always at the path.
Indexes written before generations (the files directly in NAME) are read as they are.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from adaretrieve._version import __version__
from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size
from adaretrieve.spec import QUERY_FIELDS, VectorSpec

MANIFEST = "manifest.json"
DOCIDS = "docids.txt"
CURRENT = "CURRENT"
READER_LOCK = "reader.lock"
FORMAT_VERSION = 1
GENERATION = re.compile(r"gen-\d{13}-\d+")


_IVF = re.compile(r"(?:^|,)B?IVF(\d+)")


def ivf_lists(factory: str | None) -> int | None:
    """The inverted-list count of an IVF factory string (``IVF4096,SQ8`` -> 4096, ``BIVF256`` -> 256), else None."""
    m = _IVF.search(factory or "")
    return int(m.group(1)) if m else None


def default_nprobe(nlist: int) -> int:
    """The nprobe an IVF shortlist of ``nlist`` lists is searched with unless told otherwise, and
    what ``index`` records for it: 2 sqrt(nlist), capped at nlist (IVF4096: 128, IVF256: 32,
    IVF64: 16). FAISS's own default of 1 visits 1/nlist of the corpus."""
    return max(1, min(int(nlist), int(round(2 * math.sqrt(nlist)))))


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
    generation: str | None = None  # the gen-<id> folder it was written in (None: an index from before generations)
    spec: dict | None = None  # the VectorSpec of every vector in it (None: an index from before specs)

    @property
    def shortlist_sizes(self) -> list[Size]:
        return [parse_size(s["size"]) for s in self.shortlist]

    @property
    def rerank_size(self) -> Size | None:
        return parse_size(self.rerank["size"]) if self.rerank else None

    @property
    def normalize(self) -> bool:
        return bool(self.model["normalize"])

    @property
    def vector_spec(self) -> VectorSpec:
        """What made the index's vectors: as recorded, or for an index from before specs, read from
        its model entry and build info (``VectorSpec.from_model``)."""
        if self.spec is not None:
            return VectorSpec.from_dict(self.spec, "manifest 'spec'")
        return VectorSpec.from_model(self.model, self.build)

    def write(self, directory: Path) -> None:
        write_durably(directory / MANIFEST, json.dumps(asdict(self), indent=2) + "\n")

    def files(self) -> list[str]:
        """Every file the manifest names (relative to its generation folder)."""
        out = [e["file"] for e in self.shortlist]
        if self.rerank:
            out += [self.rerank["file"]] + ([self.rerank["scale_file"]] if self.rerank.get("scale_file") else [])
        return out


def check_encoder(manifest: Manifest, where: str, spec: VectorSpec, name: str) -> None:
    """AdaError unless a query encoder of ``spec`` makes the query vectors the index at ``where``
    was built for: the same weights, pooling, normalisation, max length, lowercasing and query
    prefix (``QUERY_FIELDS``; the backend and dtype of queries may differ from the corpus's)."""
    have = manifest.vector_spec
    want = have.weights_sha256
    if want and want != spec.weights_sha256:
        raise AdaError(
            f"model {name!r} (weights sha256 {str(spec.weights_sha256)[:12]}) is not the model that built {where} "
            f"({manifest.model.get('name')!r}, sha256 {want[:12]}); search with that model or rebuild the index"
        )
    fields_ = tuple(f for f in QUERY_FIELDS if f != "weights_sha256" or want)
    diff = have.differs(spec, fields_)
    if diff:
        raise AdaError(f"the query encoder ({name!r}) differs from the one that built {where} in {', '.join(diff)} "
                       f"(index {have.explain(spec, fields_).replace(' -> ', ', encoder ')}); search with the index's "
                       "settings or rebuild the index")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def current_name(directory: str | Path) -> str | None:
    """What ``CURRENT`` names (stripped), or None when the index has no such file."""
    p = Path(directory) / CURRENT
    try:
        return p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise AdaError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}): it should hold one generation name; "
                       "the index is damaged, rebuild it") from None


def try_lock(path: Path) -> int | None:
    """An exclusive flock(2) on ``path`` (created if absent), taken without waiting: the open fd that
    holds it, or None when another process holds it. The kernel drops it when its holder dies."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def current_generation(directory: str | Path) -> Path:
    """The folder holding the index's current generation: ``NAME/<CURRENT>``, or NAME itself for an
    index written before generations. One read of CURRENT: the caller keeps using what it returns."""
    d = Path(directory)
    name = current_name(d)
    if name is None:
        if (d / MANIFEST).exists():
            return d
        if d.is_dir() and any(p.name.startswith((".gen-", "gen-")) for p in d.iterdir()):
            raise AdaError(f"{d} holds no complete index generation (a first build was interrupted); "
                           "run `adaretrieve index` again")
        raise AdaError(f"{d} is not an adaretrieve index: it has no {CURRENT} or {MANIFEST} "
                       "(build one with `adaretrieve index`)")
    if not GENERATION.fullmatch(name):
        raise AdaError(f"{d / CURRENT}: {name!r} is not a generation name (gen-<13 digits>-<pid>)")
    if not (d / name / MANIFEST).exists():
        raise AdaError(f"{d / CURRENT} names {name}, which has no {MANIFEST}")
    return check_inside(d, d / name)


def check_inside(root: str | Path, path: str | Path) -> Path:
    """``path`` when it resolves (symlinks followed) inside the folder ``root`` resolves to; AdaError
    otherwise. Names in a manifest are checked by ``_contained``, but a file or folder of an index can
    itself be a symlink to anything: every file a reader opens is checked here first."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise AdaError(f"{path} is a link to {real}, outside the index folder {root}; an index reads only files "
                       "inside its own folder, so it was not opened")
    return Path(path)


def _contained(directory: Path, name: object, where: str) -> str:
    """A file name from a manifest: a plain name of a file inside the index folder, never a path."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise AdaError(f"{directory / MANIFEST}: {where} {name!r} must name a file inside the index folder")
    return name


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of the index at ``directory`` (its current generation), or of one generation folder."""
    d = Path(directory)
    if not (d / MANIFEST).exists():
        d = current_generation(d)
    p = d / MANIFEST
    if not p.exists():
        raise AdaError(f"{d} is not an adaretrieve index: it has no {MANIFEST} (build one with `adaretrieve index`)")
    check_inside(d, p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdaError(f"{p}: manifest is not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise AdaError(f"{p}: manifest is not UTF-8 text ({e.reason} at byte {e.start}); rebuild the index") from None
    if not isinstance(data, dict):
        raise AdaError(f"{p}: expected a JSON object, got a {type(data).__name__}; rebuild the index")
    if data.get("format") != FORMAT_VERSION:
        raise AdaError(f"{p}: index format {data.get('format')} is not {FORMAT_VERSION}, the one this version reads; rebuild it")
    _check_manifest(p, data)
    m = Manifest(**data)
    try:
        m.vector_spec  # noqa: B018 (a recorded spec that does not parse is refused at open)
    except AdaError as e:
        raise AdaError(f"{p}: {e}") from None
    for i, e in enumerate(m.shortlist):
        _contained(d, e.get("file"), f"shortlist[{i}].file")
    if m.rerank:
        _contained(d, m.rerank.get("file"), "rerank.file")
        if "scale_file" in m.rerank:
            _contained(d, m.rerank["scale_file"], "rerank.scale_file")
    if m.generation is not None and d.name != m.generation:
        raise AdaError(f"{p}: written for generation {m.generation} but found in {d.name}; the index is inconsistent, rebuild it")
    return m


# key -> the JSON types its value may have; entries of "shortlist" and "rerank" must name these keys
_MANIFEST_TYPES = {"model": (dict,), "n_docs": (int,), "shortlist": (list,), "rerank": (dict, type(None)),
                   "corpus": (str,), "build": (dict,), "version": (str,), "format": (int,), "generation": (str, type(None)),
                   "spec": (dict, type(None))}
_ENTRY_KEYS = ("size", "file")


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _text_or_null(v) -> bool:
    return v is None or isinstance(v, str)


# what the query side reads from the manifest's "model" entry (Encoder.describe writes it): each value
# is checked when present, so a "false" string is never read as true, nor -5 blamed on --max-length
_MODEL_TYPES = {"name": (_text_or_null, "a string"), "path": (_text_or_null, "a string"),
                "weights_sha256": (_text_or_null, "a string or null"), "pooling": (lambda v: isinstance(v, str), "a string"),
                "normalize": (lambda v: isinstance(v, bool), "true or false"),
                "lowercase": (lambda v: isinstance(v, bool), "true or false"),
                "max_length": (_whole, "a whole number of at least 1"), "n_layers": (_whole, "a whole number of at least 1"),
                "hidden_size": (_whole, "a whole number of at least 1"),
                "query_prefix": (lambda v: isinstance(v, str), "a string"),
                "passage_prefix": (lambda v: isinstance(v, str), "a string")}


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
    for key, (ok, rule) in _MODEL_TYPES.items():
        if key in data["model"] and not ok(data["model"][key]):
            raise AdaError(f"{p}: manifest model {key!r} should be {rule}, got {data['model'][key]!r:.80}; rebuild the index")
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
