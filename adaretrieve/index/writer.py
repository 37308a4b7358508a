"""Write an index directory from vectors, chunk by chunk (no torch: vectors can come from anywhere).

The directory is written under a temporary name beside ``out`` and renamed into place by
``close``; ``abort`` removes it. An index already at ``out`` is untouched until ``close``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.index.format import DOCIDS, Manifest, commit_directory, rerank_file, scale_file, shortlist_file
from adaretrieve.sizes import Size


def is_binary_factory(factory: str) -> bool:
    """Binary factories (``BFlat``, ``BHNSW32``, ``BIVF256``) index sign bits with Hamming distance."""
    return factory.startswith("B")


def make_faiss_index(dim: int, factory: str):
    """An inner-product FAISS index from a factory string (``Flat``, ``HNSW32``, ``SQ8``, ``SQfp16``,
    ``IVF1024,Flat``...), or a binary one over ``dim`` sign bits (``BFlat``, ``BHNSW32``)."""
    try:
        if is_binary_factory(factory):
            if dim % 8:
                raise AdaError(f"binary factory {factory!r} needs a dim divisible by 8, got {dim}")
            return faiss.index_binary_factory(dim, factory)
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1]
        raise AdaError(f"faiss factory {factory!r} is not valid for dim {dim}: {msg}") from None


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
        rerank_dtype: ``float16`` (default) or ``int8`` with a float32 scale per vector.
    """

    def __init__(self, out: str | Path, n_docs: int, shortlist: Sequence[Size], rerank: Size | None,
                 factory: str = "Flat", overwrite: bool = False, rerank_dtype: str = "float16"):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise AdaError(f"{self.out} already exists; pass --overwrite to replace it (the old index stays until the new one is complete)")
        if self.out.exists() and not (self.out / "manifest.json").exists():
            raise AdaError(f"{self.out} exists and is not an adaretrieve index; refusing to replace it")
        if not shortlist:
            raise AdaError("an index needs at least one shortlist size")
        if rerank_dtype not in ("float16", "int8"):
            raise AdaError(f"rerank dtype {rerank_dtype!r} is not one of float16, int8")
        self.n_docs, self.shortlist, self.rerank, self.factory = n_docs, list(shortlist), rerank, factory
        self.rerank_dtype = rerank_dtype
        self.binary = is_binary_factory(factory)
        self.indexes = {s: make_faiss_index(s.dim, factory) for s in self.shortlist}
        self._train_first = any(not ix.is_trained for ix in self.indexes.values())
        self._held: dict[Size, list[np.ndarray]] = {s: [] for s in self.shortlist}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self._ids = open(self.tmp / DOCIDS, "w", encoding="utf-8")
        self._rerank = self._scale = None
        if rerank is not None:
            self._rerank = np.lib.format.open_memmap(
                self.tmp / rerank_file(rerank), mode="w+", dtype=np.dtype(rerank_dtype), shape=(n_docs, rerank.dim))
            self._scale = (np.lib.format.open_memmap(self.tmp / scale_file(rerank), mode="w+", dtype=np.float32,
                                                     shape=(n_docs,)) if rerank_dtype == "int8" else None)
        self.row = 0
        self.t0 = time.perf_counter()

    def add(self, docids: Sequence[str], vectors: dict[Size, np.ndarray]) -> None:
        n = len(docids)
        if self.row + n > self.n_docs:
            raise AdaError(f"more documents added ({self.row + n}) than announced ({self.n_docs})")
        for s in self.shortlist:
            x = _to_index_input(vectors[s], self.binary)
            if self._train_first:
                self._held[s].append(x)
            else:
                self.indexes[s].add(x)
        if self._rerank is not None and self._scale is not None:
            codes, scale = quantize_int8(np.asarray(vectors[self.rerank], dtype=np.float32))
            self._rerank[self.row : self.row + n] = codes
            self._scale[self.row : self.row + n] = scale
        elif self._rerank is not None:
            self._rerank[self.row : self.row + n] = vectors[self.rerank].astype(np.float16)
        self._ids.writelines(f"{d}\n" for d in docids)
        self.row += n

    def close(self, model: dict, corpus: str, build: dict | None = None) -> Manifest:
        if self.row != self.n_docs:
            raise AdaError(f"index got {self.row} documents, expected {self.n_docs}")
        self._ids.close()
        for s, ix in self.indexes.items():
            if self._train_first:
                x = np.concatenate(self._held.pop(s))
                ix.train(x)
                ix.add(x)
            (faiss.write_index_binary if self.binary else faiss.write_index)(ix, str(self.tmp / shortlist_file(s)))
        if self._rerank is not None:
            self._rerank.flush()
            self._rerank = None
            if self._scale is not None:
                self._scale.flush()
                self._scale = None
        info = {"seconds": round(time.perf_counter() - self.t0, 2), **(build or {})}
        manifest = Manifest(
            model=model,
            n_docs=self.n_docs,
            shortlist=[{"size": str(s), "factory": self.factory,
                        "metric": "hamming" if self.binary else "inner_product",
                        "dtype": "bits" if self.binary else "float32", "file": shortlist_file(s)} for s in self.shortlist],
            rerank=({"size": str(self.rerank), "dtype": self.rerank_dtype, "file": rerank_file(self.rerank),
                     **({"scale_file": scale_file(self.rerank)} if self.rerank_dtype == "int8" else {})}
                    if self.rerank else None),
            corpus=corpus,
            build=info,
        )
        manifest.write(self.tmp)
        commit_directory(self.tmp, self.out)
        return manifest

    def abort(self) -> None:
        if not self._ids.closed:
            self._ids.close()
        self._rerank = self._scale = None
        shutil.rmtree(self.tmp, ignore_errors=True)
