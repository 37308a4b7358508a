"""Measuring one row: a typed ``ResultRow``, the ``Pipeline`` a row searches with, and ``measure``,
which times every kind of row the same way (adaretrieve.eval.timing: warm-up, repeats, median and
p95; batch 1, cold where the row reads rerank rows through the memory map, batched, end to end)."""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from adaretrieve._version import __version__
from adaretrieve.eval import Evaluator, run_from_arrays
from adaretrieve.eval.measures import recall_within_depth
from adaretrieve.eval.timing import Timing, time_each, time_repeats, time_stages
from adaretrieve.faiss_util import resident_bytes_per_doc
from adaretrieve.index.format import Manifest
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
from adaretrieve.search.plan import stored_entry
from adaretrieve.search.resident import available as resident_available
from adaretrieve.search.resident import measure_resident
from adaretrieve.sizes import Size, parse_size

log = logging.getLogger(__name__)


def search_threads() -> int:
    """Threads a batched search runs on: FAISS's OpenMP threads (the dense rows' shortlist and rerank
    kernels); BM25's Lucene batches are given as many (code-review-3 A15.8)."""
    import faiss

    return faiss.omp_get_max_threads()


def machine_info() -> dict:
    import faiss
    import torch

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "search_threads": search_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "adaretrieve": __version__,
    }


@dataclass
class LatencyMs:
    """Milliseconds per call over ``repeats`` timed calls (queries at batch 1; batches when batched)."""

    p50: float
    p95: float | None = None
    mean: float | None = None
    repeats: int | None = None

    @classmethod
    def of(cls, t: Timing, per: int = 1) -> LatencyMs:
        """From seconds per call; ``per`` divides them into per-query figures (a batch's size)."""
        return cls(round(1000 * t.p50 / per, 4), round(1000 * t.p95 / per, 4), round(1000 * t.mean / per, 4), t.repeats)

    @classmethod
    def load(cls, d: dict | None) -> LatencyMs | None:
        return None if d is None else cls(**{k: d.get(k) for k in ("p50", "p95", "mean", "repeats")})

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


KINDS = ("dense", "bm25", "hybrid", "rrf", "refine", "adaptive")
_LATENCIES = ("search_ms_batch1", "search_ms_batch1_cold", "encode_ms_batch1", "end_to_end_ms_batch1")


