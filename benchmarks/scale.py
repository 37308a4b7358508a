"""Scale benchmark with no model: synthetic Matryoshka-shaped unit vectors (768-d, variance
decaying along the dims, clustered), two-stage search from an adaretrieve index against exact flat
768-d float32 search and FAISS's own IndexRefineFlat / IndexHNSWFlat.

    python benchmarks/scale.py --n 10000 100000 1000000 [--queries 64] [--out benchmarks/results/scale]

Per N: build time, RAM resident (anonymous RSS growth while loading, and the index bytes), bytes on
disk, per-query latency at batch 1 and batch 64, recall@10 of each method against exact full-size
search. The memory-bandwidth floor of the shortlist scan is measured in the same run.

Every method is timed alike (adaretrieve.eval.timing): batch 1 over all the queries after WARMUP
untimed ones (median, p95), batch 64 as the median of REPEATS whole-batch calls after a warm-up
one. Two-stage k=200 rows are also timed cold: before each query the float16 rerank file is
dropped from the page cache (pagecache.evict: madvise(MADV_DONTNEED) on our mapping, then
posix_fadvise(POSIX_FADV_DONTNEED); no root needed). HNSW is built at each efConstruction asked for.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from adaretrieve.bench.measure import machine_info  # noqa: E402
from adaretrieve.bench.verdicts import ANN, ann_kind, goal_rows, row_ram_bytes  # noqa: E402
from adaretrieve.eval.pagecache import evict, resident_fraction  # noqa: E402
from adaretrieve.eval.timing import REPEATS, WARMUP, WARMUP_BATCHED, time_repeats, time_stages  # noqa: E402
from adaretrieve.index.writer import IndexWriter  # noqa: E402
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader  # noqa: E402
from adaretrieve.search.resident import measure_resident  # noqa: E402
from adaretrieve.sizes import Size, parse_size, truncate  # noqa: E402

D = 768
FULL = Size(12, D)
SHORT = [Size(2, 32), Size(4, 64)]
EF768 = (16, 32, 64, 128, 256, 512, 1024)  # efSearch of FAISS HNSW32 over 768-d: its recall/latency curve
# sublinear shortlists over the small sizes (ANN, named in adaretrieve.bench.verdicts with the goal
# rule that reads them), by their key prefix in the results: HNSW32 graphs; IVF lists holding the
# vectors as float32 (IVF), 8-bit scalar codes (IVFSQ8) or 4-bit PQ codes scanned by FAISS's fast-scan
# kernels (IVFPQfs: 32 sub-quantizers, 16 bytes a vector at both sizes); SQfp16: a flat scan of float16
# codes, half the bytes of Flat
# (k, efSearch / nprobe) per shortlist depth: efSearch below k is raised to k by FAISS, so it starts at k
ANN_SWEEP = {"HNSW32": [(200, 200), (200, 400), (1000, 1000), (2000, 2000)],
             "IVF": [(200, 8), (200, 32), (200, 128), (1000, 32), (1000, 64), (1000, 128), (2000, 128)],
             "IVFSQ8": [(200, 32), (1000, 64), (1000, 128), (2000, 128)],
             "IVFPQfs": [(1000, 64), (1000, 128), (2000, 128), (2000, 256)],
             "SQfp16": [(200, None), (1000, None)]}
ANN_EFC = 200  # efConstruction of HNSW over the small sizes: the HNSW-768 baseline's best, so both graphs are alike
PARAM = {"HNSW32": ("ef_search", "ef"), "IVF": ("nprobe", "nprobe"), "IVFSQ8": ("nprobe", "nprobe"),
         "IVFPQfs": ("nprobe", "nprobe"), "SQfp16": (None, "")}


def ann_factory(kind: str, n: int) -> str:
    """The `index --factory` string of a sublinear shortlist kind at ``n`` documents."""
    lists = {"IVF": "Flat", "IVFSQ8": "SQ8", "IVFPQfs": "PQ32x4fs"}
    return f"IVF{nlist_for(n)},{lists[kind]}" if kind in lists else kind


MODEL = {"name": "synthetic", "path": "synthetic", "weights_sha256": "", "normalize": True, "pooling": "mean",
         "max_length": 1, "n_layers": 12, "hidden_size": D}  # no text is encoded: max_length is only a placeholder


def rss_anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Synthetic:
    """Clustered vectors whose per-dim scale decays like a Matryoshka embedding's variance, so the
    leading dims carry most of the signal. One generator per layer-free vector: every size is a
    prefix of the same 768-d vector (what a 2D model's shortlist layer would roughly give)."""

    def __init__(self, seed: int = 0, clusters: int = 1000):
        rng = np.random.default_rng(seed)
        self.scale = (1.0 / np.sqrt(1.0 + np.arange(D) / 4.0)).astype(np.float32)
        self.centers = (rng.standard_normal((clusters, D)).astype(np.float32) * self.scale)
        self.seed = seed

    def chunk(self, start: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        c = self.centers[rng.integers(0, len(self.centers), n)]
        x = c + 0.8 * rng.standard_normal((n, D)).astype(np.float32) * self.scale
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def queries(self, n: int, n_docs: int) -> np.ndarray:
        """Noisy copies of random documents: each query has a true neighbourhood."""
        rng = np.random.default_rng([self.seed, 999_999_999])
        ids = rng.integers(0, n_docs, n)
        x = np.stack([self.chunk(int(i), 1)[0] for i in ids])
        x = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32) * self.scale
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def bandwidth_gbs(mb: int = 1024, repeats: int = 5) -> float:
    a = np.ones(mb * 1024 * 1024 // 4, dtype=np.float32)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def time_batch1(fn, q: np.ndarray, before=None) -> dict:
    """One query at a time over every query in ``q``, after WARMUP untimed ones."""
    t, _ = time_stages(lambda i, _: fn(q[i : i + 1]), len(q), WARMUP, before=before)
    return {"p50_ms": 1000 * t.p50, "p95_ms": 1000 * t.p95, "queries": t.repeats, "warmup": WARMUP}


def time_batch(fn, q: np.ndarray) -> dict:
    """The whole batch ``q`` at once: median of REPEATS calls after WARMUP_BATCHED, per query."""
    t, _ = time_repeats(lambda _: fn(q))
    return {"per_query_ms": 1000 * t.p50 / len(q), "batch": len(q), "repeats": t.repeats, "warmup": WARMUP_BATCHED}


def time_cold(fn, q: np.ndarray, reader: IndexReader) -> dict:
    """Batch 1 with the float16 rerank file dropped from the page cache before every query."""
    rows = reader.rerank_rows()
    path = reader.gen_dir / reader.manifest.rerank["file"]

    def drop(_):
        evict(path, [rows])

    out = time_batch1(fn, q, before=drop)
    drop(0)
    left = resident_fraction(path)
    out["how"] = "madvise(MADV_DONTNEED) on the memory map + posix_fadvise(POSIX_FADV_DONTNEED) before each query"
    out["resident_after_evict"] = None if left is None else round(left, 4)
    warm_rerank(reader)  # the rows timed next start warm, like every other warm row
    return out


def warm_rerank(reader: IndexReader) -> float | None:
    """The warm rows' cache state, made the same before each of them: the rerank file read whole
    into the page cache and every page of the reader's memory map touched once (a long-running
    searcher's steady state; a cold row before would otherwise leave the next ones half cold).
    Returns the fraction of the file in the page cache afterwards (mincore)."""
    rows = reader.rerank_rows()
    path = reader.gen_dir / reader.manifest.rerank["file"]
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass
    flat = np.asarray(rows).reshape(-1)
    float(flat[:: max(1, 4096 // flat.itemsize)].sum(dtype=np.float64))  # one element per page: each page mapped
    left = resident_fraction(path)
    return None if left is None else round(left, 4)


def rerank_file(reader: IndexReader) -> dict:
    """What the memory model (verdicts.row_ram_bytes) charges a row that reads the float16 rerank
    file: the file's bytes when timed warm (it was read whole into the page cache first), the bytes
    of one row per candidate when timed cold."""
    path = reader.gen_dir / reader.manifest.rerank["file"]
    return {"rerank_file_bytes": path.stat().st_size, "rerank_row_bytes": FULL.dim * 2}


def recall_at_10(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(r[:10]) & set(t[:10])) / 10 for r, t in zip(rows, truth)]))


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())  # the generation folder too


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: the power of two nearest 4 sqrt(n) (4096 at 1M, 1024 at 100k)."""
    return max(16, 1 << round(math.log2(4 * math.sqrt(n))))


def faiss_resident(path: Path, q: np.ndarray, what: str) -> dict:
    """Private memory of a fresh torch-free process that reads the FAISS index at ``path`` and answers
    every query of ``q`` one at a time (the same measure as adaretrieve.search.resident)."""
    import subprocess
    import tempfile

    code = ("import json, sys, numpy as np, faiss\n"
            "from adaretrieve.search.resident import memory\n"
            "before = memory(); ix = faiss.read_index(sys.argv[1]); q = np.load(sys.argv[2])\n"
            "for i in range(len(q)): ix.search(q[i:i+1], 10)\n"
            "after = memory(); print(json.dumps({'anon_bytes': after['anon'] - before['anon'], 'what': sys.argv[3]}))\n")
    with tempfile.TemporaryDirectory(prefix="scale-resident-") as tmp:
        np.save(Path(tmp) / "q.npy", q)
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(Path(tmp) / "q.npy"), what],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                   "PYTHONPATH": str(ROOT)})
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"measuring {path} failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return {}


@contextmanager
def faiss_threads(n: int):
    """FAISS on ``n`` threads inside the block (graph and list building: the slow part, given every
    core), back to the search threads after it."""
    search_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(search_threads)


def hnsw768(gen: Synthetic, n: int, efc: int, threads: int, chunk: int, cache: Path):
    """FAISS HNSW32 over the 768-d vectors at efConstruction ``efc``: read from ``cache`` when an
    earlier run built it over the same synthetic vectors, else built (on ``threads`` threads) and
    written there. Returns (index, build seconds, file)."""
    path = cache / f"hnsw32-768-n{n}-efc{efc}-seed{gen.seed}-c{len(gen.centers)}.faiss"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return faiss.read_index(str(path)), json.loads(meta.read_text())["build_seconds"], path
    h = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = efc
    with faiss_threads(threads):
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            h.add(gen.chunk(start, min(chunk, n - start)))
        build = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    faiss.write_index(h, str(tmp))
    os.replace(tmp, path)
    meta.write_text(json.dumps({"build_seconds": round(build, 2), "threads": threads}) + "\n")
    return h, build, path


def write_synthetic(gen: Synthetic, n: int, out: Path, factory: str, chunk: int, sizes: Sequence[Size] = SHORT,
                    ef_construction: int | None = None, each=None) -> tuple[float, float]:
    """An adaretrieve index of ``n`` synthetic documents at ``out`` (``sizes`` shortlists built with
    ``factory``, float16 768-d rerank rows), as `adaretrieve index` writes one; ``each(x)`` also gets
    every 768-d chunk. Returns (seconds building, seconds generating the vectors, not counted in the first)."""
    t0, gen_s = time.perf_counter(), 0.0
    w = IndexWriter(out, n, sizes, FULL, factory=factory, ef_construction=ef_construction)
    for start in range(0, n, chunk):
        g0 = time.perf_counter()
        x = gen.chunk(start, min(chunk, n - start))
        gen_s += time.perf_counter() - g0
        w.add([str(i) for i in range(start, start + len(x))], {s: truncate(x, s.dim, True) for s in [*sizes, FULL]})
        if each is not None:
            each(x)
    w.close(MODEL, corpus="synthetic")
    return time.perf_counter() - t0 - gen_s, gen_s


def ann_rows(gen: Synthetic, n: int, kind: str, q: np.ndarray, truth: np.ndarray, work: Path, threads: int,
             chunk: int, ef_construction: int = ANN_EFC) -> dict:
    """Shortlists of one ``kind`` of ANN (HNSW32, IVF with float32 / SQ8 / PQ fast-scan codes, or a
    flat SQfp16 scan) over each small size, built by adaretrieve's IndexWriter (what
    `adaretrieve index --factory ...` writes) and searched by FunnelSearcher with ef_search / nprobe,
    rescored exactly at 768-d from the float16 rows: one row per (size, k, setting) of ANN_SWEEP.
    HNSW graphs are built at ``ef_construction`` (`index --ef-construction`)."""
    factory = ann_factory(kind, n)
    param, tag = PARAM[kind]
    d = work / f"scale-{n}-{kind.lower()}"
    shutil.rmtree(d, ignore_errors=True)
    efc = ef_construction if kind == "HNSW32" else None
    with faiss_threads(threads):
        build, _ = write_synthetic(gen, n, d, factory, chunk, ef_construction=efc)
    reader = IndexReader(d)
    files = {parse_size(e["size"]): reader.gen_dir / e["file"] for e in reader.manifest.shortlist}
    out: dict = {}
    for s in SHORT:
        reader.shortlist_index(s)
        qv = {s: truncate(q, s.dim, True), FULL: q}
        first = True
        for k, p in ANN_SWEEP[kind]:
            if k >= n:
                continue
            kw = {param: p} if param else {}
            srch = FunnelSearcher(reader, FunnelPlan(s, k, rerank=FULL, top=10, **kw))

            def run(x, srch=srch, s=s):
                return srch.search({s: truncate(x, s.dim, True), FULL: x})

            measured = measure_resident(d, s, k, FULL, qv, **kw, top=10)
            row = {"rerank_cached": warm_rerank(reader), "batch1": time_batch1(run, q), "batch64": time_batch(run, q[:64]),
                   "recall@10": recall_at_10(run(q)[1], truth), "factory": factory, "shortlist": str(s), "k": k,
                   **kw, **({"ef_construction": efc} if efc else {}), "build_seconds_both_sizes": round(build, 2), "build_threads": threads,
                   "resident_bytes": files[s].stat().st_size, "resident_measured_bytes": measured["anon_bytes"],
                   **rerank_file(reader)}
            if first:  # the shallowest setting, timed again with the rerank rows dropped from the page cache
                row["batch1_cold"] = time_cold(run, q, reader)
                first = False
            out[f"{kind.lower()}_{s}_k{k}" + (f"_{tag}{p}" if param else "")] = row
    del reader
    gc.collect()
    shutil.rmtree(d, ignore_errors=True)
    return out


def run_n(n: int, n_queries: int, work: Path, hnsw: list[tuple[int, int]], build_threads: int = 1,
          ann: Sequence[str] = ANN, cache: Path | None = None, ann_efc: int = ANN_EFC) -> dict:
    """Every method at N = ``n``. ``hnsw``: (efConstruction, largest N to build it at) pairs for
    FAISS HNSW32 over 768-d (kept in ``cache`` when given, and reused from there: the synthetic
    vectors are the same on every run); ``ann``: the sublinear shortlist structures built over
    each small size with adaretrieve's own index writer (kinds of ``ANN``)."""
    gen = Synthetic()
    res: dict = {"n": n}
    ix_dir = work / f"scale-{n}"
    shutil.rmtree(ix_dir, ignore_errors=True)
    # exact baseline: flat 768-d float32, built alongside (it is what we compare against)
    exact = faiss.IndexFlatIP(D)
    chunk = 50_000
    build, gen_s = write_synthetic(gen, n, ix_dir, "Flat", chunk, each=exact.add)
    res["build_seconds_adaretrieve_incl_exact"] = round(build, 2)
    res["generate_seconds"] = round(gen_s, 2)
    res["disk_bytes"] = dir_bytes(ix_dir)
    res["exact_index_bytes"] = n * D * 4

    q = gen.queries(n_queries, n)
    truth = exact.search(q, 10)[1]
    res["exact"] = {"batch1": time_batch1(lambda x, ix=exact: ix.search(x, 10), q),
                    "batch64": time_batch(lambda x, ix=exact: ix.search(x, 10), q[:64]), "recall@10": 1.0}
    del exact  # only the ground truth is needed from here on; reset() would keep the memory allocated
    gc.collect()

    gc.collect()
    before = rss_anon_mb()
    reader = IndexReader(ix_dir)
    searchers = {s: FunnelSearcher(reader, FunnelPlan(s, 200, rerank=FULL, top=10)) for s in SHORT}
    for s in SHORT:  # load the shortlist indexes now, so RSS counts them
        reader.shortlist_index(s)
    res["reader_rss_anon_mb"] = round(rss_anon_mb() - before, 1)
    res["resident_bytes_model"] = {str(s): n * s.dim * 4 for s in SHORT}

    for s, srch in searchers.items():
        qv = {s: truncate(q, s.dim, True), FULL: q}

        def two(x, srch=srch, s=s):
            return srch.search({s: truncate(x, s.dim, True), FULL: x})

        def scan(x, srch=srch, s=s):
            return srch.index.search(truncate(x, s.dim, True), 200)

        rows = srch.search(qv)[1]
        cached = warm_rerank(reader)
        res[f"two_stage_{s}_k200"] = {"rerank_cached": cached, "k": 200, **rerank_file(reader),
            "batch1": time_batch1(two, q), "batch1_cold": time_cold(two, q, reader),
            "batch64": time_batch(two, q[:64]),
            "shortlist_scan_batch1": time_batch1(scan, q), "recall@10": recall_at_10(rows, truth),
            "resident_bytes": n * s.dim * 4,
            "resident_measured_bytes": measure_resident(ix_dir, s, 200, FULL, qv, top=10)["anon_bytes"]}

    # deeper shortlists buy recall with more candidate rows read from disk; a three-stage funnel
    # spends the extra candidates on a cheap middle size instead of on 768-d rows
    small, mid = SHORT
    for name, plan in ((f"two_stage_{small}_k1000", FunnelPlan(small, 1000, rerank=FULL, top=10)),
                       (f"two_stage_{mid}_k1000", FunnelPlan(mid, 1000, rerank=FULL, top=10)),
                       (f"funnel_{small}_k2000_{mid}_k200", FunnelPlan(small, 2000, ((mid, 200),), FULL, top=10))):
        srch = FunnelSearcher(reader, plan)

        def run(x, srch=srch):
            return srch.search({s: truncate(x, s.dim, True) for s in srch.sizes()})

        cached = warm_rerank(reader)
        res[name] = {"rerank_cached": cached, "k": plan.k, **rerank_file(reader),
                     "batch1": time_batch1(run, q), "batch64": time_batch(run, q[:64]),
                     "recall@10": recall_at_10(run(q)[1], truth),
                     "resident_bytes": n * sum(s.dim for s in srch.sizes() if s != FULL) * 4}

    # FAISS's own refine: SQ8 over the full 768 dims, exact refine with the float32 vectors
    sq = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    refine = faiss.IndexRefineFlat(sq)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        x = gen.chunk(start, min(chunk, n - start))
        if start == 0:
            refine.train(x)  # trains the SQ8 ranges on the first chunk
        refine.add(x)
    build = time.perf_counter() - t0
    for k_factor in (1.0, 4.0, 20.0):
        params = faiss.IndexRefineSearchParameters(k_factor=k_factor)

        def rf(x, params=params, ix=refine):
            return ix.search(x, 10, params=params)

        rows = rf(q)[1]
        res[f"refineflat_sq8_kf{int(k_factor)}"] = {
            "batch1": time_batch1(rf, q), "batch64": time_batch(rf, q[:64]),
            "recall@10": recall_at_10(rows, truth), "build_seconds": round(build, 2),
            "resident_bytes": n * D * (1 + 4)}
    del refine, rf  # free its memory before HNSW is built (reset() keeps the allocation)
    gc.collect()

    res["hnsw_build_threads"] = build_threads
    res["hnsw_skipped"] = [efc for efc, n_max in hnsw if n > n_max]
    for efc in (efc for efc, n_max in hnsw if n <= n_max):
        h, build, path = hnsw768(gen, n, efc, build_threads, chunk, cache or work)
        measured = faiss_resident(path, q, "hnsw")
        for ef in EF768:
            params = faiss.SearchParametersHNSW(efSearch=ef)

            def hs(x, h=h, params=params):
                return h.search(x, 10, params=params)

            rows = hs(q)[1]
            res[f"hnsw32_efc{efc}_ef{ef}"] = {"batch1": time_batch1(hs, q), "batch64": time_batch(hs, q[:64]),
                                             "recall@10": recall_at_10(rows, truth), "build_seconds": round(build, 2),
                                             "ef_construction": efc, "ef_search": ef,
                                             "resident_bytes": n * D * 4 + n * 32 * 2 * 4,
                                             "resident_measured_bytes": measured.get("anon_bytes")}
        del h, hs
        gc.collect()

    # the AdANNS idea: a sublinear structure over the cheap size, exact rescoring at 768-d
    for kind in ann:
        res.update(ann_rows(gen, n, kind, q, truth, work, build_threads, chunk, ann_efc))
    shutil.rmtree(ix_dir, ignore_errors=True)
    res["goal"] = goal_rows(res)  # in the JSON too: the README reads results files only
    return res


