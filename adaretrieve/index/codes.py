"""Shortlist kinds: which code each shortlist size is stored as (no torch).

A shortlist entry is ``SIZE`` or ``SIZE:KIND`` (``2x64``, ``6x384:sign``, ``4x128:IVF256,RaBitQ``).
A kind is a FAISS factory string or one of the short names in ``KINDS``; without one, the index's
``--factory`` (``Flat`` by default) applies. Every kind is built from the vectors the build already
encodes, and every candidate it shortlists is rescored from the stored rows, so a code only has
to find the right candidates, not score them well.

``pcaM`` / ``itqM`` are M sign bits of a rotation fitted on the corpus (``fit_rotation``), scored
the same way against the rotated query: fewer bits of the full size than its dims.

``sign`` is the first kind FAISS's factory cannot spell: the sign bits of a vector (dim/8 bytes),
scored asymmetrically, the float query against the signs (``q . sign(d) / sqrt(dim)``). It is a
FAISS ``IndexPQ`` with one 8-bit sub-quantizer per 8 dims whose fixed codebook is the 256 sign
patterns of 8 dims (scaled to unit vectors), so:

- the code FAISS assigns a vector (its nearest pattern) is exactly its packed sign bits, bit j of
  byte i being dim ``8i + j`` (``np.packbits(x > 0, bitorder="little")``; a 0 counts as negative);
- FAISS's ADC tables compute ``q . decoded(d)`` exactly, over float queries: search, serve and the
  Retriever use it like any float index. ``hamming`` (``BFlat``) is the symmetric alternative.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.sizes import Size, parse_size

SIGN = "sign"
ROTATED = re.compile(r"(pca|itq)(\d+)")  # pcaM / itqM: M sign bits of a rotation fitted on the corpus
# short names for kinds; anything else after SIZE: is taken as a FAISS factory string
KINDS = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8", "sq4": "SQ4", "sign": SIGN, "hamming": "BFlat",
         "rabitq": "RaBitQ"}
_SIZE_START = re.compile(r"\s*\d+\s*x\s*\d+\s*(:|$)", re.IGNORECASE)


def kind_factory(kind: str) -> str:
    """The factory a kind names: ``sign`` for sign bits, a FAISS factory otherwise (``sq8`` -> ``SQ8``)."""
    k = kind.strip()
    if not k:
        raise AdaError(f"shortlist kind {kind!r} is empty; use one of {', '.join(KINDS)} or a FAISS factory")
    return KINDS.get(k.lower(), k)


def parse_shortlist(items: str | Size | Iterable[str | Size], default: str = "Flat") -> list[tuple[Size, str]]:
    """``[(size, factory), ...]`` from ``SIZE[:KIND]`` entries, given as a list and/or comma-separated
    (``"2x64,6x384:sign"``). A comma inside a kind's factory stays with it: a piece that does not start
    with a size continues the entry before it (``"6x384:IVF256,RaBitQ"``). Entries without a kind get
    ``default``. AdaError for a size given twice."""
    if isinstance(items, (str, Size)):
        items = [items]
    out: list[tuple[Size, str]] = []
    for item in items:
        if isinstance(item, Size):
            pieces = [str(item)]
        else:
            pieces = []
            for p in str(item).split(","):
                if not p.strip():
                    continue
                if pieces and not _SIZE_START.match(p) and ":" in pieces[-1]:
                    pieces[-1] += "," + p.strip()
                else:
                    pieces.append(p)
        for p in pieces:
            size_text, _, kind = p.partition(":")
            size = parse_size(size_text)
            factory = kind_factory(kind) if _ else default
            if any(s == size for s, _f in out):
                if (size, factory) in out:
                    continue
                raise AdaError(f"shortlist size {size} is given twice with different kinds; an index holds one code per size")
            out.append((size, factory))
    return out


def is_sign(factory: str) -> bool:
    return factory == SIGN


def rotation_bits(factory: str) -> int | None:
    """M of a ``pcaM`` / ``itqM`` kind, else None."""
    m = ROTATED.fullmatch(factory)
    return int(m[2]) if m else None


def sign_index(dim: int):
    """An IndexPQ over ``dim`` dims whose codes are the packed sign bits and whose scores are
    ``q . sign(d) / sqrt(dim)`` (see the module docstring); trained already (its codebook is fixed)."""
    import faiss

    if dim % 8:
        raise AdaError(f"kind 'sign' packs 8 dims a byte: the dim must be divisible by 8, got {dim}")
    m = dim // 8
    ix = faiss.IndexPQ(dim, m, 8, faiss.METRIC_INNER_PRODUCT)
    patterns = (((np.arange(256)[:, None] >> np.arange(8)) & 1) * 2.0 - 1.0) / np.sqrt(dim)  # [256, 8], LSB first
    faiss.copy_array_to_vector(np.tile(patterns, (m, 1)).astype(np.float32).ravel(), ix.pq.centroids)
    ix.is_trained = True
    return ix


def sign_codes(x: np.ndarray) -> np.ndarray:
    """The codes a ``sign`` index holds for ``x`` [n, dim]: uint8 [n, dim/8], dim 8i+j in bit j of byte i."""
    return np.packbits(np.asarray(x) > 0, axis=1, bitorder="little")


def decode_sign(codes: np.ndarray, dim: int) -> np.ndarray:
    """float32 [n, dim] vectors a ``sign`` index scores against: +-1/sqrt(dim) per dim."""
    bits = np.unpackbits(codes, axis=1, bitorder="little", count=dim)
    return ((bits.astype(np.float32) * 2 - 1) / np.sqrt(dim)).astype(np.float32)


def rotated_sign_index(dim: int, bits: int):
    """``pcaM`` / ``itqM``: a LinearTransform [bits, dim] (no bias) in front of a ``sign`` index over its
    ``bits`` outputs; untrained until ``train_and_add`` fits the rotation on the corpus."""
    import faiss

    if not 8 <= bits <= dim or bits % 8:
        raise AdaError(f"a rotation keeps 8 to {dim} bits, a multiple of 8 (the size's dim at most), got {bits}")
    lt = faiss.LinearTransform(dim, bits, False)
    lt.is_trained = False
    ix = faiss.IndexPreTransform(lt, sign_index(bits))
    ix.is_trained = False
    return ix


def fit_rotation(x: np.ndarray, bits: int, itq: bool, iters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A [bits, dim], mean [dim]) for ``x`` [n, dim]: the top ``bits`` principal directions of the
    centred corpus, then, for ITQ (Gong & Lazebnik), the rotation of them that makes the sign bits
    lose least (``iters`` alternations). Documents are coded sign(A (x - mean)); queries are scored
    as A q, uncentred: q . mean is the same for every document, so leaving it out keeps the ranking,
    where centring the query too would add a term that varies by document."""
    mu = x.mean(0, dtype=np.float64)
    xc = np.asarray(x, dtype=np.float64) - mu
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    P = evecs[:, np.argsort(-evals)[:bits]].T  # [bits, dim]
    if itq:
        V = xc @ P.T
        R = np.linalg.qr(np.random.default_rng(seed).normal(size=(bits, bits)))[0]
        for _ in range(iters):
            U, _, Wt = np.linalg.svd(np.where(V @ R >= 0, 1.0, -1.0).T @ V)
            R = (U @ Wt).T
        P = R.T @ P
    return P.astype(np.float32), mu.astype(np.float32)


