"""Full-size codes against small-size codes as the shortlist (issue 24, items 2 and 3).

For SciFact test, NFCorpus dev and the DL19 pool: every (size, code kind, k in 50/100/200) shortlist,
then the same exact 6x384 rerank from float16 rows (what an index stores), nDCG@10 (and its share of
the full size's single stage) and recall@100 against the shortlist's resident bytes per document.

Each corpus (and its judged queries) is encoded once by the untrained backbone, keeping the raw pooled
state of every layer (``Encoder.encode(raw_layers=...)``), cached under ``--cache``; a set's adapted
sizes are its adaptor's maps of those states (the encoder's own path, checked against
``Encoder.encode`` of the adapted model on a sample), so the adaptors can be fitted while the corpora
encode. The full size 6x384 is the backbone's with or without an adaptor (``adapt`` leaves it to the
bit), so every full-size code is the same for any adaptor. Shortlists are built with the index
writer's own functions (``make_faiss_index``, ``codes.add_vectors``) and searched with ``funnel``,
the function ``FunnelSearcher`` runs.

    python benchmarks/codes.py encode          # heavy: one pass per corpus (and NFCorpus's train queries), cached
    python benchmarks/codes.py adapt --sets nfcorpus --adapt-out DIR   # adapt's fit, from the cached pass
    python benchmarks/codes.py adapt --sets scifact,nfcorpus,dl19 --adapt-out DIR   # one adaptor for all three
    python benchmarks/codes.py union --adaptor DIR   # every code at 30k real documents, recall@10 against exact
    python benchmarks/codes.py alone --adaptor own:scifact=DIR ... --adaptor 'mix:*=DIR'   # each size alone, per adaptor
    python benchmarks/codes.py measure --adaptor scifact=DIR --adaptor nfcorpus=DIR [--adaptor dl19=DIR]

Writes benchmarks/results/codes/{results.json, results.md, pareto.png}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.data import read_qrels, read_queries  # noqa: E402
from adaretrieve.data.readers import doc_text, iter_corpus  # noqa: E402
from adaretrieve.sizes import Size, truncate  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FULL = Size(6, 384)
LAYERS = list(range(7))  # 0 (embeddings) .. 6: every state an adaptor reads
SETS = {
    "scifact": dict(corpus=DATA / "beir" / "scifact", queries=DATA / "beir" / "scifact" / "queries.jsonl",
                    qrels=DATA / "beir" / "scifact" / "qrels" / "test.tsv", split="test"),
    "nfcorpus": dict(corpus=DATA / "beir" / "nfcorpus", queries=DATA / "beir" / "nfcorpus" / "queries.jsonl",
                     qrels=DATA / "beir" / "nfcorpus" / "qrels" / "dev.tsv", split="dev"),
    "dl19": dict(corpus=DATA / "msmarco-dl-pool" / "collection.tsv.gz", queries=DATA / "msmarco-dl-pool" / "queries.dl19.tsv",
                 qrels=DATA / "msmarco-dl-pool" / "qrels.dl19.txt", split="dl19"),
}


DTYPE = {"dtype": "float32"}  # what the cached states were encoded under (encode --dtype)


def cache_file(cache: Path, name: str) -> Path:
    return cache / f"{name}-minilm-raw{'' if DTYPE['dtype'] == 'float32' else '-' + DTYPE['dtype']}.npz"


def train_queries(name: str) -> dict[str, str]:
    """The texts of a BEIR set's train queries, as ``adapt --queries DIR --query-split train`` reads them."""
    folder = SETS[name]["corpus"]
    sel = read_qrels(folder / "qrels" / "train.tsv")
    return {q: t for q, t in read_queries(folder).items() if q in sel}