def ours(key: str) -> bool:
    """An adaretrieve row (flat two-stage, funnel, or a shortlist kind of ``ANN``), not FAISS's own."""
    return key.startswith(("two_stage", "funnel")) or ann_kind(key) is not None


def measured_mb(v: dict) -> str:
    m = v.get("resident_measured_bytes")
    return "-" if m is None else f"{m / 1e6:.1f}"


def goal_lines(r: dict) -> list[str]:
    lines = []
    for g in goal_rows(r):
        head = (f"| {g['row']} | {g['timing']} | {g['recall']:.4f} | {g['ms']:.3f} | {g['private'] / 1e6:.0f} | "
                f"{g['ram'] / 1e6:.0f} | ")
        if g["ref"] is None:
            lines.append(head + "no HNSW-768 row reaches this recall | - | - | - | - |")
        else:
            lines.append(head + f"{g['ref']} ({g['ref_recall']:.4f}) | {g['ref_ms']:.3f} | {g['interp_ms']:.3f} | {g['speed']:.2f}x, "
                         f"1/{g['ram_ratio']:.1f} | {'yes' if g['met'] else 'no'} |")
    return lines


def to_markdown(report: dict) -> str:
    lines = ["# Scale benchmark (synthetic 768-d Matryoshka-shaped vectors)", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, faiss {report['machine']['faiss']}; "
             f"memory bandwidth (numpy sum over 1 GiB, one thread) {report['bandwidth_gbs']:.1f} GB/s; {report['threads']} "
             f"search thread(s) for every method; {report['date']}.", "",
             *([f"Note: {report['note']}", ""] if report.get("note") else []),
             *([f"Re-derived: {report['rederived']}", ""] if report.get("rederived") else []),
             "Latency in ms per query: batch 1 median (p95) over every query after "
             f"{report.get('warmup', '?')} warm-up queries, and batch 64 per query (median of "
             f"{report.get('repeats', '?')} repeats after a warm-up batch); every method is timed on the same queries. "
             "Resident = bytes of the index the method keeps in its own memory; measured = the private memory of a "
             "fresh process serving the row. RAM needed (adaretrieve.bench.verdicts.row_ram_bytes) = everything the "
             "row's latency needed resident: private memory plus the page cache of the files it read. Two-stage rows "
             "keep the shortlist index in private memory and read float16 candidate rows through a memory map; their "
             "warm rows were timed with the whole rerank file read into the page cache first, so they are charged its "
             "bytes. Cold = the rerank file dropped from the page cache before each query (madvise(MADV_DONTNEED) on the "
             "process's memory map, then posix_fadvise(POSIX_FADV_DONTNEED); mincore confirms what stays cached); a "
             "cold query keeps only its candidates' rows.", ""]
    for r in report["results"]:
        n = r["n"]
        ex = r["exact"]
        lines += [f"## N = {n:,}", "",
                  f"Build (adaretrieve index: 2 shortlists + float16 rerank rows, plus the exact index): "
                  f"{r['build_seconds_adaretrieve_incl_exact']} s; on disk {r['disk_bytes'] / 1e6:.1f} MB; "
                  f"reader anonymous RSS growth {r['reader_rss_anon_mb']} MB.", "",
                  "| method | recall@10 | batch-1 ms p50 (p95) | batch-1 cold ms p50 (p95) | batch-64 ms/query | queries "
                  "| resident MB | measured MB | RAM needed MB (warm) | speed-up vs exact (batch 1) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        base = ex["batch1"]["p50_ms"]
        rows = [("exact flat 768-d float32", ex, r["exact_index_bytes"])]
        rows += [(k, v, v["resident_bytes"]) for k, v in r.items() if isinstance(v, dict) and "recall@10" in v and k != "exact"]
        for name, v, mem in rows:
            cold = v.get("batch1_cold")
            cold_s = f"{cold['p50_ms']:.3f} ({cold['p95_ms']:.3f})" if cold else "-"
            lines.append(f"| {name} | {v['recall@10']:.4f} | {v['batch1']['p50_ms']:.3f} ({v['batch1']['p95_ms']:.3f}) | "
                         f"{cold_s} | {v['batch64']['per_query_ms']:.3f} | {v['batch1'].get('queries', '?')} | "
                         f"{mem / 1e6:.1f} | {measured_mb(v)} | {(row_ram_bytes(v, n) or mem) / 1e6:.1f} | "
                         f"{base / v['batch1']['p50_ms']:.1f}x |")
        lines += ["", "At equal recall (the fastest FAISS configuration whose recall@10 is at least the adaretrieve row's, "
                  "batch 1 median):", ""]
        faiss_rows = [(k, v) for k, v in r.items() if isinstance(v, dict) and k.startswith(("hnsw32_efc", "refineflat"))]
        for k, v in r.items():
            if not (isinstance(v, dict) and ours(k)):
                continue
            match = [(fk, fv) for fk, fv in faiss_rows if fv["recall@10"] >= v["recall@10"]]
            if match:
                fk, fv = min(match, key=lambda kv: kv[1]["batch1"]["p50_ms"])
                ratio = fv["batch1"]["p50_ms"] / v["batch1"]["p50_ms"]
                ours_ram, their_ram = row_ram_bytes(v, n), row_ram_bytes(fv, n)
                lines.append(f"- {k} (recall {v['recall@10']:.3f}, {v['batch1']['p50_ms']:.2f} ms, {ours_ram / 1e6:.0f} MB "
                             f"needed) vs {fk} (recall {fv['recall@10']:.3f}, {fv['batch1']['p50_ms']:.2f} ms, "
                             f"{their_ram / 1e6:.0f} MB): adaretrieve {ratio:.2f}x the speed, "
                             f"1/{their_ram / ours_ram:.1f} the RAM.")
        for k, v in r.items():
            if k.startswith("hnsw32_efc") and k.endswith("_ef32"):
                lines.append(f"\nHNSW build ({r.get('hnsw_build_threads', 1)} thread(s), M=32, efConstruction "
                             f"{v.get('ef_construction', 40)}): {v['build_seconds']} s.")
        ann = [v for k, v in r.items() if isinstance(v, dict) and ann_kind(k)]
        for fac in dict.fromkeys(v["factory"] for v in ann):
            v = next(v for v in ann if v["factory"] == fac)
            efc = f" --ef-construction {v['ef_construction']}" if v.get("ef_construction") else ""
            lines.append(f"\nadaretrieve index with --factory {fac}{efc} over both small sizes ({v['build_threads']} thread(s), "
                         f"adaretrieve's IndexWriter, float16 rerank rows included): {v['build_seconds_both_sizes']} s.")
        goals = goal_lines(r)
        if goals:
            lines += ["", "Sublinear shortlists over the small size against FAISS HNSW32 over 768-d (the goal: its batch-1 "
                      "latency at equal recall with at most 1/6 of its RAM; rule and memory model in "
                      "adaretrieve.bench.verdicts). RAM = everything the timed latency needed resident: private memory "
                      "(measured in a process serving the configuration, the index file's size where not measured) plus, "
                      "warm, the whole float16 rerank file the row was timed with in the page cache, or, cold, the pages "
                      "of one query's candidate rows. HNSW-768's latency at equal recall is interpolated along its "
                      "measured recall/latency frontier, log-latency linear in recall:", "",
                      "| adaretrieve row | timed | recall@10 | ms | private MB | RAM MB | fastest HNSW-768 row with "
                      "recall >= | its ms | HNSW-768 ms at equal recall (interpolated) | speed, RAM vs HNSW-768 | goal met |",
                      "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | :---: |", *goals]
        if r.get("hnsw_skipped"):
            lines.append(f"\nHNSW at efConstruction {', '.join(map(str, r['hnsw_skipped']))} not built at this N "
                         "(over its --hnsw limit: too slow on one core for this run).")
        for s in SHORT:
            v = r.get(f"two_stage_{s}_k200")
            if v:
                floor_ms = 1000 * n * s.dim * 4 / (report["bandwidth_gbs"] * 1e9)
                lines.append("")
                lines.append(f"Shortlist scan {s} (k=200) alone: {v['shortlist_scan_batch1']['p50_ms']:.3f} ms at batch 1; "
                             f"bandwidth floor {floor_ms:.3f} ms ({v['shortlist_scan_batch1']['p50_ms'] / floor_ms:.2f}x the floor). "
                             f"RAM ratio vs exact flat: 1/{r['exact_index_bytes'] / v['resident_bytes']:.0f} for the shortlist "
                             f"alone, 1/{r['exact_index_bytes'] / row_ram_bytes(v, n):.1f} with the rerank file its warm "
                             "latency had cached.")
        lines.append("")
    return "\n".join(lines) + "\n"


def curve_series(r: dict) -> dict[str, list[tuple[float, float, float]]]:
    """(batch-1 ms, recall@10, RAM bytes) points per method family at one N, for the curves."""
    fam: dict[str, list] = {}
    for k, v in r.items():
        if not (isinstance(v, dict) and "recall@10" in v):
            continue
        if k.startswith("hnsw32_efc"):
            name = f"FAISS HNSW32 768-d efC={v['ef_construction']}"
        elif ann_kind(k):
            name = f"{ann_kind(k)} over {v['shortlist']} -> 768"
        elif k.startswith("two_stage"):
            name = f"flat {k.split('_')[2]} -> 768"
        elif k == "exact":
            name = "exact flat 768-d"
        else:
            continue
        mem = row_ram_bytes(v, r["n"]) or r["exact_index_bytes"]
        fam.setdefault(name, []).append((v["batch1"]["p50_ms"], v["recall@10"], mem))
    return fam


def plot_curves(r: dict, path: Path) -> None:
    """recall@10 against batch-1 latency (left: every measured point, a line through each family's
    frontier) and against resident RAM (right) at one N."""
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2])  # 20 colours: no family shares one
    for name, pts in sorted(curve_series(r).items()):
        pts = sorted(pts)
        front = [p for i, p in enumerate(pts) if all(p[1] > o[1] for o in pts[:i])]  # best recall so far, by ms
        style = "--" if name.startswith("FAISS") else "-"
        line, = ax.plot([p[0] for p in front], [p[1] for p in front], style, label=name)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color=line.get_color())
        bx.scatter([p[2] / 1e6 for p in pts], [p[1] for p in pts], s=12, color=line.get_color(), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (batch 1, median, 1 thread)")
    ax.set_ylabel("recall@10 vs exact 768-d")
    bx.set_xscale("log")
    bx.set_xlabel("RAM needed, MB (private + page cache the timing relied on)")
    ax.set_title(f"N = {r['n']:,} synthetic 768-d")
    for x in (ax, bx):
        x.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--hnsw", nargs="+", default=["40:1000000", "200:1000000"], metavar="EFC:MAX_N",
                    help="build HNSW (M=32) at efConstruction EFC for N up to MAX_N (1M at efConstruction 40: ~6 min "
                         "on 2 cores; 200 takes several times longer)")
    ap.add_argument("--build-threads", type=int, default=0, help="threads for building HNSW (default: every core "
                    "this process may run on)")
    ap.add_argument("--merge", action="store_true", help="keep the other N of an existing results.json in --out "
                    "(a run of only the largest N after smaller ones)")
    ap.add_argument("--note", default=None, help="a line for the report, e.g. how the run was pinned")
    ap.add_argument("--work", default=str(ROOT / "indexes"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"))
    ap.add_argument("--ann", nargs="*", default=list(ANN), choices=list(ANN), help="sublinear shortlist structures "
                    "built over each small size by adaretrieve's index writer and rescored at 768-d")
    ap.add_argument("--ann-efc", type=int, default=ANN_EFC, help="efConstruction of the HNSW graphs over the small sizes")
    ap.add_argument("--cache", default=None, help="folder where the FAISS HNSW-768 graphs are kept and reused by a "
                    "later run (default: --work); at 1M each is 3.3 GB and takes minutes to build")
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads for every method (default 1: the "
                    "machine is shared, and one thread gives every method the same footing)")
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    try:  # numpy's BLAS (the rerank's products) on the same threads as FAISS
        from threadpoolctl import threadpool_limits

        threadpool_limits(a.threads)
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS threads follow OMP_NUM_THREADS", file=sys.stderr)
    hnsw = [(int(e), int(m)) for e, m in (h.split(":") for h in a.hnsw)]
    build_threads = a.build_threads or len(os.sched_getaffinity(0))
    report = {"command": "python " + " ".join(sys.argv), "machine": machine_info(), "bandwidth_gbs": bandwidth_gbs(),
              "threads": a.threads, "warmup": WARMUP, "repeats": REPEATS, "note": a.note,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": []}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.merge and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        report["results"] = [r for r in old["results"] if r["n"] not in a.n]
        report["command"] = f"{old['command']}; then {report['command']}"
    for n in a.n:
        report["results"].append(run_n(n, a.queries, Path(a.work), hnsw, build_threads, ann=a.ann,
                                       cache=Path(a.cache) if a.cache else None, ann_efc=a.ann_efc))
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "results.md").write_text(to_markdown(report))
        print(f"done N={n}", flush=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [r["n"] for r in report["results"]]
        for key, label in [("exact", "exact flat 768-d"), ("two_stage_2x32_k200", "two-stage 32-d k=200 -> 768"),
                           ("two_stage_4x64_k200", "two-stage 64-d k=200 -> 768"), ("refineflat_sq8_kf4", "RefineFlat SQ8 kf=4"),
                           ("two_stage_2x32_k1000", "two-stage 32-d k=1000 -> 768"), ("hnsw32_efc40_ef128", "HNSW32 efC=40 ef=128"),
                           ("hnsw32_efc200_ef128", "HNSW32 efC=200 ef=128")]:
            ys = [r[key]["batch1"]["p50_ms"] for r in report["results"] if key in r]
            if len(ys) == len(ns):
                ax.plot(ns, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel("ms per query (batch 1, median)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_n.png", dpi=120)
        plot_curves(report["results"][-1], out / "recall_vs_latency.png")
    except ImportError:
        pass
