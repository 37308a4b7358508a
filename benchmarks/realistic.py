"""Realistic multi-size vectors at any N (issue 26 item 1): documents generated from real encodings,
every size consistent with the others as the model makes them (``adaretrieve.bench.realistic``).

The real corpus is the 30,209-document union of SciFact, NFCorpus and the MS MARCO DL19 pool, as
``benchmarks/codes.py encode`` cached its raw pooled states (layers 0..6 of MiniLM); the queries are
the 667 real judged ones (SciFact test, NFCorpus dev, DL19). Sizes come from the adaptor's maps of
the states (``adaptor_mapper``, the path of ``codes.adapted_vectors``, checked against it); the full
size 6x384 is the raw layer-6 state, stored as float16 rows for the rerank.

    # validation: fit on a random half of the real documents, generate 30,209, compare recall@10 with the real 30k
    python benchmarks/realistic.py validate --adaptor /tmp/s4/ad-mix --k 10 --toward 0.5 --noise 0.5
    # scale: fit on every real document, generate N, time every method at batch 1 on one thread
    python benchmarks/realistic.py scale --adaptor /tmp/s4/ad-mix --n 1000000 --k 10 --toward 0.5 --noise 0.5

Generated vectors go to ``--work`` (default /tmp/h26/realistic) as .npy memory maps written chunk by
chunk (never N x 7 layers in memory). Writes benchmarks/results/realistic/{results.json (validation),
scale.json (scale), results.md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.bench.realistic import NeighbourMix, adaptor_mapper  # noqa: E402
from adaretrieve.sizes import Size  # noqa: E402

FULL = Size(6, 384)
SMALL = [Size(2, 32), Size(4, 64), Size(4, 128)]
SIZES = [*SMALL, FULL]
LAYERS = list(range(7))
NAMES = ["scifact", "nfcorpus", "dl19"]
OUT = ROOT / "benchmarks" / "results" / "realistic"


# -- inputs -----------------------------------------------------------------------------------------

def load_real(cache: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """(document states {L: [30209, 384]}, judged-query states {L: [667, 384]}, query set names [667])."""
    zs = [np.load(cache / f"{n}-minilm-raw-bfloat16.npz") for n in NAMES]
    docs = {L: np.concatenate([z[f"d{L}"] for z in zs]).astype(np.float32) for L in LAYERS}
    qs = {L: np.concatenate([z[f"q{L}"] for z in zs]).astype(np.float32) for L in LAYERS}
    q_set = np.concatenate([[n] * len(z["qids"]) for n, z in zip(NAMES, zs)])
    return docs, qs, q_set


def load_mapper(adaptor: str | None):
    """``to_sizes`` for SIZES from the adapted model folder (None: the untrained MiniLM), and its label."""
    if not adaptor:
        return adaptor_mapper(None, SIZES), "none (untrained MiniLM: raw state of layer L cut to D)"
    from adaretrieve.modeling.encoder import Encoder

    enc = Encoder(adaptor)
    return adaptor_mapper(enc.adaptor, SIZES), adaptor


def check_mapper(to_sizes, adaptor: str | None, docs: dict[int, np.ndarray]) -> float:
    """Largest difference between ``to_sizes`` and ``benchmarks/codes.py``'s ``adapted_vectors`` on 64 documents."""
    from benchmarks.codes import adapted_vectors

    enc = None
    if adaptor:
        from adaretrieve.modeling.encoder import Encoder

        enc = Encoder(adaptor)
    raw = {L: v[:64] for L, v in docs.items()}
    a, b = to_sizes(raw), adapted_vectors(raw, enc, SIZES)
    diff = max(float(np.abs(a[s] - b[s]).max()) for s in SIZES)
    if diff > 1e-5:
        raise SystemExit(f"adaptor_mapper differs from codes.adapted_vectors by {diff:.2e}")
    return diff


# -- generation to disk -----------------------------------------------------------------------------

