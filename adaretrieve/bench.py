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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adaretrieve import __version__
from adaretrieve.data import read_qrels, read_queries
from adaretrieve.errors import AdaError
from adaretrieve.eval import Evaluator, run_from_arrays
from adaretrieve.eval.timing import time_each, time_stages
from adaretrieve.index.format import Manifest
from adaretrieve.search import IndexReader, TwoStageSearcher
from adaretrieve.sizes import Size, parse_size, parse_sizes
from adaretrieve.tune import resident_bytes_per_doc

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
        return suite

    def configs(self) -> list[dict]:
        """Every configuration as {shortlist, k, rerank}; single stage has k None and rerank None."""
        out = [{"shortlist": str(parse_size(s)), "k": None, "rerank": None} for s in self.single]
        for grid in self.two_stage:
            if not isinstance(grid, dict) or not {"shortlist", "k", "rerank"} <= set(grid):
                raise AdaError(f"two_stage entry {grid!r:.80} should be a mapping with shortlist, k and rerank")
            for s in parse_sizes(grid["shortlist"]):
                for k in grid["k"] if isinstance(grid["k"], list) else [grid["k"]]:
                    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                        raise AdaError(f"two_stage k {k!r} is not a whole number of at least 1")
                    for r in parse_sizes(grid["rerank"]):
                        out.append({"shortlist": str(s), "k": int(k), "rerank": str(r)})
        return out