@dataclass
class ResultRow:
    """One measured configuration, as results.json stores it (the same keys as before typed rows;
    ``kind`` and the cold and repeat fields are new, and absent from older files).

    Latencies are ms per query: batch 1 (``LatencyMs``: median, p95, mean over the latency
    queries), batched (the median over repeats of one search over every query, divided by their
    number). Search excludes query encoding; end to end includes it; stages split both.

    An ``adaptive`` row (a cascade with a calibrated stop rule, ``bench.adaptive``) encodes inside its
    search: each query runs the layers of the stage it stops at, the rest resume deeper between
    stages, so its encoding cannot be timed apart. It says so with ``search_includes_encoding``: its
    search figures (batch 1, cold, batched) are the cascade's whole call, encoding included, its
    ``encode_ms_*`` are None, and ``end_to_end_ms_batch1`` is the figure to compare with other rows'
    (``verdicts.latency_ms`` takes it). ``encode_layers`` is the deepest it may run; ``mean_layers``
    what its queries ran on average, ``encoder_cost`` that over the plan's layers, ``stop_share`` the
    share of queries answered at each stage; ``adaptive`` holds the design, the target, the rule, the
    fit as fitted and the texts it was fitted on."""

    config: str
    kind: str
    metrics: dict[str, float]
    search_ms_batch1: LatencyMs
    search_ms_batched: float
    shortlist: str | None = None
    k: int | None = None
    rerank: str | None = None
    nprobe: int | None = None  # search-time settings of an IVF / HNSW shortlist (absent when not set)
    ef_search: int | None = None
    then: list | None = None  # a funnel's middle stages, [[size, k], ...] (absent for two stages)
    shortlist_kind: str | None = None  # the stored code of the shortlist size when not float32 Flat (sign, pca128, SQ8)
    depth: int | None = None  # results per query at most; recall measures are named at it (R@50, not R@100)
    top: int | None = None  # results per query asked of a dense row's plan (its depth is at most this)
    search_ms_batch1_cold: LatencyMs | None = None  # rerank rows dropped from the page cache per query
    encode_layers: int = 0
    encode_ms_batch1: LatencyMs | None = None
    encode_ms_batched: float | None = None
    end_to_end_ms_batch1: LatencyMs | None = None
    stages_ms_batch1: dict[str, LatencyMs] = field(default_factory=dict)
    stages_ms_batched: dict[str, float] = field(default_factory=dict)
    total_ms_batch1_p50: float | None = None
    qps_batch1: float | None = None
    qps_batched: float | None = None
    batched_repeats: int | None = None
    resident_bytes_per_doc: float | None = None
    rerank_bytes_per_doc_on_disk: int = 0
    disk_bytes_per_doc: float | None = None
    # measured in a fresh process serving only this row (search.resident): private and index-file bytes
    resident_measured: dict | None = None
    deep_k: int | None = None  # the plan's deep path (adaptive rows; absent when not set)
    search_includes_encoding: bool = False  # adaptive rows (see the class doc); absent when False
    mean_layers: float | None = None
    encoder_cost: float | None = None
    stop_share: list[float] | None = None
    adaptive: dict | None = None
    extra: dict = field(default_factory=dict)  # e.g. build_seconds, bm25 setup seconds

    def to_dict(self) -> dict:
        d: dict = {"config": self.config, "kind": self.kind, "shortlist": self.shortlist, "k": self.k,
                   "rerank": self.rerank, "metrics": self.metrics}
        for f in fields(self):
            if f.name in d or f.name == "extra":
                continue
            v = getattr(self, f.name)
            if not v and f.name in _ABSENT_WHEN_UNSET:
                continue
            if isinstance(v, LatencyMs):
                v = v.to_dict()
            elif f.name == "stages_ms_batch1":
                v = {k: x.to_dict() for k, x in v.items()}
            d[f.name] = v
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> ResultRow:
        """A row from results.json, this version's or an older one (no ``kind``; BM25 rows with
        ``encode_ms_batch1`` {"p50": 0}; hybrid rows without encoding times)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k != "extra"}
        for k in _LATENCIES:
            kw[k] = LatencyMs.load(d.get(k))
        kw["stages_ms_batch1"] = {k: LatencyMs.load(v) for k, v in (d.get("stages_ms_batch1") or {}).items()}
        kw["stages_ms_batched"] = d.get("stages_ms_batched") or {}
        kw.setdefault("kind", _kind_of(d["config"]))
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})


_ABSENT_WHEN_UNSET = ("nprobe", "ef_search", "then", "top", "shortlist_kind", "deep_k", "search_includes_encoding",
                      "mean_layers", "encoder_cost", "stop_share", "adaptive")


def _kind_of(name: str) -> str:
    """The kind of a row from its name (files written before rows carried a kind)."""
    if name.startswith("adaptive "):
        return "adaptive"
    if name.startswith("rrf("):
        return "rrf"
    if name.startswith("bm25 k="):
        return "hybrid"
    if name.startswith("bm25"):
        return "bm25"
    if name.startswith("faiss RefineFlat"):
        return "refine"
    return "dense"


def load_rows(res: dict) -> list[ResultRow]:
    return [ResultRow.from_dict(r) for r in res["results"]]


@dataclass
class Pipeline:
    """How one row searches: ``search(rows, vectors, timings)`` answers the queries at positions
    ``rows`` given their encoded vectors ``{Size: [len(rows), dim]}`` (what ``need`` lists), adding
    stage seconds to ``timings``; ``to_run`` turns its answer into ``{qid: {docid: score}}``.
    Everything a query needs that does not depend on the query (searchers, id maps, the Lucene
    searcher) is built before, once."""

    config: str
    kind: str
    need: list[Size]
    search: Callable[[list[int], dict, dict | None], object]
    to_run: Callable[[object, list[str]], dict]
    depth: int | None = None  # results per query at most: measures are named for it (None: as asked)
    top: int | None = None  # a dense row's plan's top
    cold: Callable[[], None] | None = None  # drops the rerank rows from the page cache
    shortlist: Size | None = None
    k: int | None = None
    rerank: Size | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    then: list | None = None
    shortlist_kind: str | None = None
    resident_bytes_per_doc: float | None = None
    rerank_bytes_per_doc_on_disk: int = 0
    disk_bytes_per_doc: float | None = None
    extra: dict = field(default_factory=dict)
    # measures this row's resident memory in a fresh process (dense rows), given the encoded queries
    resident: Callable[[dict], dict] | None = None
    # the search encodes the queries itself (``rows`` index the texts; the vectors are not read):
    # an adaptive row, timed as ``ResultRow`` says
    search_includes_encoding: bool = False
    # more ResultRow fields from the answer over every query (an adaptive row's layers and exits)
    row_fields: Callable[[object], dict] | None = None


class DepthEvaluator:
    """The suite's measures, named and computed for the depth of each run (``recall_within_depth``):
    a run of 50 results per query has no R@100, so it is scored and reported as R@50. One ir-measures
    evaluator per set of names, built on first use."""

    def __init__(self, qrels, metrics):
        self.qrels, self.metrics = qrels, list(metrics)
        self._by: dict[tuple, Evaluator] = {}

    def names(self, depth: int | None) -> list[str]:
        return list(self.metrics) if depth is None else recall_within_depth(self.metrics, depth)[0]

    def __call__(self, run: dict, depth: int | None) -> dict[str, float]:
        key = tuple(self.names(depth))
        if key not in self._by:
            self._by[key] = Evaluator(self.qrels, key)
        return self._by[key](run)


@dataclass
class Context:
    """What every row is measured against: the queries, their vectors, the encoder and its timings."""

    enc: object
    qids: list[str]
    texts: list[str]
    qv: dict  # {Size: [n_queries, dim]}
    evaluator: DepthEvaluator
    n_lat: int
    enc_ms: dict[int, LatencyMs]  # batch-1 encoding to each depth
    enc_batched_ms: dict[int, float]  # batched encoding to each depth, per query


def arrays_run(reader: IndexReader):
    return lambda res, qids: run_from_arrays(qids, res[0], res[1], reader.docids)


def measure(p: Pipeline, ctx: Context) -> ResultRow:
    """Quality over every query, then timings, the same for every kind of row: batch 1 over the
    first ``n_lat`` queries after WARMUP (search with encoded queries; warm and, where the row
    reads rerank rows from disk, cold; and end to end with the query encoding), and batched as
    the median of REPEATS searches over every query after a warm-up one. A row whose search encodes
    (``search_includes_encoding``) is timed by the same calls: its search is its end to end."""
    n = len(ctx.qids)
    every = list(range(n))
    answer = p.search(every, ctx.qv, None)
    metrics = ctx.evaluator(p.to_run(answer, ctx.qids), p.depth)
    inside = p.search_includes_encoding

    def one(i, t):
        return p.search([i], {s: v[i : i + 1] for s, v in ctx.qv.items()}, t)

    warm, stages = time_stages(one, ctx.n_lat)
    cold = time_stages(one, ctx.n_lat, before=lambda _: p.cold())[0] if p.cold else None
    batched, stages_b = time_repeats(lambda t: p.search(every, ctx.qv, t))

    def end_to_end(i):
        q = ctx.enc.encode([ctx.texts[i]], p.need) if p.need and not inside else {}
        return p.search([i], q, None)

    e2e = LatencyMs.of(time_each(end_to_end, ctx.n_lat))
    depth = max((s.layer for s in p.need), default=0)
    enc1 = None if inside else ctx.enc_ms.get(depth)
    enc_b = 0.0 if inside else ctx.enc_batched_ms.get(depth, 0.0)
    stage_ms, stage_b = {}, {}
    if p.need and not inside:
        first = p.shortlist.layer if p.shortlist else depth
        stage_ms["encode_to_shortlist_layer" if p.shortlist else "encode_to_rerank_layer"] = ctx.enc_ms[first]
        stage_b["encode_to_shortlist_layer" if p.shortlist else "encode_to_rerank_layer"] = ctx.enc_batched_ms[first]
        if p.shortlist and (p.rerank or p.then):  # a funnel's stages after the shortlist: encoded to its deepest
            last = p.rerank.layer if p.rerank else depth
            stage_ms["encode_to_rerank_layer"] = ctx.enc_ms[last]
            stage_b["encode_to_rerank_layer"] = ctx.enc_batched_ms[last]
    stage_ms.update({k: LatencyMs.of(v) for k, v in stages.items()})
    stage_b.update({k: round(1000 * v.p50 / n, 4) for k, v in stages_b.items()})
    search1 = LatencyMs.of(warm)
    search_b = round(1000 * batched.p50 / n, 4)
    row = ResultRow(
        config=p.config, kind=p.kind, metrics={k: round(v, 5) for k, v in metrics.items()},
        search_ms_batch1=search1, search_ms_batched=search_b,
        shortlist=str(p.shortlist) if p.shortlist else None, k=p.k, rerank=str(p.rerank) if p.rerank else None,
        nprobe=p.nprobe, ef_search=p.ef_search, then=p.then, shortlist_kind=p.shortlist_kind, depth=p.depth, top=p.top,
        search_ms_batch1_cold=LatencyMs.of(cold) if cold else None,
        encode_layers=depth, encode_ms_batch1=enc1, encode_ms_batched=enc_b if p.need and not inside else None,
        end_to_end_ms_batch1=e2e, stages_ms_batch1=stage_ms, stages_ms_batched=stage_b,
        total_ms_batch1_p50=round((enc1.p50 if enc1 else 0.0) + search1.p50, 3),
        # one process, one query at a time / every query at once: encoding to the depth + search
        qps_batch1=round(1000 / e2e.mean, 2), qps_batched=round(1000 / (enc_b + search_b), 2),
        batched_repeats=batched.repeats, resident_bytes_per_doc=p.resident_bytes_per_doc,
        rerank_bytes_per_doc_on_disk=p.rerank_bytes_per_doc_on_disk, disk_bytes_per_doc=p.disk_bytes_per_doc,
        resident_measured=p.resident({s: v for s, v in ctx.qv.items() if s in p.need}) if p.resident else None,
        search_includes_encoding=inside, **(p.row_fields(answer) if p.row_fields else {}), extra=p.extra)
    log.info("%-28s %s  search %.3f ms/q", p.config, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), search1.p50)
    return row


def evict_rerank(reader: IndexReader) -> Callable[[], None] | None:
    """A function that drops the index's rerank rows from the page cache (see eval.pagecache)."""
    from adaretrieve.eval.pagecache import evict

    m = reader.manifest.rerank
    if m is None:
        return None
    rows = reader.rerank_rows()
    arrays = [rows.codes, rows.scales] if hasattr(rows, "codes") else [rows]
    paths = [reader.gen_dir / m["file"]] + ([reader.gen_dir / m["scale_file"]] if m.get("scale_file") else [])

    def drop():
        for path in paths:
            evict(path, arrays)

    return drop


