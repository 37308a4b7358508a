"""Build an index directory from a corpus: one encoding pass, every size from that pass."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from adaretrieve.data.readers import doc_text, iter_corpus, resolve_corpus, validate_corpus
from adaretrieve.errors import AdaError
from adaretrieve.index.format import Manifest
from adaretrieve.index.writer import IndexWriter, make_faiss_index
from adaretrieve.modeling.encoder import Encoder
from adaretrieve.sizes import Size, parse_sizes

T = TypeVar("T")


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
) -> Manifest:
    """Encode ``corpus`` once and write an index directory at ``out``.

    Every check (sizes, factory, each corpus line, duplicate ids) runs before encoding starts.
    Documents are read in chunks of ``chunk_size`` and sorted by length inside each chunk, so the
    corpus is never in memory whole. An existing index at ``out`` is replaced only on success.
    """
    shortlist = encoder.check_sizes(shortlist, "shortlist size")
    rerank_size = encoder.check_sizes([rerank], "rerank size")[0] if rerank else None
    if not shortlist:
        raise AdaError("index needs at least one --shortlist size")
    if Path(out).exists() and not overwrite:
        raise AdaError(f"{out} already exists; pass --overwrite to replace it (the old index stays until the new one is complete)")
    for s in shortlist:
        make_faiss_index(s.dim, factory)
    corpus_path = resolve_corpus(corpus)
    n_docs = validate_corpus(corpus_path)
    sizes = parse_sizes([*shortlist, *([rerank_size] if rerank_size else [])])

    writer = IndexWriter(out, n_docs, shortlist, rerank_size, factory=factory, overwrite=overwrite,
                         rerank_dtype=rerank_dtype)
    try:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        with tqdm(total=n_docs, unit="doc", desc="indexing", disable=not progress, smoothing=0.05) as bar:
            for chunk in chunks(iter_corpus(corpus_path), chunk_size):
                vecs = encoder.encode([doc_text(d.title, d.text) for d in chunk], sizes, batch_size=batch_size,
                                      on_batch=bar.update)
                writer.add([d.docid for d in chunk], vecs)
        encode_s = time.perf_counter() - t0
        return writer.close(
            model=encoder.describe(),
            corpus=str(corpus_path.resolve()),
            build={
                "encode_seconds": round(encode_s, 2),
                "docs_per_second": round(n_docs / max(encode_s, 1e-9), 2),
                "batch_size": batch_size,
                "device": str(encoder.device),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    except BaseException:
        writer.abort()
        raise


def chunks(it: Iterable[T], n: int) -> Iterator[list[T]]:
    buf: list[T] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
