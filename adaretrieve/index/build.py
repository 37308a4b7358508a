"""Build an index directory from a corpus: one encoding pass, every size from that pass.

Encoding is the expensive part, so it is checkpointed: the corpus is cut into chunks of
``chunk_size`` documents, and each encoded chunk is written (atomically) to a build folder beside
the index, ``.NAME.build/``. An interrupted build started again with the same settings skips the
chunks already there. ``shard=(i, n)`` encodes only the chunks ``c`` with ``c % n == i``, so n
processes or machines sharing the build folder (or copying their chunks into one) split a corpus;
the index is assembled by whichever finishes last, or by ``merge_index``. Assembly writes the index
under a temporary name and renames it into place: a crash never leaves a half index where a good
one stood.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from adaretrieve.data.readers import doc_text, iter_corpus, resolve_corpus, validate_corpus
from adaretrieve.errors import AdaError
from adaretrieve.index.format import Manifest
from adaretrieve.index.writer import IndexWriter, make_faiss_index
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.sizes import Size, parse_size, parse_sizes

T = TypeVar("T")
log = logging.getLogger(__name__)
PLAN = "plan.json"


def build_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.build")


def _corpus_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime)}


def build_index(
    corpus: str | Path,
    encoder: Encoder,
    out: str | Path,
    shortlist: Iterable[str | Size],
    rerank: str | Size | None,
    factory: str = "Flat",
    batch_size: int = 32,
    chunk_size: int = 8192,
    overwrite: bool = False,
    progress: bool = True,
    rerank_dtype: str = "float16",
    shard: tuple[int, int] | None = None,
) -> Manifest | None:
    """Encode ``corpus`` once and write an index directory at ``out``.

    Every check (sizes, factory, each corpus line, duplicate ids) runs before encoding starts.
    Returns the manifest, or None when this shard is done but others are not yet.
    """
    out = Path(out)
    shortlist = encoder.check_sizes(shortlist, "shortlist size")
    rerank_size = encoder.check_sizes([rerank], "rerank size")[0] if rerank else None
    if not shortlist:
        raise AdaError("index needs at least one --shortlist size")
    if out.exists() and not overwrite:
        raise AdaError(f"{out} already exists; pass --overwrite to replace it (the old index stays until the new one is complete)")
    if out.exists() and not (out / "manifest.json").exists():
        raise AdaError(f"{out} exists and is not an adaretrieve index; refusing to replace it")
    for s in shortlist:
        make_faiss_index(s.dim, factory)
    if rerank_dtype not in ("float16", "int8"):
        raise AdaError(f"rerank dtype {rerank_dtype!r} is not one of float16, int8")
    i_shard, n_shards = shard or (0, 1)
    if not (n_shards >= 1 and 0 <= i_shard < n_shards):
        raise AdaError(f"shard {i_shard}/{n_shards}: expected i/n with 0 <= i < n")
    corpus_path = resolve_corpus(corpus)
    n_docs = validate_corpus(corpus_path)
    sizes = parse_sizes([*shortlist, *([rerank_size] if rerank_size else [])])
    plan = {
        "corpus": _corpus_fingerprint(corpus_path), "n_docs": n_docs, "chunk_size": chunk_size,
        "n_chunks": -(-n_docs // chunk_size), "model": encoder.describe(), "sizes": [str(s) for s in sizes],
        "shortlist": [str(s) for s in shortlist], "rerank": str(rerank_size) if rerank_size else None,
        "factory": factory, "rerank_dtype": rerank_dtype, "batch_size": batch_size,
    }
    bdir = build_dir(out)
    if (bdir / PLAN).exists():
        old = json.loads((bdir / PLAN).read_text())
        if old != plan:
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            log.warning("discarding the unfinished build in %s: its settings differ (%s)", bdir, ", ".join(diff))
            shutil.rmtree(bdir)
    bdir.mkdir(parents=True, exist_ok=True)
    (bdir / PLAN).write_text(json.dumps(plan, indent=2))

    from tqdm.auto import tqdm

    mine = [c for c in range(plan["n_chunks"]) if c % n_shards == i_shard]
    todo = [c for c in mine if not (bdir / _chunk_name(c)).exists()]
    if len(todo) < len(mine):
        log.info("resuming %s: %d of %d chunks already encoded", bdir, len(mine) - len(todo), len(mine))
    t0 = time.perf_counter()
    done_docs = 0
    with tqdm(total=sum(min(chunk_size, n_docs - c * chunk_size) for c in todo), unit="doc", desc="indexing",
              disable=not progress, smoothing=0.05) as bar:
        for c, chunk in enumerate(chunks(iter_corpus(corpus_path), chunk_size)):
            if c not in todo:
                continue
            vecs = encoder.encode([doc_text(d.title, d.text) for d in chunk], sizes, batch_size=batch_size,
                                  on_batch=bar.update)
            _write_chunk(bdir, c, [d.docid for d in chunk], vecs)
            done_docs += len(chunk)
    encode_s = time.perf_counter() - t0
    stats = {"encode_seconds": round(encode_s, 2), "docs_encoded_this_run": done_docs,
             "docs_per_second": round(done_docs / max(encode_s, 1e-9), 2) if done_docs else None,
             "batch_size": batch_size, "device": str(encoder.device), "shards": n_shards}
    missing = [c for c in range(plan["n_chunks"]) if not (bdir / _chunk_name(c)).exists()]
    if missing:
        log.info("shard %d/%d done; %d chunks still missing from other shards. When they are done, run "
                 "`adaretrieve index merge --out %s`", i_shard, n_shards, len(missing), out)
        return None
    return merge_index(out, overwrite=True, build=stats)


def _chunk_name(c: int) -> str:
    return f"chunk-{c:06d}"


def _write_chunk(bdir: Path, c: int, ids: list[str], vecs: dict[Size, np.ndarray]) -> None:
    tmp = bdir / f".{_chunk_name(c)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "ids.txt").write_text("".join(f"{d}\n" for d in ids), encoding="utf-8")
    for s, v in vecs.items():
        np.save(tmp / f"{s}.npy", np.ascontiguousarray(v, dtype=np.float32))
    tmp.rename(bdir / _chunk_name(c))


def merge_index(out: str | Path, overwrite: bool = True, build: dict | None = None) -> Manifest:
    """Assemble the index at ``out`` from the encoded chunks of its build folder, then remove them."""
    out = Path(out)
    bdir = build_dir(out)
    if not (bdir / PLAN).exists():
        raise AdaError(f"no build in progress for {out} (expected {bdir}/{PLAN}); run `adaretrieve index` first")
    plan = json.loads((bdir / PLAN).read_text())
    missing = [c for c in range(plan["n_chunks"]) if not (bdir / _chunk_name(c)).exists()]
    if missing:
        raise AdaError(f"{len(missing)} of {plan['n_chunks']} chunks are not encoded yet (first: {_chunk_name(missing[0])}); "
                       "finish every shard first")
    shortlist = [parse_size(s) for s in plan["shortlist"]]
    rerank = parse_size(plan["rerank"]) if plan["rerank"] else None
    writer = IndexWriter(out, plan["n_docs"], shortlist, rerank, factory=plan["factory"], overwrite=overwrite,
                         rerank_dtype=plan["rerank_dtype"])
    try:
        for c in range(plan["n_chunks"]):
            d = bdir / _chunk_name(c)
            ids = (d / "ids.txt").read_text(encoding="utf-8").splitlines()
            writer.add(ids, {parse_size(s): np.load(d / f"{s}.npy") for s in plan["sizes"]})
        manifest = writer.close(model=plan["model"], corpus=plan["corpus"]["path"],
                                build={**(build or {}), "chunk_size": plan["chunk_size"], "n_chunks": plan["n_chunks"],
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(bdir, ignore_errors=True)
    return manifest


def chunks(it: Iterable[T], n: int) -> Iterator[list[T]]:
    buf: list[T] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
