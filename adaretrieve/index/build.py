"""Build an index directory from a corpus: one encoding pass, every size from that pass.

Encoding is the expensive part, so it is checkpointed: the corpus is cut into chunks of
``chunk_size`` documents, and each encoded chunk is written (atomically) to a build folder beside
the index, ``.NAME.build/``. An interrupted build started again with the same settings skips the
chunks already there. ``shard=(i, n)`` encodes only the chunks ``c`` with ``c % n == i``, so n
processes or machines sharing the build folder (or copying their chunks into one) split a corpus;
the index is assembled by whichever finishes last (one at a time: an exclusive lock on a file in
the build folder), or by ``merge_index``. Assembly writes the index under a temporary name and
renames it into place: a crash never leaves a half index where a good one stood.

The build folder's ``plan.json`` is keyed on what changes the vectors or the index files (model
weights, pooling, normalisation, max length, sizes, factory, rerank dtype, chunk size, and the
corpus bytes' sha256), not on the batch size or where the corpus lies. A build whose key differs
from the folder's is refused, naming the keys; the folder is never deleted for the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from adaretrieve.data.readers import doc_text, iter_corpus, resolve_corpus, validate_corpus
from adaretrieve.errors import AdaError, io_reason
from adaretrieve.index.codes import parse_shortlist
from adaretrieve.index.encode import chunk_name, encode_chunk, read_chunk
from adaretrieve.index.format import Manifest, read_manifest, try_lock
from adaretrieve.index.writer import (
    IndexWriter,
    check_out,
    check_trainable,
    make_faiss_index,
    shortlist_options,
)
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.sizes import Size, parse_size, parse_sizes
from adaretrieve.spec import VectorSpec

T = TypeVar("T")
log = logging.getLogger(__name__)
PLAN = "plan.json"
ASSEMBLY_LOCK = "assemble.lock"


def build_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.build")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def plan_spec(plan: dict) -> VectorSpec:
    """The vector spec of a build plan (plans written before specs: read from their model entry)."""
    if plan.get("spec") is not None:
        return VectorSpec.from_dict(plan["spec"], "build plan 'spec'")
    return VectorSpec.from_model(plan.get("model", {}), {"backend": plan.get("backend")})


def plan_key(plan: dict) -> dict:
    """What in a plan changes the output: two builds with equal keys write the same chunks and the
    same manifest. Every field of the vector spec is a key of its own (those of ``spec.DOCUMENT_FIELDS``
    decide each document's vector; the query prefix is what the manifest tells query encoders)."""
    spec = plan_spec(plan)
    return {
        **spec.to_dict(), "adaptor": plan.get("model", {}).get("adaptor"),
        "shortlist": plan.get("shortlist"), "rerank": plan.get("rerank"), "factory": plan.get("factory"),
        "kinds": plan.get("kinds") or {},
        "ef_construction": plan.get("ef_construction"), "nprobe": plan.get("nprobe"),
        "rerank_dtype": plan.get("rerank_dtype"), "chunk_size": plan.get("chunk_size"),
        "corpus_sha256": plan.get("corpus", {}).get("sha256"),
    }


def _check_plan(bdir: Path, plan: dict) -> None:
    """Refuse to add chunks to a build folder whose chunks were made with other output settings."""
    old = json.loads((bdir / PLAN).read_text())
    was, now = plan_key(old), plan_key(plan)
    diff = [k for k in now if was.get(k) != now[k]]
    if diff:
        def show(v):
            return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else json.dumps(v)

        changes = "; ".join(f"{k} {show(was.get(k))} -> {show(now[k])}" for k in diff)
        raise AdaError(f"{bdir} holds an unfinished build whose settings differ in {', '.join(diff)} ({changes}); "
                       f"rerun with its settings to resume it, or delete {bdir} to start over")


def _create_plan(bdir: Path, plan: dict) -> bool:
    """Write ``plan.json`` whole and only if absent (two shards may start at once); False if it was there."""
    tmp = bdir / f".{PLAN}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(plan, indent=2))
    try:
        os.link(tmp, bdir / PLAN)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


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
    ray: dict | None = None,
    ef_construction: int | None = None,
    nprobe: int | None = None,
) -> Manifest | None:
    """Encode ``corpus`` once and write an index directory at ``out``.

    ``shortlist``: sizes, each optionally with its own kind (``"6x384:sign"``, ``"2x32:SQ8"``; see
    ``index.codes``); a size without one is stored as ``factory``. Every kind is built from the same
    encoding pass.

    Every check (sizes, factory, each corpus line, duplicate ids, the build folder's plan) runs
    before encoding starts. Returns the manifest, or None when this shard is done but others are
    not yet, or another shard is assembling the index. ``ray`` (``{"address": str | None, "actors": int,
    "threads": int}``) encodes the chunks on Ray Data instead of in this process (``index.ray_encode``).
    """
    out = Path(out)
    entries = parse_shortlist(shortlist, default=factory)
    shortlist = encoder.check_sizes([s for s, _ in entries], "shortlist size")
    factories = dict(zip(shortlist, (f for _, f in entries)))
    rerank_size = encoder.check_sizes([rerank], "rerank size")[0] if rerank else None
    if not shortlist:
        raise AdaError("index needs at least one --shortlist size")
    check_out(out, overwrite)
    probes = {s: make_faiss_index(s.dim, f) for s, f in factories.items()}  # every kind checked before any encoding
    shortlist_options(probes, factories, ef_construction, nprobe)
    if rerank_dtype not in ("float16", "int8"):
        raise AdaError(f"rerank dtype {rerank_dtype!r} is not one of float16, int8")
    i_shard, n_shards = shard or (0, 1)
    if not (n_shards >= 1 and 0 <= i_shard < n_shards):
        raise AdaError(f"shard {i_shard}/{n_shards}: expected i/n with 0 <= i < n")
    corpus_path = resolve_corpus(corpus)
    n_docs = validate_corpus(corpus_path)
    for s, ix in probes.items():
        check_trainable(ix, factories[s], n_docs)
    sizes = parse_sizes([*shortlist, *([rerank_size] if rerank_size else [])])
    corpus_info = {"path": str(corpus_path.resolve()), "bytes": corpus_path.stat().st_size,
                   "sha256": file_sha256(corpus_path)}
    plan = {
        "corpus": corpus_info, "n_docs": n_docs, "chunk_size": chunk_size,
        "n_chunks": -(-n_docs // chunk_size), "model": encoder.describe(), "sizes": [str(s) for s in sizes],
        "shortlist": [str(s) for s in shortlist], "rerank": str(rerank_size) if rerank_size else None,
        "factory": factory, "rerank_dtype": rerank_dtype, "spec": encoder.spec().to_dict(),
        **({"kinds": {str(s): f for s, f in factories.items() if f != factory}}
           if any(f != factory for f in factories.values()) else {}),
        **({"ef_construction": int(ef_construction)} if ef_construction is not None else {}),
        **({"nprobe": int(nprobe)} if nprobe is not None else {}),
    }
    bdir = build_dir(out)
    bdir.mkdir(parents=True, exist_ok=True)
    if not _create_plan(bdir, plan):
        _check_plan(bdir, plan)  # same key: keep the plan that is there (other shards may be reading it)
    shard_lock = _lock_shard(bdir, i_shard, n_shards, out)
    try:
        return _encode_and_assemble(corpus_path, encoder, out, bdir, plan, i_shard, n_shards, batch_size, progress, sizes,
                                    ray)
    finally:
        os.close(shard_lock)


def _lock_shard(bdir: Path, i_shard: int, n_shards: int, out: Path) -> int:
    """An exclusive flock on this shard's lock file for the whole build: two runs of one shard (two
    `index` runs on one --out) never encode into one build folder at once. Other shards run freely."""
    fd = try_lock(bdir / f"shard-{i_shard}-of-{n_shards}.lock")
    if fd is None:
        what = f"shard {i_shard}/{n_shards} of " if n_shards > 1 else ""
        raise AdaError(f"another process is building {what}{out} now (it holds a lock in {bdir}); "
                       "wait for it to finish")
    return fd


def _encode_and_assemble(corpus_path, encoder, out, bdir, plan, i_shard, n_shards, batch_size, progress, sizes, ray=None):
    chunk_size, n_docs = plan["chunk_size"], plan["n_docs"]

    from tqdm.auto import tqdm

    mine = [c for c in range(plan["n_chunks"]) if c % n_shards == i_shard]
    todo = [c for c in mine if not (bdir / chunk_name(c)).exists()]
    if len(todo) < len(mine):
        log.info("resuming %s: %d of %d chunks already encoded", bdir, len(mine) - len(todo), len(mine))
    t0 = time.perf_counter()
    done_docs = 0
    if ray is not None and todo:
        from adaretrieve.index.ray_encode import encode_chunks

        texts = ((c, [d.docid for d in chunk], encoder.passages([doc_text(d.title, d.text) for d in chunk]))
                 for c, chunk in enumerate(chunks(iter_corpus(corpus_path), chunk_size)))
        dtype = str(encoder.amp_dtype).removeprefix("torch.") if encoder.amp_dtype is not None else None
        done_docs = encode_chunks(texts, encoder, bdir, todo, sizes, batch_size, address=ray.get("address"),
                                  actors=ray.get("actors", 2), threads=ray.get("threads", 1), progress=progress,
                                  device=str(encoder.device), dtype=dtype, backend=getattr(encoder, "backend", "torch"))
    else:
        with tqdm(total=sum(min(chunk_size, n_docs - c * chunk_size) for c in todo), unit="doc", desc="indexing",
                  disable=not progress, smoothing=0.05) as bar:
            for c, chunk in enumerate(chunks(iter_corpus(corpus_path), chunk_size)):
                if c not in todo:
                    continue
                done_docs += encode_chunk(encoder, bdir, c, [d.docid for d in chunk],
                                          encoder.passages([doc_text(d.title, d.text) for d in chunk]), sizes,
                                          batch_size, on_batch=bar.update)
    encode_s = time.perf_counter() - t0
    stats = {"encode_seconds": round(encode_s, 2), "docs_encoded_this_run": done_docs,
             "docs_per_second": round(done_docs / max(encode_s, 1e-9), 2) if done_docs else None,
             "batch_size": batch_size, "device": str(encoder.device), "shards": n_shards,
             "backend": getattr(encoder, "backend", "torch"),
             **({"ray": {"address": ray.get("address") or "local", "actors": ray.get("actors", 2),
                         "threads_per_actor": ray.get("threads", 1)}} if ray is not None else {})}
    missing = [c for c in range(plan["n_chunks"]) if not (bdir / chunk_name(c)).exists()]
    if missing and not (bdir / PLAN).exists():  # another shard has assembled the index and removed the folder
        return read_manifest(out)
    if missing:
        log.info("shard %d/%d done; %d chunks still missing from other shards. When they are done, run "
                 "`adaretrieve index merge --out %s`", i_shard, n_shards, len(missing), out)
        return None
    m = _assemble(out, overwrite=True, build=stats)
    if m is None:
        log.info("shard %d/%d done; another shard is assembling %s", i_shard, n_shards, out)
    return m


def merge_index(out: str | Path, overwrite: bool = True, build: dict | None = None) -> Manifest:
    """Assemble the index at ``out`` from the encoded chunks of its build folder, then remove them."""
    out = Path(out)
    bdir = build_dir(out)
    if not (bdir / PLAN).exists():
        raise AdaError(f"no build in progress for {out} (expected {bdir}/{PLAN}); run `adaretrieve index` first")
    m = _assemble(out, overwrite, build)
    if m is None:
        raise AdaError(f"another process is assembling {out} now (it holds {bdir / ASSEMBLY_LOCK}); wait for it to finish")
    return m


def _assemble(out: Path, overwrite: bool, build: dict | None) -> Manifest | None:
    """``_merge`` under an exclusive lock on the build folder's lock file, so that of two shards
    finishing at once only one assembles. None when another process holds the lock. The lock is
    flock(2): the kernel drops it when its holder dies, so a crash leaves no stale lock."""
    bdir = build_dir(out)
    try:
        fd = try_lock(bdir / ASSEMBLY_LOCK)
    except FileNotFoundError:  # the build folder is gone: another shard has just assembled the index
        return read_manifest(out)
    if fd is None:
        return None
    try:
        if not (bdir / PLAN).exists():  # assembled and removed while we opened the lock file
            return read_manifest(out)
        return _merge(out, overwrite, build)
    finally:
        os.close(fd)


def _merge(out: Path, overwrite: bool, build: dict | None) -> Manifest:
    bdir = build_dir(out)
    plan = json.loads((bdir / PLAN).read_text())
    missing = [c for c in range(plan["n_chunks"]) if not (bdir / chunk_name(c)).exists()]
    if missing:
        raise AdaError(f"{len(missing)} of {plan['n_chunks']} chunks are not encoded yet (first: {chunk_name(missing[0])}); "
                       "finish every shard first")
    shortlist = [parse_size(s) for s in plan["shortlist"]]
    rerank = parse_size(plan["rerank"]) if plan["rerank"] else None
    kinds = {parse_size(s): f for s, f in (plan.get("kinds") or {}).items()}
    try:
        writer = IndexWriter(out, plan["n_docs"], shortlist, rerank, factory=plan["factory"], overwrite=overwrite,
                             rerank_dtype=plan["rerank_dtype"], ef_construction=plan.get("ef_construction"),
                             nprobe=plan.get("nprobe"), kinds=kinds)
    except Exception as e:
        if io_reason(e) is None:
            raise
        raise AdaError(f"{out}: the new index could not be written ({io_reason(e)}); the index at the path is unchanged "
                       f"and the encoded chunks are kept in {bdir} for the next run") from None
    try:
        for c in range(plan["n_chunks"]):
            writer.add(*read_chunk(bdir, c, plan["sizes"]))
        manifest = writer.close(model=plan["model"], corpus=plan["corpus"]["path"], spec=plan_spec(plan).to_dict(),
                                build={**(build or {}), "chunk_size": plan["chunk_size"], "n_chunks": plan["n_chunks"],
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except BaseException as e:
        writer.abort()
        if isinstance(e, Exception) and io_reason(e) is not None:
            raise AdaError(f"{out}: the new index could not be written ({io_reason(e)}); the index at the path is "
                           f"unchanged and the encoded chunks are kept in {bdir} for the next run") from None
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