def reads_rerank_file(reader: IndexReader, size: Size) -> bool:
    """Whether rescoring at ``size`` reads the stored (memory-mapped) rerank rows."""
    return reader.manifest.rerank is not None and reader.rerank_source(size) is reader.rerank_rows()


def dense_pipeline(plan: FunnelPlan, reader: IndexReader) -> Pipeline:
    """The row of one plan, searched by a FunnelSearcher over ``reader``; timed cold too when a
    stage after the shortlist reads the stored (memory-mapped) rerank rows."""
    searcher = FunnelSearcher(reader, plan)
    short, rr = plan.shortlist, plan.rerank
    rescored = [s for s, _ in plan.then] + ([rr] if rr else [])

    def search(rows, q, t):
        return searcher.search(q, timings=t)

    kind = shortlist_kind_of(reader.manifest, short)
    return Pipeline(coded_name(plan, kind), "dense", plan.sizes(), search, arrays_run(reader), depth=plan.depth, top=plan.top,
                    cold=evict_rerank(reader) if any(reads_rerank_file(reader, s) for s in rescored) else None,
                    shortlist=short, k=None if plan.single else plan.k, rerank=rr, nprobe=plan.nprobe,
                    ef_search=plan.ef_search, then=[[str(s), k] for s, k in plan.then] or None, shortlist_kind=kind,
                    resident_bytes_per_doc=shortlist_resident_bytes_per_doc(reader.manifest, short),
                    rerank_bytes_per_doc_on_disk=max((s.dim for s in rescored), default=0) * 2,
                    disk_bytes_per_doc=disk_bytes_per_doc(reader, short, max(rescored, key=lambda s: s.dim, default=None)),
                    resident=(lambda qv: measure_resident(reader.dir, short, plan.k, rr, qv, then=list(plan.then),
                                                          nprobe=plan.nprobe, ef_search=plan.ef_search, top=plan.top))
                    if resident_available() else None)