def encode(cache: Path, names: list[str], with_train: set[str]) -> None:
    """The raw pooled states of layers 0..6 for every document and judged query of each set, one pass;
    for the sets in ``with_train``, also the train queries (what ``adapt`` fits on besides the corpus)."""
    from adaretrieve.modeling.encoder import Encoder

    cache.mkdir(parents=True, exist_ok=True)
    enc = Encoder("minilm", dtype=DTYPE["dtype"])
    for name in names:
        out = cache_file(cache, name)
        if out.exists():
            if name in with_train and "tids" not in np.load(out):
                add_train_queries(enc, out, name)
            print(f"{name}: cached at {out}", flush=True)
            continue
        s = SETS[name]
        docs = list(iter_corpus(s["corpus"]))
        qrels = read_qrels(s["qrels"])
        qs = {q: t for q, t in read_queries(s["queries"]).items() if q in qrels}
        t0 = time.perf_counter()
        dv = enc.encode_passages([doc_text(d.title, d.text) for d in docs], [], batch_size=32, progress=True, raw_layers=LAYERS)
        t1 = time.perf_counter()
        qv = enc.encode_queries(list(qs.values()), [], batch_size=32, raw_layers=LAYERS)
        tq = train_queries(name) if name in with_train else {}
        tv = enc.encode_queries(list(tq.values()), [], batch_size=32, raw_layers=LAYERS) if tq else {}
        t2 = time.perf_counter()
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, docids=np.array([d.docid for d in docs]), qids=np.array(list(qs)),
                 **{f"d{L}": dv[("raw", L)] for L in LAYERS}, **{f"q{L}": qv[("raw", L)] for L in LAYERS},
                 **({"tids": np.array(list(tq)), **{f"t{L}": tv[("raw", L)] for L in LAYERS}} if tq else {}),
                 seconds=np.array([t1 - t0, t2 - t1]), weights=np.array(enc.weights_hash()))
        tmp.rename(out)
        print(f"{name}: {len(docs)} docs in {t1 - t0:.0f}s, {len(qs)} + {len(tq)} queries in {t2 - t1:.1f}s -> {out}",
              flush=True)


def add_train_queries(enc, out: Path, name: str) -> None:
    """Add a set's train queries' raw states to a cache encoded without them (same encoder, same dtype)."""
    z = dict(np.load(out))
    if str(z["weights"]) != enc.weights_hash():
        raise SystemExit(f"{name}: the cache at {out} was encoded by other weights")
    tq = train_queries(name)
    t0 = time.perf_counter()
    tv = enc.encode_queries(list(tq.values()), [], batch_size=32, raw_layers=LAYERS)
    z.update({"tids": np.array(list(tq)), **{f"t{L}": tv[("raw", L)] for L in LAYERS}})
    z["seconds"] = np.array([*z["seconds"][:2], time.perf_counter() - t0])
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **z)
    tmp.rename(out)
    print(f"{name}: {len(tq)} train queries added in {time.perf_counter() - t0:.0f}s -> {out}", flush=True)


def adapt_from_cache(cache: Path, names: list[str], out: Path) -> dict:
    """``adaretrieve adapt --model minilm --corpus DIR [--corpus DIR2 ...] --queries DIR ... --query-split
    train --out OUT`` with its one encoding pass read from the cache (the same states: the corpora in
    the order given, then the train queries of the sets that have them) instead of run again: the
    library's ``fit_adaptor`` and model writer, default settings. Meant for a shared machine where a
    second pass over the corpora costs 20 minutes. A set without train queries (the DL19 pool) gives
    its documents only."""
    import torch

    from adaretrieve import __version__
    from adaretrieve.modeling.encoder import Encoder
    from adaretrieve.training import adapt as A
    from adaretrieve.training.losses import default_ladder

    zs = {n: np.load(cache_file(cache, n)) for n in names}
    with_q = [n for n in names if "tids" in zs[n]]
    folders = [SETS[n]["corpus"] for n in names]
    qfolders = [str(SETS[n]["corpus"]) for n in with_q]
    cfg = A.AdaptConfig(model="minilm", corpus=[str(f) for f in folders] if len(folders) > 1 else str(folders[0]),
                        queries=(qfolders if len(qfolders) > 1 else qfolders[0]) if qfolders else None,
                        query_split="train" if qfolders else None, out=str(out))
    enc = Encoder(cfg.model)
    ladder = default_ladder(enc.n_layers, enc.hidden_size)
    layers = A._ladder_layers(enc, ladder)
    doc_ids, _ = A._sample_corpora([A.resolve_corpus(f) for f in folders], cfg.max_texts, cfg.seed)
    if doc_ids != [str(d) for n in names for d in zs[n]["docids"]]:
        raise SystemExit(f"{names}: the cached documents are not the ones adapt would read")
    for n in with_q:
        if list(train_queries(n)) != [str(q) for q in zs[n]["tids"]]:
            raise SystemExit(f"{n}: the cached train queries are not the ones adapt would read")
    states = {L: torch.from_numpy(np.concatenate([zs[n][f"d{L}"] for n in names] + [zs[n][f"t{L}"] for n in with_q]))
              for L in LAYERS}
    n_q = sum(len(zs[n]["tids"]) for n in with_q)
    t0 = time.perf_counter()
    adaptor, fit_log = A.fit_adaptor(states, len(doc_ids), [], ladder, layers, enc.hidden_size, enc.n_layers,
                                     enc.normalize, cfg, False)
    fit_s = time.perf_counter() - t0
    adaptor.meta = {
        "features": cfg.features, "pooling": enc.pooling, "backbone_sha256": enc.backbone_hash(), "objective": cfg.objective,
        "output_order": "principal coordinates of the normalised full-size vectors, by falling variance; "
                        "every prefix D is the size LxD",
        "ladder": [str(s) for s in ladder],
        "fitted_on": {"corpus": cfg.corpus, "documents": len(doc_ids), "queries": cfg.queries,
                      "query_split": cfg.query_split, "n_queries": n_q, "qrels": None, "labelled_pairs": 0},
        "config": {**A.asdict(cfg), "states_from": [str(cache_file(cache, n)) for n in names],
                   "states_dtype": DTYPE["dtype"]},
        "encode_seconds": None,
        "fit_seconds": round(fit_s, 1), "fit_log": fit_log, "adaretrieve": __version__, "base_model": enc.name,
    }
    A._write_model(enc, adaptor, out)
    print(f"{'+'.join(names)}: adaptor fitted on {len(doc_ids)} documents + {n_q} queries in {fit_s:.0f}s -> {out}",
          flush=True)
    return {"out": str(out), "fit_seconds": round(fit_s, 1)}


