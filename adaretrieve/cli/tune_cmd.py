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
    adaptive: bool = typer.Option(False, "--adaptive", help="Also measure the cascade of the best two-stage plan with a middle stage (a stored size between its layers, when there is one): each query stops at the first stage its stop rule trusts, the rule fitted without labels (ndcg, linear) at --adaptive-target on --fit-queries or --pseudo-queries. Reported beside that plan always run in full, with its encoder cost; the budget choice stays among the plans always run in full."),
    adaptive_target: float = typer.Option(0.99, "--adaptive-target", help="With --adaptive: the mean pseudo-nDCG@10 against the full cascade to keep, (0, 1]."),
    fit_queries: Optional[Path] = typer.Option(None, "--fit-queries", help="With --adaptive: unlabelled queries to fit the rule on (a file, or a BEIR folder with --fit-split); never the --queries scored."),
    fit_split: Optional[str] = typer.Option(None, "--fit-split", help="With --fit-queries FOLDER: only the queries its qrels/<split>.tsv names (ids only), e.g. train."),
    pseudo_queries: Optional[int] = typer.Option(None, "--pseudo-queries", help="With --adaptive, instead of --fit-queries: fit on N pseudo-queries drawn from the index's corpus."),
    adaptive_out: Optional[Path] = typer.Option(None, "--adaptive-out", help="With --adaptive: write the calibrated rule here (`search --adaptive FILE` reads it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Pick the configuration with the best --metric among those that fit every budget given (the
    faster on a tie), and print the `search` command that uses it. Every shortlist the index stores
    is tried alone and reranked at the rerank size, a code of the rerank size itself included
    (6x384:sign then 6x384: binary + rescore). With --adaptive, the best two-stage plan is also
    measured as an adaptive-depth cascade (see --adaptive), and its rule written with --adaptive-out.

    Examples:

        adaretrieve tune --index indexes/scifact-minilm --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-ms 20

        adaretrieve tune --index indexes/scifact-codes --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-bytes-per-doc 16

        adaretrieve tune --index indexes/scifact-minilm --queries ../shared/data/beir/scifact/queries.jsonl \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --budget-ms 20 --adaptive \\
            --fit-queries ../shared/data/beir/scifact --fit-split train --adaptive-out scifact-rule.json
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
                "--ef-search": min(ef_search, default=None), "--pseudo-queries": pseudo_queries})
    if adaptive:
        from adaretrieve.bench.adaptive import check_fit_source
        from adaretrieve.search.calibrate import check_target

        if (fit_queries is None) == (pseudo_queries is None):
            raise AdaError("tune --adaptive needs texts to fit its stop rule on, not the ones it scores: --fit-queries FILE "
                           "or --pseudo-queries N (one of them)")
        check_target(adaptive_target, "ndcg", "linear")
        if backend != "torch":
            raise AdaError(f"--adaptive resumes the query encoding between stages, which runs on the torch backend, not "
                           f"--backend {backend}")
        try:
            check_fit_source(None if fit_queries is None else str(fit_queries), fit_split, pseudo_queries)
        except AdaError as e:
            raise AdaError(f"--adaptive: {e}") from None
    else:
        given = [o for o, v in (("--fit-queries", fit_queries), ("--fit-split", fit_split),
                                ("--pseudo-queries", pseudo_queries), ("--adaptive-out", adaptive_out)) if v is not None]
        if given:
            raise AdaError(f"{given[0]} needs --adaptive")
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
    lines = []
    if adaptive:
        lines = _adaptive(bench, suite, rows, reader, metric, (budget_ms, budget_ram_mb, budget_bytes_per_doc), adaptive_target,
                          fit_queries, fit_split, pseudo_queries, adaptive_out, index, queries, quiet)
    typer.echo(f"within {budgets}, the Pareto front (latency ms, RAM MB, shortlist B/doc, {metric}):", err=True)
    for i in sorted(pareto([(latency_ms(r), metric_of(r, metric) or 0.0) for r in fits]), key=lambda i: latency_ms(fits[i])):
        r = fits[i]
        typer.echo(f" {'*' if r is best else ' '} {config_name(r):<28} {latency_ms(r):8.2f} ms {ram(r):>9} MB "
                   f"{bpd(r):>7} B/doc  {metric_of(r, metric) or 0.0:.4f}", err=True)
    # the command runs the chosen plan: `search` resolves these options to the same FunnelPlan
    cmd = " ".join(["adaretrieve search --index", shlex.quote(str(index)), "--queries", shlex.quote(str(queries)),
                    *search_args(plan_of(best)), *(["--backend", backend] if backend != "torch" else [])])
    for line in lines:
        typer.echo(line)
    typer.echo(f"best within budget: {config_name(best)}: {metric} {metric_of(best, metric):.4f}, "
               f"{latency_ms(best):.2f} ms, {ram(best)} MB resident, {bpd(best)} B/doc of shortlist codes")
    typer.echo(cmd)