COLD_HOW = ("before each cold query the rerank file is dropped from the page cache: madvise(MADV_DONTNEED) on "
            "this process's memory map of it, then posix_fadvise(POSIX_FADV_DONTNEED) (no root needed)")


def shortlist_kind_of(manifest: Manifest, size: Size) -> str | None:
    """The stored code of the shortlist index at ``size`` (its factory: ``sign``, ``pca128``, ``SQ8``,
    ``HNSW32``), or None when it is float32 ``Flat`` or not stored (a flat index cut from a prefix)."""
    entry = stored_entry(manifest, size)
    return entry["factory"] if entry is not None and stores_a_code(entry["factory"]) else None


def stores_a_code(factory: str) -> bool:
    """Whether a shortlist factory stores its vectors as something other than float32: sign bits
    (``sign``, ``pcaM``, ``BFlat``...), SQ, PQ, RaBitQ. An IVF or HNSW structure over float32 vectors
    (``IVF256,Flat``, ``HNSW32``) does not: its rows are named by their search settings instead."""
    last = factory.split(",")[-1].strip()
    return not (last in ("Flat", "IDMap") or re.fullmatch(r"(IDMap2?,)?(IVF\d+|HNSW\d+(_\d+)?|NSG\d+)", last))


def coded_name(plan: FunnelPlan, kind: str | None) -> str:
    """A row's name: the plan's (``2x64 k=200 -> 6x384``), its shortlist size followed by its code when
    the stored index is not float32 Flat (``6x384:sign k=100 -> 6x384``, ``single 6x384:pca128``)."""
    if not kind:
        return plan.name
    head = "single " if plan.single else ""
    return head + f"{plan.shortlist}:{kind}" + plan.name[len(head) + len(str(plan.shortlist)):]


