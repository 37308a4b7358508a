"""What adaretrieve knows about FAISS indexes, for the writer and the read side alike: an index as
its own class, which factories are binary, and what an index keeps in RAM per vector. Nothing
here builds, trains or writes an index (that is ``index.writer``).
"""

from __future__ import annotations

import math
import re

import faiss


def downcast(index):
    """``index`` as its own FAISS class (IndexHNSWFlat, IndexIVFScalarQuantizer, IndexBinaryHNSW...)."""
    return faiss.downcast_IndexBinary(index) if isinstance(index, faiss.IndexBinary) else faiss.downcast_index(index)


def is_binary_factory(factory: str) -> bool:
    """Binary factories (``BFlat``, ``BHNSW32``, ``BIVF256``) index sign bits with Hamming distance."""
    return factory.startswith("B")


# -- RAM of a FAISS index, per vector ----------------------------------------------------------

ID_BYTES = 8  # FAISS idx_t: inverted lists and IDMap keep one per vector


def hnsw_bytes(m: int) -> int:
    """Graph bytes per vector of HNSW with ``m`` links: 2m int32 links at level 0 (8m bytes), about one
    more int32 link on average above it (a vector reaches level l with probability m^-l, m links
    there), a level (int32) and an offset (int64): 8m + 16."""
    return 8 * m + 16


def _code_bytes(part: str, dim: int) -> float | None:
    """Bytes per vector of an encoding component (``Flat``, ``SQ8``, ``SQfp16``, ``PQ16x4``), else None."""
    if part == "Flat":
        return 4 * dim
    if part in ("SQfp16", "SQbf16"):
        return 2 * dim
    if m := re.fullmatch(r"SQ(\d+)(_direct(_signed)?)?", part):
        return math.ceil(int(m[1]) * dim / 8)
    if m := re.fullmatch(r"PQ(\d+)(?:x(\d+))?(fs)?", part):
        return math.ceil(int(m[1]) * int(m[2] or 8) / 8)
    if m := re.fullmatch(r"RaBitQ(?:fs)?(\d*)", part):
        # the sign bits and 2 float32 factors; more bits add (nb-1) bits a dim and 3 more factors
        nb = int(m[1] or 1)
        return math.ceil(dim / 8) + 8 + (math.ceil((nb - 1) * dim / 8) + 12 if nb > 1 else 0)
    if part == "sign":  # index.codes.sign_index: the packed sign bits
        return math.ceil(dim / 8)
    if m := re.fullmatch(r"(?:pca|itq)(\d+)", part):  # M sign bits of a rotation (its matrix is a fixed cost)
        return math.ceil(int(m[1]) / 8)
    return None


def resident_bytes_per_doc(dim: int, factory: str = "Flat") -> float | None:
    """Estimated RAM per vector of a FAISS index built from ``factory`` over ``dim`` dims (sign bits for
    ``B...`` factories), once loaded: the codes (Flat 4 bytes a dim, SQfp16 2, SQ8 1, SQ4 1/2, PQm
    m bytes, binary and ``sign`` dim/8, RaBitQ dim/8 + 8), plus 8 bytes of ids per vector for IVF and IDMap, ``hnsw_bytes(M)`` for
    HNSW (8M + 16), and 4 bytes a dim more for a refining ``RFlat``. Costs that do not grow with the
    corpus (IVF centroids, PCA/OPQ matrices) are left out. None for factories this does not model."""
    parts = factory.split(",")
    if is_binary_factory(factory):  # BFlat, BHNSW32, BIVF256[,BFlat]
        total: float = dim // 8  # binary dims are a multiple of 8
        for p in (p[1:] if p.startswith("B") else p for p in parts):
            if m := re.fullmatch(r"HNSW(\d+)", p):
                total += hnsw_bytes(int(m[1]))
            elif re.fullmatch(r"IVF\d+", p):
                total += ID_BYTES
            elif p != "Flat":
                return None
        return total
    d, extra, code = dim, 0.0, None
    for p in parts:
        if m := re.fullmatch(r"PCAW?R?(\d+)|OPQ\d+_(\d+)", p):
            d = int(m[1] or m[2])  # a transform: what follows sees its output dims
        elif re.fullmatch(r"OPQ\d+|L2norm", p):
            pass
        elif m := re.fullmatch(r"HNSW(\d+)", p):
            extra += hnsw_bytes(int(m[1]))
        elif re.fullmatch(r"IVF\d+(_HNSW\d+)?|IDMap2?", p):
            extra += ID_BYTES
        elif p == "RFlat":
            extra += 4 * dim  # the original vectors, kept to refine
        elif code is None and (c := _code_bytes(p, d)) is not None:
            code = c
        else:
            return None
    return (4 * d if code is None else code) + extra  # HNSW32 alone stores flat vectors