def _adaptive(bench, suite, rows: list[dict], reader, metric: str, budgets: tuple, target: float, fit_queries, fit_split,
              pseudo_queries, out, index: Path, queries: Path, quiet: bool) -> list[str]:
    """tune --adaptive: the best two-stage row (within the budgets, else of all), with a middle stage
    (``bench.adaptive.with_middle_stage``), measured always in full (when it differs from the row) and
    as a cascade, by a second suite of the same settings; the lines that report them; the rule written
    to ``out`` when given."""
    from dataclasses import replace

    from adaretrieve.bench.adaptive import tune_entry, with_middle_stage
    from adaretrieve.bench.suite import plan_of
    from adaretrieve.bench.verdicts import best_within_budget, latency_ms, metric_of, within_budget

    n = reader.n_docs
    two = [r for r in rows if r.get("kind", "dense") == "dense" and r.get("rerank")]
    if not two:
        raise AdaError("--adaptive: tune measured no two-stage plan to make a cascade of (the index has no rerank size)")
    base = best_within_budget(two, metric, n, *budgets) or best_within_budget(two, metric, n)
    plan = with_middle_stage(plan_of(base), reader.manifest)
    entry = tune_entry(plan, target, None if fit_queries is None else str(fit_queries), fit_split, pseudo_queries)
    full_entry = [{"shortlist": str(plan.shortlist), "k": plan.k, "rerank": str(plan.rerank),
                   "then": [{"size": str(s), "k": k} for s, k in plan.then]}] if plan.then else []
    again = replace(suite, single=[], two_stage=full_entry, adaptive=[entry],
                    nprobe=[plan.nprobe] if plan.nprobe else [], ef_search=[plan.ef_search] if plan.ef_search else [])
    try:
        measured = bench.run_suite(again, progress=not quiet)["results"]
    except AdaError as e:
        raise AdaError(f"--adaptive: {str(e).removeprefix('adaptive[0]: ')}") from None
    cascade = next(r for r in measured if r["kind"] == "adaptive")
    full = next((r for r in measured if r["kind"] == "dense"), base)
    got, ref = metric_of(cascade, metric), metric_of(full, metric)
    fits = bool(within_budget([cascade], n, *budgets))
    on = cascade["adaptive"]["fitted_on"]
    src = f"{pseudo_queries} pseudo-queries" if pseudo_queries else f"{on['n_queries']} queries of {on['queries']}" + (
        f" ({fit_split})" if fit_split else "")
    change = f" ({got / ref - 1:+.2%})" if ref else ""
    lines = [f"{cascade['config']}: {metric} {got:.4f}{change} vs {ref:.4f} always full; encoder cost "
             f"{cascade['encoder_cost']:.3f} (mean layers {cascade['mean_layers']:g} of {plan.layers}), answered per stage "
             f"{' / '.join(f'{x:.2f}' for x in cascade['stop_share'])}; batch 1 end to end {latency_ms(cascade):.2f} ms vs "
             f"{full['end_to_end_ms_batch1']['p50']:.2f} ms always full; within budget: {'yes' if fits else 'no'}; rule "
             f"fitted on {src}"]
    if out is not None:
        from adaretrieve.search.calibrate import Fit, write_stop_rule
        from adaretrieve.search.cascade import StopRule

        a = cascade["adaptive"]
        write_stop_rule(out, Fit.from_dict(a["fit"], StopRule.from_dict(a["rule"])), plan_of(cascade), reader.manifest,
                        a["target"], a["fitted_on"])
        lines.append(f"wrote the rule to {out}; run it with: adaretrieve search --index {shlex.quote(str(index))} "
                     f"--queries {shlex.quote(str(queries))} --adaptive {shlex.quote(str(out))}")
    return lines
