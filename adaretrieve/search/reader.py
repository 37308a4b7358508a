"""Open an index directory: manifest, doc ids, shortlist FAISS indexes, memory-mapped rerank rows.

Sizes not stored are derived when they are a dim-prefix of a stored size at the same layer:
a shortlist index is rebuilt in memory from the truncated vectors, rerank vectors are truncated
per candidate at search time. Anything else is an AdaError listing what the index has.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import faiss
import numpy as np

from adaretrieve.data.readers import ID_RULE, check_id
from adaretrieve.errors import AdaError, IndexDamaged
from adaretrieve.index.format import (
    DOCIDS,
    MANIFEST,
    READER_LOCK,
    Manifest,
    check_encoder,
    check_inside,
    current_generation,
    current_name,
    read_manifest,
)
from adaretrieve.osutil import advise_random
from adaretrieve.sizes import Size, parse_size, truncate

RERANK_DTYPES = ("float16", "float32", "int8")


class Int8Rows:
    """int8 codes [n, D] with per-row scales [n], read like a float32 array: ``rows[ids]``."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray):
        self.codes, self.scales = codes, scales
        self.shape = codes.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        return self.codes[idx].astype(np.float32) * self.scales[idx][..., None]


class _Lent:
    """Hands numpy the memory of ``view`` (raw memory inside ``owner``) while keeping ``owner`` alive:
    the array ``np.asarray`` makes from it has this object as its base."""

    def __init__(self, view: np.ndarray, owner):
        self.__array_interface__ = view.__array_interface__
        self.owner = owner


def check_finite_rows(block: np.ndarray, rows, ids: np.ndarray | None = None, first: int = 0) -> None:
    """AdaError when ``block`` [n, d], rows of an index gathered for rescoring (``ids`` [n] their row
    numbers, else ``first`` + position), holds NaN or inf: rescoring would give NaN scores, rank
    the candidates arbitrarily and exit 0. Checked per gathered block rather than over a whole
    memory-mapped file at open (which would read all of it): float16 by its exponent bits, about
    0.3 ns per value (0.02 ms for 200 candidates of 384 dims, 0.2 ms for 1000 of 768)."""
    if block.dtype == np.float16:
        bad = (block.view(np.uint16) & 0x7C00) == 0x7C00  # exponent all ones: inf or NaN
    elif block.dtype.kind == "f":
        bad = ~np.isfinite(block)
    else:
        return
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        row = int(ids[i]) if ids is not None else first + i
        name = getattr(rows, "filename", None) or getattr(getattr(rows, "codes", None), "filename", None)
        raise AdaError(f"{name or 'the rerank rows'}: row {row} holds NaN or inf values; the index is damaged, rebuild it")


def faiss_flat_vectors(index: faiss.Index) -> np.ndarray:
    """The vectors [ntotal, d] stored in a flat FAISS index, without a copy and read-only. The array
    keeps the index alive, so it stays valid after whoever opened the index lets go of it."""
    flat = faiss.downcast_index(index)
    if not isinstance(flat, faiss.IndexFlat):
        raise AdaError(f"a {type(flat).__name__} is not a flat FAISS index: its vectors cannot be read")
    view = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    out = np.asarray(_Lent(view, index))
    out.flags.writeable = False
    return out