def shortlist_resident_bytes_per_doc(manifest: Manifest, size: Size) -> float | None:
    """RAM per document of the shortlist index a search at ``size`` loads: the stored index of that
    size (its factory decides), else the flat float32 index built in memory from a stored prefix."""
    entry = stored_entry(manifest, size)
    return resident_bytes_per_doc(size.dim, entry["factory"] if entry else "Flat")


def disk_bytes_per_doc(reader: IndexReader, short: Size, rerank: Size | None) -> float:
    """Bytes per document on disk that a configuration reads: the shortlist's stored FAISS file
    (or the stored file it is cut from), the rerank vectors (and int8 scales), and the doc ids."""
    from adaretrieve.index.format import DOCIDS

    m = reader.manifest
    files = {DOCIDS}
    for e in m.shortlist:
        s = parse_size(e["size"])
        if s == short or (s.layer == short.layer and s.dim >= short.dim and e["factory"] == "Flat"):
            files.add(e["file"])
            break
    else:
        if m.rerank:
            files.add(m.rerank["file"])
    if rerank is not None and m.rerank:
        files.add(m.rerank["file"])
        if m.rerank.get("scale_file"):
            files.add(m.rerank["scale_file"])
    total = sum((reader.gen_dir / f).stat().st_size for f in files if (reader.gen_dir / f).exists())
    return round(total / max(reader.n_docs, 1), 1)


