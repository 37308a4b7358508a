"""Memory maps and the page cache: the few Linux calls the read side and the timers share.

``mincore`` says which pages of a mapping are in the page cache, ``madvise`` tells the kernel how
a mapping will be read (``MADV_WILLNEED``: start reading now; ``MADV_RANDOM``: no readahead).
numpy memory maps hide their ``mmap`` object; ``file_mapping`` finds it. Linux; elsewhere (or for
arrays in memory) every helper does nothing and says so (None). numpy and ctypes only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np

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


_VEC = (ctypes.c_ubyte * 64)()  # mincore's answer for a range of up to 64 pages (256 KB), reused


def mincore(addr: int, length: int) -> list[bool] | None:
    """Per page of [addr, addr + length) (addr page-aligned, at most 64 pages): in the page cache?
    None if unknown (no mincore here, a longer range, or the call failed)."""
    lib = libc()
    n = -(-length // mmap.PAGESIZE)
    if lib is None or n > len(_VEC) or lib.mincore(addr, length, _VEC) != 0:
        return None
    return [bool(_VEC[i] & 1) for i in range(n)]


def willneed(addr: int, length: int) -> None:
    """Ask the kernel to start reading [addr, addr + length) (addr page-aligned); returns at once."""
    lib = libc()
    if lib is not None:
        lib.madvise(addr, length, MADV_WILLNEED)


def advise_random(arr: np.ndarray) -> None:
    """Tell the kernel a memory-mapped array is read at random rows (``MADV_RANDOM``): a fault then
    reads the page asked for, not a readahead window. Without it, rescoring 200 candidates of a
    cold 60 MB float16 file read all of it; with it, about one page per candidate row."""
    m = getattr(arr, "_mmap", None)
    if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        m.madvise(mmap.MADV_RANDOM)
