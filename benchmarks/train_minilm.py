"""Reference training runs for the training issue: all-MiniLM-L6-v2 on NFCorpus train with
starbucks, 2dmse and mrl (same data, steps, seed), separate `single` models at the smallest and a
middle size, and the untrained model; each evaluated per ladder size on NFCorpus dev and SciFact
test, plus two-stage search (smallest shortlist, k=200, full-size rerank).

    python benchmarks/train_minilm.py [--only NAME ...] [--datasets nfcorpus scifact]

Each finished piece is written at once under benchmarks/results/train-minilm-nfcorpus/ (one JSON
per model and data set), so an interrupted run loses nothing and a rerun skips what is done.
`python benchmarks/train_minilm.py --report` rebuilds the Markdown from those files.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.bench import Suite, machine_info, run_suite  # noqa: E402
from adaretrieve.training.trainer import TrainConfig, train  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "train-minilm-nfcorpus"
BASE = ROOT / "configs" / "minilm-nfcorpus-starbucks.yaml"
LADDER = ["1x16", "2x32", "3x64", "4x128", "5x256", "6x384"]
DATA = {
    "nfcorpus": dict(corpus="../shared/data/beir/nfcorpus", queries="../shared/data/beir/nfcorpus/queries.jsonl",
                     qrels="../shared/data/beir/nfcorpus/qrels/dev.tsv"),
    "scifact": dict(corpus="../shared/data/beir/scifact", queries="../shared/data/beir/scifact/queries.jsonl",
                    qrels="../shared/data/beir/scifact/qrels/test.tsv"),
}
RUNS = {  # name: (training overrides or None for the untrained model, sizes evaluated)
    "untrained": (None, LADDER),
    "starbucks": ({"loss": "starbucks"}, LADDER),
    "2dmse": ({"loss": "2dmse"}, LADDER),
    "mrl": ({"loss": "mrl"}, LADDER),
    "single-1x16": ({"loss": "single", "pairs": ["1x16"]}, ["1x16"]),
    "single-3x64": ({"loss": "single", "pairs": ["3x64"]}, ["3x64"]),
    # SMAE pre-training on the SciFact + NFCorpus corpora, then the same Starbucks fine-tuning
    "smae-starbucks": ({"loss": "starbucks", "model": "checkpoints/minilm-smae"}, LADDER),
    "smae-only": (None, LADDER),  # the SMAE output itself, before fine-tuning
}
# what the SMAE objective was when a result was made: the smae-v0-* files predate the fix
SMAE_FORMS = {"smae-v0": "zero-padded sub-vector, mlm + mae summed per pair (before fix)",
              "smae": "sliced head transform, (mlm + mae) / 2 per pair (ielab/Starbucks smae/modeling.py)"}
SMAE = ["model=minilm", "data=[../shared/data/beir/scifact, ../shared/data/beir/nfcorpus]",
        "output=checkpoints/minilm-smae", "steps=150", "batch_size=8", "max_length=128", "pack=true",
        "whole_word_mask=true", "lr=5e-5", "save_every=25"]


def evaluate(name: str, model: str, sizes: list[str], dataset: str) -> dict:
    path = OUT / f"{name}-{dataset}.json"
    if path.exists():
        return json.loads(path.read_text())
    two = [{"shortlist": [sizes[0]], "k": [200], "rerank": ["6x384"]}] if "6x384" in sizes and len(sizes) > 1 else []
    suite = Suite(name=f"{name}-{dataset}", model=model, index=f"indexes/train-{name}-{dataset}", shortlist=sizes,
                  rerank=sizes[-1], single=sizes, two_stage=two, max_length=256, metrics=["nDCG@10", "RR@10", "R@100"],
                  latency_queries=20, **DATA[dataset])
    res = run_suite(suite, progress=False)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    logging.info("wrote %s", path)
    return res


def ensure_negatives() -> None:
    """Dense negatives for NFCorpus train from the untrained model's full-size index."""
    from adaretrieve.training.negatives import mine_dense

    cache = ROOT / "cache" / "nfcorpus-train-negatives.jsonl"
    if cache.exists():
        return
    evaluate("untrained", "minilm", LADDER, "nfcorpus")  # builds indexes/train-untrained-nfcorpus
    info = mine_dense(ROOT / "indexes" / "train-untrained-nfcorpus", DATA["nfcorpus"]["corpus"], "train", cache,
                      depth=100, skip=0, n=30, progress=False)
    logging.info("mined negatives: %s", info)


