"""Write an index directory from vectors, chunk by chunk (no torch: vectors can come from anywhere).

A new generation is written in a hidden folder inside ``out`` (``out/.gen-<id>.partial``) and
switched to by ``close`` in steps that each leave a loadable index (see ``COMMIT_STEPS``): every
file and folder fsynced, the folder renamed to ``gen-<id>``, then ``CURRENT`` replaced by one
rename. Older generations are removed only when no reader holds them. ``abort`` removes the
partial folder. One writer per ``out`` at a time (an exclusive flock on ``out/.write.lock``).
Nothing outside ``out`` is touched except leftovers of the layout before generations
(``.NAME.partial-<pid>`` of a dead process).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.faiss_util import downcast, is_binary_factory
from adaretrieve.index.codes import add_vectors, is_sign, rotated_sign_index, rotation_bits, sign_index, train_and_add
from adaretrieve.index.format import (
    CURRENT,
    DOCIDS,
    GENERATION,
    MANIFEST,
    READER_LOCK,
    Manifest,
    current_name,
    default_nprobe,
    fsync_path,
    ivf_lists,
    rerank_file,
    scale_file,
    shortlist_file,
    try_lock,
    write_durably,
)
from adaretrieve.sizes import Size

log = logging.getLogger(__name__)
WRITE_LOCK = ".write.lock"
# the points between the steps of a switch; a test kills a writer at each to check an index is always there
COMMIT_STEPS = ("written", "renamed", "pointer_written", "switched", "legacy_removed")
commit_hook: Callable[[str], None] | None = None
_LEGACY_FILES = re.compile(r"(manifest\.json|docids\.txt|shortlist-\d+x\d+\.faiss|rerank-\d+x\d+(\.scale)?\.npy)")


def _step(name: str) -> None:
    if commit_hook is not None:
        commit_hook(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_index(out: Path) -> bool:
    return (out / CURRENT).exists() or (out / MANIFEST).exists()


def _ours(p: Path) -> bool:
    """Entries an index folder may hold: generations, partial generations, the pointer and locks."""
    return bool(GENERATION.fullmatch(p.name) or re.fullmatch(r"\.gen-\d{13}-\d+\.partial", p.name)
                or p.name in (CURRENT, WRITE_LOCK) or re.fullmatch(rf"\.{CURRENT}\.\d+\.tmp", p.name)
                or _LEGACY_FILES.fullmatch(p.name))


def collect_generations(out: Path, keep: str | None) -> list[str]:
    """Remove the generations of ``out`` other than ``keep`` that no reader holds (an exclusive flock
    on their reader.lock), and partial ones of dead writers; returns the names kept because in use."""
    busy = []
    for p in sorted(out.iterdir()):
        if p.name == keep:
            continue
        m = re.fullmatch(r"\.gen-\d{13}-(\d+)\.partial", p.name)
        if m:
            if not _pid_alive(int(m.group(1))) or int(m.group(1)) == os.getpid():
                shutil.rmtree(p, ignore_errors=True)
            continue
        if re.fullmatch(rf"\.{CURRENT}\.\d+\.tmp", p.name):
            p.unlink(missing_ok=True)
            continue
        if not GENERATION.fullmatch(p.name):
            continue
        try:
            fd = os.open(p / READER_LOCK, os.O_RDONLY)
        except FileNotFoundError:
            shutil.rmtree(p, ignore_errors=True)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy.append(p.name)
                continue
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)
    if busy:
        log.info("kept %s in %s: a reader has it open (removed by a later build)", ", ".join(busy), out)
    return busy


def _remove_legacy_partials(out: Path) -> None:
    """``.NAME.partial-<pid>`` beside ``out``: the temporary folder of the layout before generations."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def make_faiss_index(dim: int, factory: str):
    """An inner-product FAISS index from a factory string (``Flat``, ``HNSW32``, ``SQ8``, ``SQfp16``,
    ``IVF1024,Flat``, ``RaBitQ``...), a binary one over ``dim`` sign bits (``BFlat``, ``BHNSW32``), or
    ``sign``: sign bits scored against float queries (``codes.sign_index``), ``pcaM`` / ``itqM``: M
    such bits of a rotation fitted on the corpus (``codes.rotated_sign_index``)."""
    if is_sign(factory):
        return sign_index(dim)
    if rotation_bits(factory) is not None:
        return rotated_sign_index(dim, rotation_bits(factory))
    try:
        if is_binary_factory(factory):
            if dim % 8:
                raise AdaError(f"binary factory {factory!r} needs a dim divisible by 8, got {dim}")
            return faiss.index_binary_factory(dim, factory)
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1]
        raise AdaError(f"faiss factory {factory!r} is not valid for dim {dim}: {msg}") from None


