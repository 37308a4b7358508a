"""The library's front door: open an index with the encoder that built it, search texts.

    from adaretrieve import Retriever
    r = Retriever("indexes/scifact")                       # index + its own encoder, hash checked
    hits = r.search(["do statins reduce cancer risk?"], shortlist="2x64", k=200, rerank="6x384", top=10)
    hits[0][:3]                                            # [(doc_id, score), ...] best first
    r.search(texts, rerank="none")                         # single stage at the index's first shortlist size

`load_index_encoder` is the one place that turns an index's manifest into an Encoder (used by
`search`, `mine`, `Retriever`); the weights-hash check lives there, not in the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adaretrieve.search import DEFAULT, FunnelPlan, FunnelSearcher, IndexReader, SearcherCache, resolve_plan
from adaretrieve.search.plan import check_plan_sizes
from adaretrieve.sizes import Size


def load_index_encoder(reader, model: str | None = None, device: str | None = None, dtype: str | None = None,
                       backend: str = "torch", threads: int | None = None):
    """The encoder for queries against ``reader`` (an IndexReader or a QdrantIndex): ``model`` if
    given, else the model that built the index (its recorded folder when it still exists, else its
    name), with the index's vector spec (pooling, normalisation, max length, lowercasing, query and
    passage prefixes). Raises AdaError when it would not make the index's query vectors
    (``check_encoder``: other weights, or a folder whose settings cannot match). ``backend``, ``dtype``:
    how the queries are computed (torch, onnx or onnx-int8; see ``Encoder``), free to differ from the
    corpus's."""
    from adaretrieve.modeling import Encoder

    m = reader.manifest
    spec = m.vector_spec
    name = model or (m.model["path"] if Path(m.model["path"]).exists() else m.model["name"])
    enc = Encoder(name, pooling=spec.pooling, normalize=spec.normalize, max_length=spec.max_length, device=device,
                  dtype=dtype, query_prefix=spec.query_prefix, passage_prefix=spec.passage_prefix,
                  lowercase=spec.lowercase, backend=backend, threads=threads)
    reader.check_encoder(enc.spec(), enc.name)
    return enc


