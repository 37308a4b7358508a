"""Running a suite: its index (reused when it matches, else built), its queries encoded once, every
row measured alike, pinned scores checked. ``run_suite`` returns what ``report.write_report`` writes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from adaretrieve.bench.adaptive import adaptive_pipelines
from adaretrieve.bench.baselines import bm25_pipelines, refine_pipelines
from adaretrieve.bench.measure import (
    COLD_HOW,
    Context,
    DepthEvaluator,
    LatencyMs,
    dense_pipeline,
    machine_info,
    measure,
)
from adaretrieve.bench.suite import Suite, with_search_params
from adaretrieve.bench.verdicts import check_expected
from adaretrieve.data import read_qrels, read_queries
from adaretrieve.errors import AdaError
from adaretrieve.eval.timing import REPEATS, WARMUP, WARMUP_BATCHED, time_each, time_repeats
from adaretrieve.search import IndexReader
from adaretrieve.sizes import Size, parse_size

log = logging.getLogger(__name__)


def ensure_index(suite: Suite, enc, rebuild: bool = False, progress: bool = True, replace_stale: bool = False) -> IndexReader:
    """Reuse the suite's index when its documents were made as ``enc`` makes them (every field of
    ``spec.DOCUMENT_FIELDS``: weights, pooling, normalisation, max length, passage prefix,
    lowercasing, backend, dtype) with the suite's shortlist sizes, factory and rerank size; an index
    there that does not match is refused, naming what differs, unless ``rebuild`` (always build) or
    ``replace_stale`` (build only when it does not match: for drivers that own their index paths)."""
    from adaretrieve.index.build import build_index
    from adaretrieve.index.codes import parse_shortlist
    from adaretrieve.spec import DOCUMENT_FIELDS

    entries = parse_shortlist(suite.shortlist, default=suite.factory)  # SIZE or SIZE:KIND, as `index --shortlist`
    want = [s for s, _ in entries]
    path = Path(suite.index)
    if path.exists() and not rebuild:
        reader = IndexReader(path)
        m = reader.manifest
        rerank = parse_size(suite.rerank) if suite.rerank else None
        held = {parse_size(e["size"]): e["factory"] for e in m.shortlist}
        other_kinds = [f"{s} {held[s]} (the suite's: {f})" for s, f in entries if s in held and held[s] != f]
        have, suite_spec = m.vector_spec, enc.spec()
        differs = [what for what, ok in (
            (f"shortlist kind {', '.join(other_kinds)}", not other_kinds),
            (f"shortlist {', '.join(map(str, m.shortlist_sizes))} (the suite needs {', '.join(map(str, want))})",
             set(want) <= set(m.shortlist_sizes)),
            (f"rerank {m.rerank_size} (the suite needs {rerank})", str(m.rerank_size) == str(rerank)),
        ) if not ok]
        if have.differs(suite_spec, DOCUMENT_FIELDS):  # named field by field: "pooling 'cls' -> 'mean'"
            differs.insert(0, f"vector spec {', '.join(have.differs(suite_spec, DOCUMENT_FIELDS))} (the index's -> the "
                              f"suite's: {have.explain(suite_spec, DOCUMENT_FIELDS)})")
        if not differs:
            log.info("reusing index %s", path)
            return reader
        if replace_stale:
            log.info("index %s does not match (%s); rebuilding", path, "; ".join(differs))
            del reader
        else:
            raise AdaError(f"index {path} does not match suite {suite.name!r}: {'; '.join(differs)}. Pass --rebuild to "
                           "replace it, or point the suite's `index:` elsewhere")
    build_index(suite.corpus, enc, path, [f"{s}:{f}" for s, f in entries], suite.rerank, factory=suite.factory,
                batch_size=suite.batch_size,
                overwrite=True, progress=progress)
    return IndexReader(path)


def suite_encoder(suite: Suite):
    """The encoder the suite builds its index with: its model, with the suite's spec settings where
    given, else the model folder's own."""
    from adaretrieve.modeling import Encoder

    return Encoder(suite.model, pooling=suite.pooling, normalize=suite.normalize, max_length=suite.max_length,
                   dtype=suite.dtype, query_prefix=suite.query_prefix, passage_prefix=suite.passage_prefix,
                   lowercase=suite.lowercase, backend=suite.backend)