# -- vectors of every size from the cached states ------------------------------------------------

SIZES = [Size(1, 16), Size(2, 32), Size(2, 64), Size(3, 64), Size(4, 128), Size(5, 256), FULL]


def adapted_vectors(raw: dict[int, np.ndarray], enc, sizes: list[Size]) -> dict[Size, np.ndarray]:
    """``{size: float32 [n, dim]}``: layer L's adaptor map of the raw states (the encoder's own
    ``_map``), or the raw pooled state where the layer has none (the full size), cut and renormalised."""
    import torch

    out = {}
    with torch.inference_mode():
        for L in sorted({s.layer for s in sizes}):
            if enc is not None and enc.adaptor is not None and enc.adaptor.has(L):
                v = np.concatenate([enc.adaptor(L, {i: torch.from_numpy(raw[i][a:a + 4096]) for i in enc.adaptor.inputs(L)}).numpy()
                                    for a in range(0, len(raw[L]), 4096)])
            else:
                v = raw[L]
            for s in sizes:
                if s.layer == L:
                    out[s] = truncate(np.ascontiguousarray(v[:, : s.dim]), s.dim, True)
    return out


def check_against_encoder(enc, name: str, cached: dict[int, np.ndarray], sizes: list[Size], n: int = 16) -> float:
    """Largest difference between this script's vectors and ``enc.encode_passages`` on the first ``n``
    documents (the cache's row order and the adaptor path both checked); raises past 1e-4."""
    docs = [d for _, d in zip(range(n), iter_corpus(SETS[name]["corpus"]))]
    texts = [doc_text(d.title, d.text) for d in docs]
    want = enc.encode_passages(texts, sizes, batch_size=n)
    mine = adapted_vectors({L: v[:n] for L, v in cached.items()}, enc, sizes)
    diff = max(float(np.abs(want[s] - mine[s]).max()) for s in sizes)
    if diff > (1e-4 if DTYPE["dtype"] == "float32" else 3e-2):  # bfloat16: batches of other lengths round otherwise
        raise SystemExit(f"{name}: the cached states do not give the encoder's vectors (max diff {diff:.2e})")
    return diff


# -- the grid ---------------------------------------------------------------------------------------

KS = [50, 100, 200]


def grid() -> list[tuple[Size, str]]:
    """(size, kind) pairs measured: every size as float32, SQ8, sign, Hamming and RaBitQ; PQ fast-scan
    codes of the full size, 4x128 and 5x256; sign bits of rotations of the full size at 64..384 bits."""
    out = []
    for s in SIZES:
        out += [(s, "Flat"), (s, "SQ8"), (s, "sign"), (s, "BFlat"), (s, "RaBitQ")]
    out += [(FULL, "RaBitQ4"), (FULL, "PQ32x4fs"), (FULL, "PQ64x4fs"), (FULL, "PQ96x4fs"), (Size(4, 128), "PQ32x4fs"),
            (Size(5, 256), "PQ32x4fs")]
    out += [(FULL, f"{r}{m}") for r in ("pca", "itq") for m in (64, 128, 256, 384)]
    return out


def build(size: Size, kind: str, x: np.ndarray):
    """The shortlist index of ``kind`` over ``x`` [n, dim] as the index writer builds it."""
    from adaretrieve.index.codes import add_vectors, train_and_add
    from adaretrieve.index.writer import _to_index_input, is_binary_factory, make_faiss_index

    ix = make_faiss_index(size.dim, kind)
    xi = _to_index_input(x, is_binary_factory(kind))
    (add_vectors if ix.is_trained else train_and_add)(ix, kind, xi)
    return ix


