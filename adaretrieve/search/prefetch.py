"""Overlap the page-cache misses of a gather from a memory-mapped array.

Rerank rows stay on disk and are read through a memory map. When they are not in the page cache,
gathering k candidate rows faults them in one after another: k random reads in a row (~0.1-0.2 ms
each here, 200 rows ~20 ms). ``prefetch_rows`` first checks a sample of the candidates' pages
(``mincore``); if any is missing it asks the kernel for every candidate row's pages at once
(``madvise(MADV_WILLNEED)``, which starts the reads without waiting), so the reads overlap and the
gather then waits about as long as the slowest of them. A warm gather pays only the sample's check.
Linux; elsewhere (or for arrays in memory) nothing is done. numpy and ctypes only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np

SAMPLE = 8  # candidate rows whose pages are checked before deciding
MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", 3)
_libc = None


def libc():
    """The C library with ``mincore`` and ``madvise`` (argument types set), or None where missing."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name, use_errno=True) if name else None
        if lib is not None and hasattr(lib, "mincore") and hasattr(lib, "madvise"):
            lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc = lib
        else:
            _libc = False
    return _libc or None


def file_mapping(array) -> mmap.mmap | None:
    """The mmap object behind a numpy memory map (or a view of one), else None (a copy gathered
    from a memory map is still an ``np.memmap`` instance, with no mapping behind it)."""
    while array is not None:
        m = getattr(array, "_mmap", None)
        if isinstance(m, mmap.mmap):
            return m
        array = getattr(array, "base", None)
    return None


_VEC = (ctypes.c_ubyte * 64)()  # mincore's answer for a row of up to 64 pages (256 KB), reused


def _mincore(addr: int, length: int) -> list[bool] | None:
    """Per page of [addr, addr + length) (addr page-aligned): in the page cache? None if unknown."""
    lib = libc()
    n = -(-length // mmap.PAGESIZE)
    if lib is None or n > len(_VEC) or lib.mincore(addr, length, _VEC) != 0:
        return None
    return [bool(_VEC[i] & 1) for i in range(n)]


def _willneed(addr: int, length: int) -> None:
    lib = libc()
    if lib is not None:
        lib.madvise(addr, length, MADV_WILLNEED)


def prefetch_rows(rows, ids: np.ndarray) -> int:
    """Before ``rows[ids]``: when ``rows`` (a memory-mapped array, or int8 rows over one) misses a
    sampled candidate row's page in the page cache, ask for every candidate row's pages at once.
    Returns how many rows were asked for (0: all sampled pages cached, or nothing to do)."""
    arr = getattr(rows, "codes", rows)  # int8 rows: the codes are the bulk of what is read
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or len(ids) == 0 or file_mapping(arr) is None:
        return 0
    page, base, stride, width = mmap.PAGESIZE, arr.ctypes.data, arr.strides[0], arr.shape[1] * arr.itemsize
    step = max(1, len(ids) // SAMPLE)
    for i in ids[::step][:SAMPLE].tolist():  # evenly spread over the candidates (sorted: over the file)
        a = base + i * stride
        cached = _mincore(a - a % page, a % page + width)
        if cached is None:
            return 0
        if not all(cached):
            break
    else:
        return 0
    start = base + np.asarray(ids, dtype=np.int64) * stride
    first = start - start % page
    for a, n in zip(first.tolist(), (start + width - first).tolist()):
        _willneed(a, n)
    return len(ids)