def train_and_add(index, factory: str, x: np.ndarray) -> None:
    """Train ``index`` (of ``factory``) on ``x`` [n, dim] and add it: a rotation kind fits its rotation
    and adds the signs of the centred, rotated documents (the centre is needed only here)."""
    import faiss

    bits = rotation_bits(factory)
    if bits is None:
        index.train(x)
        add_vectors(index, factory, x)
        return
    if len(x) < bits:
        raise AdaError(f"kind {factory!r} fits {bits} directions: it needs at least {bits} documents, got {len(x)}")
    A, mu = fit_rotation(x, bits, factory.startswith("itq"))
    lt = faiss.downcast_VectorTransform(index.chain.at(0))
    faiss.copy_array_to_vector(A.ravel(), lt.A)
    lt.is_trained = True
    inner = faiss.downcast_index(index.index)
    inner.add_sa_codes(sign_codes((x - mu) @ A.T))
    index.ntotal = inner.ntotal
    index.is_trained = True


def add_vectors(index, factory: str, x: np.ndarray) -> None:
    """Add ``x`` [n, dim] float32 to a shortlist index of ``factory``: a sign index takes its packed
    signs directly (the same codes FAISS would assign, without its 256-pattern search per byte)."""
    if is_sign(factory):
        index.add_sa_codes(sign_codes(x))
    else:
        index.add(x)