def generate_to(gen: NeighbourMix, n: int, to_sizes, out: Path, chunk: int = 8192) -> dict[Size, np.ndarray]:
    """Documents 0..n of ``gen`` written chunk by chunk to ``out`` as .npy memory maps: the full size as
    float16 rows (what the rerank reads), the small sizes as float32. Returns them opened read-only."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {s: out / (f"{s}-f16.npy" if s == FULL else f"{s}-f32.npy") for s in SIZES}
    maps = {s: np.lib.format.open_memmap(p, mode="w+", dtype=np.float16 if s == FULL else np.float32, shape=(n, s.dim))
            for s, p in paths.items()}
    t0 = time.perf_counter()
    for a in range(0, n, chunk):
        v = gen.vectors(a, min(chunk, n - a), to_sizes)
        for s in SIZES:
            maps[s][a:a + len(v[s])] = v[s]
        if (a // chunk) % 20 == 0:
            print(f"  generated {a + len(v[FULL]):,}/{n:,} in {time.perf_counter() - t0:.0f}s", flush=True)
    for m in maps.values():
        m.flush()
    del maps
    return {s: np.load(p, mmap_mode="r") for s, p in paths.items()}


# -- the two-stage configurations -------------------------------------------------------------------

def configs(n: int) -> list[tuple]:
    """(name, size, factory, k, search kw) of every configuration compared (codes.py's writer path)."""
    nlist = 256 if n <= 100_000 else 4096
    out = [(f"flat {s} k={k}", s, "Flat", k, {}) for s in SMALL for k in (50, 200, 1000)]
    out += [(f"HNSW32 over 4x64 ef={ef} k=200", Size(4, 64), "HNSW32", 200, {"ef_search": ef}) for ef in (64, 256)]
    out += [(f"IVF{nlist} over 4x64 nprobe={p} k={k}", Size(4, 64), f"IVF{nlist},Flat", k, {"nprobe": p})
            for p, k in ((8, 200), (32, 200), (32, 1000))]
    out += [(f"6x384:sign k={k}", FULL, "sign", k, {}) for k in (100, 200)]
    return out


def build(size: Size, factory: str, x: np.ndarray, threads: int = 1, chunk: int = 100_000):
    """The shortlist index as the index writer builds it (make_faiss_index + codes.add_vectors /
    train_and_add; HNSW at efConstruction 200)."""
    import faiss

    from adaretrieve.faiss_util import is_binary_factory
    from adaretrieve.index.codes import add_vectors, train_and_add
    from adaretrieve.index.writer import _to_index_input, make_faiss_index, set_ef_construction

    ix = make_faiss_index(size.dim, factory)
    if factory.startswith("HNSW"):
        set_ef_construction(ix, factory, 200)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for a in range(0, len(x), chunk):
            xi = _to_index_input(np.ascontiguousarray(x[a:a + chunk], dtype=np.float32), is_binary_factory(factory))
            if a == 0 and not ix.is_trained:
                train_and_add(ix, factory, xi)
            else:
                add_vectors(ix, factory, xi)
    finally:
        faiss.omp_set_num_threads(before)
    return ix


def exact_top10(rows: np.ndarray, q: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """[n_queries, 10] exact full-size top 10 over float16 ``rows`` (as float32), chunk by chunk."""
    import faiss

    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for a in range(0, len(rows), chunk):
        ix = faiss.IndexFlatIP(rows.shape[1])
        ix.add(np.asarray(rows[a:a + chunk], dtype=np.float32))
        s, i = ix.search(q, 10)
        best_s, best_i = np.hstack([best_s, s]), np.hstack([best_i, i + a])
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def recall(top: np.ndarray, truth: np.ndarray, q_set: np.ndarray) -> dict:
    hit = np.array([len(set(t) & set(r[:10])) / 10 for t, r in zip(truth, top)])
    return {"all": round(float(hit.mean()), 4), **{n: round(float(hit[q_set == n].mean()), 4) for n in NAMES}}


def recall_table(vecs: dict[Size, np.ndarray], qv: dict[Size, np.ndarray], q_set: np.ndarray, threads: int = 2) -> dict:
    """{configuration: recall@10 against the exact 6x384 top 10} over documents ``vecs`` (float16 full rows)."""
    from adaretrieve.search.plan import FunnelPlan
    from adaretrieve.search.twostage import funnel, search_params

    rows = vecs[FULL]
    truth = exact_top10(rows, qv[FULL])
    out, built = {}, {}
    for name, size, factory, k, kw in configs(len(rows)):
        if (size, factory) not in built:
            built = {(size, factory): build(size, factory, vecs[size] if size != FULL else rows, threads)}
        ix = built[(size, factory)]
        _, cand = funnel(FunnelPlan(size, k, rerank=FULL, top=10), ix, {size: qv[size], FULL: qv[FULL]}, {FULL: rows},
                         True, search_params(ix, **kw))
        out[name] = recall(cand, truth, q_set)
        print(f"  {name:34s} recall@10 {out[name]['all']:.4f}", flush=True)
    return out


# -- validate ---------------------------------------------------------------------------------------

def real_table(docs, qv, q_set, to_sizes, label: str, work: Path) -> dict:
    """Recall@10 of every configuration on the real 30k (cached in ``work`` per adaptor)."""
    import hashlib

    cache = work / f"real-{hashlib.sha256(label.encode()).hexdigest()[:12]}.json"
    if cache.exists() and json.loads(cache.read_text())["adaptor"] == label:
        return json.loads(cache.read_text())["recall"]
    vecs = {}
    for a in range(0, len(docs[6]), 8192):
        v = to_sizes({L: x[a:a + 8192] for L, x in docs.items()})
        for s in SIZES:
            vecs.setdefault(s, []).append(v[s].astype(np.float16) if s == FULL else v[s])
    vecs = {s: np.concatenate(v) for s, v in vecs.items()}
    print("real 30k:", flush=True)
    tab = recall_table(vecs, qv, q_set)
    work.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"adaptor": label, "recall": tab}))
    return tab


