from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import BACKEND_HELP, at_least_1, handle_errors, setup
from adaretrieve.errors import AdaError


@handle_errors
def tune(
    index: Path = typer.Option(..., "--index", "-i", help="Index directory from `adaretrieve index`."),
    queries: Path = typer.Option(..., "--queries", help="Queries to measure on (a held-out split, ideally)."),
    qrels: Path = typer.Option(..., "--qrels", help="Qrels for those queries."),
    budget_ms: float = typer.Option(..., "--budget-ms", help="Per-query latency budget at batch 1: query encoding + search, median."),
    budget_ram_mb: Optional[float] = typer.Option(None, "--budget-ram-mb", help="RAM budget, MB: everything a configuration's latency needs resident: private memory (measured in a fresh process serving it, else its shortlist index by FAISS type) plus the index-file pages it reads (measured, else the whole rerank file)."),
    metric: str = typer.Option("nDCG@10", "--metric", help="What to maximise."),
    k: list[int] = typer.Option([50, 100, 200, 500], "--k", help="Shortlist depths to try."),
    latency_queries: int = typer.Option(50, "--latency-queries", help="Queries timed one at a time."),
    nprobe: list[int] = typer.Option([], "--nprobe", help="IVF shortlists: nprobe values to try (repeat)."),
    ef_search: list[int] = typer.Option([], "--ef-search", help="HNSW shortlists: ef_search values to try (repeat)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Pick the configuration with the best --metric among those that fit every budget given (the
    faster on a tie), and print the `search` command that uses it.

    Example:

        adaretrieve tune --index indexes/scifact-minilm --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-ms 20
    """
    setup(quiet)
    from adaretrieve import bench
    from adaretrieve.bench.suite import Suite, config_name, plan_of, search_args
    from adaretrieve.bench.verdicts import best_within_budget, latency_ms, metric_of, pareto, resident_mb, within_budget
    from adaretrieve.search import IndexReader

    at_least_1({"--latency-queries": latency_queries, "--k": min(k, default=None), "--nprobe": min(nprobe, default=None),
                "--ef-search": min(ef_search, default=None)})
    reader = IndexReader(index)
    m = reader.manifest
    mod, spec = m.model, m.vector_spec
    model = mod["path"] if Path(mod["path"]).exists() else mod["name"]
    sizes = [str(s) for s in m.shortlist_sizes]
    rerank = str(m.rerank_size) if m.rerank else None
    two = [{"shortlist": [s], "k": list(k), "rerank": [rerank]} for s in sizes if rerank and s != rerank]
    suite = Suite(name=f"tune-{index.name}", model=model, corpus=m.corpus, queries=str(queries), qrels=str(qrels),
                  index=str(index), shortlist=sizes, rerank=rerank, single=sizes, two_stage=two,
                  metrics=[metric], latency_queries=latency_queries, nprobe=list(nprobe), ef_search=list(ef_search),
                  factory=m.shortlist[0]["factory"],
                  # the index's own vector spec (code-review-3 A4): the suite reuses the index as built,
                  # and its queries are encoded as `search` encodes them; --backend is the queries'
                  max_length=spec.max_length, pooling=spec.pooling, normalize=spec.normalize,
                  query_prefix=spec.query_prefix, passage_prefix=spec.passage_prefix, lowercase=spec.lowercase,
                  backend=spec.backend, dtype=None if spec.dtype == "float32" else spec.dtype, query_backend=backend)
    rows = bench.run_suite(suite, progress=not quiet)["results"]
    n = reader.n_docs

    def ram(r: dict) -> str:
        mb = resident_mb(r, n)
        return "?" if mb is None else f"{mb:.1f}"

    best = best_within_budget(rows, metric, n, budget_ms, budget_ram_mb)
    budgets = f"{budget_ms} ms" + (f" and {budget_ram_mb} MB" if budget_ram_mb is not None else "")
    if best is None:
        timed = [r for r in rows if latency_ms(r) is not None]
        if not timed:
            raise AdaError("no configuration was timed")
        fastest = min(timed, key=latency_ms)
        raise AdaError(f"no configuration fits {budgets}; the fastest is {config_name(fastest)} at "
                       f"{latency_ms(fastest):.2f} ms, {ram(fastest)} MB")
    fits = [rows[i] for i in within_budget(rows, n, budget_ms, budget_ram_mb)]
    typer.echo(f"within {budgets}, the Pareto front (latency ms, RAM MB, {metric}):", err=True)
    for i in sorted(pareto([(latency_ms(r), metric_of(r, metric) or 0.0) for r in fits]), key=lambda i: latency_ms(fits[i])):
        r = fits[i]
        typer.echo(f" {'*' if r is best else ' '} {config_name(r):<28} {latency_ms(r):8.2f} ms {ram(r):>9} MB  "
                   f"{metric_of(r, metric) or 0.0:.4f}", err=True)
    # the command runs the chosen plan: `search` resolves these options to the same FunnelPlan
    cmd = " ".join(["adaretrieve search --index", shlex.quote(str(index)), "--queries", shlex.quote(str(queries)),
                    *search_args(plan_of(best)), *(["--backend", backend] if backend != "torch" else [])])
    typer.echo(f"best within budget: {config_name(best)}: {metric} {metric_of(best, metric):.4f}, "
               f"{latency_ms(best):.2f} ms, {ram(best)} MB resident")
    typer.echo(cmd)
