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
    budget_ms: Optional[float] = typer.Option(None, "--budget-ms", help="Per-query latency budget at batch 1: query encoding + search, median."),
    budget_ram_mb: Optional[float] = typer.Option(None, "--budget-ram-mb", help="RAM budget, MB: everything a configuration's latency needs resident: private memory (measured in a fresh process serving it, else its shortlist index by FAISS type) plus the index-file pages it reads (measured, else the whole rerank file)."),
    budget_bytes_per_doc: Optional[float] = typer.Option(None, "--budget-bytes-per-doc", help="Bytes a document may cost in RAM for the shortlist's codes (float32 4 x dim, SQ8 1 x dim, sign bits dim/8; e.g. 16 for 6x384:pca128 or 4x128:sign): what grows with the corpus. The rerank rows stay on disk."),
    metric: str = typer.Option("nDCG@10", "--metric", help="What to maximise."),
    k: list[int] = typer.Option([50, 100, 200, 500], "--k", help="Shortlist depths to try."),
    latency_queries: int = typer.Option(50, "--latency-queries", help="Queries timed one at a time."),
    nprobe: list[int] = typer.Option([], "--nprobe", help="IVF shortlists: nprobe values to try (repeat)."),
    ef_search: list[int] = typer.Option([], "--ef-search", help="HNSW shortlists: ef_search values to try (repeat)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Pick the configuration with the best --metric among those that fit every budget given (the
    faster on a tie), and print the `search` command that uses it. Every shortlist the index stores
    is tried alone and reranked at the rerank size, a code of the rerank size itself included
    (6x384:sign then 6x384: binary + rescore).

    Examples:

        adaretrieve tune --index indexes/scifact-minilm --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-ms 20

        adaretrieve tune --index indexes/scifact-codes --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-bytes-per-doc 16
    """
    setup(quiet)
    from adaretrieve import bench
    from adaretrieve.bench.measure import stores_a_code
    from adaretrieve.bench.suite import Suite, config_name, plan_of, search_args
    from adaretrieve.bench.verdicts import (
        best_within_budget,
        bytes_per_doc,
        latency_ms,
        metric_of,
        pareto,
        resident_mb,
        within_budget,
    )
    from adaretrieve.search import IndexReader

    if budget_ms is None and budget_ram_mb is None and budget_bytes_per_doc is None:
        raise AdaError("tune needs a budget: --budget-ms, --budget-ram-mb and/or --budget-bytes-per-doc")
    at_least_1({"--latency-queries": latency_queries, "--k": min(k, default=None), "--nprobe": min(nprobe, default=None),
                "--ef-search": min(ef_search, default=None)})
    reader = IndexReader(index)
    m = reader.manifest
    mod, spec = m.model, m.vector_spec
    model = mod["path"] if Path(mod["path"]).exists() else mod["name"]
    sizes = [str(s) for s in m.shortlist_sizes]
    rerank = str(m.rerank_size) if m.rerank else None
    # a code of the rerank size (6x384:sign) reranked at it is binary + rescore; a float one is single stage
    coded = {e["size"] for e in m.shortlist if stores_a_code(e["factory"])}
    two = [{"shortlist": [s], "k": list(k), "rerank": [rerank]} for s in sizes if rerank and (s != rerank or s in coded)]
    suite = Suite(name=f"tune-{index.name}", model=model, corpus=m.corpus, queries=str(queries), qrels=str(qrels),
                  index=str(index), rerank=rerank, single=sizes, two_stage=two,
                  metrics=[metric], latency_queries=latency_queries, nprobe=list(nprobe), ef_search=list(ef_search),
                  shortlist=[f"{e['size']}:{e['factory']}" for e in m.shortlist], factory=m.shortlist[0]["factory"],
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

    def bpd(r: dict) -> str:
        b = bytes_per_doc(r)
        return "?" if b is None else f"{b:g}"

    best = best_within_budget(rows, metric, n, budget_ms, budget_ram_mb, budget_bytes_per_doc)
    budgets = " and ".join(f"{v} {unit}" for v, unit in ((budget_ms, "ms"), (budget_ram_mb, "MB"),
                                                         (budget_bytes_per_doc, "B/doc")) if v is not None)
    if best is None:
        timed = [r for r in rows if latency_ms(r) is not None]
        if not timed:
            raise AdaError("no configuration was timed")
        fastest = min(timed, key=latency_ms)
        smallest = min((r for r in timed if bytes_per_doc(r) is not None), key=bytes_per_doc, default=fastest)
        raise AdaError(f"no configuration fits {budgets}; the fastest is {config_name(fastest)} at "
                       f"{latency_ms(fastest):.2f} ms, {ram(fastest)} MB, {bpd(fastest)} B/doc; the smallest is "
                       f"{config_name(smallest)} at {bpd(smallest)} B/doc")
    fits = [rows[i] for i in within_budget(rows, n, budget_ms, budget_ram_mb, budget_bytes_per_doc)]
    typer.echo(f"within {budgets}, the Pareto front (latency ms, RAM MB, shortlist B/doc, {metric}):", err=True)
    for i in sorted(pareto([(latency_ms(r), metric_of(r, metric) or 0.0) for r in fits]), key=lambda i: latency_ms(fits[i])):
        r = fits[i]
        typer.echo(f" {'*' if r is best else ' '} {config_name(r):<28} {latency_ms(r):8.2f} ms {ram(r):>9} MB "
                   f"{bpd(r):>7} B/doc  {metric_of(r, metric) or 0.0:.4f}", err=True)
    # the command runs the chosen plan: `search` resolves these options to the same FunnelPlan
    cmd = " ".join(["adaretrieve search --index", shlex.quote(str(index)), "--queries", shlex.quote(str(queries)),
                    *search_args(plan_of(best)), *(["--backend", backend] if backend != "torch" else [])])
    typer.echo(f"best within budget: {config_name(best)}: {metric} {metric_of(best, metric):.4f}, "
               f"{latency_ms(best):.2f} ms, {ram(best)} MB resident, {bpd(best)} B/doc of shortlist codes")
    typer.echo(cmd)