def query_encoder(suite: Suite, reader: IndexReader, enc):
    """The encoder for the suite's queries against ``reader``: ``enc`` when it makes the index's query
    vectors (every field of ``spec.QUERY_FIELDS``) on the suite's query backend, else the index's own
    (``retriever.load_index_encoder``: its pooling, normalisation, max length, query prefix,
    lowercasing; code-review-3 A4)."""
    from adaretrieve.retriever import load_index_encoder
    from adaretrieve.spec import QUERY_FIELDS

    backend = suite.query_backend or suite.backend
    if not reader.manifest.vector_spec.differs(enc.spec(), QUERY_FIELDS) and backend == enc.backend:
        return enc
    return load_index_encoder(reader, suite.model, backend=backend)


def run_suite(suite: Suite, rebuild: bool = False, progress: bool = True, replace_stale: bool = False) -> dict:
    enc = suite_encoder(suite)
    reader = ensure_index(suite, enc, rebuild, progress, replace_stale)
    enc = query_encoder(suite, reader, enc)
    suite.check_search_params()
    adaptive = suite.adaptive_entries()
    plans = with_search_params(suite.plans(reader.manifest), reader, suite.nprobe, suite.ef_search)
    qrels = read_qrels(suite.qrels)
    queries = {q: t for q, t in read_queries(suite.queries).items() if q in qrels}
    qids = list(queries)
    texts = enc.queries([queries[q] for q in qids])  # with the index's query prefix (enc has the index's spec)
    sizes = {s for p in plans for s in p.sizes()}
    sizes |= {parse_size(h["rerank"]) for h in suite.hybrid if suite.bm25} | {parse_size(s) for s in suite.rrf if suite.bm25}
    if suite.refine and reader.manifest.rerank:
        sizes.add(reader.manifest.rerank_size)
    sizes = sorted(sizes, key=lambda s: (s.layer, s.dim))
    for s in sizes:
        s.check(enc.n_layers, enc.hidden_size)
    t0 = time.perf_counter()
    qv = enc.encode(texts, sizes, batch_size=64) if sizes else {}  # a suite of adaptive rows alone: they encode themselves
    encode_batched_ms = 1000 * (time.perf_counter() - t0) / len(qids)

    # Query encoding costs the same for every configuration of one depth: time it once per depth
    # (shortlist and rerank layers), at batch 1 and in batches of 64, like every search below.
    n_lat = min(suite.latency_queries, len(texts))
    enc_ms: dict[int, LatencyMs] = {}
    enc_batched_ms: dict[int, float] = {}
    for depth in sorted({s.layer for s in sizes}):
        size = Size(depth, 1)
        enc_ms[depth] = LatencyMs.of(time_each(lambda i, s=size: enc.encode([texts[i]], [s]), n_lat))
        t = time_repeats(lambda _, s=size: enc.encode(texts, [s], batch_size=64))[0]
        enc_batched_ms[depth] = round(1000 * t.p50 / len(qids), 4)
    ctx = Context(enc, qids, texts, qv, DepthEvaluator(qrels, suite.metrics), n_lat, enc_ms, enc_batched_ms)

    pipelines = [dense_pipeline(p, reader) for p in plans]
    if adaptive:  # each entry's rule fitted on its own texts (no qrels), then one row per target
        pipelines += adaptive_pipelines(adaptive, reader, enc, {q: queries[q] for q in qids}, suite.corpus)
    if suite.refine and reader.manifest.rerank:
        pipelines += refine_pipelines(suite, reader)
    if suite.bm25:
        pipelines += bm25_pipelines(suite, reader, qids, queries)
    rows = [measure(p, ctx) for p in pipelines]
    checks = check_expected(rows, suite.expected)
    return {
        "suite": suite.name, "description": suite.description, "model": enc.describe(), "backend": suite.backend,
        **({"query_backend": enc.backend} if enc.backend != suite.backend else {}),
        "index": {"path": str(reader.dir), "n_docs": reader.n_docs, "build": reader.manifest.build},
        "metrics": list(suite.metrics),
        "n_queries": len(qids), "queries_encode_ms_batched": round(encode_batched_ms, 3),
        "timing": {"warmup": WARMUP, "warmup_batched": WARMUP_BATCHED, "repeats": REPEATS, "latency_queries": n_lat,
                   "cold": COLD_HOW},
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": [r.to_dict() for r in rows], "checks": checks,
    }