def bytes_per_doc(size: Size, kind: str) -> float:
    from adaretrieve.faiss_util import resident_bytes_per_doc

    return resident_bytes_per_doc(size.dim, kind)


def label(size: Size, kind: str) -> str:
    return f"{size}:{kind}"


def measure(cache: Path, names: list[str], adaptors: dict[str, str], out_dir: Path, command: str,
            skip_check: bool = False, only: str | None = None) -> dict:
    import faiss

    from adaretrieve.eval.measures import Evaluator
    from adaretrieve.modeling.encoder import Encoder
    from adaretrieve.search.plan import FunnelPlan
    from adaretrieve.search.twostage import funnel

    faiss.omp_set_num_threads(1)  # many small searches on a shared machine: OpenMP's spinning threads cost more than they give
    results: dict = {"command": command, "sets": {}, "faiss": faiss.__version__}
    for name in names:
        t0 = time.perf_counter()
        z = np.load(cache_file(cache, name))
        adaptor = adaptors.get(name)
        enc = Encoder(adaptor, dtype=DTYPE["dtype"]) if adaptor else None
        draw = {L: z[f"d{L}"] for L in LAYERS}
        qraw = {L: z[f"q{L}"] for L in LAYERS}
        diff = None if skip_check else check_against_encoder(enc or Encoder("minilm", dtype=DTYPE["dtype"]), name, draw, SIZES)
        dv, qv = adapted_vectors(draw, enc, SIZES), adapted_vectors(qraw, enc, SIZES)
        docids, qids = [str(d) for d in z["docids"]], [str(q) for q in z["qids"]]
        dl = name == "dl19"
        metrics = ["nDCG@10", "R(rel=2)@100" if dl else "R@100"]
        ev = Evaluator(read_qrels(SETS[name]["qrels"]), metrics)
        rows = dv[FULL].astype(np.float16)  # what the index stores and the rerank reads

        def run_of(scores, cand, docids=docids, qids=qids):
            return {q: {docids[r]: float(sc) for sc, r in zip(scores[i], cand[i]) if r >= 0} for i, q in enumerate(qids)}

        full_ix = faiss.IndexFlatIP(FULL.dim)
        full_ix.add(dv[FULL])
        full = ev(run_of(*full_ix.search(qv[FULL], 100)))
        entries = {}
        for size, kind in grid():
            if only and not re.search(only, label(size, kind)):
                continue
            t1 = time.perf_counter()
            ix = build(size, kind, dv[size])
            built = time.perf_counter() - t1
            e = {"size": str(size), "kind": kind, "bytes_per_doc": bytes_per_doc(size, kind), "build_s": round(built, 2),
                 "full_size_code": size == FULL, "k": {}}
            for k in KS:
                plan = FunnelPlan(size, k, rerank=FULL, top=k)
                t2 = time.perf_counter()
                scores, cand = funnel(plan, ix, {size: qv[size], FULL: qv[FULL]}, {FULL: rows}, True)
                search_s = time.perf_counter() - t2
                m = ev(run_of(scores, cand))
                e["k"][str(k)] = {**{n: round(v, 5) for n, v in m.items()},
                                  "share": round(m["nDCG@10"] / full["nDCG@10"], 4) if full["nDCG@10"] else None,
                                  "search_ms_per_query": round(1000 * search_s / len(qids), 3)}
            entries[label(size, kind)] = e
            print(f"{name} {label(size, kind):24s} {e['bytes_per_doc']:>6g} B  " +
                  "  ".join(f"k={k} {e['k'][str(k)]['nDCG@10']:.4f} ({e['k'][str(k)]['share'] or 0:.1%})" for k in KS), flush=True)
        results["sets"][name] = {
            "adaptor": adaptor or "none (the untrained minilm: its small sizes are unadapted)", "n_docs": len(docids),
            "n_queries": len(qids), "metrics": metrics, "full": {n: round(v, 5) for n, v in full.items()},
            "encoder_check_max_diff": diff, "dtype": DTYPE["dtype"], "encode_seconds": [round(float(x), 1) for x in z["seconds"]],
            "measure_seconds": round(time.perf_counter() - t0, 1), "entries": entries,
        }
    return results