def validate(args, command: str) -> dict:
    docs, qs, q_set = load_real(Path(args.cache))
    to_sizes, label = load_mapper(args.adaptor)
    diff = check_mapper(to_sizes, args.adaptor, docs)
    qv = to_sizes(qs)
    work = Path(args.work)
    real = real_table(docs, qv, q_set, to_sizes, label, work)
    n = len(docs[6])
    half = np.sort(np.random.default_rng(args.split_seed).permutation(n)[: int(n * args.fit_share)])
    t0 = time.perf_counter()
    gen = NeighbourMix.fit({L: x[half] for L, x in docs.items()}, 6, args.k, args.toward, args.noise, args.borrow,
                           args.seed)
    fit_s = time.perf_counter() - t0
    del docs
    gc.collect()
    n_gen = n if args.n is None else args.n
    t0 = time.perf_counter()
    vecs = generate_to(gen, n_gen, to_sizes, work / "gen-validate")
    gen_s = time.perf_counter() - t0
    print(f"generated {n_gen:,} from {len(half):,} real (k={args.k}, toward={args.toward}, noise={args.noise}):", flush=True)
    got = recall_table(vecs, qv, q_set)
    gaps = {c: round(got[c]["all"] - real[c]["all"], 4) for c in real}
    worst = max(gaps, key=lambda c: abs(gaps[c]))
    trial = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "adaptor": label,
             "params": {"k": args.k, "toward": args.toward, "noise": args.noise, "borrow": args.borrow,
                        "seed": args.seed, "split_seed": args.split_seed, "fit_share": args.fit_share}, "n_fit": len(half), "n_generated": n_gen,
             "fit_seconds": round(fit_s, 1), "generate_seconds": round(gen_s, 1), "mapper_check_max_diff": diff,
             "real": real, "generated": got, "gap": gaps, "largest_gap": {"config": worst, "gap": gaps[worst]},
             "within_0.03": all(abs(g) <= 0.03 for g in gaps.values())}
    print(f"largest gap {worst}: {gaps[worst]:+.4f}; every configuration within 0.03: {trial['within_0.03']}", flush=True)
    res = read_results()
    res.setdefault("validation", []).append(trial)
    write_results(res)
    return trial


