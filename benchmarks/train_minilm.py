"""Reference training runs for the training issue: all-MiniLM-L6-v2 on NFCorpus train with
starbucks, the 2DMSE forms and mrl (same data, steps, seed), separate `single` models at the smallest and a
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
    # 2DMSE by form (see adaretrieve/training/losses.py); the in-house rows predate the named forms
    "2dmse-inhouse": ({"loss": "2dmse-inhouse"}, LADDER),
    "2dmse-paper": ({"loss": "2dmse-paper"}, LADDER),
    "mrl": ({"loss": "mrl"}, LADDER),
    "single-1x16": ({"loss": "single", "pairs": ["1x16"]}, ["1x16"]),
    "single-3x64": ({"loss": "single", "pairs": ["3x64"]}, ["3x64"]),
    # SMAE pre-training on the SciFact + NFCorpus corpora, then the same Starbucks fine-tuning
    "smae-starbucks": ({"loss": "starbucks", "model": "checkpoints/minilm-smae"}, LADDER),
    "smae-only": (None, LADDER),  # the SMAE output itself, before fine-tuning
}
FORMS = {  # what each 2DMSE row's loss was, as the report names it
    "2dmse-inhouse": "in-house three-pair variant: full size + last layer at 1 random dim + 1 random earlier layer at 1 random dim",
    "2dmse-paper": "Starbucks paper baseline (ielab/Starbucks retrieval/modeling.py, sub_model_sampling): 1 random "
                   "earlier ladder layer + the last layer, each at every ladder dim, weight 1, with the config's score KL "
                   "to the full size (kl_weight 1, as every row here)",
    "2dmse-st": "sentence-transformers Matryoshka2dLoss: last layer at 1 random dim + 1 prior layer (weight 1/L) at 1 random dim",
}
# what the SMAE objective was when a result was made: the smae-v0-* files predate the fix
SMAE_FORMS = {"smae-v0": "before fix: zero-padded sub-vector, mlm + mae summed per pair",
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
    res = run_suite(suite, progress=False, replace_stale=True)  # the driver owns its index paths
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


def _load(name: str, ds: str) -> dict:
    p = OUT / f"{name}-{ds}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _ndcg(res: dict, config: str) -> str:
    for r in res.get("results", []):
        if r["config"] == config:
            return f"{r['metrics']['nDCG@10']:.4f}"
    return "-"


def _table(cols: list[tuple[str, str]], ds: str, sep: bool = False) -> list[str]:
    """One row per ladder size plus the two-stage row; cols: (header, run name)."""
    res = {name: _load(name, ds) for _, name in cols}
    heads = [h for h, _ in cols] + (["separate"] if sep else [])
    lines = ["| size | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for size in LADDER + ["1x16 k=200 -> 6x384"]:
        config = size if "k=" in size else f"single {size}"
        cells = [_ndcg(res[name], config) for _, name in cols]
        if sep:
            cells.append(_ndcg(_load(f"single-{size}", ds), config) if "k=" not in size else "-")
        label = f"two-stage {size}" if "k=" in size else size
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _threads(d: dict) -> str:
    n = d.get("machine", {}).get("torch_threads")
    return "?" if n is None else f"{n} torch thread{'s' if n != 1 else ''}"


def _smae_line(name: str) -> str:
    p = OUT / f"{name}-pretrain.json"
    if not p.exists():
        return f"- `{name}`: not run yet"
    d = json.loads(p.read_text())
    c, s = d["config"], d["summary"]
    return (f"- `{name}` ({SMAE_FORMS[name]}): {s['steps']} steps, batch {c['batch_size']}, {c['max_length']}-token "
            f"packed rows, whole-word masking {c['encoder_mask']:.0%} encoder / {c['decoder_mask']:.0%} decoder, "
            f"lr {c['lr']}; loss {s['first_loss']:.2f} -> {s['final_loss']:.2f} in {s['seconds']} s "
            f"({_threads(d)})")


def report() -> str:
    lines = ["# all-MiniLM-L6-v2 fine-tuned on NFCorpus train: nDCG@10 per size", "",
             "Made by `python benchmarks/train_minilm.py` (training config `configs/minilm-nfcorpus-starbucks.yaml`, "
             "the baselines differ only in `loss`/`pairs`). Every model is evaluated with max length 256, exact "
             "flat search per size; `separate` is a `single` model trained on that size alone.", "",
             "2DMSE columns name their form (`loss`):", ""]
    lines += [f"- `{n}`: {FORMS[n]}" for n in ("2dmse-inhouse", "2dmse-paper")]
    lines += ["", "The `2dmse-inhouse` rows were made before the forms had names (then `loss: 2dmse`); "
              "their numbers are as measured then.", ""]
    main = [("untrained", "untrained"), ("2dmse-inhouse", "2dmse-inhouse"), ("2dmse-paper", "2dmse-paper"),
            ("starbucks", "starbucks"), ("mrl", "mrl")]
    smae = [("smae only, before fix", "smae-v0-only"), ("smae only", "smae-only"),
            ("smae + starbucks, before fix", "smae-v0-starbucks"), ("smae + starbucks", "smae-starbucks")]
    for ds, label in (("nfcorpus", "NFCorpus dev"), ("scifact", "SciFact test")):
        lines += [f"## {label}", ""] + _table(main, ds, sep=True) + [""]
    lines += ["## SMAE pre-training before the Starbucks fine-tune: before and after the fix", "",
              "`smae + starbucks` is SMAE on the SciFact + NFCorpus corpora, then exactly the `starbucks` fine-tune; "
              "`smae only` is the SMAE output itself. `before fix` (files `smae-v0-*`): the pair's sub-vector "
              "zero-padded into the decoder's first position and each pair's MLM + decoder losses summed; after: "
              "the sub-vector through the MLM head's sliced transform and the two losses averaged per pair, as "
              "ielab/Starbucks `smae/modeling.py`. The after-fix loss is on half the scale (a mean of the two "
              "losses, not their sum). Wall times are not comparable across thread counts or machine load.", "",
              _smae_line("smae-v0"), _smae_line("smae"), ""]
    for ds, label in (("nfcorpus", "NFCorpus dev"), ("scifact", "SciFact test")):
        lines += [f"### {label}", ""] + _table([("starbucks (no SMAE)", "starbucks")] + smae, ds) + [""]
    lines += ["## Training cost", "", "| run | loss (form) | steps | wall s | tokens/s | final loss | machine |",
              "|---|---|---:|---:|---:|---:|---|"]
    for n in list(RUNS) + ["smae-v0-starbucks"]:
        p = OUT / f"{n}-train.json"
        if p.exists():
            d = json.loads(p.read_text())
            s = d["summary"]
            form = n if n.startswith("2dmse") else d["config"]["loss"]
            where = _threads(d)
            lines.append(f"| {n} | {form} | {s['steps']} | {s['seconds']} | {s['tokens_per_second']} | {s['final_loss']} | {where} |")
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
