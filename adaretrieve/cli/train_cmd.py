from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, setup


@handle_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Training YAML (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set steps=100 --set loss=2dmse."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="Train exactly these sizes, e.g. 4x32,12x768 (overrides the ladder)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if the output has checkpoints."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Fine-tune an encoder so that every (layer, dim) pair is a good embedding.

    Losses: starbucks (fixed ladder, every pair every step, KL to the full model); 2dmse-paper
    (= 2dmse; the Starbucks paper's baseline: one random earlier layer plus the last, each at every
    dim), 2dmse-st (sentence-transformers Matryoshka2dLoss; add --set kl_weight=0 --set
    layer_kl_weight=1 for its KL), 2dmse-inhouse (this project's older three-pair variant); mrl
    (last layer, every dim), single (one size). An interrupted run
    resumes from its last checkpoint when started again with the same output.

    Examples:

        adaretrieve train --config configs/minilm-nfcorpus-starbucks.yaml

        adaretrieve train --config configs/minilm-nfcorpus-starbucks.yaml --set loss=2dmse --set output=checkpoints/2dmse

        torchrun --nproc_per_node 4 -m adaretrieve.cli.main train --config configs/minilm-nfcorpus-starbucks.yaml
    """
    setup(quiet)
    from adaretrieve.training.trainer import TrainConfig
    from adaretrieve.training.trainer import train as run_train

    overrides = list(set_) + ([f"pairs={pairs}"] if pairs else [])
    cfg = TrainConfig.from_file(config, overrides)
    summary = run_train(cfg, progress=not quiet, resume=not no_resume)
    typer.echo(json.dumps(summary))
    typer.echo(f"model written to {cfg.output}", err=True)
