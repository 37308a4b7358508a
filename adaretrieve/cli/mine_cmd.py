from __future__ import annotations

import json
from pathlib import Path

import typer

from adaretrieve.cli.common import handle_errors, setup


@handle_errors
def mine(
    data: Path = typer.Option(..., "--data", help="BEIR folder with queries.jsonl and qrels/<split>.tsv."),
    index: Path = typer.Option(..., "--index", help="Index of the same corpus (its full-size vectors rank the candidates)."),
    out: Path = typer.Option(..., "--out", "-o", help="Negatives cache (jsonl) for `train --set negatives=...`."),
    split: str = typer.Option("train", "--split"),
    depth: int = typer.Option(100, "--depth", help="Ranks searched per query."),
    skip: int = typer.Option(0, "--skip", help="Top ranks passed over (often unjudged positives)."),
    n: int = typer.Option(30, "--n", help="Negatives kept per query."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Mine hard negatives for training with a dense index: top-ranked unjudged documents.

    Example:

        adaretrieve index --corpus ../shared/data/beir/nfcorpus --model minilm --shortlist 6x384 --out indexes/nfcorpus
        adaretrieve mine --data ../shared/data/beir/nfcorpus --index indexes/nfcorpus --skip 10 --out cache/nfcorpus-negs.jsonl
    """
    setup(quiet)
    from adaretrieve.training.negatives import mine_dense

    typer.echo(json.dumps(mine_dense(index, data, split, out, depth=depth, skip=skip, n=n, progress=not quiet)))
