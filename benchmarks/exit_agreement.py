"""Issue 25 item 0 probe: top-10 agreement of a cascade's exit sizes with the full size, per adapt setting.

Fits only the maps of layers 2 and 4 (adapt's ``fit_adaptor``) from the cached encoding pass of one set
(``benchmarks/codes.py encode --dtype bfloat16 --with-train SET``: corpus + train queries), then scores the
set's judged queries: overlap@10 of (the 2x64 top 200 reranked at LxD) with the full size's exact top 10,
its share of queries at >= 0.8 and at 1.0. Prints one JSON line.

    python benchmarks/exit_agreement.py scifact '{"steps": "none"}'   # the untrained model
    python benchmarks/exit_agreement.py scifact '{}'                   # adapt's defaults
    python benchmarks/exit_agreement.py scifact '{"agree_top": 100, "batch_size": 128}'
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import codes as C  # noqa: E402

from adaretrieve.sizes import truncate  # noqa: E402
from adaretrieve.training import adapt as A  # noqa: E402
from adaretrieve.training.losses import default_ladder  # noqa: E402

C.DTYPE["dtype"] = "bfloat16"
name = sys.argv[1]
overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
layers = [2, 4]
z = np.load(C.cache_file(C.Path("/tmp/h-codes/vecs"), name))
states = {L: torch.from_numpy(np.concatenate([z[f"d{L}"], z[f"t{L}"]])) for L in C.LAYERS}
n_docs = len(z["docids"])
torch.set_num_threads(1)
cfg = A.AdaptConfig(model="minilm", corpus="x", out="x", **overrides)
ladder = default_ladder(6, 384)
t0 = time.perf_counter()
if overrides.get("steps", 1) == "none":
    adaptor = None
else:
    adaptor, _ = A.fit_adaptor(states, n_docs, [], ladder, layers, 384, 6, True, cfg, False)
fit_s = time.perf_counter() - t0

def sizes_of(raw):
    out = {}
    with torch.no_grad():
        for L in layers + [6]:
            if adaptor is not None and L in layers:
                v = adaptor(L, {i: torch.from_numpy(raw[i]) for i in adaptor.inputs(L)}).numpy()
            else:
                v = raw[L]
            for D in (32, 64, 128, 256, 384):
                out[(L, D)] = truncate(np.ascontiguousarray(v[:, :D]), D, True)
    return out

dv = sizes_of({L: z[f"d{L}"] for L in C.LAYERS})
qv = sizes_of({L: z[f"q{L}"] for L in C.LAYERS})
full_top = np.argsort(-(qv[(6, 384)] @ dv[(6, 384)].T), axis=1)[:, :10]
s2 = qv[(2, 64)] @ dv[(2, 64)].T
cand = np.argsort(-s2, axis=1)[:, :200]
res = {"set": name, "overrides": overrides, "fit_s": round(fit_s, 1)}
for (L, D) in [(2, 64), (2, 128), (2, 384), (4, 64), (4, 128), (4, 256), (4, 384)]:
    sc = np.einsum("qd,qkd->qk", qv[(L, D)], dv[(L, D)][cand])
    top = np.take_along_axis(cand, np.argsort(-sc, axis=1)[:, :10], 1)
    ov = np.array([len(set(a) & set(b)) / 10 for a, b in zip(top, full_top)])
    res[f"{L}x{D}"] = {"overlap10": round(float(ov.mean()), 4), "ge0.8": round(float((ov >= 0.8).mean()), 4),
                       "eq1": round(float((ov == 1).mean()), 4)}
# recall of the 200 candidates
res["cand200_recall_of_full10"] = round(float(np.mean([len(set(c) & set(f)) / 10 for c, f in zip(cand, full_top)])), 4)
print(json.dumps(res), flush=True)