class Retriever:
    """An index and its query encoder, loaded once; ``search`` runs any configuration the index
    can serve (sizes stored or derived by truncation; a funnel with ``then``)."""

    def __init__(self, index: str | Path, model: str | None = None, device: str | None = None, backend: str = "torch",
                 threads: int | None = None):
        self.reader = IndexReader(index)
        self.encoder = load_index_encoder(self.reader, model, device, backend=backend, threads=threads)
        self._searchers = SearcherCache(self.reader)

    @classmethod
    def over(cls, reader: IndexReader, encoder) -> Retriever:
        """A Retriever over an open ``reader`` with a query ``encoder`` already made (a bench suite's:
        its rows and its adaptive fits then share one encoder), checked against the index as
        ``load_index_encoder`` checks its own."""
        reader.check_encoder(encoder.spec(), encoder.name)
        self = cls.__new__(cls)
        self.reader, self.encoder, self._searchers = reader, encoder, SearcherCache(reader)
        return self

    def plan(self, shortlist: str | Size | None = None, k: int | None = None, rerank=DEFAULT,
             then: Sequence[tuple[str | Size, int]] = (), top: int | None = None, nprobe: int | None = None,
             ef_search: int | None = None, deep_k: int | None = None) -> FunnelPlan:
        """The plan these arguments mean for this index (``resolve_plan``), its sizes checked against the encoder.
        ``deep_k``: the rerank also takes the top ``deep_k`` of the index's shortlist over the rerank size."""
        plan = resolve_plan(self.reader.manifest, shortlist, k, then, rerank, top, nprobe, ef_search, deep_k=deep_k)
        check_plan_sizes(self.encoder, plan)
        return plan

    def searcher(self, plan: FunnelPlan) -> FunnelSearcher:
        return self._searchers.get(plan)

    def search(self, texts: Sequence[str], shortlist: str | Size | None = None, k: int | None = None,
               rerank=DEFAULT, top: int | None = None, then: Sequence[tuple[str | Size, int]] = (),
               batch_size: int = 64, nprobe: int | None = None, ef_search: int | None = None,
               plan: FunnelPlan | None = None) -> list[list[tuple[str, float]]]:
        """``[(doc_id, score), ...]`` best first, one list per text, for ``plan`` or the plan the
        other arguments resolve to (``resolve_plan``: ``rerank`` omitted reranks at the index's
        rerank size, ``None`` or ``"none"`` is single stage; ``top=None`` returns all the last stage ranks).
        ``nprobe`` / ``ef_search``: search-time settings of an IVF / HNSW shortlist."""
        plan = plan or self.plan(shortlist, k, rerank, then, top, nprobe, ef_search)
        s = self.searcher(plan)
        qv = self.encoder.encode_queries(list(texts), plan.sizes(), batch_size=batch_size)
        scores, rows = s.search(qv)
        ids = self.reader.docids
        return [[(ids[r], float(x)) for r, x in zip(rr, sc) if r >= 0] for rr, sc in zip(rows, scores)]

    def search_adaptive(self, texts: Sequence[str], plan: FunnelPlan, rule, batch_size: int = 64,
                        timings: dict | None = None):
        """Adaptive depth (``search.cascade``): run ``plan`` stage by stage, each query stopping where
        ``rule`` (a ``StopRule``) says; the queries that go on resume their encoding from the layer
        they reached. Returns (hits as ``search`` gives them, the ``CascadeResult``: exit stage and
        layers run per query)."""
        res = adaptive_search(self.encoder, self.searcher(plan), list(texts), rule, batch_size, timings)
        ids = self.reader.docids
        hits = [[(ids[r], float(x)) for r, x in zip(rr, sc) if r >= 0] for rr, sc in zip(res.rows, res.scores)]
        return hits, res

    def calibrate(self, texts: Sequence[str], plan: FunnelPlan, target: float, rank: int = 10, batch_size: int = 64,
                  measure: str = "overlap", confidence: str = "gap", rankings: list | None = None):
        """Fit a cascade's stop rule for ``plan`` on unlabelled ``texts`` (``search.calibrate``): the
        most encoder layers saved while the mean ``measure``@10 against the full cascade stays >=
        ``target``. ``rankings``: ``self.stage_rankings(texts, plan)`` when already made (fitting
        several targets on the same texts encodes them once)."""
        from adaretrieve.search.calibrate import check_target, fit_stop_rule

        check_target(target, measure, confidence)
        if rankings is None:
            rankings = self.stage_rankings(texts, plan, batch_size)
        return fit_stop_rule(plan, rankings, target, rank=rank, measure=measure, confidence=confidence)

    def stage_rankings(self, texts: Sequence[str], plan: FunnelPlan, batch_size: int = 64) -> list:
        """(scores, rows) after every stage of ``plan`` for ``texts`` encoded to full depth (``calibrate.stage_rankings``)."""
        from adaretrieve.search.calibrate import stage_rankings

        s = self.searcher(plan)
        qv = self.encoder.encode_queries(list(texts), plan.sizes(), batch_size=batch_size)
        return stage_rankings(plan, s.index, s.sources, self.reader.normalize, qv, s.params, s.deep)


def adaptive_search(encoder, searcher: FunnelSearcher, texts: list[str], rule, batch_size: int = 64,
                    timings: dict | None = None):
    """``search.cascade`` for ``searcher``'s plan with ``encoder``: the queries are encoded to the
    shortlist's layer, and those that go on resume from there (``Encoder.resume``). Returns the
    ``CascadeResult`` (rows into the index, exit stage and layers per query)."""
    import time

    from adaretrieve.search.cascade import cascade

    plan = searcher.plan
    first_sizes = [x for x in plan.sizes() if x.layer == plan.shortlist.layer]
    t0 = time.perf_counter()
    vecs, state = encoder.encode_to(encoder.queries(texts), first_sizes, batch_size=batch_size)
    if timings is not None:
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t0
    held = {"state": state}

    def encode_more(rows, sizes):
        out, held["state"] = encoder.resume(held["state"], sizes, rows=rows)
        return out

    return cascade(plan, rule, searcher.index, searcher.sources, searcher.reader.normalize, vecs, encode_more,
                   searcher.params, timings, deep=searcher.deep)