# -- results ----------------------------------------------------------------------------------------

def read_results() -> dict:
    p = OUT / "results.json"
    return json.loads(p.read_text()) if p.exists() else {}


def write_results(res: dict) -> None:
    from benchmarks.machine import uptime

    OUT.mkdir(parents=True, exist_ok=True)
    res.setdefault("machine", {"cpu": cpu_name(), "cores": os.cpu_count(), "uptime_at_last_write": uptime()})
    res["machine"]["uptime_at_last_write"] = uptime()
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "results.md").write_text(report(res))


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def report(res: dict) -> str:
    lines = ["# Realistic multi-size vectors at any N (issue 26 item 1)", "",
             "Generator: `adaretrieve.bench.realistic.NeighbourMix`. A generated document starts from a real document's "
             "raw pooled states of layers 0..6 (MiniLM, cached by `benchmarks/codes.py encode`) and moves every layer "
             "jointly, with one set of weights, toward and around the seed's k nearest real neighbours (neighbours by the "
             "full size), and borrows the residuals of M=4 random real documents from their own nearest neighbour: "
             "`x_L = X_L[s] + sum_j c_j (X_L[n_j] - X_L[s]) + borrow sum_m h_m (X_L[r_m] - X_L[nn(r_m)]) / 2`, "
             "`c = t a + noise g / sqrt(k)`, `a` ~ Dirichlet(1), `t` ~ U(0, toward), `g`, `h` ~ N(0, I). Every size is then the adaptor's map of the generated "
             "states, cut and renormalised; the full size 6x384 is the raw layer-6 state (float16 rerank rows). Queries: "
             "the 667 real judged queries (SciFact test 300, NFCorpus dev 324, DL19 43). Recall@10 = the share of the "
             "exact 6x384 top 10 (brute force over the float16 rows) that the shortlist of k followed by the exact 6x384 "
             "rerank (`search.twostage.funnel`) returns in its top 10.", "",
             f"Machine: {res.get('machine', {}).get('cpu', '?')}, {res.get('machine', {}).get('cores', '?')} cores "
             "(shared with another heavy job).", ""]
    vals = res.get("validation", [])
    if vals:
        lines += ["## Validation: generated 30k against real 30k", "",
                  "Fit on a random half of the 30,209 real documents (15,104), generate 30,209, and compare every "
                  "configuration's recall@10 with the same configuration on the real 30k. Goal: every gap within 0.03.", ""]
        lines += ["### Every design tried", "", "Adaptor `none`: the untrained MiniLM (size LxD = raw layer-L state cut to D); "
                  "fit: real documents fitted on (the rest of the 30,209 are never seen by the generator).", "",
                  "| # | adaptor | fit | k | toward | noise | borrow | largest gap (configuration) | mean abs gap | "
                  "all within 0.03 | command |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | :---: | --- |"]
        for i, t in enumerate(vals, 1):
            p, lg = t["params"], t["largest_gap"]
            mean = sum(abs(g) for g in t["gap"].values()) / len(t["gap"])
            ad = "none" if t["adaptor"].startswith("none") else Path(t["adaptor"]).name
            lines.append(f"| {i} | {ad} | {t['n_fit']:,} | {p['k']} | {p['toward']} | {p['noise']} | {p.get('borrow', 0.0)} | "
                         f"{lg['gap']:+.4f} ({lg['config']}) | "
                         f"{mean:.4f} | {'yes' if t['within_0.03'] else 'no'} | `{t['command']}` |")
        groups: dict = {}
        for t in vals:
            groups.setdefault((t["adaptor"], t["n_fit"]), []).append(t)
        for ts in groups.values():
            best = min(ts, key=lambda t: abs(t["largest_gap"]["gap"]))
            lines += best_design(best, vals.index(best) + 1)
    if res.get("notes"):  # findings written by hand into results.json, each with the trials it rests on
        lines += ["## What the trials say", ""] + [f"- {n}" for n in res["notes"]] + [""]
    for p in sorted(OUT.glob("scale*.json")):  # the scale phase's own files: a validation running beside cannot lose them
        lines += scale_lines(json.loads(p.read_text()))
    return "\n".join(lines) + "\n"


