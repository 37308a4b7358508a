from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, setup
from adaretrieve.errors import AdaError


@handle_errors
def tune(
    index: Path = typer.Option(..., "--index", "-i", help="Index directory from `adaretrieve index`."),
    queries: Path = typer.Option(..., "--queries", help="Queries to measure on (a held-out split, ideally)."),
    qrels: Path = typer.Option(..., "--qrels", help="Qrels for those queries."),
    budget_ms: float = typer.Option(..., "--budget-ms", help="Per-query latency budget at batch 1: query encoding + search, median."),
    budget_ram_mb: Optional[float] = typer.Option(None, "--budget-ram-mb", help="RAM budget for what stays resident (the shortlist index)."),
    metric: str = typer.Option("nDCG@10", "--metric", help="What to maximise."),
    k: list[int] = typer.Option([50, 100, 200, 500], "--k", help="Shortlist depths to try."),
    latency_queries: int = typer.Option(50, "--latency-queries", help="Queries timed one at a time."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Pick the best configuration on the Pareto front that fits a latency (and RAM) budget, and print
    the `search` command that uses it.

    Example:

        adaretrieve tune --index indexes/scifact-minilm --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-ms 20
    """
    setup(quiet)
    from adaretrieve.bench import Suite, config_name, pareto, run_suite
    from adaretrieve.search import IndexReader

    reader = IndexReader(index)
    m = reader.manifest
    mod = m.model
    model = mod["path"] if Path(mod["path"]).exists() else mod["name"]
    sizes = [str(s) for s in m.shortlist_sizes]
    rerank = str(m.rerank_size) if m.rerank else None
    two = [{"shortlist": [s], "k": list(k), "rerank": [rerank]} for s in sizes if rerank and s != rerank]
    suite = Suite(name=f"tune-{index.name}", model=model, corpus=m.corpus, queries=str(queries), qrels=str(qrels),
                  index=str(index), shortlist=sizes, rerank=rerank, single=sizes, two_stage=two,
                  metrics=[metric], max_length=mod["max_length"], latency_queries=latency_queries)
    res = run_suite(suite, progress=not quiet)
    rows = res["results"]
    cost = [(r["encode_ms_batch1"]["p50"] + r["search_ms_batch1"]["p50"]) for r in rows]
    front = set(pareto([(c, r["metrics"][metric]) for c, r in zip(cost, rows)]))
    ram = [r["resident_bytes_per_doc"] * reader.n_docs / 1e6 for r in rows]
    ok = [i for i in front if cost[i] <= budget_ms and (budget_ram_mb is None or ram[i] <= budget_ram_mb)]
    typer.echo("Pareto front (latency ms, RAM MB, " + metric + "):", err=True)
    for i in sorted(front, key=lambda i: cost[i]):
        mark = "*" if i in ok else " "
        typer.echo(f" {mark} {config_name(rows[i]):<28} {cost[i]:8.2f} ms {ram[i]:9.1f} MB  {rows[i]['metrics'][metric]:.4f}", err=True)
    if not ok:
        fastest = min(front, key=lambda i: cost[i])
        raise AdaError(f"no configuration fits {budget_ms} ms" + (f" and {budget_ram_mb} MB" if budget_ram_mb else "")
                       + f"; the fastest is {config_name(rows[fastest])} at {cost[fastest]:.2f} ms, {ram[fastest]:.1f} MB")
    best = max(ok, key=lambda i: rows[i]["metrics"][metric])
    r = rows[best]
    cmd = f"adaretrieve search --index {index} --queries {queries} --shortlist {r['shortlist']}"
    cmd += f" --k {r['k']} --rerank {r['rerank']}" if r["rerank"] else " --rerank none"
    typer.echo(f"best within budget: {config_name(r)}: {metric} {r['metrics'][metric]:.4f}, {cost[best]:.2f} ms, {ram[best]:.1f} MB resident")
    typer.echo(cmd)
