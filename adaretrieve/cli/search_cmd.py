from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import (
    BACKEND_HELP,
    at_least_1,
    check_query_text,
    check_run_out,
    handle_errors,
    print_metrics,
    setup,
)
from adaretrieve.errors import AdaError


@handle_errors
def search(
    query: Optional[str] = typer.Argument(None, help="One query text, for a quick look (prints the top hits with titles)."),
    index: str = typer.Option(..., "--index", "-i", help="Index directory from `adaretrieve index`, or a Qdrant collection: qdrant://HOST:PORT/COLLECTION or qdrant:PATH (see `adaretrieve index upload`)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="queries.jsonl, a BEIR folder, or a tsv of qid<TAB>text."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="Qrels to evaluate against; also limits the queries to those judged."),
    shortlist: Optional[str] = typer.Option(None, "--shortlist", "-s", help="Shortlist size LxD (default: the index's first)."),
    rerank: Optional[str] = typer.Option(None, "--rerank", "-r", help="Rerank size LxD, or 'none' for single-stage (default: the index's rerank size)."),
    k: list[int] = typer.Option([], "--k", help="Candidates kept by the shortlist (default 200); repeat once per --then stage for a funnel."),
    then: list[str] = typer.Option([], "--then", help="Intermediate exact stage(s) of a funnel, e.g. --then 4x128 with a second --k."),
    top: Optional[int] = typer.Option(None, "--top", help="Results kept per query (default: all the last stage ranks: its --k; single stage: --k, default 200)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the run here ('-': to stdout); never a file inside an index folder."),
    fmt: str = typer.Option("trec", "--format", help="Run format: trec or jsonl."),
    metrics: list[str] = typer.Option(["nDCG@10", "RR@10", "R@100", "R@1000"], "--metrics", help="ir-measures names, comma-separated or repeated, with --qrels; a recall cut off deeper than the run (R@1000 on 200 results) is reported as the recall at that depth (R@200)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Query encoder (default: the model that built the index; another one is refused)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF shortlists: inverted lists probed per query (more: slower, higher recall)."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW shortlists: candidate list size per query (more: slower, higher recall)."),
    deep_k: Optional[int] = typer.Option(None, "--deep-k", help="The rerank also takes the top N of the index's shortlist over the rerank size (e.g. its 6x384:pca128 code): what the small size missed, the full size's code can still find."),
    query_prefix: Optional[str] = typer.Option(None, "--query-prefix", help="Text put before every query (default: the prefix the index recorded, from `index --query-prefix` or the model's prompts)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Queries per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device for the query encoder (cpu, cuda, cuda:1; default: cuda when available)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    adaptive: Optional[Path] = typer.Option(None, "--adaptive", help="A stop rule from `adaretrieve calibrate`: each query stops at the first stage the rule trusts (the rule file fixes the plan); the rest resume their encoding."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Two-stage search: FAISS shortlist at a small size, exact rerank at a large size.

    Examples:

        adaretrieve search --index indexes/scifact --queries ../shared/data/beir/scifact \\
            --qrels ../shared/data/beir/scifact/qrels/test.tsv --shortlist 2x64 --rerank 6x384 --k 200 --out run.trec

        adaretrieve search --index indexes/scifact "do statins reduce cancer risk?"

        adaretrieve search --index indexes/scifact --queries q.jsonl --shortlist 2x32 --k 1000 --then 4x128 --k 100 --rerank 6x384

        adaretrieve search --index indexes/big-hnsw --queries q.jsonl --shortlist 2x32 --ef-search 256 --k 200 --rerank 6x384

        adaretrieve search --index qdrant://localhost:6333/scifact --queries q.jsonl --shortlist 2x64 --k 200 --rerank 6x384
    """
    setup(quiet)
    from adaretrieve.data import read_qrels, read_queries
    from adaretrieve.eval import Evaluator, recall_within_depth, run_from_arrays, write_run
    from adaretrieve.search import DEFAULT, FunnelSearcher, IndexReader, resolve_plan
    from adaretrieve.search.plan import check_plan_sizes, resolve_described

    if fmt not in ("trec", "jsonl"):
        raise AdaError(f"--format {fmt!r} is not one of trec, jsonl")
    if (query is None) == (queries is None):
        raise AdaError("give either one query text or --queries FILE")
    if (k or then) and len(k) != 1 + len(then):
        raise AdaError(f"give one --k for the shortlist and one per --then stage: got {len(k)} --k for {len(then)} --then")
    at_least_1({"--batch-size": batch_size, "--nprobe": nprobe, "--ef-search": ef_search})
    check_run_out(out, index)  # a folder, or a file inside an index; '-' is stdout
    if min(k, default=1) < 1 or (top is not None and top < 1):
        raise AdaError(f"--k ({', '.join(map(str, k))}) and --top ({top}) must be at least 1")
    if query is None and out is None and qrels is None:
        raise AdaError("searching every query and keeping nothing: pass --out FILE to keep the run or --qrels FILE "
                       "to score it")
    from adaretrieve.qdrant import QdrantIndex, is_qdrant
    from adaretrieve.retriever import load_index_encoder

    with contextlib.ExitStack() as stack:
        if is_qdrant(index):
            if nprobe is not None:
                raise AdaError("--nprobe applies to FAISS IVF shortlists, not to a Qdrant collection (use --ef-search)")
            reader = QdrantIndex(index)
            stack.callback(reader.close)  # local mode: the storage folder's lock, even when a check below fails
        else:
            reader = IndexReader(index)
        m = reader.manifest
        rule = None
        if adaptive is not None:
            from adaretrieve.search.calibrate import load_stop_rule

            if isinstance(reader, QdrantIndex):
                raise AdaError("--adaptive searches folder indexes (a Qdrant collection runs its stages server-side)")
            if shortlist or rerank or k or then or deep_k:
                raise AdaError(f"--adaptive {adaptive}: the rule file fixes the plan; drop --shortlist/--k/--then/--rerank/--deep-k")
            rule, d = load_stop_rule(adaptive, m)
            plan = resolve_described(m, d, top, nprobe, ef_search)  # what `serve --adaptive` runs too
            top = plan.top
        else:
            plan = resolve_plan(m, shortlist, k[0] if k else None, list(zip(then, k[1:])),
                                DEFAULT if rerank is None else rerank, top if query is None else (top or 10), nprobe,
                                ef_search, engine="qdrant" if isinstance(reader, QdrantIndex) else "faiss", deep_k=deep_k)
        enc = load_index_encoder(reader, model, device, backend=backend)  # refuses weights other than the index's
        if query_prefix is not None:
            enc.query_prefix = query_prefix
        check_plan_sizes(enc, plan)
        if isinstance(reader, QdrantIndex):
            def run_search(qids, qv, timings):
                return {q: dict(h) for q, h in zip(qids, reader.search(qv, plan))}
        else:
            searcher = FunnelSearcher(reader, plan)

            def run_search(qids, qv, timings):
                scores, rows = searcher.search(qv, timings=timings)
                return run_from_arrays(qids, scores, rows, reader.docids)

            if rule is not None:
                import numpy as np

                from adaretrieve.retriever import adaptive_search

                def run_search(qids, texts, timings):  # noqa: F811 (texts: the cascade encodes as it goes)
                    res = adaptive_search(enc, searcher, texts, rule, batch_size, timings)
                    shares = [f"{np.mean(res.exit_stage == s):.2f}" for s in range(plan.stages)]
                    typer.echo(f"adaptive: answered per stage {', '.join(shares)}; mean layers {res.layers.mean():.2f} "
                               f"of {plan.layers}", err=True)
                    return run_from_arrays(qids, res.scores, res.rows, reader.docids)

        if query is not None:
            check_query_text(query)
            qv1 = [query] if rule is not None else enc.encode_queries([query], plan.sizes())
            hits = run_search(["q"], qv1, None)["q"]
            _print_hits(sorted(hits.items(), key=lambda x: -x[1]), m.corpus)
            return

        depth = plan.depth
        measures, renamed = recall_within_depth(metrics, depth) if qrels is not None else ([], {})
        if top is not None and depth < top:  # the last stage keeps k: say so, rather than let R@1000 silently mean R@200
            n = {2: "two", 3: "three"}.get(plan.stages, str(plan.stages))
            same = ", ".join(f"{a} is {b}" for a, b in renamed.items())
            typer.echo(f"warning: --top {top} > --k {depth}: a {n}-stage search returns at most {depth} results per query"
                       + (f"; {same}" if same else ""), err=True)
        qs = read_queries(queries)
        judged = None
        if qrels is not None:
            judged = read_qrels(qrels)
            missing = [q for q in judged if q not in qs]
            if len(missing) == len(judged):
                raise AdaError(f"none of the {len(judged)} queries in {qrels} is in {queries}")
            if missing:
                typer.echo(f"warning: {len(missing)} judged queries have no text in {queries}; they score 0", err=True)
            qs = {q: t for q, t in qs.items() if q in judged}
        qids = list(qs)
        t0 = time.perf_counter()
        if rule is None:
            qv = enc.encode_queries([qs[q] for q in qids], plan.sizes(), batch_size=batch_size, progress=not quiet)
        else:
            qv = [qs[q] for q in qids]  # encoded by the cascade, each query as deep as it goes
        t1 = time.perf_counter()
        stage_s: dict = {}
        run = run_search(qids, qv, stage_s)
        t2 = time.perf_counter()
        split = ", ".join(f"{name} {1000 * v / len(qids):.3f}" for name, v in stage_s.items())
        typer.echo(
            f"{len(qids)} queries: encode {1000 * (t1 - t0) / len(qids):.2f} ms/query, search {1000 * (t2 - t1) / len(qids):.3f} ms/query "
            + (f"[{split}] " if split else "")
            + f"({plan.name}{'' if plan.single else f', top {plan.top}'})",
            err=True,
        )
        if out:
            write_run(run, out, tag=f"ada-{plan.shortlist}-{plan.k}-{plan.rerank or 'none'}", fmt=fmt)
        if judged is not None:
            res = Evaluator(judged, measures)(run)
            print_metrics(res, as_json)


def _print_hits(hits: list[tuple[str, float]], corpus: str) -> None:
    from adaretrieve.data import iter_corpus

    want = {d for d, _ in hits}
    titles: dict[str, str] = {}
    if Path(corpus).exists():
        for doc in iter_corpus(corpus):
            if doc.docid in want:
                titles[doc.docid] = (doc.title or doc.text)[:100]
                if len(titles) == len(want):
                    break
    for rank, (d, s) in enumerate(hits, 1):
        typer.echo(f"{rank:>2}  {s:.4f}  {d}  {titles.get(d, '')}")
