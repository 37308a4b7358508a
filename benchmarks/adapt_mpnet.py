"""The mission's own example on all-mpnet-base-v2 (12x768): `--shortlist 4x32 --k 200 --rerank 12x768`
on SciFact test, untrained and after a label-free `adapt`.

One encoding pass over the SciFact corpus and its queries (mean-pooled states of layers 0..4 and 12,
max length 256, cached under cache/states-mpnet-scifact.npz), then the library's own `fit_adaptor`
(corpus + the 809 train queries as unlabelled texts, the `adapt` defaults; layers 2 and 4) and exact
search in numpy; the adaptor is applied by the module the encoder uses. Encoding the corpus twice
(once to fit, once to index) costs over two hours on 2 CPU cores, so this script evaluates from the
one pass; benchmarks/adapt_minilm.py shows for MiniLM that the pipeline gives the same figures.

    python benchmarks/adapt_mpnet.py [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.bench import machine_info  # noqa: E402
from adaretrieve.data.readers import doc_text, iter_corpus, read_qrels, read_queries  # noqa: E402
from adaretrieve.eval import Evaluator  # noqa: E402
from adaretrieve.sizes import parse_sizes  # noqa: E402
from adaretrieve.training.adapt import AdaptConfig, fit_adaptor  # noqa: E402
from benchmarks.adapt_explore import nrm, shortlist_run  # noqa: E402  (one scoring path for both scripts)

SHARED = ROOT.parent / "shared" / "data" / "beir" / "scifact"
OUT = ROOT / "benchmarks" / "results" / "adapt-mpnet"
LAYERS = [0, 1, 2, 3, 4, 12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-length", type=int, default=256)
    a = ap.parse_args()
    cache = ROOT / "cache" / f"states-mpnet-scifact-{a.dtype}-{a.max_length}.npz"
    docs = list(iter_corpus(SHARED))
    qs = read_queries(SHARED)
    encode_s = None
    if cache.exists():
        z = np.load(cache)
        C, Q = z["corpus"], z["queries"]
    else:
        from adaretrieve.modeling import Encoder

        enc = Encoder("mpnet", max_length=a.max_length, dtype=a.dtype, device="cpu")
        t0 = time.perf_counter()
        def run(texts):
            v = enc.encode(texts, [], raw_layers=LAYERS, progress=True, batch_size=16)
            return np.stack([v[("raw", L)] for L in LAYERS])
        Q = run(list(qs.values()))
        C = run([doc_text(d.title, d.text) for d in docs])
        encode_s = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, corpus=C, queries=Q)
    idx = {L: i for i, L in enumerate(LAYERS)}
    qids = list(qs)
    qi = {q: i for i, q in enumerate(qids)}
    train = np.array([qi[q] for q in read_qrels(SHARED / "qrels" / "train.tsv") if q in qi])
    states = {L: torch.from_numpy(np.concatenate([C[idx[L]], Q[idx[L]][train]])) for L in LAYERS}
    t0 = time.perf_counter()
    ladder = parse_sizes("2x32,4x64,6x128,8x256,10x512,12x768")
    adaptor, log = fit_adaptor(states, len(docs), [], ladder, [2, 4], 768, 12, True, AdaptConfig())
    fit_s = time.perf_counter() - t0
    qrels = read_qrels(SHARED / "qrels" / "test.tsv")
    test = [q for q in qrels if q in qi]
    t = np.array([qi[q] for q in test])
    ev = Evaluator(qrels, ["nDCG@10", "RR@10", "R@100"])
    dids = [d.docid for d in docs]

    def run_of(S, rerank=None, k=100):
        return {k2: round(v, 4) for k2, v in ev(shortlist_run(S, test, dids, rerank, k)).items()}

    def small(L, D, adapted):
        if not adapted:
            return nrm(Q[idx[L]][t][:, :D]), nrm(C[idx[L]][:, :D])
        with torch.no_grad():
            f = lambda X, rows: adaptor(L, {x: torch.from_numpy(X[idx[x]][rows] if rows is not None else X[idx[x]])
                                            for x in adaptor.inputs(L)}).numpy()
            return nrm(f(Q, t)[:, :D]), nrm(f(C, None)[:, :D])

    full = nrm(Q[idx[12]][t]) @ nrm(C[idx[12]]).T
    res = {"model": "all-mpnet-base-v2", "dtype": a.dtype, "max_length": a.max_length, "encode_seconds": encode_s,
           "fit_seconds": round(fit_s, 1), "fit_log": log, "single 12x768": run_of(full), "rows": {}}
    for adapted in (False, True):
        for L, D in ((4, 32), (4, 64), (2, 32)):
            q, c = small(L, D, adapted)
            S = q @ c.T
            tag = "adapt" if adapted else "untrained"
            res["rows"][f"{tag} single {L}x{D}"] = run_of(S)
            for k in (100, 200):
                res["rows"][f"{tag} {L}x{D} k={k} -> 12x768"] = run_of(S, full, k)
    res["machine"] = machine_info()
    res["command"] = f"python benchmarks/adapt_mpnet.py --dtype {a.dtype} --max-length {a.max_length}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"results-{a.dtype}.json").write_text(json.dumps(res, indent=2) + "\n")
    f = res["single 12x768"]["nDCG@10"]
    lines = ["# all-mpnet-base-v2 on SciFact test: the mission's 4x32 k=200 -> 12x768", "", f"`{res['command']}`", "",
             f"Full size 12x768 nDCG@10 {f:.4f}. Fit {res['fit_seconds']} s.", "",
             "| configuration | nDCG@10 | of full |", "| --- | ---: | ---: |"]
    for k, v in res["rows"].items():
        lines.append(f"| {k} | {v['nDCG@10']:.4f} | {100 * v['nDCG@10'] / f:.1f}% |")
    (OUT / f"results-{a.dtype}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
