"""CPU bfloat16 autocast against float32 for Starbucks training steps, A/B interleaved in one process.

    python benchmarks/bf16_train_speed.py [--steps 4] [--repeats 3]

Same config as configs/minilm-nfcorpus-starbucks.yaml (MiniLM, NFCorpus train, batch 16, 48/128
tokens, keep_full 1.0); each repeat runs `steps` steps in float32 then in bfloat16 from the same
start and seed, so both see the same load. Prints and writes tokens/s per run and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.bench import machine_info  # noqa: E402
from adaretrieve.training.trainer import TrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for r in range(a.repeats):
        for dtype in ("float32", "bfloat16"):
            out = Path(tempfile.mkdtemp())
            cfg = TrainConfig.from_file(ROOT / "configs" / "minilm-nfcorpus-starbucks.yaml",
                                        [f"output={out}", f"steps={a.steps}", f"save_every={a.steps}", "keep_full=1.0",
                                         f"dtype={dtype}", "warmup=0"])
            s = train(cfg, progress=False)
            rows.append({"repeat": r, "dtype": dtype, "tokens_per_second": s["tokens_per_second"], "seconds": s["seconds"],
                         "final_loss": s["final_loss"]})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    best = {d: max(x["tokens_per_second"] for x in rows if x["dtype"] == d) for d in ("float32", "bfloat16")}
    res = {"rows": rows, "best_tokens_per_second": best, "speedup_bf16": round(best["bfloat16"] / best["float32"], 2),
           "machine": machine_info(), "command": f"python benchmarks/bf16_train_speed.py --steps {a.steps} --repeats {a.repeats}"}
    out = ROOT / "benchmarks" / "results" / "adapt-minilm" / "bf16-train-speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({"best": best, "speedup_bf16": res["speedup_bf16"]}))


if __name__ == "__main__":
    main()