def best_design(best: dict, i: int) -> list[str]:
    """The per-configuration table of one trial (the best of its adaptor and fit size)."""
    p = best["params"]
    lines = ["", f"### Best with adaptor {best['adaptor']}, fitted on {best['n_fit']:,}: #{i} (k={p['k']}, "
             f"toward={p['toward']}, noise={p['noise']}, borrow={p.get('borrow', 0.0)}; {best['date']})", "",
             "| configuration | real 30k | generated 30k | gap | real scifact / nfcorpus / dl19 | generated "
             "scifact / nfcorpus / dl19 |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for c, r in best["real"].items():
        g = best["generated"][c]
        lines.append(f"| {c} | {r['all']:.4f} | {g['all']:.4f} | {best['gap'][c]:+.4f} | "
                     f"{r['scifact']:.3f} / {r['nfcorpus']:.3f} / {r['dl19']:.3f} | "
                     f"{g['scifact']:.3f} / {g['nfcorpus']:.3f} / {g['dl19']:.3f} |")
    per_set = {n: max(((c, best["generated"][c][n] - best["real"][c][n]) for c in best["real"]), key=lambda cg: abs(cg[1]))
               for n in NAMES}
    return lines + ["", f"Largest gap: {best['largest_gap']['gap']:+.4f} ({best['largest_gap']['config']}). Per query "
                    "set (fewer queries, so noisier; DL19 has 43): " + ", ".join(
                        f"{n} {g:+.4f} ({c})" for n, (c, g) in per_set.items()) +
                    f". Fit {best['fit_seconds']} s, generation {best['generate_seconds']} s.", ""]


def scale_lines(sc: dict) -> list[str]:
    from adaretrieve.bench.verdicts import row_ram_bytes

    n = sc["n"]
    lines = [f"## Scale: N = {n:,} generated documents (design k={sc['params']['k']}, toward={sc['params']['toward']}, "
             f"noise={sc['params']['noise']}, borrow={sc['params'].get('borrow', 0.0)}; adaptor {sc['adaptor']})", "",
             f"Command: `{sc['command']}` ({sc['date']}). Fit on all 30,209 real documents with the design "
             f"{sc['params']}; generated in {sc['generate_seconds']} s. Every row: batch 1 on one thread, "
             f"{sc['warmup']} warm-up queries then {sc['n_queries']} of the {sc['n_recall_queries']} queries timed (one "
             "fixed random draw; recall over all of them), median and p95, the same for every row. Machine: "
             f"{sc['machine']['cpu']}, {sc['machine']['cores']} cores shared with other heavy jobs (`{sc.get('uptime_at_start', '')}` "
             "at the start), so latencies carry that load; two-stage rows read float16 rerank rows from a memory map, timed warm (the whole rerank file read "
             "into the page cache first). RAM per row (`adaretrieve.bench.verdicts.row_ram_bytes`): private memory "
             "(the index's serialized bytes) plus, for a warm two-stage row, the whole rerank file.", "",
             "| method | recall@10 | batch-1 ms p50 (p95) | private MB | RAM needed MB | RAM B/doc | build s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in sc["rows"].items():
        ram = row_ram_bytes(v, n)
        lines.append(f"| {name} | {v['recall@10']:.4f} | {v['batch1']['p50_ms']:.3f} ({v['batch1']['p95_ms']:.3f}) | "
                     f"{v['resident_bytes'] / 1e6:.0f} | {ram / 1e6:.0f} | {ram / n:.0f} | {v.get('build_seconds', '-')} |")
    return lines + [""]


# -- scale ------------------------------------------------------------------------------------------

def serialized_bytes(ix, work: Path) -> int:
    """The bytes of FAISS index ``ix`` written to a file (what it keeps in private memory)."""
    import faiss

    from adaretrieve.search.twostage import is_binary

    path = work / "size-probe.faiss"
    (faiss.write_index_binary if is_binary(ix) else faiss.write_index)(ix, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def warm(path: Path, rows: np.ndarray) -> None:
    """The rerank file read whole into the page cache and every page of the memory map touched once."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass
    flat = np.asarray(rows).reshape(-1)
    float(flat[:: 4096 // flat.itemsize].sum(dtype=np.float64))


def time_batch1(fn, q: np.ndarray | dict) -> dict:
    """One query at a time over every query of ``q`` (an array, or {size: array} passed on as
    {size: one row}) after WARMUP untimed ones (adaretrieve.eval.timing)."""
    from adaretrieve.eval.timing import WARMUP, time_stages

    if isinstance(q, dict):
        n = len(next(iter(q.values())))
        t, _ = time_stages(lambda i, _: fn({s: v[i:i + 1] for s, v in q.items()}), n, WARMUP)
    else:
        t, _ = time_stages(lambda i, _: fn(q[i:i + 1]), len(q), WARMUP)
    return {"p50_ms": round(1000 * t.p50, 4), "p95_ms": round(1000 * t.p95, 4), "queries": t.repeats, "warmup": WARMUP}


def scale_file(tag: str | None) -> str:
    return f"scale-{tag}.json" if tag else "scale.json"


def scale(args, command: str) -> dict:
    """Every method over ``args.n`` generated documents: recall@10 against exact 6x384 over all 667
    queries, batch-1 latency on one thread over ``args.time_queries`` of them, RAM by the memory model."""
    import faiss

    from adaretrieve.eval.timing import WARMUP
    from adaretrieve.search.plan import FunnelPlan
    from adaretrieve.search.twostage import funnel, search_params
    from benchmarks.machine import uptime

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    docs, qs, q_set = load_real(Path(args.cache))
    to_sizes, label = load_mapper(args.adaptor)
    qv = to_sizes(qs)
    n = args.n
    work = Path(args.work) / f"gen-{n}{'-' + args.tag if args.tag else ''}"
    t0 = time.perf_counter()
    gen = NeighbourMix.fit(docs, 6, args.k, args.toward, args.noise, args.borrow, args.seed)
    del docs
    gc.collect()
    if args.add_ef:  # the vectors of the earlier run, checked against the generator on its first chunk
        vecs = {s: np.load(work / (f"{s}-f16.npy" if s == FULL else f"{s}-f32.npy"), mmap_mode="r") for s in SIZES}
        again = gen.vectors(0, 4096, to_sizes)
        if len(vecs[FULL]) != n or any(not np.allclose(vecs[s][:4096], again[s], atol=1e-2 if s == FULL else 1e-6)
                                       for s in SIZES):
            raise SystemExit(f"{work} does not hold this design's {n} documents")
    else:
        vecs = generate_to(gen, n, to_sizes, work)
    gen_s = round(time.perf_counter() - t0, 1)
    del gen
    gc.collect()
    rows, rows_path = vecs[FULL], work / f"{FULL}-f16.npy"
    pick = np.sort(np.random.default_rng(0).choice(len(q_set), min(args.time_queries, len(q_set)), replace=False))
    tq = {s: np.ascontiguousarray(v[pick]) for s, v in qv.items()}
    res = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "n": n, "adaptor": label,
           "params": {"k": args.k, "toward": args.toward, "noise": args.noise, "borrow": args.borrow, "seed": args.seed},
           "generate_seconds": gen_s, "n_queries": len(pick), "n_recall_queries": len(q_set), "warmup": WARMUP,
           "threads": 1, "build_threads": args.build_threads, "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
           "uptime_at_start": uptime(), "rows": {}}
    file_bytes = rows_path.stat().st_size

    def save(name, row):
        res["rows"][name] = row
        print(f"  {name:44s} recall@10 {row['recall@10']:.4f}  batch-1 {row['batch1']['p50_ms']:.3f} ms", flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / scale_file(args.tag)).write_text(json.dumps(res, indent=2) + "\n")
        write_results(read_results())

    def one_thread():
        faiss.omp_set_num_threads(1)
        return threadpool_limits(1) if threadpool_limits else None

    if args.add_ef:  # more efSearch rows of HNSW32 over 6x384 (rebuilt alike) into the earlier run's file
        res = json.loads((OUT / scale_file(args.tag)).read_text())
        res["command"] += f"; then {command}"
        truth = exact_top10(rows, qv[FULL])
    # exact flat 384-d float32: the ground truth and the exact baseline
    t1 = time.perf_counter()
    if args.add_ef:
        n_exact = 0  # skip: every row but the new HNSW ones is kept from the earlier run
    else:
        n_exact = n
    if n_exact:
        exact = faiss.IndexFlatIP(FULL.dim)
        for a in range(0, n, 200_000):
            exact.add(np.asarray(rows[a:a + 200_000], dtype=np.float32))
        build_s = round(time.perf_counter() - t1, 1)
        faiss.omp_set_num_threads(args.build_threads)
        truth = exact.search(qv[FULL], 10)[1]
        lim = one_thread()
        save("exact flat 6x384 float32", {"recall@10": recall(exact.search(qv[FULL], 10)[1], truth, q_set)["all"],
             "batch1": time_batch1(lambda x, ix=exact: ix.search(x, 10), tq[FULL]), "resident_bytes": n * FULL.dim * 4,
             "build_seconds": build_s})
        del exact, lim
        gc.collect()

    def shortlists(size, factory, settings, what):
        """Build one shortlist (build threads), then each (k, search kw) of ``settings`` reranked at 6x384."""
        faiss.omp_set_num_threads(args.build_threads)
        t1 = time.perf_counter()
        ix = build(size, factory, vecs[size] if size != FULL else rows, args.build_threads, chunk=200_000)
        b = round(time.perf_counter() - t1, 1)
        private = serialized_bytes(ix, Path(args.work))
        lim = one_thread()
        for k, kw in settings:
            params = search_params(ix, **kw)
            plan = FunnelPlan(size, k, rerank=FULL, top=10)

            def run(x, plan=plan, params=params, ix=ix):
                return funnel(plan, ix, x, {FULL: rows}, True, params)

            _, cand = run({size: qv[size], FULL: qv[FULL]})
            warm(rows_path, rows)
            t = time_batch1(run, {size: tq[size], FULL: tq[FULL]})
            tag = " ".join(f"{a}={v}" for a, v in kw.items())
            save(f"{what} k={k}{' ' + tag if tag else ''} -> 6x384", {
                "recall@10": recall(cand, truth, q_set)["all"], "batch1": t, "k": k, "shortlist": str(size),
                "factory": factory, **kw, "resident_bytes": private, "rerank_cached": True,
                "rerank_file_bytes": file_bytes, "rerank_row_bytes": FULL.dim * 2, "build_seconds": b})
        del ix, lim
        gc.collect()

    nlist = 4096 if n > 100_000 else 256
    for size in (Size(4, 64), Size(4, 128)) if not args.add_ef else ():
        shortlists(size, "Flat", [(200, {}), (1000, {})], f"flat {size}")
    if not args.add_ef:
        shortlists(FULL, "BFlat", [(200, {}), (1000, {}), (2000, {})], "6x384 sign bits, Hamming (binary + rescore)")
        shortlists(FULL, "sign", [(200, {}), (1000, {})], "6x384 sign bits vs float query")
        shortlists(Size(4, 64), f"IVF{nlist},Flat", [(200, {"nprobe": 32}), (1000, {"nprobe": 32}),
                                                     (1000, {"nprobe": 128})], f"IVF{nlist} over 4x64")
    if not args.skip_hnsw384 and not args.add_ef:
        shortlists(Size(4, 64), "HNSW32", [(200, {"ef_search": 200}), (200, {"ef_search": 400}),
                                           (1000, {"ef_search": 1000})], "HNSW32 over 4x64")

    if args.skip_hnsw384:
        return res
    # FAISS HNSW32 over the full 384-d float32 vectors
    faiss.omp_set_num_threads(args.build_threads)
    h = faiss.IndexHNSWFlat(FULL.dim, 32, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = args.hnsw_efc
    t1 = time.perf_counter()
    for a in range(0, n, 100_000):
        h.add(np.asarray(rows[a:a + 100_000], dtype=np.float32))
        print(f"  HNSW32-384 built {min(n, a + 100_000):,} in {time.perf_counter() - t1:.0f}s", flush=True)
    b = round(time.perf_counter() - t1, 1)
    private = serialized_bytes(h, Path(args.work))
    lim = one_thread()
    for ef in args.add_ef or (16, 32, 64, 128, 256):
        p = faiss.SearchParametersHNSW(efSearch=ef)
        top = h.search(qv[FULL], 10, params=p)[1]
        save(f"FAISS HNSW32 over 6x384 float32 efC={args.hnsw_efc} ef={ef}", {
            "recall@10": recall(top, truth, q_set)["all"],
            "batch1": time_batch1(lambda x, p=p, h=h: h.search(x, 10, params=p), tq[FULL]), "ef_search": ef,
            "ef_construction": args.hnsw_efc, "resident_bytes": private, "build_seconds": b})
    del h, lim
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["validate", "scale", "report"])
    ap.add_argument("--adaptor", help="the adapted model folder (default: the untrained MiniLM)")
    ap.add_argument("--cache", default="/tmp/h-codes/vecs")
    ap.add_argument("--work", default="/tmp/h26/realistic")
    ap.add_argument("--k", type=int, default=10, help="real neighbours a generated document moves among")
    ap.add_argument("--toward", type=float, default=0.5, help="largest step toward the neighbour mixture")
    ap.add_argument("--noise", type=float, default=0.5, help="noise along the neighbour differences")
    ap.add_argument("--out", default=str(OUT), help="results folder")
    ap.add_argument("--borrow", type=float, default=0.0, help="scale of the borrowed real residuals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0, help="the random half fitted on (validate)")
    ap.add_argument("--fit-share", type=float, default=0.5, help="validate: the share of the real documents fitted on")
    ap.add_argument("--n", type=int, default=None, help="documents to generate (validate: the real count)")
    ap.add_argument("--build-threads", type=int, default=2, help="threads for building indexes (search: always 1)")
    ap.add_argument("--time-queries", type=int, default=200, help="scale: queries timed at batch 1 (the same for every row)")
    ap.add_argument("--tag", help="scale: a name for this run's file (scale-TAG.json) and generated vectors")
    ap.add_argument("--skip-hnsw384", action="store_true", help="scale: no HNSW graphs (over 4x64 or 6x384): the "
                    "cheap rows only")
    ap.add_argument("--add-ef", type=int, nargs="*", help="scale: only rebuild HNSW32 over 6x384 on the earlier run's "
                    "vectors and add these efSearch rows to its file")
    ap.add_argument("--hnsw-efc", type=int, default=200, help="scale: efConstruction of FAISS HNSW32 over 6x384")
    args = ap.parse_args()
    globals()["OUT"] = Path(args.out)  # read_results / write_results write there
    import faiss
    import torch

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    command = "python benchmarks/realistic.py " + " ".join(sys.argv[1:])
    if args.phase == "validate":
        validate(args, command)
    elif args.phase == "scale":
        scale(args, command)
    else:
        write_results(read_results())


if __name__ == "__main__":
    main()