class DocIds:
    """The index's doc ids, row i -> id, without a Python string per document: the docids.txt
    bytes (memory-mapped) and one offset per row (4 bytes while the file is under 4 GiB), so 1M
    ids cost ~4 MB of RAM instead of ~65 MB as a list of str."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        self._buf = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        ends = np.flatnonzero(self._buf == 10)
        if size and (not len(ends) or ends[-1] != size - 1):  # a last line without newline
            ends = np.append(ends, size)
        dtype = np.uint32 if size < 2**32 else np.int64
        self._starts = np.concatenate([[0], ends + 1]).astype(dtype)
        self._check_ascii()
        if size and int(self._buf.max()) > 127:
            self._check_unicode()

    def _check_unicode(self) -> None:
        """UTF-8 and the id rule for non-ASCII ids, at open, only for a docids.txt with non-ASCII bytes:
        decoded 16 MB at a time (about 2 ms per MB), and the UTF-8 spellings of the non-ASCII
        whitespace and C1 controls (U+0080-U+00A0, U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F,
        U+3000) found with numpy from their lead bytes."""
        buf, size, step, a = self._buf, len(self._buf), 1 << 24, 0
        while a < size:
            b = min(size, a + step)
            if b < size:  # end the piece at a line end, so no id is cut
                ends = np.flatnonzero(buf[a:b] == 10)
                b = a + int(ends[-1]) + 1 if len(ends) else size
            try:
                buf[a:b].tobytes().decode("utf-8")
            except UnicodeDecodeError as e:
                row = int(np.searchsorted(self._starts, a + e.start, side="right")) - 1
                raise AdaError(f"{self.path}:{row + 1}: the id of row {row} is not UTF-8 text ({e.reason}); the index is "
                               "damaged, rebuild it") from None
            a = b
        lead = np.flatnonzero((buf >= 0xC2) & (buf <= 0xE3) & ((buf == 0xC2) | (buf >= 0xE1)))
        lead = lead[lead + 2 < size]
        b0, b1, b2 = buf[lead], buf[lead + 1], buf[lead + 2]
        bad = (((b0 == 0xC2) & (b1 >= 0x80) & (b1 <= 0xA0)) | ((b0 == 0xE1) & (b1 == 0x9A) & (b2 == 0x80))
               | ((b0 == 0xE2) & (b1 == 0x80) & (((b2 >= 0x80) & (b2 <= 0x8A)) | (b2 == 0xA8) | (b2 == 0xA9) | (b2 == 0xAF)))
               | ((b0 == 0xE2) & (b1 == 0x81) & (b2 == 0x9F)) | ((b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80)))
        tail = [i for i in range(max(0, size - 2), size) if buf[i] == 0xC2 and i + 1 < size and 0x80 <= buf[i + 1] <= 0xA0]
        first = [int(lead[bad][0])] if bad.any() else tail
        if first:
            row = int(np.searchsorted(self._starts, first[0], side="right")) - 1
            check_id(self[row], f"{self.path}:{row + 1}", "doc id")

    def _check_ascii(self) -> None:
        """The id rule (``data.readers.check_id``) for the ASCII bytes of every id, in one vectorised
        pass at open (as cheap as finding the line ends): a space, TAB, CR, NUL or other control byte
        would split or corrupt a TREC line. Non-ASCII ids: ``_check_unicode``."""
        bad = np.flatnonzero(((self._buf < 33) & (self._buf != 10)) | (self._buf == 127))
        if len(bad):
            row = int(np.searchsorted(self._starts, bad[0], side="right")) - 1
            what = {13: "a CR (a file with CRLF line ends?)", 32: "a space", 9: "a TAB", 0: "a NUL"}.get(
                int(self._buf[bad[0]]), f"the control byte {int(self._buf[bad[0]]):#04x}")
            raise AdaError(f"{self.path}:{row + 1}: the id of row {row} holds {what}: {ID_RULE}; the index is damaged, "
                           "rebuild it")

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, i) -> str:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} is outside 0..{n - 1}")
        a, b = int(self._starts[i]), int(self._starts[i + 1]) - 1
        return self._buf[a:b].tobytes().decode("utf-8")  # every id was checked at open

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM (the offsets; the id bytes are a memory map)."""
        return int(self._starts.nbytes)


