from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, setup


@handle_errors
def pretrain(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Pretraining YAML."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set steps=500 --set data=[a,b]."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if the output has a checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """SMAE pre-training: MLM from every (layer, dim) pair's sub-vector plus a one-layer decoder that
    rebuilds a heavily masked input from the pair's pooled vector. The output loads into `train`.

    Example:

        adaretrieve pretrain --set model=minilm --set 'data=[../shared/data/beir/scifact, ../shared/data/beir/nfcorpus]' \\
            --set output=checkpoints/minilm-smae --set steps=200
    """
    setup(quiet)
    from adaretrieve.training.smae import PretrainConfig
    from adaretrieve.training.smae import pretrain as run

    cfg = PretrainConfig.from_file(config, list(set_))
    typer.echo(json.dumps(run(cfg, progress=not quiet, resume=not no_resume)))
    typer.echo(f"model written to {cfg.output}", err=True)