def config_name(c: dict) -> str:
    return f"single {c['shortlist']}" if c["rerank"] is None else f"{c['shortlist']} k={c['k']} -> {c['rerank']}"


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
        differs = [what for what, ok in (
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
    build_index(suite.corpus, enc, path, want, suite.rerank, batch_size=suite.batch_size, overwrite=True, progress=progress)
    return IndexReader(path)


def run_suite(suite: Suite, rebuild: bool = False, progress: bool = True, replace_stale: bool = False) -> dict:
    from adaretrieve.modeling import Encoder

    enc = Encoder(suite.model, max_length=suite.max_length)
    reader = ensure_index(suite, enc, rebuild, progress, replace_stale)
    qrels = read_qrels(suite.qrels)
    queries = {q: t for q, t in read_queries(suite.queries).items() if q in qrels}
    qids = list(queries)
    texts = [queries[q] for q in qids]
    evaluator = Evaluator(qrels, suite.metrics)
    configs = suite.configs()
    sizes = parse_sizes([c[key] for c in configs for key in ("shortlist", "rerank") if c[key]])
    for s in sizes:
        s.check(enc.n_layers, enc.hidden_size)
    t0 = time.perf_counter()
    qv = enc.encode(texts, sizes, batch_size=64)
    encode_batched_ms = 1000 * (time.perf_counter() - t0) / len(qids)

    # Query encoding costs the same for every configuration of one depth: time it once per depth
    # needed (shortlist layers and rerank layers), at batch 1 and in batches of 64.
    n_lat = min(suite.latency_queries, len(texts))
    depths = sorted({parse_size(c[key]).layer for c in configs for key in ("shortlist", "rerank") if c[key]})
    enc_ms: dict[int, dict] = {}
    enc_batched_ms: dict[int, float] = {}
    for depth in depths:
        size = Size(depth, 1)
        enc_ms[depth] = time_each(lambda i, s=size: enc.encode([texts[i]], [s]), n_lat).ms()
        t0 = time.perf_counter()
        enc.encode(texts, [size], batch_size=64)
        enc_batched_ms[depth] = round(1000 * (time.perf_counter() - t0) / len(qids), 4)

    rows = []
    for c in configs:
        searcher = TwoStageSearcher(reader, c["shortlist"], c["rerank"], k=c["k"] or 1)
        short, rr = searcher.shortlist, searcher.rerank
        qs, qr = qv[short], (qv[rr] if rr else None)
        batched_stages: dict = {}
        t0 = time.perf_counter()
        scores, ids = searcher.search(qs, qr, top=1000, timings=batched_stages)
        batched_ms = 1000 * (time.perf_counter() - t0) / len(qids)
        metrics = evaluator(run_from_arrays(qids, scores, ids, reader.docids))

        def one_query(i, t, searcher=searcher, qs=qs, qr=qr):
            return searcher.search(qs[i : i + 1], qr[i : i + 1] if qr is not None else None, top=1000, timings=t)

        one, stages = time_stages(one_query, n_lat)
        need = [short] + ([rr] if rr else [])

        def end_to_end(i, searcher=searcher, need=need, short=short, rr=rr):
            q = enc.encode([texts[i]], need)
            return searcher.search(q[short], q[rr] if rr else None, top=1000)

        e2e = time_each(end_to_end, n_lat).ms()
        depth = max(short.layer, rr.layer if rr else 0)
        enc1 = enc_ms[depth]
        stage_ms = {"encode_to_shortlist_layer": enc_ms[short.layer],
                    **({"encode_to_rerank_layer": enc_ms[rr.layer]} if rr else {}),
                    **{k: v.ms() for k, v in stages.items()}}
        stage_batched = {"encode_to_shortlist_layer": enc_batched_ms[short.layer],
                         **({"encode_to_rerank_layer": enc_batched_ms[rr.layer]} if rr else {}),
                         **{k: round(1000 * v / len(qids), 4) for k, v in batched_stages.items()}}
        rows.append({
            "config": config_name(c), **c, "metrics": {k: round(v, 5) for k, v in metrics.items()},
            "search_ms_batch1": one.ms(), "search_ms_batched": round(batched_ms, 4),
            "encode_layers": depth, "encode_ms_batch1": enc1, "encode_ms_batched": enc_batched_ms[depth],
            "stages_ms_batch1": stage_ms, "stages_ms_batched": stage_batched,
            "total_ms_batch1_p50": round(enc1["p50"] + one.ms()["p50"], 3), "end_to_end_ms_batch1": e2e,
            # one process, one query at a time / in batches of 64: encoding to the depth + search
            "qps_batch1": round(1000 / e2e["mean"], 2),
            "qps_batched": round(1000 / (enc_batched_ms[depth] + batched_ms), 2),
            "resident_bytes_per_doc": shortlist_resident_bytes_per_doc(reader.manifest, short),
            "rerank_bytes_per_doc_on_disk": (rr.dim * 2 if rr else 0),
            "disk_bytes_per_doc": disk_bytes_per_doc(reader, short, rr),
        })
        log.info("%-28s %s  search %.3f ms/q", config_name(c), "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), one.ms()["p50"])
    if suite.refine and reader.manifest.rerank:
        rows += refine_rows(suite, reader, qids, qv, evaluator, n_lat, enc_ms)
    if suite.bm25:
        rows += bm25_rows(suite, reader, qids, queries, qv, evaluator)
    checks = check_expected(rows, suite.expected)
    return {
        "suite": suite.name, "description": suite.description, "model": enc.describe(),
        "index": {"path": str(reader.dir), "n_docs": reader.n_docs, "build": reader.manifest.build},
        "n_queries": len(qids), "queries_encode_ms_batched": round(encode_batched_ms, 3),
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": rows, "checks": checks,
    }


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


def bm25_rows(suite: Suite, reader: IndexReader, qids: list[str], queries: dict, qv: dict, evaluator) -> list[dict]:
    """BM25 alone, BM25 shortlists reranked by dense vectors, and RRF of BM25 with dense search."""
    from adaretrieve.baselines.bm25 import bm25_search, build_bm25_index
    from adaretrieve.search.fusion import reciprocal_rank_fusion, rerank_run

    bix = build_bm25_index(suite.corpus, suite.bm25_index or f"{suite.index}-bm25")
    t0 = time.perf_counter()
    bm = bm25_search(bix, {q: queries[q] for q in qids}, k=1000)
    bm_ms = 1000 * (time.perf_counter() - t0) / len(qids)
    n_lat = min(suite.latency_queries, len(qids), 20)
    one = time_each(lambda i: bm25_search(bix, {qids[i]: queries[qids[i]]}, k=1000), n_lat).ms()
    out = [{"config": "bm25 (k1=0.9, b=0.4)", "shortlist": None, "k": None, "rerank": None,
            "metrics": {k: round(v, 5) for k, v in evaluator(bm).items()}, "search_ms_batch1": one,
            "search_ms_batched": round(bm_ms, 4), "encode_layers": 0, "encode_ms_batch1": {"p50": 0.0},
            "resident_bytes_per_doc": None, "rerank_bytes_per_doc_on_disk": 0}]
    for h in suite.hybrid:
        size = parse_size(h["rerank"])
        scores, ids = rerank_run(bm, qids, qv[size], reader, size, int(h["k"]), 1000)
        run = run_from_arrays(qids, scores, ids, reader.docids)
        out.append({"config": f"bm25 k={h['k']} -> {size}", "shortlist": None, "k": int(h["k"]), "rerank": str(size),
                    "metrics": {k: round(v, 5) for k, v in evaluator(run).items()}, "search_ms_batch1": one,
                    "search_ms_batched": round(bm_ms, 4), "encode_layers": size.layer, "encode_ms_batch1": None,
                    "resident_bytes_per_doc": None, "rerank_bytes_per_doc_on_disk": size.dim * 2})
    for sz in suite.rrf:
        size = parse_size(sz)
        searcher = TwoStageSearcher(reader, size, None)
        scores, ids = searcher.search(qv[size], None, top=1000)
        dense = run_from_arrays(qids, scores, ids, reader.docids)
        fused = reciprocal_rank_fusion([bm, dense], k=60)
        out.append({"config": f"rrf(bm25, single {size})", "shortlist": str(size), "k": None, "rerank": None,
                    "metrics": {k: round(v, 5) for k, v in evaluator(fused).items()}, "search_ms_batch1": one,
                    "search_ms_batched": round(bm_ms, 4), "encode_layers": size.layer, "encode_ms_batch1": None,
                    "resident_bytes_per_doc": shortlist_resident_bytes_per_doc(reader.manifest, size),
                    "rerank_bytes_per_doc_on_disk": 0})
    return out


def refine_rows(suite: Suite, reader: IndexReader, qids, qv, evaluator, n_lat: int, enc_ms: dict) -> list[dict]:
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
    build_s = time.perf_counter() - t0
    q = qv[size] if size in qv else None
    if q is None:
        return []
    depth = enc_ms.get(size.layer) or next(iter(enc_ms.values()))
    out = []
    for kf in suite.refine:
        params = faiss.IndexRefineSearchParameters(k_factor=float(kf))
        t0 = time.perf_counter()
        scores, ids = index.search(q, 1000, params=params)
        batched = 1000 * (time.perf_counter() - t0) / len(qids)
        one = time_each(lambda i, p=params: index.search(q[i : i + 1], 1000, params=p), n_lat).ms()
        out.append({"config": f"faiss RefineFlat(SQ8) {size} kf={kf:g}", "shortlist": None, "k": None, "rerank": None,
                    "metrics": {k: round(v, 5) for k, v in evaluator(run_from_arrays(qids, scores, ids, reader.docids)).items()},
                    "search_ms_batch1": one, "search_ms_batched": round(batched, 4), "encode_layers": size.layer,
                    "encode_ms_batch1": depth, "resident_bytes_per_doc": resident_bytes_per_doc(size.dim, "SQ8,RFlat"),
                    "rerank_bytes_per_doc_on_disk": 0, "build_seconds": round(build_s, 2)})
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

    rows = [r for r in res["results"] if r.get("search_ms_batch1")]
    if not rows:
        return []
    metric = metric or next(iter(rows[0]["metrics"]))
    paths = []
    for key, label, fname in (("latency", "ms per query, batch 1 (encode + search, median)", "quality_vs_latency.png"),
                              ("memory", "bytes per document resident in RAM", "quality_vs_memory.png")):
        pts, names = [], []
        for r in rows:
            if key == "latency":
                enc = (r.get("encode_ms_batch1") or {}).get("p50", 0.0)
                cost = enc + r["search_ms_batch1"]["p50"]
            else:
                if r.get("resident_bytes_per_doc") is None:
                    continue
                cost = r["resident_bytes_per_doc"]
            pts.append((cost, r["metrics"][metric]))
            names.append(r["config"])
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


def check_expected(rows: list[dict], expected: dict) -> list[dict]:
    """Compare pinned scores ``{config name: {metric: [value, tolerance]}}`` with the measured ones."""
    by_name = {r["config"]: r for r in rows}
    out = []
    for name, metrics in (expected or {}).items():
        for metric, (value, tol) in metrics.items():
            got = by_name.get(name, {}).get("metrics", {}).get(metric)
            ok = got is not None and abs(got - value) <= tol
            out.append({"config": name, "metric": metric, "expected": value, "tolerance": tol, "got": got, "ok": ok})
    return out


def to_markdown(res: dict, command: str) -> str:
    metrics = list(res["results"][0]["metrics"]) if res["results"] else []
    m = res["machine"]
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
        f"Index build: {res['index']['build'].get('encode_seconds', '?')} s encoding "
        f"({res['index']['build'].get('docs_per_second', '?')} docs/s).",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
        "Latency is per query at batch size 1 (median over the first queries, after warm-up): query encoding up to the "
        "deepest layer the configuration needs, and search (shortlist + gather + rerank). Search over all queries at once is "
        "the batched column.",
        "",
        "| configuration | " + " | ".join(metrics) + " | encode ms (layers) | search ms | search ms batched | RAM B/doc |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " | ---: | ---: | ---: | ---: |",
    ]
    for r in res["results"]:
        enc = r.get("encode_ms_batch1")
        enc_s = f"{enc['p50']:.2f} ({r['encode_layers']})" if enc and r.get("encode_layers") else ("-" if enc is None else "0")
        ram = r.get("resident_bytes_per_doc")
        lines.append(
            f"| {r['config']} | " + " | ".join(f"{r['metrics'][k]:.4f}" for k in metrics)
            + f" | {enc_s} | {r['search_ms_batch1']['p50']:.3f}"
            + f" | {r['search_ms_batched']:.3f} | {'-' if ram is None else ram} |"
        )
    staged = [r for r in res["results"] if r.get("stages_ms_batch1")]
    if staged:
        lines += ["", "Latency per stage, ms per query: batch 1 median (p95), then batched (all queries, encoding in "
                  "batches of 64). Encoding runs once to the deepest layer a configuration needs; the time to reach the "
                  "shortlist layer alone is what a shortlist-first pipeline waits before searching. Total is measured end "
                  "to end (encode the query, then search) per query; queries/s are one process, encoding + search.", "",
                  "| configuration | encode to shortlist layer | encode to rerank layer | shortlist search | gather | rerank "
                  "| end to end p50 | p95 | q/s batch 1 | q/s batched | disk B/doc |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

        def cell(r, k):
            one, many = r["stages_ms_batch1"].get(k), r["stages_ms_batched"].get(k)
            if one is None:
                return "-"
            return f"{one['p50']:.3f} ({one['p95']:.3f}) / {many:.3f}"

        for r in staged:
            tot50, tot95 = r["end_to_end_ms_batch1"]["p50"], r["end_to_end_ms_batch1"]["p95"]
            lines.append(f"| {r['config']} | {cell(r, 'encode_to_shortlist_layer')} | {cell(r, 'encode_to_rerank_layer')} | "
                         f"{cell(r, 'shortlist')} | {cell(r, 'gather')} | {cell(r, 'rerank')} | {tot50:.2f} | {tot95:.2f} | "
                         f"{r['qps_batch1']:.1f} | {r['qps_batched']:.1f} | {r.get('disk_bytes_per_doc', '-')} |")
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