def set_ef_construction(index, factory: str, ef_construction: int | None) -> None:
    """Build ``index``'s HNSW graph at ``ef_construction`` (FAISS's factory strings cannot say it;
    FAISS's default is 40). AdaError for a factory without a graph or a value below 1."""
    if ef_construction is None:
        return
    if ef_construction < 1:
        raise AdaError(f"ef_construction {ef_construction} must be at least 1")
    down = downcast(index)
    if not hasattr(down, "hnsw"):
        raise AdaError(f"ef_construction applies to HNSW factories (HNSW32, BHNSW32 ...), not {factory!r}")
    down.hnsw.efConstruction = int(ef_construction)


def training_points(index, n_docs: int = 0) -> tuple[int, str, str]:
    """The fewest vectors ``index`` can be trained on (FAISS's k-means needs at least as many points
    as centroids), what sets it (its IVF lists, or its PQ codebooks' 2^nbits centroids per
    sub-quantizer) and a factory that would fit ``n_docs``. (0, "", "") for an index that trains on
    anything or not at all."""
    down = downcast(index)
    need, what, hint = 0, "", ""
    if index.is_trained:  # a fixed codebook (sign) or nothing to learn
        return need, what, hint
    nlist = getattr(down, "nlist", 0)
    if nlist > need:
        fit = 1 << max(0, max(1, n_docs // 39).bit_length() - 1)  # FAISS wants about 39 points per centroid
        need, what, hint = int(nlist), f"{nlist} IVF lists", f"use fewer lists, e.g. IVF{fit}"
    pq = getattr(down, "pq", None)
    if pq is not None and pq.ksub > need:
        need, what = int(pq.ksub), f"{pq.ksub} centroids per PQ sub-quantizer ({pq.nbits}-bit codes)"
        hint = f"use 4-bit codes (PQ{pq.M}x4fs) or a larger corpus"
    return need, what, hint


def check_trainable(index, factory: str, n_docs: int) -> None:
    """AdaError when ``n_docs`` vectors are too few to train ``index`` (built from ``factory``),
    naming a factory that fits: checked before anything is encoded."""
    need, what, hint = training_points(index, n_docs)
    if n_docs < need:
        raise AdaError(f"--factory {factory!r} needs at least {need} documents to train its {what}; "
                       f"this corpus has {n_docs}: {hint}")


def check_nprobe(factory: str, nprobe: int | None) -> int | None:
    """The nprobe to record for shortlists of ``factory``: ``nprobe`` when given (AdaError unless the
    factory is IVF and it is within 1..nlist), else ``format.default_nprobe``; None for a factory
    that is not IVF."""
    nlist = ivf_lists(factory)
    if nprobe is not None and nlist is None:
        raise AdaError(f"--nprobe applies to IVF factories; {factory!r} is not one (e.g. --factory IVF1024,Flat)")
    if nprobe is not None and not 1 <= nprobe <= nlist:
        raise AdaError(f"--nprobe {nprobe} is outside 1..{nlist}, the lists of {factory!r}")
    return (nprobe or default_nprobe(nlist)) if nlist else None


def has_graph(index) -> bool:
    return hasattr(downcast(index), "hnsw")


def shortlist_options(indexes: Mapping[Size, object], factories: Mapping[Size, str], ef_construction: int | None,
                      nprobe: int | None) -> dict[Size, int | None]:
    """Apply ``ef_construction`` to the HNSW shortlists among ``indexes`` and return the nprobe to
    record per size (``check_nprobe`` for IVF ones, None for the rest). AdaError when either is given
    and no shortlist is of a kind it applies to."""
    first = next(iter(factories))
    if ef_construction is not None:
        graphs = [s for s, ix in indexes.items() if has_graph(ix)] or [first]  # none: the first says why not
        for s in graphs:
            set_ef_construction(indexes[s], factories[s], ef_construction)
    ivf = [s for s, f in factories.items() if ivf_lists(f)]
    if nprobe is not None and not ivf:
        check_nprobe(factories[first], nprobe)  # raises: the factory is not IVF
    return {s: check_nprobe(f, nprobe) if s in ivf else None for s, f in factories.items()}


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes [n, d] and per-vector scales [n] with x ~= codes * scale."""
    scale = np.abs(x).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale.astype(np.float32)


def _to_index_input(x: np.ndarray, binary: bool) -> np.ndarray:
    return np.packbits(x > 0, axis=1) if binary else np.ascontiguousarray(x, dtype=np.float32)


class IndexWriter:
    """Accumulates ``add(docids, {Size: float32 [n, dim]})`` calls into an index directory.

    Args:
        out: final directory. It must not exist unless ``overwrite``.
        n_docs: total number of documents (the rerank array is preallocated on disk).
        shortlist: sizes that get a FAISS index each.
        rerank: size stored as float16 rows for exact rescoring, or None.
        factory: FAISS factory string for the shortlist indexes (``B...`` for binary ones).
        kinds: ``{size: factory}`` for shortlist sizes stored as another kind than ``factory``
            (``sign``, ``BFlat``, ``RaBitQ``, ``SQ8`` ...: see ``index.codes``).
        ef_construction: HNSW factories only: the graph's efConstruction (FAISS's default 40).
        nprobe: IVF factories only: the nprobe searches use unless told otherwise, recorded in the
            manifest (default ``format.default_nprobe`` of the list count).
        rerank_dtype: ``float16`` (default) or ``int8`` with a float32 scale per vector.
    """

    def __init__(self, out: str | Path, n_docs: int, shortlist: Sequence[Size], rerank: Size | None,
                 factory: str = "Flat", overwrite: bool = False, rerank_dtype: str = "float16",
                 ef_construction: int | None = None, nprobe: int | None = None,
                 kinds: Mapping[Size, str] | None = None):
        self.out = Path(out)
        check_out(self.out, overwrite)
        if not shortlist:
            raise AdaError("an index needs at least one shortlist size")
        if rerank_dtype not in ("float16", "int8"):
            raise AdaError(f"rerank dtype {rerank_dtype!r} is not one of float16, int8")
        self.n_docs, self.shortlist, self.rerank, self.factory = n_docs, list(shortlist), rerank, factory
        self.rerank_dtype = rerank_dtype
        self.factories = {s: (kinds or {}).get(s, factory) for s in self.shortlist}
        self.indexes = {s: make_faiss_index(s.dim, f) for s, f in self.factories.items()}
        for s, ix in self.indexes.items():
            check_trainable(ix, self.factories[s], n_docs)
        self.ef_construction = ef_construction
        self.nprobes = shortlist_options(self.indexes, self.factories, ef_construction, nprobe)
        self._train_first = {s: not ix.is_trained for s, ix in self.indexes.items()}
        self._held: dict[Size, list[np.ndarray]] = {s: [] for s in self.shortlist}
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = try_lock(self.out / WRITE_LOCK)
        if self._lock is None:
            raise AdaError(f"another process is writing {self.out} now (it holds {self.out / WRITE_LOCK}); "
                           "wait for it to finish")
        check_out(self.out, overwrite)  # again, under the lock
        _remove_legacy_partials(self.out)
        collect_generations(self.out, keep=current_name(self.out))
        self.generation = f"gen-{time.time_ns() // 1_000_000:013d}-{os.getpid()}"
        self.tmp = self.out / f".{self.generation}.partial"
        self.tmp.mkdir()
        (self.tmp / READER_LOCK).touch()
        self._ids = open(self.tmp / DOCIDS, "w", encoding="utf-8")
        self._rerank = self._scale = None
        try:  # a full disk or a file-size limit here: remove the partial generation and the lock, as abort does
            if rerank is not None:
                self._rerank = np.lib.format.open_memmap(
                    self.tmp / rerank_file(rerank), mode="w+", dtype=np.dtype(rerank_dtype), shape=(n_docs, rerank.dim))
                self._scale = (np.lib.format.open_memmap(self.tmp / scale_file(rerank), mode="w+", dtype=np.float32,
                                                         shape=(n_docs,)) if rerank_dtype == "int8" else None)
        except BaseException:
            self.abort()
            raise
        self.row = 0
        self.t0 = time.perf_counter()

    def add(self, docids: Sequence[str], vectors: dict[Size, np.ndarray]) -> None:
        n = len(docids)
        if self.row + n > self.n_docs:
            raise AdaError(f"more documents added ({self.row + n}) than announced ({self.n_docs})")
        for s, x in vectors.items():
            if not np.isfinite(x).all():
                raise AdaError(f"the {s} vectors of documents {self.row}..{self.row + n - 1} are not finite (NaN or inf); "
                               "an index of them would give wrong results, so nothing is written")
        for s in self.shortlist:
            x = _to_index_input(vectors[s], is_binary_factory(self.factories[s]))
            if self._train_first[s]:
                self._held[s].append(x)
            else:
                add_vectors(self.indexes[s], self.factories[s], x)
        if self._rerank is not None and self._scale is not None:
            codes, scale = quantize_int8(np.asarray(vectors[self.rerank], dtype=np.float32))
            self._rerank[self.row : self.row + n] = codes
            self._scale[self.row : self.row + n] = scale
        elif self._rerank is not None:
            self._rerank[self.row : self.row + n] = vectors[self.rerank].astype(np.float16)
        self._ids.writelines(f"{d}\n" for d in docids)
        self.row += n

    def close(self, model: dict, corpus: str, build: dict | None = None, spec: dict | None = None) -> Manifest:
        """Write the shortlist indexes and the manifest (``model``: the encoder's ``describe()``;
        ``spec``: its ``VectorSpec`` as a dict) and switch the index to the new generation."""
        if self.row != self.n_docs:
            raise AdaError(f"index got {self.row} documents, expected {self.n_docs}")
        self._ids.close()
        for s, ix in self.indexes.items():
            if self._train_first[s]:
                train_and_add(ix, self.factories[s], np.concatenate(self._held.pop(s)))
            binary = is_binary_factory(self.factories[s])
            (faiss.write_index_binary if binary else faiss.write_index)(ix, str(self.tmp / shortlist_file(s)))
        if self._rerank is not None:
            self._rerank.flush()
            self._rerank = None
            if self._scale is not None:
                self._scale.flush()
                self._scale = None
        info = {"seconds": round(time.perf_counter() - self.t0, 2), **(build or {})}
        generation = self.generation
        manifest = Manifest(
            model=model,
            n_docs=self.n_docs,
            shortlist=[{"size": str(s), "factory": f,
                        "metric": "hamming" if is_binary_factory(f) else "inner_product",
                        "dtype": "bits" if is_binary_factory(f) else "float32", "file": shortlist_file(s),
                        **({"ef_construction": self.ef_construction}
                           if self.ef_construction is not None and has_graph(self.indexes[s]) else {}),
                        **({"nprobe": self.nprobes[s]} if self.nprobes[s] is not None else {})}
                       for s, f in self.factories.items()],
            rerank=({"size": str(self.rerank), "dtype": self.rerank_dtype, "file": rerank_file(self.rerank),
                     **({"scale_file": scale_file(self.rerank)} if self.rerank_dtype == "int8" else {})}
                    if self.rerank else None),
            corpus=corpus,
            build=info,
            generation=generation,
            spec=spec,
        )
        manifest.write(self.tmp)
        self._commit()
        return manifest

    def _commit(self) -> None:
        """Switch ``out`` to the new generation; a kill between any two steps leaves the old or the new index."""
        for p in self.tmp.iterdir():
            fsync_path(p)
        fsync_path(self.tmp)
        _step("written")
        final = self.out / self.generation
        self.tmp.rename(final)
        fsync_path(self.out)
        _step("renamed")
        pointer = self.out / f".{CURRENT}.{os.getpid()}.tmp"
        write_durably(pointer, self.generation + "\n")
        _step("pointer_written")
        pointer.replace(self.out / CURRENT)
        fsync_path(self.out)
        _step("switched")
        for p in self.out.iterdir():  # the files of an index from before generations, now replaced
            if p.is_file() and _LEGACY_FILES.fullmatch(p.name):
                p.unlink()
        _step("legacy_removed")
        collect_generations(self.out, keep=self.generation)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def abort(self) -> None:
        if not self._ids.closed:
            self._ids.close()
        self._rerank = self._scale = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        if not has_index(self.out) and not any(p.name != WRITE_LOCK for p in self.out.iterdir()):
            (self.out / WRITE_LOCK).unlink(missing_ok=True)
            self.out.rmdir()  # nothing was there before this writer
        self._release()


def check_out(out: Path, overwrite: bool) -> None:
    """``out`` may be written: absent, an index with ``overwrite``, or a folder holding only what an
    interrupted build of ours left there. Anything else is refused, never deleted."""
    if not out.exists():
        return
    if not out.is_dir():
        raise AdaError(f"{out} exists and is not a folder; refusing to replace it")
    if has_index(out):
        if not overwrite:
            raise AdaError(f"{out} already exists; pass --overwrite to replace it "
                           "(the old index stays until the new one is complete)")
        return
    strangers = [p.name for p in out.iterdir() if not _ours(p)]
    if strangers:
        raise AdaError(f"{out} exists and is not an adaretrieve index (it holds {', '.join(sorted(strangers)[:3])}); "
                       "refusing to write into it")
