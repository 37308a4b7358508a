"""Encoded chunks of a build folder: how a chunk of passages is encoded, written and read back.

``index.build`` encodes chunks in this process and ``index.ray_encode`` on Ray actors; both call
``encode_chunk``, so a chunk file is the same whoever wrote it. Chunk ``c`` is the folder
``<build folder>/chunk-<c:06d>/``: ``ids.txt`` (one id a line) and one float32 array ``LxD.npy``
[n, D] per size. It is written under a temporary name and renamed: a chunk folder is whole or absent.
numpy only (the encoder is passed in).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from adaretrieve.errors import AdaError, io_reason
from adaretrieve.sizes import Size, parse_size


def chunk_name(c: int) -> str:
    return f"chunk-{c:06d}"


def write_chunk(bdir: Path, c: int, ids: Sequence[str], vecs: dict[Size, np.ndarray]) -> None:
    """Chunk ``c``'s ids and vectors {Size: [n, dim]}, written whole or not at all: vectors that are
    not finite (a broken model) are refused before anything is written, and a failed write (a full
    disk, a file-size limit) removes what it wrote and names the file."""
    for s, v in vecs.items():
        check_finite_vectors(v, f"the model's {s} vectors", ids)
    tmp = bdir / f".{chunk_name(c)}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    path = tmp / "ids.txt"
    try:
        path.write_text("".join(f"{d}\n" for d in ids), encoding="utf-8")
        for s, v in vecs.items():
            path = tmp / f"{s}.npy"
            np.save(path, np.ascontiguousarray(v, dtype=np.float32))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if io_reason(e) is None:
            raise
        raise AdaError(f"{path}: {io_reason(e)}; the index at the path is unchanged") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(bdir / chunk_name(c))


def check_finite_vectors(x: np.ndarray, what: str, ids: Sequence[str]) -> None:
    """AdaError naming the first document whose vector [dim] in ``x`` [n, dim] holds NaN or inf."""
    ok = np.isfinite(x).all(axis=1)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise AdaError(f"{what} are not finite (NaN or inf) for {int((~ok).sum())} of {len(ok)} documents, the first "
                       f"{ids[i]!r}: the model is broken (NaN weights?); nothing was indexed from them")


def read_chunk(bdir: Path, c: int, sizes: Sequence[str | Size]) -> tuple[list[str], dict[Size, np.ndarray]]:
    """Chunk ``c`` of ``bdir`` as written: its ids and ``{Size: float32 [n, dim]}`` for ``sizes``."""
    d = bdir / chunk_name(c)
    ids = (d / "ids.txt").read_text(encoding="utf-8").splitlines()
    return ids, {parse_size(s): np.load(d / f"{s}.npy") for s in sizes}


def encode_chunk(encoder, bdir: Path, c: int, ids: Sequence[str], texts: Sequence[str], sizes: Sequence[str | Size],
                 batch_size: int, on_batch: Callable[[int], None] | None = None) -> int:
    """Encode ``texts`` (passages as the model wants them: ``encoder.passages`` applied) at every
    size in one pass and write them as chunk ``c``; returns the number of documents."""
    vecs = encoder.encode(texts, sizes, batch_size=batch_size, on_batch=on_batch)
    write_chunk(bdir, c, ids, vecs)
    return len(ids)