def _open_generation(directory: Path) -> tuple[Path, int | None]:
    """The current generation's folder and a shared flock on its reader.lock, held for as long as the
    reader lives: a rebuild removes a generation only under an exclusive lock, so every file the reader
    opens later (lazily) is from the generation it started with. Retries when a switch lands between
    reading CURRENT and taking the lock."""
    for _ in range(5):
        gen = current_generation(directory)
        if gen == directory:  # an index from before generations: no lock to take
            return gen, None
        try:
            fd = os.open(check_inside(directory, gen / READER_LOCK), os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed just now by a rebuild: read CURRENT again
        fcntl.flock(fd, fcntl.LOCK_SH)
        if (gen / MANIFEST).exists():
            return gen, fd
        os.close(fd)
    raise AdaError(f"{directory}: its generations changed five times while opening it; try again")


def _load_npy(path: Path, mode: str | None, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An index's .npy array, checked against the shape and dtype the manifest implies (either byte
    order); AdaError naming the file otherwise."""
    check_inside(path.parent, path)
    if not path.is_file():
        raise IndexDamaged(f"{path} is missing; the index is damaged, rebuild it")
    try:
        arr = np.load(path, mmap_mode=mode)
    except (ValueError, OSError, EOFError) as e:
        raise IndexDamaged(f"{path}: not a readable .npy array ({str(e).strip().splitlines()[0][:120]}); rebuild the index") from None
    if arr.shape != shape:
        raise AdaError(f"{path} has shape {arr.shape}, the manifest implies {shape}: rebuild the index")
    if arr.dtype.newbyteorder("=") != np.dtype(dtype):
        raise AdaError(f"{path} holds {arr.dtype} values, the manifest says {dtype}: rebuild the index")
    if mode is not None:
        advise_random(arr)
    return arr


def _check_shortlist(ix, entry: dict, path: Path) -> None:
    """A shortlist index read from ``path`` is what its manifest ``entry`` declares, and the float
    vectors a flat or HNSW-flat one stores are finite (NaN vectors are never found by FAISS: the
    run would silently miss those documents, or be empty). The check runs once at open, a chunk at
    a time, over vectors already in RAM: 40 ms per 1M x 64 float32 here, a tenth of reading the
    file. The codes of IVF and quantized indexes are not checked."""
    if isinstance(ix, faiss.IndexBinary):
        return
    down = faiss.downcast_index(ix)
    if entry.get("factory") == "Flat" and not isinstance(down, faiss.IndexFlat):
        raise AdaError(f"{path} holds a {type(down).__name__}, the manifest says factory 'Flat': the index is "
                       "inconsistent, rebuild it")
    flat = down if isinstance(down, faiss.IndexFlat) else None
    if flat is None and isinstance(down, faiss.IndexHNSW):
        storage = faiss.downcast_index(down.storage)
        flat = storage if isinstance(storage, faiss.IndexFlat) else None
    if flat is None or flat.ntotal == 0:
        return
    x = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    for start in range(0, flat.ntotal, 65536):
        block = x[start : start + 65536]
        if not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise AdaError(f"{path}: the vector of row {row} holds NaN or inf values; the index is damaged, rebuild it")


class IndexReader:
    """One generation of an index: the manifest, ids, shortlist and rerank files it opens all come
    from the generation that was current when it was created, however the index changes after."""

    def __init__(self, directory: str | Path, mmap: bool = True):
        self.dir = Path(directory)
        if not self.dir.exists():
            raise AdaError(f"index {self.dir} does not exist (build it with `adaretrieve index`)")
        self._lock_fd = None
        self.gen_dir, self._lock_fd = _open_generation(self.dir)
        self.manifest: Manifest = read_manifest(self.gen_dir)
        if not check_inside(self.gen_dir, self.gen_dir / DOCIDS).is_file():
            raise AdaError(f"{self.gen_dir} has no {DOCIDS} (row -> doc id); the index is damaged, rebuild it")
        self.docids = DocIds(self.gen_dir / DOCIDS)
        if len(self.docids) != self.manifest.n_docs:
            raise AdaError(f"{self.dir}: {DOCIDS} has {len(self.docids)} ids, manifest says {self.manifest.n_docs}")
        self._mmap = mmap
        self._shortlists: dict[Size, faiss.Index] = {}
        self._rerank: np.ndarray | None = None

    def __del__(self):
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._lock_fd = None

    @property
    def generation(self) -> str | None:
        """The generation this reader reads (None for an index written before generations)."""
        return self.gen_dir.name if self.gen_dir != self.dir else None

    def changed(self) -> bool:
        """True when the index at the path has moved on to another generation since this reader opened
        it (a long-lived reader then opens ``IndexReader(reader.dir)`` and drops this one)."""
        return current_name(self.dir) != self.generation

    @property
    def n_docs(self) -> int:
        return self.manifest.n_docs

    @property
    def normalize(self) -> bool:
        return self.manifest.normalize

    def describe_sizes(self) -> str:
        m = self.manifest
        parts = [f"shortlist {', '.join(map(str, m.shortlist_sizes))}"]
        parts.append(f"rerank {m.rerank_size}" if m.rerank else "no rerank vectors")
        return "; ".join(parts)

    def _rebuild_hint(self) -> str:
        return (f"the index has {self.describe_sizes()} (any dim-prefix of these at the same layer also works); "
                f"rebuild with `adaretrieve index --shortlist ... --rerank ...` to add it")

    # -- stored data -----------------------------------------------------------------------------

    def rerank_rows(self):
        """The stored rerank vectors [n_docs, D], memory-mapped (not read into RAM): a float16 array,
        or ``Int8Rows`` that dequantise the rows asked for."""
        entry = self.manifest.rerank
        if entry is None:
            raise AdaError(f"{self.dir} stores no rerank vectors; {self._rebuild_hint()}")
        if self._rerank is None:
            mode = "r" if self._mmap else None
            size = parse_size(entry["size"])
            dtype = entry.get("dtype", "float16")
            if dtype not in RERANK_DTYPES:
                raise AdaError(f"{self.gen_dir / MANIFEST}: rerank dtype {dtype!r} is not one of {', '.join(RERANK_DTYPES)}")
            if dtype == "int8" and not isinstance(entry.get("scale_file"), str):
                raise AdaError(f"{self.gen_dir / MANIFEST}: int8 rerank rows need a 'scale_file' (their per-row scales); "
                               "the manifest names none: rebuild the index")
            rows = _load_npy(self.gen_dir / entry["file"], mode, (self.n_docs, size.dim), dtype)
            if dtype == "int8":
                rows = Int8Rows(rows, _load_npy(self.gen_dir / entry["scale_file"], mode, (self.n_docs,), "float32"))
            self._rerank = rows
        return self._rerank

    def open_all(self) -> IndexReader:
        """Open and check now every file the manifest names (each stored shortlist, the rerank rows and
        their scales), as a first search would; AdaError naming the first bad one. A server calls this
        at start, so a damaged index is refused before it listens, and every size it can serve
        (derived ones are cut from these files) is served from what is open if the folder is moved or
        deleted later. Returns the reader."""
        for size in self.manifest.shortlist_sizes:
            self._stored_shortlist(size)
        if self.manifest.rerank is not None:
            self.rerank_rows()
        return self

    def _stored_shortlist(self, size: Size) -> faiss.Index:
        if size not in self._shortlists:
            entry = next(e for e in self.manifest.shortlist if parse_size(e["size"]) == size)
            binary = entry.get("metric") == "hamming"
            path = self.gen_dir / entry["file"]
            if not check_inside(self.gen_dir, path).is_file():
                raise IndexDamaged(f"{path} is missing; the index is damaged, rebuild it")
            try:
                ix = (faiss.read_index_binary if binary else faiss.read_index)(str(path))
            except RuntimeError as e:
                raise IndexDamaged(f"{path}: not a readable FAISS index ({str(e).strip().splitlines()[-1][:120]}); rebuild the index") from None
            if ix.ntotal != self.n_docs or ix.d != size.dim:
                raise AdaError(f"{path} holds {ix.ntotal} vectors of dim {ix.d}, the manifest says {self.n_docs} of dim "
                               f"{size.dim}: it belongs to another index; rebuild this one")
            _check_shortlist(ix, entry, path)
            self._shortlists[size] = ix
        return self._shortlists[size]

    def _flat_source(self, size: Size) -> np.ndarray | None:
        """Vectors [n_docs, >=size.dim] at size.layer from which ``size`` can be cut, or None."""
        for entry in sorted(self.manifest.shortlist, key=lambda e: parse_size(e["size"]).dim):
            s = parse_size(entry["size"])
            if s.layer == size.layer and s.dim >= size.dim and entry["factory"] == "Flat":
                return faiss_flat_vectors(self._stored_shortlist(s))
        r = self.manifest.rerank_size
        if r is not None and r.layer == size.layer and r.dim >= size.dim:
            return self.rerank_rows()
        return None

    # -- sizes -----------------------------------------------------------------------------------

    def shortlist_index(self, size: str | Size) -> faiss.Index:
        """A FAISS index over ``size``: the stored one, or a flat one built from a stored prefix."""
        size = parse_size(size)
        if size in self.manifest.shortlist_sizes:
            return self._stored_shortlist(size)
        if size not in self._shortlists:
            src = self._flat_source(size)
            if src is None:
                raise AdaError(f"shortlist size {size} is not in index {self.dir}: {self._rebuild_hint()}")
            ix = faiss.IndexFlatIP(size.dim)
            for start in range(0, self.n_docs, 65536):  # a chunk at a time: the source may be a memory map
                block = src[start : start + 65536]
                check_finite_rows(block, src, first=start)
                ix.add(truncate(block, size.dim, self.normalize))
            self._shortlists[size] = ix
        return self._shortlists[size]

    def rerank_source(self, size: str | Size) -> np.ndarray:
        """Rows [n_docs, >=size.dim] from which candidates are rescored at ``size`` (truncated per
        candidate), read-only. The stored rerank rows (float16 or int8, memory-mapped) whenever they
        cover ``size``, even if a flat shortlist at that size is stored too; otherwise the
        float32 vectors inside a stored flat shortlist index, which the array keeps alive (it stays
        valid after the reader is gone)."""
        size = parse_size(size)
        r = self.manifest.rerank_size
        if r is not None and r.layer == size.layer and r.dim >= size.dim:
            return self.rerank_rows()  # the stored rows, memory-mapped: only the candidates' pages are read
        src = self._flat_source(size)
        if src is None:
            raise AdaError(f"rerank size {size} is not in index {self.dir}: {self._rebuild_hint()}")
        return src

    def check_encoder(self, spec, name: str) -> None:
        """AdaError unless a query encoder of ``spec`` (a ``VectorSpec``) fits this index (``format.check_encoder``)."""
        check_encoder(self.manifest, str(self.dir), spec, name)
