from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import BACKEND_HELP, at_least_1, handle_errors, setup


@handle_errors
def bench(
    config: Path = typer.Option(..., "--config", "-c", help="Suite YAML, e.g. benchmarks/scifact-minilm.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default benchmarks/results/<suite name>)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build the suite's index again, replacing the one at its path (without it, an index there that does not match the suite is refused, never replaced)."),
    check: bool = typer.Option(False, "--check", help="Exit non-zero when a pinned score moves beyond its tolerance."),
    note: Optional[str] = typer.Option(None, "--note", help="A line for the report, e.g. what else ran on the machine."),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP + " For the corpus (an existing index must have been built with it) and the queries. Default: the suite's `backend`, else torch."),
    query_backend: Optional[str] = typer.Option(None, "--query-backend", help="The queries' backend alone (torch, onnx, onnx-int8), e.g. onnx-int8 queries against a torch-built index. Default: --backend."),
    nprobe: list[int] = typer.Option([], "--nprobe", help="Sweep: every configuration over an IVF shortlist once per value (repeat); replaces the suite's `nprobe`."),
    ef_search: list[int] = typer.Option([], "--ef-search", help="Sweep: every configuration over an HNSW shortlist once per value (repeat); replaces the suite's `ef_search`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Sweep single-stage sizes and two-stage (shortlist, k, rerank) triples or funnels (`then:`); write JSON + Markdown.

    Example:

        adaretrieve bench --config benchmarks/scifact-minilm.yaml --check
    """
    setup(quiet)
    from adaretrieve.bench import Suite, run_suite, to_markdown, write_report

    at_least_1({"--nprobe": min(nprobe, default=None), "--ef-search": min(ef_search, default=None)})
    suite = Suite.load(config)
    if nprobe:
        suite.nprobe = list(nprobe)
    if ef_search:
        suite.ef_search = list(ef_search)
    if backend is not None:
        suite.backend = backend
    if query_backend is not None:
        suite.query_backend = query_backend
    res = run_suite(suite, rebuild=rebuild, progress=not quiet)
    if note:
        res["note"] = note
    command = "adaretrieve " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    d = write_report(res, out or Path("benchmarks/results") / suite.name, command)
    typer.echo(to_markdown({**res}, command))
    typer.echo(f"report written to {d}", err=True)
    bad = [c for c in res["checks"] if not c["ok"]]
    if check and bad:
        for c in bad:
            typer.echo(f"error: {c['config']} {c['metric']}: expected {c['expected']} +- {c['tolerance']}, got {c['got']}", err=True)
        raise typer.Exit(1)
