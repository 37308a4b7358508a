"""The library's front door: open an index with the encoder that built it, search texts.

    from adaretrieve import Retriever
    r = Retriever("indexes/scifact")                       # index + its own encoder, hash checked
    hits = r.search(["do statins reduce cancer risk?"], shortlist="2x64", k=200, rerank="6x384", top=10)
    hits[0][:3]                                            # [(doc_id, score), ...] best first

`load_index_encoder` is the one place that turns an index's manifest into an Encoder (used by
`search`, `mine`, `Retriever`); the weights-hash check lives there, not in the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adaretrieve.search import FunnelSearcher, IndexReader, SearcherCache
from adaretrieve.sizes import Size, parse_size


def load_index_encoder(reader: IndexReader, model: str | None = None, device: str | None = None, dtype: str | None = None,
                       backend: str = "torch", threads: int | None = None):
    """The encoder for queries against ``reader``: ``model`` if given, else the model that built the
    index (its recorded folder when it still exists, else its name), with the index's pooling,
    normalisation, max length and query/passage prefixes (an index from before prefixes has none).
    Raises AdaError when its weights (adaptor included) are not the ones that built the index.
    ``backend``: torch, onnx or onnx-int8 (see ``Encoder``)."""
    from adaretrieve.modeling import Encoder

    m = reader.manifest.model
    name = model or (m["path"] if Path(m["path"]).exists() else m["name"])
    enc = Encoder(name, pooling=m["pooling"], normalize=m["normalize"], max_length=m["max_length"], device=device, dtype=dtype,
                  query_prefix=m.get("query_prefix", ""), passage_prefix=m.get("passage_prefix", ""),
                  backend=backend, threads=threads)
    reader.check_model(enc.weights_hash(), enc.name)
    return enc


class Retriever:
    """An index and its query encoder, loaded once; ``search`` runs any configuration the index
    can serve (sizes stored or derived by truncation; a funnel with ``then``)."""

    def __init__(self, index: str | Path, model: str | None = None, device: str | None = None, backend: str = "torch",
                 threads: int | None = None):
        self.reader = IndexReader(index)
        self.encoder = load_index_encoder(self.reader, model, device, backend=backend, threads=threads)
        self._searchers = SearcherCache(self.reader)

    def searcher(self, shortlist: str | Size | None = None, k: int = 200, rerank: str | Size | None = "default",
                 then: Sequence[tuple[str | Size, int]] = (), nprobe: int | None = None,
                 ef_search: int | None = None) -> FunnelSearcher:
        m = self.reader.manifest
        short = parse_size(shortlist) if shortlist else m.shortlist_sizes[0]
        rr = m.rerank_size if rerank == "default" else (parse_size(rerank) if rerank else None)
        self.encoder.check_sizes([short, *(s for s, _ in then), *([rr] if rr else [])])
        return self._searchers.get(short, k, then, rr, nprobe, ef_search)

    def search(self, texts: Sequence[str], shortlist: str | Size | None = None, k: int = 200,
               rerank: str | Size | None = "default", top: int = 10, then: Sequence[tuple[str | Size, int]] = (),
               batch_size: int = 64, nprobe: int | None = None, ef_search: int | None = None) -> list[list[tuple[str, float]]]:
        """``[(doc_id, score), ...]`` best first, one list per text. ``rerank=None`` for single stage;
        the default reranks at the index's rerank size. ``nprobe`` / ``ef_search``: search-time settings
        of an IVF / HNSW shortlist."""
        s = self.searcher(shortlist, k, rerank, then, nprobe, ef_search)
        qv = self.encoder.encode_queries(list(texts), s.sizes(), batch_size=batch_size)
        scores, rows = s.search(qv, top=top)
        ids = self.reader.docids
        return [[(ids[r], float(x)) for r, x in zip(rr, sc) if r >= 0] for rr, sc in zip(rows, scores)]
