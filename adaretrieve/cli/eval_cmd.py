from __future__ import annotations

from pathlib import Path

import typer

from adaretrieve.cli.common import handle_errors, print_metrics, setup


@handle_errors
def evaluate(
    run: Path = typer.Option(..., "--run", help="TREC run file (or JSON lines from `search --format jsonl`)."),
    qrels: Path = typer.Option(..., "--qrels", help="BEIR qrels tsv or TREC qrels."),
    metrics: list[str] = typer.Option(["nDCG@10", "RR@10", "R@100", "R@1000"], "--metrics", help="ir-measures names (nDCG@10) or trec_eval names (ndcg_cut_10, recip_rank, recall_100, map), comma-separated or repeated; on TREC DL use \"nDCG@10,RR(rel=2)@10,R(rel=2)@1000\"."),
    per_query: bool = typer.Option(False, "--per-query", help="Also print every judged query's value: 'measure<TAB>qid<TAB>value' lines (trec_eval -q), then the means as qid 'all'."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON ({\"per_query\": ..., \"mean\": ...} with --per-query)."),
):
    """Score a run with ir-measures (means over the judged queries; a judged query missing from the run scores 0).

    Example:

        adaretrieve eval --run run.trec --qrels ../shared/data/beir/scifact/qrels/test.tsv --metrics "nDCG@10,RR@10"

        adaretrieve eval --run run.trec --qrels ../shared/data/beir/scifact/qrels/test.tsv --metrics ndcg_cut_10,recip_rank --per-query
    """
    setup(True)
    import json

    from adaretrieve.data import read_qrels
    from adaretrieve.eval import Evaluator, read_run, recall_within_depth

    judged = read_qrels(qrels)
    scores = read_run(run)
    depth = max((len(d) for d in scores.values()), default=0)
    # as search names it: R@1000 of a run that holds at most 200 per query is R@200 (recall_within_depth)
    measures, renamed = recall_within_depth(metrics, depth) if depth else (metrics, {})
    if renamed:
        typer.echo(f"note: {run} holds at most {depth} results per query; "
                   + ", ".join(f"{a} is {b}" for a, b in renamed.items()), err=True)
    ev = Evaluator(judged, measures)
    means = ev(scores)
    if not per_query:
        print_metrics(means, as_json)
    elif as_json:
        typer.echo(json.dumps({"per_query": {q: {k: round(v, 5) for k, v in d.items()} for q, d in ev.per_query(scores).items()},
                               "mean": {k: round(v, 5) for k, v in means.items()}}))
    else:
        per = ev.per_query(scores)
        for name in ev.names:
            for q, d in per.items():
                typer.echo(f"{name}\t{q}\t{d[name]:.4f}")
            typer.echo(f"{name}\tall\t{means[name]:.4f}")
