from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, setup


@handle_errors
def mine(
    data: Path = typer.Option(..., "--data", help="BEIR folder with queries.jsonl and qrels/<split>.tsv."),
    index: Optional[Path] = typer.Option(None, "--index", help="Dense: index of the same corpus (its full-size vectors rank the candidates)."),
    method: str = typer.Option("dense", "--method", help="dense (needs --index) or bm25 (pyserini, as the Starbucks paper; needs Java 21+)."),
    out: Path = typer.Option(..., "--out", "-o", help="Negatives cache (jsonl) for `train --set negatives=...`."),
    split: str = typer.Option("train", "--split", help="With a BEIR folder: mine for the queries of qrels/SPLIT.tsv."),
    depth: int = typer.Option(100, "--depth", help="Ranks searched per query."),
    skip: int = typer.Option(0, "--skip", help="Top ranks passed over (often unjudged positives)."),
    n: int = typer.Option(30, "--n", help="Negatives kept per query."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Mine hard negatives for training: top-ranked unjudged documents, by a dense index or BM25.

    Examples:

        adaretrieve index --corpus ../shared/data/beir/nfcorpus --model minilm --shortlist 6x384 --out indexes/nfcorpus
        adaretrieve mine --data ../shared/data/beir/nfcorpus --index indexes/nfcorpus --skip 10 --out cache/nfcorpus-negs.jsonl

        adaretrieve mine --data ../shared/data/beir/nfcorpus --method bm25 --out cache/nfcorpus-bm25-negs.jsonl
    """
    setup(quiet)
    from adaretrieve.errors import AdaError
    from adaretrieve.training.negatives import mine_bm25, mine_dense

    if min(depth, n) < 1 or skip < 0:
        raise AdaError(f"--depth ({depth}) and --n ({n}) must be at least 1, --skip ({skip}) at least 0")
    if method == "bm25":
        typer.echo(json.dumps(mine_bm25(data, split, out, depth=depth, skip=skip, n=n)))
    elif method == "dense":
        if index is None:
            raise AdaError("--method dense needs --index (build one with `adaretrieve index`), or use --method bm25")
        typer.echo(json.dumps(mine_dense(index, data, split, out, depth=depth, skip=skip, n=n, progress=not quiet)))
    else:
        raise AdaError(f"--method {method!r} is not one of dense, bm25")
