"""Overlap the page-cache misses of a gather from a memory-mapped array.

Rerank rows stay on disk and are read through a memory map. When they are not in the page cache,
gathering k candidate rows faults them in one after another: k random reads in a row (~0.1-0.2 ms
each here, 200 rows ~20 ms). ``prefetch_rows`` first checks a sample of the candidates' pages
(``mincore``); if any is missing it asks the kernel for every candidate row's pages at once
(``madvise(MADV_WILLNEED)``, which starts the reads without waiting), so the reads overlap and the
gather then waits about as long as the slowest of them. A warm gather pays only the sample's check.
Linux; elsewhere (or for arrays in memory) nothing is done. The system calls are ``osutil``'s.
"""

from __future__ import annotations

import mmap

import numpy as np

from adaretrieve.osutil import file_mapping, mincore, willneed

SAMPLE = 8  # candidate rows whose pages are checked before deciding


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
        cached = mincore(a - a % page, a % page + width)
        if cached is None:
            return 0
        if not all(cached):
            break
    else:
        return 0
    start = base + np.asarray(ids, dtype=np.int64) * stride
    first = start - start % page
    for a, n in zip(first.tolist(), (start + width - first).tolist()):
        willneed(a, n)
    return len(ids)