def union(cache: Path, names: list[str], adaptor: str | None, out: Path, command: str, only: str | None = None) -> dict:
    """Issue 24's 30k check: the documents of every set in one index (SciFact + NFCorpus + the DL19
    pool, as ``real_recall.py`` builds it), every set's judged queries; for each (size, kind) shortlist
    and k, recall@10 against the exact full-size top 10 over the float16 rows the rerank reads (so no
    label is involved), with the same exact 6x384 rerank. Writes ``union.json`` / ``union.md``."""
    import faiss

    from adaretrieve.modeling.encoder import Encoder
    from adaretrieve.search.plan import FunnelPlan
    from adaretrieve.search.twostage import funnel

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    zs = [np.load(cache_file(cache, n)) for n in names]
    enc = Encoder(adaptor, dtype=DTYPE["dtype"]) if adaptor else None
    draw = {L: np.concatenate([z[f"d{L}"] for z in zs]) for L in LAYERS}
    qraw = {L: np.concatenate([z[f"q{L}"] for z in zs]) for L in LAYERS}
    q_set = np.concatenate([[n] * len(z["qids"]) for n, z in zip(names, zs)])
    dv, qv = adapted_vectors(draw, enc, SIZES), adapted_vectors(qraw, enc, SIZES)
    rows = dv[FULL].astype(np.float16)
    exact = faiss.IndexFlatIP(FULL.dim)
    exact.add(rows.astype(np.float32))
    _, truth = exact.search(qv[FULL], 10)

    def recall(cand) -> dict:
        hit = np.array([len(set(truth[i]) & set(cand[i][:10])) / 10 for i in range(len(truth))])
        return {"all": round(float(hit.mean()), 4), **{n: round(float(hit[q_set == n].mean()), 4) for n in names}}

    entries = {}
    for size, kind in grid():
        if only and not re.search(only, label(size, kind)):
            continue
        ix = build(size, kind, dv[size])
        e = {"size": str(size), "kind": kind, "bytes_per_doc": bytes_per_doc(size, kind), "full_size_code": size == FULL,
             "k": {}}
        for k in KS:
            _, cand = funnel(FunnelPlan(size, k, rerank=FULL, top=10), ix, {size: qv[size], FULL: qv[FULL]}, {FULL: rows}, True)
            e["k"][str(k)] = recall(cand)
        entries[label(size, kind)] = e
        print(f"union {label(size, kind):24s} {e['bytes_per_doc']:>6g} B  " +
              "  ".join(f"k={k} {e['k'][str(k)]['all']:.4f}" for k in KS), flush=True)
    res = {"command": command, "sets": names, "n_docs": len(rows), "n_queries": len(truth), "adaptor": adaptor,
           "dtype": DTYPE["dtype"], "faiss": faiss.__version__, "seconds": round(time.perf_counter() - t0, 1),
           "entries": entries}
    out.mkdir(parents=True, exist_ok=True)
    (out / "union.json").write_text(json.dumps(res, indent=2) + "\n")
    report_union(res, out / "union.md")
    return res


BUDGETS = [8, 16, 32, 48]


