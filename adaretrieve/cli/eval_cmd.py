from __future__ import annotations

from pathlib import Path

import typer

from adaretrieve.cli.common import handle_errors, setup
from adaretrieve.cli.search_cmd import _print_metrics


@handle_errors
def evaluate(
    run: Path = typer.Option(..., "--run", help="TREC run file (or JSON lines from `search --format jsonl`)."),
    qrels: Path = typer.Option(..., "--qrels", help="BEIR qrels tsv or TREC qrels."),
    metrics: list[str] = typer.Option(["nDCG@10", "RR@10", "R@100", "R@1000"], "--metrics", help="ir-measures names, comma-separated or repeated; on TREC DL use \"nDCG@10,RR(rel=2)@10,R(rel=2)@1000\"."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
):
    """Score a run with ir-measures (means over the judged queries; a judged query missing from the run scores 0).

    Example:

        adaretrieve eval --run run.trec --qrels ../shared/data/beir/scifact/qrels/test.tsv --metrics "nDCG@10,RR@10"
    """
    setup(True)
    from adaretrieve.data import read_qrels
    from adaretrieve.eval import Evaluator, read_run

    _print_metrics(Evaluator(read_qrels(qrels), metrics)(read_run(run)), as_json)
