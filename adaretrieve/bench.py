"""Sweep configurations of one model on one data set: encoder -> index -> search -> eval -> report.

A suite is a YAML file (see ``benchmarks/*.yaml``): model, data, index, the grid of single-stage
sizes and two-stage (shortlist, k, rerank) triples, metrics, and pinned expectations with
tolerances. Relative paths are read from the current directory (the repository root).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from adaretrieve._version import __version__
from adaretrieve.data import read_qrels, read_queries
from adaretrieve.errors import AdaError
from adaretrieve.eval import Evaluator, run_from_arrays
from adaretrieve.eval.timing import REPEATS, WARMUP, WARMUP_BATCHED, Timing, time_each, time_repeats, time_stages
from adaretrieve.faiss_util import resident_bytes_per_doc
from adaretrieve.index.format import Manifest
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
from adaretrieve.search.resident import available as resident_available
from adaretrieve.search.resident import measure_resident
from adaretrieve.sizes import Size, parse_size, parse_sizes

log = logging.getLogger(__name__)


@dataclass
class Suite:
    name: str
    model: str
    corpus: str
    queries: str
    qrels: str
    index: str
    shortlist: list[str]
    rerank: str | None
    single: list[str] = field(default_factory=list)
    two_stage: list[dict] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["nDCG@10", "RR@10", "R@100", "R@1000"])
    max_length: int | None = None
    batch_size: int = 32
    latency_queries: int = 100
    expected: dict = field(default_factory=dict)
    description: str = ""
    bm25: bool = False  # add BM25 (pyserini, k1 0.9, b 0.4) and the hybrid rows below
    bm25_index: str | None = None  # Lucene index folder (default: <index>-bm25)
    hybrid: list[dict] = field(default_factory=list)  # [{"k": 200, "rerank": "6x384"}]: BM25 top k, dense rerank
    rrf: list[str] = field(default_factory=list)  # dense single-stage sizes fused with BM25 by RRF
    refine: list[float] = field(default_factory=list)  # FAISS IndexRefineFlat(SQ8) at the rerank size, these k factors
    backend: str = "torch"  # encoder backend for the corpus and the queries: torch, onnx, onnx-int8
    factory: str = "Flat"  # FAISS factory of the stored shortlist indexes when the suite builds its index
    nprobe: list[int] = field(default_factory=list)  # every configuration over an IVF shortlist, once per value
    ef_search: list[int] = field(default_factory=list)  # every configuration over an HNSW shortlist, once per value

    @classmethod
    def load(cls, path: str | Path) -> Suite:
        p = Path(path)
        if not p.exists():
            raise AdaError(f"bench config {p} does not exist")
        from adaretrieve.training.config import read_yaml, resolve_config_paths

        data = read_yaml(p, "bench")
        if isinstance(data, dict):  # paths in the suite are read from the suite file's folder
            data = resolve_config_paths(data, p.parent, {"model": False, "corpus": True, "queries": True, "qrels": True,
                                                         "index": True, "bm25_index": True})
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise AdaError(f"{p}: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
        try:
            suite = cls(**data)
        except TypeError as e:
            raise AdaError(f"{p}: {e}") from None
        try:
            suite.configs()  # every size and k parsed now, before an index is built
        except AdaError as e:
            raise AdaError(f"{p}: {e}") from None
        if suite.batch_size < 1 or suite.latency_queries < 1:
            raise AdaError(f"{p}: batch_size ({suite.batch_size}) and latency_queries ({suite.latency_queries}) must be at least 1")
        try:
            suite.check_search_params()
        except AdaError as e:
            raise AdaError(f"{p}: {e}") from None
        return suite

    def check_search_params(self) -> None:
        """``nprobe`` and ``ef_search`` are lists of whole numbers of at least 1 (a single number is
        taken as a list of one)."""
        for name in ("nprobe", "ef_search"):
            v = getattr(self, name)
            v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
            if not isinstance(v, list) or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in v):
                raise AdaError(f"{name} {v!r} should be a list of whole numbers of at least 1")
            setattr(self, name, v)

    def configs(self) -> list[BenchConfig]:
        """Every dense configuration, sizes parsed once: single stage first, then the two-stage grid."""
        out = [BenchConfig(parse_size(s)) for s in self.single]
        for grid in self.two_stage:
            if not isinstance(grid, dict) or not {"shortlist", "k", "rerank"} <= set(grid):
                raise AdaError(f"two_stage entry {grid!r:.80} should be a mapping with shortlist, k and rerank")
            for s in parse_sizes(grid["shortlist"]):
                for k in grid["k"] if isinstance(grid["k"], list) else [grid["k"]]:
                    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                        raise AdaError(f"two_stage k {k!r} is not a whole number of at least 1")
                    for r in parse_sizes(grid["rerank"]):
                        out.append(BenchConfig(s, int(k), r))
        return out


@dataclass(frozen=True)
class BenchConfig:
    """One dense configuration: search at ``shortlist``; with ``rerank``, rescore its top ``k``.
    ``nprobe`` / ``ef_search``: the search-time setting of an IVF / HNSW shortlist, when swept."""

    shortlist: Size
    k: int | None = None
    rerank: Size | None = None
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def name(self) -> str:
        return _name(self.shortlist, self.k, self.rerank, self.nprobe, self.ef_search)

    def sizes(self) -> list[Size]:
        return [self.shortlist] + ([self.rerank] if self.rerank else [])


def _name(shortlist, k, rerank, nprobe=None, ef_search=None) -> str:
    params = "".join(f" {n}={v}" for n, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None)
    return f"single {shortlist}{params}" if rerank is None else f"{shortlist} k={k}{params} -> {rerank}"


def config_name(c: BenchConfig | dict) -> str:
    """The name of a configuration, or of a result row (as loaded from results.json)."""
    if isinstance(c, BenchConfig):
        return c.name
    if c.get("config"):
        return c["config"]
    return _name(c["shortlist"], c["k"], c["rerank"], c.get("nprobe"), c.get("ef_search"))


def with_search_params(configs: list[BenchConfig], reader: IndexReader, nprobe: list[int],
                       ef_search: list[int]) -> list[BenchConfig]:
    """Each configuration whose shortlist index is IVF once per ``nprobe``, HNSW once per
    ``ef_search``; the others as they are. AdaError when a setting is given and no shortlist of the
    suite takes it (it would otherwise be silently ignored)."""
    from adaretrieve.search.twostage import shortlist_kind

    if not nprobe and not ef_search:
        return configs
    kinds = {c.shortlist: shortlist_kind(reader.shortlist_index(c.shortlist)) for c in configs}
    for name, values, tag, hint in (("nprobe", nprobe, "IVF", "IVF..."), ("ef_search", ef_search, "HNSW", "HNSW32")):
        if values and not any(tag in k for k in kinds.values()):
            have = ", ".join(f"{s} {k}" for s, k in kinds.items())
            raise AdaError(f"{name} applies to {tag} shortlists; the suite's are {have} (build one with --factory {hint})")
    out = []
    for c in configs:
        kind = kinds[c.shortlist]
        if "IVF" in kind and nprobe:
            out += [replace(c, nprobe=v) for v in nprobe]
        elif "HNSW" in kind and ef_search:
            out += [replace(c, ef_search=v) for v in ef_search]
        else:
            out.append(c)
    return out


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
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "adaretrieve": __version__,
    }


def ensure_index(suite: Suite, enc, rebuild: bool = False, progress: bool = True, replace_stale: bool = False) -> IndexReader:
    """Reuse the suite's index when it was built by the same weights with the needed sizes; an index
    there that does not match is refused unless ``rebuild`` (always build) or ``replace_stale`` (build
    only when it does not match: for drivers that own their index paths)."""
    from adaretrieve.index.build import build_index

    want = parse_sizes(suite.shortlist)
    path = Path(suite.index)
    if path.exists() and not rebuild:
        reader = IndexReader(path)
        m = reader.manifest
        rerank = parse_size(suite.rerank) if suite.rerank else None
        factories = {e["factory"] for e in m.shortlist if parse_size(e["size"]) in want}
        differs = [what for what, ok in (
            (f"factory {', '.join(sorted(factories))} (the suite's: {suite.factory})", factories <= {suite.factory}),
            (f"weights {str(m.model.get('weights_sha256'))[:12]} (the suite's model: {enc.weights_hash()[:12]})",
             m.model.get("weights_sha256") == enc.weights_hash()),
            (f"shortlist {', '.join(map(str, m.shortlist_sizes))} (the suite needs {', '.join(map(str, want))})",
             set(want) <= set(m.shortlist_sizes)),
            (f"rerank {m.rerank_size} (the suite needs {rerank})", str(m.rerank_size) == str(rerank)),
            (f"max length {m.model.get('max_length')} (the suite's: {enc.max_length})", m.model.get("max_length") == enc.max_length),
        ) if not ok]
        if not differs:
            log.info("reusing index %s", path)
            return reader
        if replace_stale:
            log.info("index %s does not match (%s); rebuilding", path, "; ".join(differs))
            del reader
        else:
            raise AdaError(f"index {path} does not match suite {suite.name!r}: {'; '.join(differs)}. Pass --rebuild to "
                           "replace it, or point the suite's `index:` elsewhere")
    build_index(suite.corpus, enc, path, want, suite.rerank, factory=suite.factory, batch_size=suite.batch_size,
                overwrite=True, progress=progress)
    return IndexReader(path)


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


KINDS = ("dense", "bm25", "hybrid", "rrf", "refine")
_LATENCIES = ("search_ms_batch1", "search_ms_batch1_cold", "encode_ms_batch1", "end_to_end_ms_batch1")


@dataclass
class ResultRow:
    """One measured configuration, as results.json stores it (the same keys as before typed rows;
    ``kind`` and the cold and repeat fields are new, and absent from older files).

    Latencies are ms per query: batch 1 (``LatencyMs``: median, p95, mean over the latency
    queries), batched (the median over repeats of one search over every query, divided by their
    number). Search excludes query encoding; end to end includes it; stages split both."""

    config: str
    kind: str
    metrics: dict[str, float]
    search_ms_batch1: LatencyMs
    search_ms_batched: float
    shortlist: str | None = None
    k: int | None = None
    rerank: str | None = None
    nprobe: int | None = None  # search-time settings of an IVF / HNSW shortlist (absent when not swept)
    ef_search: int | None = None
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
    extra: dict = field(default_factory=dict)  # e.g. build_seconds, bm25 setup seconds

    def to_dict(self) -> dict:
        d: dict = {"config": self.config, "kind": self.kind, "shortlist": self.shortlist, "k": self.k,
                   "rerank": self.rerank, "metrics": self.metrics}
        for f in fields(self):
            if f.name in d or f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.name in ("nprobe", "ef_search"):
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


def _kind_of(name: str) -> str:
    """The kind of a row from its name (files written before rows carried a kind)."""
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
    cold: Callable[[], None] | None = None  # drops the rerank rows from the page cache
    shortlist: Size | None = None
    k: int | None = None
    rerank: Size | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    resident_bytes_per_doc: float | None = None
    rerank_bytes_per_doc_on_disk: int = 0
    disk_bytes_per_doc: float | None = None
    extra: dict = field(default_factory=dict)
    # measures this row's resident memory in a fresh process (dense rows), given the encoded queries
    resident: Callable[[dict], dict] | None = None


@dataclass
class Context:
    """What every row is measured against: the queries, their vectors, the encoder and its timings."""

    enc: object
    qids: list[str]
    texts: list[str]
    qv: dict  # {Size: [n_queries, dim]}
    evaluator: Evaluator
    n_lat: int
    enc_ms: dict[int, LatencyMs]  # batch-1 encoding to each depth
    enc_batched_ms: dict[int, float]  # batched encoding to each depth, per query


def _arrays_run(reader: IndexReader):
    return lambda res, qids: run_from_arrays(qids, res[0], res[1], reader.docids)


def measure(p: Pipeline, ctx: Context) -> ResultRow:
    """Quality over every query, then timings, the same for every kind of row: batch 1 over the
    first ``n_lat`` queries after WARMUP (search with encoded queries; warm and, where the row
    reads rerank rows from disk, cold; and end to end with the query encoding), and batched as
    the median of REPEATS searches over every query after a warm-up one."""
    n = len(ctx.qids)
    every = list(range(n))
    metrics = ctx.evaluator(p.to_run(p.search(every, ctx.qv, None), ctx.qids))

    def one(i, t):
        return p.search([i], {s: v[i : i + 1] for s, v in ctx.qv.items()}, t)

    warm, stages = time_stages(one, ctx.n_lat)
    cold = time_stages(one, ctx.n_lat, before=lambda _: p.cold())[0] if p.cold else None
    batched, stages_b = time_repeats(lambda t: p.search(every, ctx.qv, t))

    def end_to_end(i):
        q = ctx.enc.encode([ctx.texts[i]], p.need) if p.need else {}
        return p.search([i], q, None)

    e2e = LatencyMs.of(time_each(end_to_end, ctx.n_lat))
    depth = max((s.layer for s in p.need), default=0)
    enc1 = ctx.enc_ms.get(depth)
    enc_b = ctx.enc_batched_ms.get(depth, 0.0)
    stage_ms, stage_b = {}, {}
    if p.need:
        first = p.shortlist.layer if p.shortlist else depth
        stage_ms["encode_to_shortlist_layer" if p.shortlist else "encode_to_rerank_layer"] = ctx.enc_ms[first]
        stage_b["encode_to_shortlist_layer" if p.shortlist else "encode_to_rerank_layer"] = ctx.enc_batched_ms[first]
        if p.shortlist and p.rerank:
            stage_ms["encode_to_rerank_layer"] = ctx.enc_ms[p.rerank.layer]
            stage_b["encode_to_rerank_layer"] = ctx.enc_batched_ms[p.rerank.layer]
    stage_ms.update({k: LatencyMs.of(v) for k, v in stages.items()})
    stage_b.update({k: round(1000 * v.p50 / n, 4) for k, v in stages_b.items()})
    search1 = LatencyMs.of(warm)
    search_b = round(1000 * batched.p50 / n, 4)
    row = ResultRow(
        config=p.config, kind=p.kind, metrics={k: round(v, 5) for k, v in metrics.items()},
        search_ms_batch1=search1, search_ms_batched=search_b,
        shortlist=str(p.shortlist) if p.shortlist else None, k=p.k, rerank=str(p.rerank) if p.rerank else None,
        nprobe=p.nprobe, ef_search=p.ef_search,
        search_ms_batch1_cold=LatencyMs.of(cold) if cold else None,
        encode_layers=depth, encode_ms_batch1=enc1, encode_ms_batched=enc_b if p.need else None,
        end_to_end_ms_batch1=e2e, stages_ms_batch1=stage_ms, stages_ms_batched=stage_b,
        total_ms_batch1_p50=round((enc1.p50 if enc1 else 0.0) + search1.p50, 3),
        # one process, one query at a time / every query at once: encoding to the depth + search
        qps_batch1=round(1000 / e2e.mean, 2), qps_batched=round(1000 / (enc_b + search_b), 2),
        batched_repeats=batched.repeats, resident_bytes_per_doc=p.resident_bytes_per_doc,
        rerank_bytes_per_doc_on_disk=p.rerank_bytes_per_doc_on_disk, disk_bytes_per_doc=p.disk_bytes_per_doc,
        resident_measured=p.resident({s: v for s, v in ctx.qv.items() if s in p.need}) if p.resident else None,
        extra=p.extra)
    log.info("%-28s %s  search %.3f ms/q", p.config, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), search1.p50)
    return row


def _evict_rerank(reader: IndexReader) -> Callable[[], None] | None:
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


def _reads_rerank_file(reader: IndexReader, size: Size) -> bool:
    """Whether rescoring at ``size`` reads the stored (memory-mapped) rerank rows."""
    return reader.manifest.rerank is not None and reader.rerank_source(size) is reader.rerank_rows()


def dense_pipeline(c: BenchConfig, reader: IndexReader) -> Pipeline:
    searcher = FunnelSearcher(reader, FunnelPlan(c.shortlist, c.k or 1000, rerank=c.rerank, top=1000, nprobe=c.nprobe,
                                                 ef_search=c.ef_search))
    short, rr = c.shortlist, c.rerank

    def search(rows, q, t):
        return searcher.search(q, timings=t)

    return Pipeline(c.name, "dense", c.sizes(), search, _arrays_run(reader),
                    cold=_evict_rerank(reader) if rr and _reads_rerank_file(reader, rr) else None,
                    shortlist=short, k=c.k, rerank=rr, nprobe=c.nprobe, ef_search=c.ef_search,
                    resident_bytes_per_doc=shortlist_resident_bytes_per_doc(reader.manifest, short),
                    rerank_bytes_per_doc_on_disk=rr.dim * 2 if rr else 0,
                    disk_bytes_per_doc=disk_bytes_per_doc(reader, short, rr),
                    resident=(lambda qv: measure_resident(reader.dir, short, c.k or 1, rr, qv, nprobe=c.nprobe, ef_search=c.ef_search))
                    if resident_available() else None)


def run_suite(suite: Suite, rebuild: bool = False, progress: bool = True, replace_stale: bool = False) -> dict:
    from adaretrieve.modeling import Encoder

    enc = Encoder(suite.model, max_length=suite.max_length, backend=suite.backend)
    reader = ensure_index(suite, enc, rebuild, progress, replace_stale)
    suite.check_search_params()
    configs = with_search_params(suite.configs(), reader, suite.nprobe, suite.ef_search)
    qrels = read_qrels(suite.qrels)
    queries = {q: t for q, t in read_queries(suite.queries).items() if q in qrels}
    qids = list(queries)
    texts = enc.queries([queries[q] for q in qids])  # with the index's query prefix
    sizes = {s for c in configs for s in c.sizes()}
    sizes |= {parse_size(h["rerank"]) for h in suite.hybrid if suite.bm25} | {parse_size(s) for s in suite.rrf if suite.bm25}
    if suite.refine and reader.manifest.rerank:
        sizes.add(reader.manifest.rerank_size)
    sizes = sorted(sizes, key=lambda s: (s.layer, s.dim))
    for s in sizes:
        s.check(enc.n_layers, enc.hidden_size)
    t0 = time.perf_counter()
    qv = enc.encode(texts, sizes, batch_size=64)
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
    ctx = Context(enc, qids, texts, qv, Evaluator(qrels, suite.metrics), n_lat, enc_ms, enc_batched_ms)

    pipelines = [dense_pipeline(c, reader) for c in configs]
    if suite.refine and reader.manifest.rerank:
        pipelines += refine_pipelines(suite, reader)
    if suite.bm25:
        pipelines += bm25_pipelines(suite, reader, qids, queries)
    rows = [measure(p, ctx) for p in pipelines]
    checks = check_expected(rows, suite.expected)
    return {
        "suite": suite.name, "description": suite.description, "model": enc.describe(), "backend": suite.backend,
        "index": {"path": str(reader.dir), "n_docs": reader.n_docs, "build": reader.manifest.build},
        "n_queries": len(qids), "queries_encode_ms_batched": round(encode_batched_ms, 3),
        "timing": {"warmup": WARMUP, "warmup_batched": WARMUP_BATCHED, "repeats": REPEATS, "latency_queries": n_lat,
                   "cold": COLD_HOW},
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": [r.to_dict() for r in rows], "checks": checks,
    }


COLD_HOW = ("before each cold query the rerank file is dropped from the page cache: madvise(MADV_DONTNEED) on "
            "this process's memory map of it, then posix_fadvise(POSIX_FADV_DONTNEED) (no root needed)")


def shortlist_resident_bytes_per_doc(manifest: Manifest, size: Size) -> float | None:
    """RAM per document of the shortlist index a search at ``size`` loads: the stored index of that
    size (its factory decides), else the flat float32 index built in memory from a stored prefix."""
    entry = next((e for e in manifest.shortlist if parse_size(e["size"]) == size), None)
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


def bm25_pipelines(suite: Suite, reader: IndexReader, qids: list[str], queries: dict) -> list[Pipeline]:
    """BM25 alone, BM25 top k reranked by dense vectors (hybrid), and RRF of BM25 with dense search.
    One Lucene searcher serves them all (its JVM start and open are reported once, not per query);
    each row times its whole path: hybrid = BM25 + rerank, RRF = BM25 + dense search + fusion (plus
    the query encoding end to end)."""
    from adaretrieve.baselines.bm25 import BM25Searcher, build_bm25_index
    from adaretrieve.search.fusion import reciprocal_rank_fusion, rerank_run

    bm = BM25Searcher(build_bm25_index(suite.corpus, suite.bm25_index or f"{suite.index}-bm25"))

    def bm25(rows, t):
        t0 = time.perf_counter()
        run = bm.search({qids[i]: queries[qids[i]] for i in rows}, k=1000, threads=1)
        if t is not None:
            t["bm25"] = t.get("bm25", 0.0) + time.perf_counter() - t0
        return run

    out = [Pipeline("bm25 (k1=0.9, b=0.4)", "bm25", [], lambda rows, q, t: bm25(rows, t), lambda run, _: run,
                    extra={"bm25_setup_seconds": bm.setup_seconds})]
    row_of = {d: i for i, d in enumerate(reader.docids)}
    for h in suite.hybrid:
        size, k = parse_size(h["rerank"]), int(h["k"])

        def hybrid(rows, q, t, size=size, k=k):
            return rerank_run(bm25(rows, t), [qids[i] for i in rows], q[size], reader, size, k, 1000, row_of, t)

        out.append(Pipeline(f"bm25 k={k} -> {size}", "hybrid", [size], hybrid, _arrays_run(reader),
                            cold=_evict_rerank(reader) if _reads_rerank_file(reader, size) else None,
                            k=k, rerank=size, rerank_bytes_per_doc_on_disk=size.dim * 2))
    for sz in suite.rrf:
        size = parse_size(sz)
        searcher = FunnelSearcher(reader, FunnelPlan(size, top=1000))

        def rrf(rows, q, t, searcher=searcher, size=size):
            sparse = bm25(rows, t)
            scores, ids = searcher.search(q, timings=t)
            t0 = time.perf_counter()
            sub = [qids[i] for i in rows]
            fused = reciprocal_rank_fusion([sparse, run_from_arrays(sub, scores, ids, reader.docids)], k=60)
            if t is not None:
                t["fusion"] = t.get("fusion", 0.0) + time.perf_counter() - t0
            return fused

        out.append(Pipeline(f"rrf(bm25, single {size})", "rrf", [size], rrf, lambda run, _: run, shortlist=size,
                            resident_bytes_per_doc=shortlist_resident_bytes_per_doc(reader.manifest, size),
                            disk_bytes_per_doc=disk_bytes_per_doc(reader, size, None)))
    return out


def refine_pipelines(suite: Suite, reader: IndexReader) -> list[Pipeline]:
    """FAISS's own answer to the same problem: SQ8 codes of the full size in RAM, refined exactly
    with float32 full vectors (IndexRefineFlat), at several k factors."""
    import faiss

    size = reader.manifest.rerank_size
    rows_f16 = reader.rerank_rows()
    sq = faiss.IndexScalarQuantizer(size.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexRefineFlat(sq)
    t0 = time.perf_counter()
    index.train(np.asarray(rows_f16[: min(reader.n_docs, 100_000)], dtype=np.float32))
    for start in range(0, reader.n_docs, 65536):
        index.add(np.asarray(rows_f16[start : start + 65536], dtype=np.float32))
    build_s = round(time.perf_counter() - t0, 2)
    out = []
    for kf in suite.refine:
        params = faiss.IndexRefineSearchParameters(k_factor=float(kf))

        def search(rows, q, t, params=params):
            return index.search(q[size], 1000, params=params)

        out.append(Pipeline(f"faiss RefineFlat(SQ8) {size} kf={kf:g}", "refine", [size], search, _arrays_run(reader),
                            resident_bytes_per_doc=resident_bytes_per_doc(size.dim, "SQ8,RFlat"),
                            extra={"build_seconds": build_s}))
    return out


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher)."""
    front = []
    for i, (c, q) in enumerate(points):
        if not any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(points) if j != i):
            front.append(i)
    return front


