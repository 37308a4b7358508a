from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import BACKEND_HELP, handle_errors, setup
from adaretrieve.errors import AdaError


@handle_errors
def calibrate(
    index: Path = typer.Option(..., "--index", "-i", help="Index directory from `adaretrieve index`."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Unlabelled query texts to fit on: queries.jsonl, a tsv of qid<TAB>text, or a BEIR folder with --query-split. Never the queries you evaluate on."),
    pseudo_queries: Optional[int] = typer.Option(None, "--pseudo-queries", help="Instead of --queries: fit on N pseudo-queries, spans of 3-10 words drawn from the corpus (for a corpus without train queries)."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="With --pseudo-queries: the corpus to draw from (default: the one the index was built from)."),
    query_split: Optional[str] = typer.Option(None, "--query-split", help="With a BEIR folder: only the queries qrels/<split>.tsv names (its ids; no grade is read), e.g. train."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the rule (plain JSON; `search --adaptive FILE` reads it)."),
    target: float = typer.Option(0.99, "--target", help="Mean agreement with the full cascade's top 10 to keep, over all queries (0-1], as --measure scores it."),
    measure: str = typer.Option("overlap", "--measure", help="How an early answer's top 10 is scored against the full cascade's: overlap (share of its documents), ndcg (nDCG@10 with the full ranking as judgments: --target 0.99 is about 1% expected nDCG@10 loss) or identical (same 10, same order)."),
    confidence: str = typer.Option("gap", "--confidence", help="What the rule reads: gap (best minus rank-th best score) or linear (a least-squares score of the stage's gaps, top score and agreement with the stage before)."),
    shortlist: Optional[str] = typer.Option(None, "--shortlist", "-s", help="Shortlist size LxD (default: the index's first)."),
    rerank: Optional[str] = typer.Option(None, "--rerank", "-r", help="Rerank size LxD (default: the index's rerank size)."),
    k: list[int] = typer.Option([], "--k", help="Candidates kept by the shortlist (default 200); repeat once per --then stage."),
    then: list[str] = typer.Option([], "--then", help="Intermediate exact stage(s): each one is also a place to stop."),
    deep_k: Optional[int] = typer.Option(None, "--deep-k", help="The deep path's rerank also takes the top N of the index's shortlist over the rerank size (its full-size code)."),
    top: Optional[int] = typer.Option(None, "--top", help="Results per query (default: all the last stage ranks)."),
    rank: int = typer.Option(10, "--rank", help="The rule's gap: best score minus the rank-th best."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Query encoder (default: the model that built the index)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: CUDA when present)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the summary line."),
):
    """Fit an adaptive-depth stop rule without labels: each query of a cascade stops at the first
    stage whose top 10 it can trust, the rest resume their encoding and go deeper.

    The rule is fitted against the index's own full-depth ranking of unlabelled queries (no qrels are
    read) and written with the index generation, model and plan it holds for.

    Example:

        adaretrieve calibrate --index indexes/scifact --queries ../shared/data/beir/scifact --query-split train \\
            --shortlist 2x64 --k 200 --then 4x128 --k 50 --rerank 6x384 --target 0.99 --out scifact-rule.json

        adaretrieve search --index indexes/scifact --queries test.jsonl --adaptive scifact-rule.json --out run.trec

        adaretrieve calibrate --index indexes/dl19 --pseudo-queries 2000 --measure ndcg --confidence linear \\
            --target 0.99 --deep-k 100 --out dl19-rule.json   # no train queries: spans drawn from the corpus
    """
    setup(quiet)
    from adaretrieve.data import read_queries, split_query_ids
    from adaretrieve.retriever import Retriever
    from adaretrieve.search import DEFAULT
    from adaretrieve.search.calibrate import write_stop_rule

    if (k or then) and len(k) != 1 + len(then):
        raise AdaError(f"give one --k for the shortlist and one per --then stage: got {len(k)} --k for {len(then)} --then")
    from adaretrieve.search.calibrate import check_target

    check_target(target, measure, confidence)
    if (queries is None) == (pseudo_queries is None):
        raise AdaError("give the texts to fit on: --queries FILE or --pseudo-queries N (one of them)")
    r = Retriever(index, model=model, device=device, backend=backend)
    if pseudo_queries is not None:
        from adaretrieve.data import pseudo_queries as draw

        src = corpus or r.reader.manifest.corpus
        if not src or not Path(src).exists():
            raise AdaError(f"--pseudo-queries: the index's corpus {src!r} is not here; name one with --corpus")
        texts = draw(src, pseudo_queries)
        qs = {f"pseudo-{i}": t for i, t in enumerate(texts)}
        queries = Path(src)
    else:
        qs = read_queries(queries)
    if query_split is not None and pseudo_queries is None:
        ids = split_query_ids(queries, query_split)
        qs = {q: t for q, t in qs.items() if q in ids}
        if not qs:
            raise AdaError(f"no query of {queries} is named in qrels/{query_split}.tsv")
    if query_split in ("test", "dev"):
        typer.echo(f"warning: fitting on the {query_split} queries: score the rule on other queries", err=True)
    plan = r.plan(shortlist, k[0] if k else None, DEFAULT if rerank is None else rerank, list(zip(then, k[1:])), top,
                  deep_k=deep_k)
    if plan.stages < 2:
        raise AdaError("a cascade needs at least two stages (a rerank or a --then stage) to stop between")
    fit = r.calibrate(list(qs.values()), plan, target, rank=rank, measure=measure, confidence=confidence)
    write_stop_rule(out, fit, plan, r.reader.manifest, target,
                    {"queries": str(queries), "query_split": query_split, "n_queries": len(qs),
                     **({"pseudo_queries": pseudo_queries} if pseudo_queries is not None else {})})
    f = fit.to_dict()
    typer.echo(f"{plan.name}: {len(qs)} queries; answered per stage {f['stop_share']}, mean layers "
               f"{f['mean_layers']} of {f['full_layers']} ({f['encoder_cost']:.2f}x), {measure}@10 {f['kept']}, overlap@10 "
               f"{f['overlap_at_10']}; "
               f"wrote {out}")

