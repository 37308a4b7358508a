from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, setup
from adaretrieve.training.adapt_config import AdaptConfig  # no torch: the defaults the help gives


@handle_errors
def adapt(
    model: str = typer.Option("minilm", "--model", "-m", help="The frozen encoder: local folder, Hub id, 'minilm' or 'mpnet'."),
    corpus: list[Path] = typer.Option([], "--corpus", help="Documents to fit on: BEIR folder, corpus.jsonl[.gz] or collection.tsv[.gz]. Repeat it to fit one adaptor on several corpora (their union, in the order given)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Model folder to write (the backbone's files + adaptor.json/.safetensors)."),
    queries: list[Path] = typer.Option([], "--queries", help="Query texts to fit on too (unlabelled): queries.jsonl, tsv, or a BEIR folder. Repeatable."),
    query_split: Optional[str] = typer.Option(None, "--query-split", help="With a BEIR folder for --queries: only the queries named in qrels/SPLIT.tsv (ids only; e.g. train), or 'all'. Required when the folder has qrels/test.tsv or dev.tsv. A queries file is read whole."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Labelled (query, document) pairs: adds a supervised InfoNCE term."),
    ladder: Optional[str] = typer.Option(None, "--ladder", help="Sizes to serve, e.g. 1x16,2x32,3x64,4x128,5x256,6x384 (default: the model's ladder)."),
    objective: Optional[str] = typer.Option(None, "--objective", help="distill (default: closed form, then ranking distillation) or ridge (closed form only)."),
    steps: Optional[int] = typer.Option(None, "--steps", help=f"Distillation steps per layer (default {AdaptConfig.steps})."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with any AdaptConfig setting."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set kind=mlp --set features=layer --set lr=5e-4."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device for the encoding pass and the fit (cpu, cuda, cuda:1; default: cuda when available)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; only the summary line and errors."),
):
    """Fit a 2D Matryoshka adaptor on a frozen encoder: small sizes that rank like the full size.

    One encoding pass over the texts; then, per ladder layer below the last, a closed-form map onto
    the full size's principal coordinates, refined by ranking distillation (label-free). The full
    size stays the backbone's own, to the bit. The output loads anywhere a model folder does
    (`index --model`, `train --set model=...`, `bench`).

    Examples:

        adaretrieve adapt --model minilm --corpus ../shared/data/beir/scifact \\
            --queries ../shared/data/beir/scifact --query-split train --out checkpoints/minilm-adapted-scifact

        adaretrieve adapt --model minilm --corpus ../shared/data/beir/nfcorpus --queries ../shared/data/beir/nfcorpus \\
            --query-split train --qrels ../shared/data/beir/nfcorpus/qrels/train.tsv --out checkpoints/minilm-adapted-nfcorpus-qrels

        adaretrieve adapt --model minilm --corpus ../shared/data/beir/scifact --corpus ../shared/data/beir/nfcorpus \
            --queries ../shared/data/beir/scifact --queries ../shared/data/beir/nfcorpus --query-split train \
            --out checkpoints/minilm-adapted-mix
    """
    setup(quiet)
    from adaretrieve.training.adapt import adapt as run_adapt
    from adaretrieve.training.config import load_config

    overrides = list(set_)
    for key, value in (("model", model if model != "minilm" or not config else None),
                       ("corpus", (corpus[0] if len(corpus) == 1 else [str(c) for c in corpus]) if corpus else None),
                       ("out", out), ("queries", (queries[0] if len(queries) == 1 else [str(q) for q in queries]) if queries else None),
                       ("query_split", query_split), ("qrels", qrels), ("ladder", ladder),
                       ("objective", objective), ("steps", steps), ("device", device)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value if isinstance(value, list) else str(value)) if not isinstance(value, int) else value}")
    cfg = load_config(AdaptConfig, config, overrides, "adapt", lists=("ladder",),
                      paths={"model": False, "corpus": True, "queries": True, "qrels": True, "out": True})
    summary = run_adapt(cfg, progress=not quiet)
    typer.echo(json.dumps(summary))
    typer.echo(f"adapted model written to {cfg.out}", err=True)