def report_union(res: dict, path: Path) -> None:
    e = res["entries"]
    names = res["sets"]
    lines = ["# Codes at 30k real documents: recall@10 against exact (issue 24)", "",
             f"One run: `{res['command']}` ({res['seconds']} s). {res['n_docs']} documents ({' + '.join(names)} in one "
             f"index), {res['n_queries']} queries (every set's judged ones); adaptor: {res['adaptor'] or 'none'}. "
             "Recall@10: the share of the exact 6x384 top 10 (brute force over the float16 rows the rerank reads) that "
             "the shortlist of k followed by the same exact 6x384 rerank returns in its top 10. No labels.", "",
             "## Best code per budget (k=100)", "", "| B/doc | best by recall@10 at 30k | recall@10 | runner-up | recall@10 |",
             "| ---: | --- | ---: | --- | ---: |"]
    for b in BUDGETS:
        ranked = sorted(((v["k"]["100"]["all"], lab) for lab, v in e.items() if v["bytes_per_doc"] <= b), reverse=True)
        if ranked:
            first, second = ranked[0], ranked[1] if len(ranked) > 1 else (None, "-")
            lines.append(f"| {b} | {first[1]} | {first[0]:.4f} | {second[1]} | "
                         f"{'-' if second[0] is None else format(second[0], '.4f')} |")
    lines += ["", "## Every code", "", "| shortlist | B/doc | k=50 | k=100 | k=200 | " +
              " | ".join(f"{n} k=100" for n in names) + " |", "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(names)]
    for lab, v in sorted(e.items(), key=lambda le: (le[1]["bytes_per_doc"], le[0])):
        ks = v["k"]
        lines.append(f"| {lab} | {v['bytes_per_doc']:g} | " + " | ".join(f"{ks[k]['all']:.4f}" for k in ("50", "100", "200"))
                     + " | " + " | ".join(f"{ks['100'][n]:.4f}" for n in names) + " |")
    path.write_text("\n".join(lines) + "\n")


def alone(cache: Path, names: list[str], adaptors: dict[str, dict[str, str]], out: Path, command: str) -> dict:
    """Issue 24 item 3: every size alone (exact single stage over its float32 vectors), nDCG@10 on
    each set, for each named adaptor (``{label: {set: folder}}``; label ``none``: the untrained model).
    Writes ``adaptors.json`` and ``adaptors.md`` beside the codes results."""
    import faiss

    from adaretrieve.eval.measures import Evaluator
    from adaretrieve.modeling.encoder import Encoder

    faiss.omp_set_num_threads(1)
    res: dict = {"command": command, "sizes": [str(s) for s in SIZES], "sets": {}}
    for name in names:
        z = np.load(cache_file(cache, name))
        draw, qraw = {L: z[f"d{L}"] for L in LAYERS}, {L: z[f"q{L}"] for L in LAYERS}
        docids, qids = [str(d) for d in z["docids"]], [str(q) for q in z["qids"]]
        ev = Evaluator(read_qrels(SETS[name]["qrels"]), ["nDCG@10"])
        res["sets"][name] = {"n_docs": len(docids), "n_queries": len(qids), "adaptors": {}}
        for lab, per_set in adaptors.items():
            folder = per_set.get(name, per_set.get("*"))
            if lab != "none" and not folder:
                continue
            enc = Encoder(folder, dtype=DTYPE["dtype"]) if folder else None
            diff = check_against_encoder(enc or Encoder("minilm", dtype=DTYPE["dtype"]), name, draw, SIZES)
            dv, qv = adapted_vectors(draw, enc, SIZES), adapted_vectors(qraw, enc, SIZES)
            row = {}
            for size in SIZES:
                ix = faiss.IndexFlatIP(size.dim)
                ix.add(dv[size])
                sc, cand = ix.search(qv[size], 10)
                run = {q: {docids[r]: float(x) for x, r in zip(sc[i], cand[i]) if r >= 0} for i, q in enumerate(qids)}
                row[str(size)] = round(ev(run)["nDCG@10"], 5)
            fitted = json.loads((Path(folder) / "adaptor.json").read_text())["fitted_on"] if folder else None
            res["sets"][name]["adaptors"][lab] = {"folder": folder, "fitted_on": fitted, "nDCG@10": row,
                                                  "encoder_check_max_diff": diff}
            print(f"{name} {lab:8s} " + "  ".join(f"{s} {v:.4f}" for s, v in row.items()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptors.json").write_text(json.dumps(res, indent=2) + "\n")
    report_alone(res, out / "adaptors.md")
    return res


def report_alone(res: dict, path: Path) -> None:
    labs = list(dict.fromkeys(lab for r in res["sets"].values() for lab in r["adaptors"]))
    lines = ["# One adaptor for many corpora (issue 24 item 3)", "",
             f"One run: `{res['command']}`. Every size alone: exact single stage over its own float32 vectors, "
             "nDCG@10 (the set's judged split: SciFact test, NFCorpus dev, DL19). Adaptors, all label-free "
             "(`adapt`'s defaults, fitted from the cached encoding pass by `benchmarks/codes.py adapt`): "
             "`none` the untrained MiniLM; `own` fitted on that set's corpus and train-split queries (DL19: its "
             "pool's passages only, it has no train queries here); `mix` one adaptor fitted on all three corpora and "
             "both train-query sets. The full size 6x384 is the backbone's under every adaptor.", ""]
    for name, r in res["sets"].items():
        for lab, a in r["adaptors"].items():
            f = a.get("fitted_on")
            if f and lab == "mix" and name == next(iter(res["sets"])):
                per = ", ".join(f"{n} {v['n_docs']:,}" for n, v in res["sets"].items())
                lines += [f"The mix was fitted on {f['documents']:,} documents and {f['n_queries']:,} train queries "
                          f"({per} documents), so the DL19 pool's passages weigh most in it.", ""]
    for name, r in res["sets"].items():
        lines += [f"## {name} ({r['n_docs']} documents, {r['n_queries']} queries)", "",
                  "| adaptor | " + " | ".join(res["sizes"]) + " |", "| --- |" + " ---: |" * len(res["sizes"])]
        for lab in labs:
            if lab in r["adaptors"]:
                row = r["adaptors"][lab]["nDCG@10"]
                lines.append(f"| {lab} | " + " | ".join(f"{row[s]:.4f}" for s in res["sizes"]) + " |")
        own, mix = r["adaptors"].get("own"), r["adaptors"].get("mix")
        if own and mix:
            lines += ["", "mix against own: " + ", ".join(
                f"{s} {mix['nDCG@10'][s] - own['nDCG@10'][s]:+.4f}" for s in res["sizes"][:-1])]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["encode", "adapt", "measure", "alone", "union", "report"])
    ap.add_argument("--dtype", default="float32", help="encode under this dtype (bfloat16: CPU autocast, ~2.9x faster)")
    ap.add_argument("--with-train", default="nfcorpus", help="sets whose train queries are encoded too (for adapt)")
    ap.add_argument("--adapt-out", help="adapt: the model folder to write")
    ap.add_argument("--cache", default="/tmp/h-codes/vecs")
    ap.add_argument("--sets", default="scifact,nfcorpus,dl19")
    ap.add_argument("--adaptor", action="append", default=[], help="SET=MODEL_FOLDER: the adapted MiniLM for a set")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codes"))
    ap.add_argument("--only", help="measure only the shortlists whose size:kind matches this regex")
    ap.add_argument("--skip-check", action="store_true", help="smoke runs on synthetic caches only")
    args = ap.parse_args()
    names = args.sets.split(",")
    out = Path(args.out)
    DTYPE["dtype"] = args.dtype
    if args.phase == "encode":
        encode(Path(args.cache), names, set(args.with_train.split(",")))
        return
    if args.phase == "adapt":
        adapt_from_cache(Path(args.cache), names, Path(args.adapt_out))
        return
    if args.phase == "union":  # --adaptor DIR: the one adaptor the union index is encoded with
        union(Path(args.cache), names, args.adaptor[0] if args.adaptor else None, out,
              "python benchmarks/codes.py " + " ".join(sys.argv[1:]), args.only)
        return
    if args.phase == "alone":  # --adaptor LABEL:SET=DIR (SET * for every set)
        per: dict[str, dict[str, str]] = {"none": {}}
        for a in args.adaptor:
            lab, _, rest = a.partition(":")
            st, _, folder = rest.partition("=")
            per.setdefault(lab, {})[st] = folder
        alone(Path(args.cache), names, per, out, "python benchmarks/codes.py " + " ".join(sys.argv[1:]))
        return
    if args.phase == "measure":
        adaptors = dict(a.split("=", 1) for a in args.adaptor)
        t0 = time.perf_counter()
        res = measure(Path(args.cache), names, adaptors, out, "python benchmarks/codes.py " + " ".join(sys.argv[1:]),
                      args.skip_check, args.only)
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"results-{'-'.join(names)}.json").write_text(json.dumps(res, indent=2) + "\n")
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("results-*.json"))]
    merged = {"faiss": runs[0]["faiss"], "runs": [{"command": r["command"], "wall_seconds": r.get("wall_seconds"),
                                                   "sets": list(r["sets"])} for r in runs],
              "sets": {n: {**v, "command": r["command"], "wall_seconds": r.get("wall_seconds")}
                       for r in runs for n, v in r["sets"].items()}}
    order = [n for n in SETS if n in merged["sets"]]
    merged["sets"] = {n: merged["sets"][n] for n in order}
    (out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    report(merged, out)


# -- report -----------------------------------------------------------------------------------------

def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}%}"


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The (bytes, quality, label) points no other point beats on both (fewer or equal bytes, higher quality)."""
    front, best = [], -1.0
    for b, q, lab in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((b, q, lab))
            best = q
    return front


def best_within(entries: dict, budget: float, k: int, full_only: bool | None = None) -> tuple[str, dict] | None:
    cands = [(lab, e) for lab, e in entries.items()
             if e["bytes_per_doc"] <= budget and (full_only is None or e["full_size_code"] == full_only)]
    if not cands:
        return None
    return max(cands, key=lambda le: le[1]["k"][str(k)]["nDCG@10"])


def report(res: dict, out: Path) -> None:
    names = list(res["sets"])
    lines = ["# Full-size codes against small-size codes as the shortlist (issue 24)", "",
             "One run per set (FAISS " + res["faiss"] + ", the shared 2-core machine): " + "; ".join(
                 f"`{r['command']}` ({r['wall_seconds']} s wall)" for r in res["runs"]) + ". The corpora's states were "
             "encoded once by `python benchmarks/codes.py encode` (cached under /tmp, times below).", "",
             "Every row: the shortlist (size:kind) returns its top k, then the same exact 6x384 rerank from float16 rows. "
             "nDCG@10 and its share of the full size's exact single stage; recall@100 of the reranked list (k=50 lists "
             "hold 50). Bytes per document: the shortlist's codes in RAM (`faiss_util.resident_bytes_per_doc`; a rotation's "
             "matrix is not counted). `sign`: sign bits scored against the float query; `BFlat`: Hamming; "
             "`pcaM` / `itqM`: M sign bits of the top M principal directions of the corpus (ITQ: then ITQ's rotation), "
             "of the centred document, against the rotated float query (`index.codes.fit_rotation`).", ""]
    lines += ["## Goals", "", "| set | full nDCG@10 | best at <= 16 B, k=100 | share | full-size sign 48 B, k=100 | "
              "best at <= 48 B, k=100 | share |", "| --- | ---: | --- | ---: | ---: | --- | ---: |"]
    for n in names:
        r = res["sets"][n]
        e = r["entries"]
        def best(budget, e=e):
            b = best_within(e, budget, 100)
            return f"{b[0]} ({b[1]['bytes_per_doc']:g} B) | {pct(b[1]['k']['100']['share'])}" if b else "- | -"

        sign = pct(e["6x384:sign"]["k"]["100"]["share"]) if "6x384:sign" in e else "-"
        lines.append(f"| {n} | {r['full']['nDCG@10']:.4f} | {best(16)} | {sign} | {best(48)} |")
    lines.append("")
    for n in names:
        r = res["sets"][n]
        rec = r["metrics"][1]
        lines += [f"## {n} ({r['n_docs']} documents, {r['n_queries']} queries; adaptor: {r['adaptor']})", "",
                  f"Full size single stage: nDCG@10 {r['full']['nDCG@10']:.4f}, {rec} {r['full'][rec]:.4f}. Encoded under "
                  f"{r.get('dtype', 'float32')} (largest difference from `Encoder.encode` of the set's model on 16 documents: "
                  f"{r['encoder_check_max_diff'] if r['encoder_check_max_diff'] is None else format(r['encoder_check_max_diff'], '.1e')}): "
                  f"{r['encode_seconds'][0]:.0f} s (documents) + {r['encode_seconds'][1]:.0f} s (queries); measuring "
                  f"{r['measure_seconds']:.0f} s. Pareto front at k=100 in bold.", "",
                  f"| shortlist | B/doc | nDCG@10 k=50 | k=100 | k=200 | {rec} k=100 | k=200 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        front = {lab for _, _, lab in pareto([(e["bytes_per_doc"], e["k"]["100"]["nDCG@10"], lab)
                                              for lab, e in r["entries"].items()])}
        for lab, e in sorted(r["entries"].items(), key=lambda le: (le[1]["bytes_per_doc"], le[0])):
            ks = e["k"]
            name = f"**{lab}**" if lab in front else lab
            lines.append(f"| {name} | {e['bytes_per_doc']:g} | " + " | ".join(
                f"{ks[k]['nDCG@10']:.4f} ({pct(ks[k]['share'], 0)})" for k in ("50", "100", "200")) +
                f" | {ks['100'][rec]:.4f} | {ks['200'][rec]:.4f} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(res, out / "pareto.png")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["sets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False)
    for ax, n in zip(axes[0], names):
        e = res["sets"][n]["entries"]
        for full, colour, what in ((True, "tab:red", "codes of the full size 6x384"), (False, "tab:blue", "codes of smaller sizes")):
            pts = [(v["bytes_per_doc"], v["k"]["100"]["share"] or 0) for v in e.values() if v["full_size_code"] == full]
            if pts:
                ax.scatter(*zip(*pts), s=14, c=colour, alpha=0.7, label=what)
        front = pareto([(v["bytes_per_doc"], v["k"]["100"]["share"] or 0, lab) for lab, v in e.items()])
        ax.plot([b for b, _, _ in front], [q for _, q, _ in front], "k-", lw=0.8, label="Pareto front")
        for b, q, lab in front:
            ax.annotate(lab, (b, q), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.axhline(0.97, ls=":", c="grey", lw=0.8)
        ax.axvline(16, ls=":", c="grey", lw=0.8)
        ax.set_xlabel("shortlist bytes per document (RAM)")
        ax.set_ylabel("nDCG@10 share of the full size (k=100, exact 6x384 rerank)")
        ax.set_title(n)
        shares = [v["k"]["100"]["share"] or 0 for v in e.values()]
        ax.set_ylim(max(0.0, min(shares) - 0.05), max(1.03, max(shares) + 0.02))
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
