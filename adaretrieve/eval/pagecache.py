"""Drop a file from the OS page cache without root, to time reads from disk ("cold").

``posix_fadvise(POSIX_FADV_DONTNEED)`` asks the kernel to drop a file's clean cached pages, but it
skips pages some process still maps: a memory-mapped array that has been read keeps its pages. So
``evict`` first tells the kernel this process no longer needs its mapping's pages
(``madvise(MADV_DONTNEED)``: the mapping stays valid and refaults from the file), then fadvises.
Pages mapped by other processes, dirty pages, and files on tmpfs stay; ``resident_fraction``
(``mincore`` on a fresh mapping) says what is still cached. Linux; numpy only.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np

from adaretrieve.osutil import file_mapping, libc


def evict(path: str | Path, arrays=()) -> None:
    """Drop ``path`` from the page cache; ``arrays`` are this process's memory maps of it, whose
    pages are released first (or the kernel keeps them cached)."""
    for a in arrays:
        m = file_mapping(a)
        if m is not None and hasattr(m, "madvise"):
            m.madvise(mmap.MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: str | Path) -> float | None:
    """Fraction of ``path``'s pages in the page cache (``mincore``), or None where unavailable."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    lib = libc()
    if lib is None:
        return None
    page = mmap.PAGESIZE
    vec = np.zeros((size + page - 1) // page, dtype=np.uint8)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)  # only for its address: mapping does not read the file
        rc = lib.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec.ctypes.data_as(ctypes.c_void_p))
        del view  # the mmap cannot close while a buffer of it is exported
    if rc != 0:
        return None
    return float((vec & 1).mean())