def plot_report(res: dict, out_dir: Path, metric: str | None = None) -> list[Path]:
    """PNG plots of quality against batch-1 latency and against resident bytes per document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(res)
    if not rows:
        return []
    metric = metric or next(iter(rows[0].metrics))
    paths = []
    for key, label, fname in (("latency", "ms per query, batch 1 (encode + search, median)", "quality_vs_latency.png"),
                              ("memory", "bytes per document resident in RAM", "quality_vs_memory.png")):
        pts, names = [], []
        for r in rows:
            if key == "latency":
                if r.end_to_end_ms_batch1 is not None:
                    cost = r.end_to_end_ms_batch1.p50
                elif r.encode_ms_batch1 is None and r.kind in ("hybrid", "rrf"):
                    continue  # an older file: its hybrid rows had no encoding time of their own
                else:
                    cost = (r.encode_ms_batch1.p50 if r.encode_ms_batch1 else 0.0) + r.search_ms_batch1.p50
            else:
                if r.resident_bytes_per_doc is None:
                    continue
                cost = r.resident_bytes_per_doc
            pts.append((cost, r.metrics[metric]))
            names.append(r.config)
        if not pts:
            continue
        front = pareto(pts)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue")
        fp = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in fp], [p[1] for p in fp], color="tab:red", label="Pareto front")
        for (x, y), n in zip(pts, names):
            ax.annotate(n, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_title(f"{res['suite']}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / fname
        fig.savefig(path, dpi=130)
        plt.close(fig)
        paths.append(path)
    return paths


def check_expected(rows: list[ResultRow] | list[dict], expected: dict) -> list[dict]:
    """Compare pinned scores ``{config name: {metric: [value, tolerance]}}`` with the measured ones."""
    by_name = {r.config: r.metrics for r in rows} if rows and isinstance(rows[0], ResultRow) else \
        {r["config"]: r["metrics"] for r in rows}
    out = []
    for name, metrics in (expected or {}).items():
        for metric, (value, tol) in metrics.items():
            got = by_name.get(name, {}).get(metric)
            ok = got is not None and abs(got - value) <= tol
            out.append({"config": name, "metric": metric, "expected": value, "tolerance": tol, "got": got, "ok": ok})
    return out


STAGES = ("encode_to_shortlist_layer", "encode_to_rerank_layer", "bm25", "shortlist", "gather", "rerank", "fusion")


def to_markdown(res: dict, command: str) -> str:
    rows = load_rows(res)
    metrics = list(rows[0].metrics) if rows else []
    m = res["machine"]
    timing = res.get("timing")
    lines = [
        f"# {res['suite']}",
        "",
        res.get("description", "").strip(),
        "",
        f"Command: `{command}`  ",
        f"Model: `{res['model']['name']}` ({res['model']['n_layers']}x{res['model']['hidden_size']}, {res['model']['pooling']} pooling, "
        f"normalise {res['model']['normalize']}, max length {res['model']['max_length']}); "
        f"{res['index']['n_docs']} docs, {res['n_queries']} queries.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), faiss {m['faiss']}; {res['date']}.  ",
        *([f"Encoder backend: {res['backend']}.  "] if res.get("backend", "torch") != "torch" else []),
        f"Index build: {res['index']['build'].get('encode_seconds', '?')} s encoding "
        f"({res['index']['build'].get('docs_per_second', '?')} docs/s).",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
    ]
    if timing:
        lines += [
            f"Every row is timed the same way: batch 1 over the first {timing['latency_queries']} queries after "
            f"{timing['warmup']} warm-up queries (median, p95), batched as the median of {timing['repeats']} searches over "
            f"every query after {timing['warmup_batched']} warm-up search, divided by the number of queries. Search "
            "excludes query encoding (timed per depth, the same way); end to end is measured per query, encoding "
            "included. BM25 uses one Lucene searcher for the whole suite: JVM start and searcher open are reported "
            "once below, not per query. Hybrid = BM25 + rerank (+ encoding to the rerank layer end to end); RRF = "
            "BM25 + dense search + fusion (+ encoding). Cold: " + timing["cold"] + ".",
            "",
        ]
        if not any(r.search_ms_batch1_cold for r in rows):
            lines += ["No row here has a cold figure: none reads rerank rows through the memory map (a stored flat "
                      "shortlist index at the rerank size serves the rerank from its float32 vectors in RAM).", ""]
    else:
        lines += ["Timings predate the timing fix (issue 11, item 14): BM25 opened a searcher per call, hybrid and RRF "
                  "rows copy BM25's timing, batched figures are single runs without warm-up.", ""]
    lines += [
        "Latency is per query at batch size 1 (median): query encoding up to the deepest layer the configuration "
        "needs, and search. Search over all queries at once is the batched column.",
        "",
        "| configuration | " + " | ".join(metrics) + " | encode ms (layers) | search ms | search ms cold | end to end ms "
        "| search ms batched | RAM B/doc est. / measured |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        enc = r.encode_ms_batch1
        enc_s = f"{enc.p50:.2f} ({r.encode_layers})" if enc and r.encode_layers else ("-" if enc is None else "0")
        cold = "-" if r.search_ms_batch1_cold is None else f"{r.search_ms_batch1_cold.p50:.3f}"
        e2e = "-" if r.end_to_end_ms_batch1 is None else f"{r.end_to_end_ms_batch1.p50:.2f}"
        ram = "-" if r.resident_bytes_per_doc is None else f"{r.resident_bytes_per_doc:g}"
        if r.resident_measured:
            ram += f" / {r.resident_measured['anon_bytes_per_doc']:g}"
        lines.append(
            f"| {r.config} | " + " | ".join(f"{r.metrics[k]:.4f}" for k in metrics)
            + f" | {enc_s} | {r.search_ms_batch1.p50:.3f} | {cold} | {e2e}"
            + f" | {r.search_ms_batched:.3f} | {ram} |"
        )
    measured = [r for r in rows if r.resident_measured]
    if measured:
        lines += ["", "RAM B/doc: estimated from the shortlist's FAISS factory / measured: private memory per document "
                  "of a fresh process (numpy + FAISS, no torch) that opens the index and answers every query at batch 1 "
                  "with that configuration (`adaretrieve.search.resident`). The query encoder's memory is the same for "
                  "every row and not included. Memory-mapped index files (rerank rows, doc ids) are page cache, shared "
                  "and reclaimable; their pages mapped after all queries:", "",
                  "| configuration | private MB | index-file pages mapped MB | RSS growth MB |", "| --- | ---: | ---: | ---: |"]
        for r in measured:
            m = r.resident_measured
            lines.append(f"| {r.config} | {m['anon_bytes'] / 2**20:.1f} | {m['file_bytes'] / 2**20:.1f} | "
                         f"{m['rss_bytes'] / 2**20:.1f} |")
    staged = [r for r in rows if r.stages_ms_batch1]
    if staged:
        cols = [k for k in STAGES if any(k in r.stages_ms_batch1 for r in staged)]
        lines += ["", "Latency per stage, ms per query: batch 1 median (p95), then batched (all queries, encoding in "
                  "batches of 64). Encoding runs once to the deepest layer a configuration needs; the time to reach the "
                  "shortlist layer alone is what a shortlist-first pipeline waits before searching. Total is measured end "
                  "to end (encode the query, then search) per query; queries/s are one process, encoding + search.", "",
                  "| configuration | " + " | ".join(k.replace("_", " ") for k in cols)
                  + " | end to end p50 | p95 | q/s batch 1 | q/s batched | disk B/doc |",
                  "| --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | ---: | ---: |"]

        def cell(r, k):
            one, many = r.stages_ms_batch1.get(k), r.stages_ms_batched.get(k)
            if one is None:
                return "-"
            return f"{one.p50:.3f} ({one.p95:.3f}) / {many:.3f}"

        for r in staged:
            e = r.end_to_end_ms_batch1
            lines.append(f"| {r.config} | " + " | ".join(cell(r, k) for k in cols)
                         + f" | {e.p50:.2f} | {e.p95:.2f} | {r.qps_batch1:.1f} | {r.qps_batched:.1f} | "
                         f"{'-' if r.disk_bytes_per_doc is None else r.disk_bytes_per_doc} |")
    setup = next((r.extra["bm25_setup_seconds"] for r in rows if "bm25_setup_seconds" in r.extra), None)
    if setup:
        lines += ["", f"BM25 set-up, once per suite (not in any latency above): JVM start {setup['jvm_start']} s, "
                  f"Lucene searcher open {setup['searcher_open']} s."]
    if res["checks"]:
        lines += ["", "Pinned expectations:", "", "| configuration | metric | expected | tolerance | got | ok |", "| --- | --- | ---: | ---: | ---: | --- |"]
        for c in res["checks"]:
            got = "missing" if c["got"] is None else f"{c['got']:.5f}"
            lines.append(f"| {c['config']} | {c['metric']} | {c['expected']} | {c['tolerance']} | {got} | {'yes' if c['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def write_report(res: dict, out_dir: str | Path, command: str) -> Path:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    res = {**res, "command": command}
    (d / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (d / "results.md").write_text(to_markdown(res, command))
    plot_report(res, d)
    return d