def ensure_smae() -> None:
    from adaretrieve.training.smae import PretrainConfig, pretrain

    path = OUT / "smae-pretrain.json"
    if path.exists():
        return
    cfg = PretrainConfig.from_file(None, SMAE)
    t0 = time.time()
    summary = pretrain(cfg, progress=False)
    summary["wall_seconds"] = round(time.time() - t0, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": cfg.__dict__, "summary": summary, "smae_form": SMAE_FORMS["smae"],
                                "machine": machine_info()}, indent=2) + "\n")


def run(name: str, datasets: list[str]) -> None:
    overrides, sizes = RUNS[name]
    model = "minilm"
    if name == "smae-only" or (overrides is not None and "model" in overrides):
        ensure_smae()
    if name == "smae-only":
        model = "checkpoints/minilm-smae"
    if overrides is not None:
        ensure_negatives()
        cfg = TrainConfig.from_file(BASE, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
                                    + [f"output=checkpoints/minilm-nfcorpus-{name}"])
        model = cfg.output
        summary_path = OUT / f"{name}-train.json"
        if not summary_path.exists():
            t0 = time.time()
            summary = train(cfg, progress=False)
            summary["wall_seconds"] = round(time.time() - t0, 1)
            OUT.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps({"config": cfg.__dict__, "summary": summary,
                                                "machine": machine_info()}, indent=2) + "\n")
    for ds in datasets:
        evaluate(name, model, sizes, ds)


def report() -> str:
    lines = ["# all-MiniLM-L6-v2 fine-tuned on NFCorpus train: nDCG@10 per size", "",
             "Made by `python benchmarks/train_minilm.py` (training config `configs/minilm-nfcorpus-starbucks.yaml`, "
             "the baselines differ only in `loss`/`pairs`). Every model is evaluated with max length 256, exact "
             "flat search per size; `separate` is a `single` model trained on that size alone.", ""]
    for ds, label in (("nfcorpus", "NFCorpus dev"), ("scifact", "SciFact test")):
        cols = ["untrained", "2dmse", "separate", "starbucks", "mrl", "smae only", "smae + starbucks"]
        lines += [f"## {label}", "", "| size | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        res = {n: OUT / f"{n}-{ds}.json" for n in RUNS}
        res = {n: json.loads(p.read_text()) for n, p in res.items() if p.exists()}

        def get(run, config, res=res):
            for r in res.get(run, {}).get("results", []):
                if r["config"] == config:
                    return f"{r['metrics']['nDCG@10']:.4f}"
            return "-"

        for size in LADDER:
            sep = get(f"single-{size}", f"single {size}")
            lines.append(f"| {size} | {get('untrained', f'single {size}')} | {get('2dmse', f'single {size}')} | {sep} | "
                         f"{get('starbucks', f'single {size}')} | {get('mrl', f'single {size}')} | "
                         f"{get('smae-only', f'single {size}')} | {get('smae-starbucks', f'single {size}')} |")
        cfg = "1x16 k=200 -> 6x384"
        lines.append(f"| two-stage {cfg} | {get('untrained', cfg)} | {get('2dmse', cfg)} | - | {get('starbucks', cfg)} | {get('mrl', cfg)} | "
                     f"{get('smae-only', cfg)} | {get('smae-starbucks', cfg)} |")
        lines.append("")
    sp = OUT / "smae-pretrain.json"
    if sp.exists():
        d = json.loads(sp.read_text())
        c, s = d["config"], d["summary"]
        lines += ["## SMAE pre-training before the Starbucks fine-tune", "",
                  f"`smae + starbucks`: SMAE on the SciFact + NFCorpus corpora ({s['steps']} steps, batch {c['batch_size']}, "
                  f"{c['max_length']}-token packed rows, whole-word masking {c['encoder_mask']:.0%} encoder / "
                  f"{c['decoder_mask']:.0%} decoder, lr {c['lr']}), loss {s['first_loss']:.2f} -> {s['final_loss']:.2f} "
                  f"in {s['seconds']} s, then exactly the `starbucks` fine-tune.", ""]
    lines += ["## Training cost (2 CPU cores)", "", "| run | steps | wall s | tokens/s | final loss |", "|---|---:|---:|---:|---:|"]
    for n in RUNS:
        p = OUT / f"{n}-train.json"
        if p.exists():
            s = json.loads(p.read_text())["summary"]
            lines.append(f"| {n} | {s['steps']} | {s['seconds']} | {s['tokens_per_second']} | {s['final_loss']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(RUNS))
    ap.add_argument("--datasets", nargs="*", default=["nfcorpus", "scifact"])
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not a.report:
        for name in a.only:
            run(name, a.datasets)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(report())
    print(report())
