from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import BACKEND_HELP, at_least_1, handle_errors, load_encoder, setup

index_app = typer.Typer(invoke_without_command=True, add_completion=False)


@index_app.callback()
@handle_errors
def index(
    ctx: typer.Context,
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="BEIR folder or corpus.jsonl[.gz], or an MS MARCO collection.tsv[.gz]."),
    model: str = typer.Option("minilm", "--model", "-m", help="Local folder, Hub id, or 'minilm' (the packaged all-MiniLM-L6-v2)."),
    shortlist: list[str] = typer.Option([], "--shortlist", "-s", help="Shortlist size(s) LxD, one FAISS index each; repeat or comma-separate."),
    rerank: Optional[str] = typer.Option(None, "--rerank", "-r", help="Size stored as float16 rows for exact reranking (default: the model's full size; 'none' for none)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Index directory to write (e.g. indexes/scifact)."),
    factory: str = typer.Option("Flat", "--factory", help="FAISS factory for the shortlist indexes: Flat, SQfp16, SQ8, HNSW32, IVF1024,Flat; BFlat / BHNSW32 for sign bits (Hamming)."),
    rerank_dtype: str = typer.Option("float16", "--rerank-dtype", help="float16, or int8 with a per-vector scale (half the bytes)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Token limit (default: the model's, e.g. 256 for MiniLM)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="mean or cls (default: from the model's sentence-transformers config, else cls)."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="L2-normalise vectors (default: the model's convention)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Documents per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (float16 on CUDA only; bfloat16 autocast on CPU)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index (only once the new one is complete)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: encode only this process's share of the corpus; then `adaretrieve index merge`."),
    chunk_size: int = typer.Option(8192, "--chunk-size", help="Documents per checkpointed chunk (an interrupted build resumes from the last one)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Encode a corpus once and write a two-stage index.

    Encoded chunks are checkpointed beside the output: run the same command again after an
    interruption and it resumes. With --shard i/n, n processes share the corpus.

    Examples:

        adaretrieve index --corpus ../shared/data/beir/scifact --model minilm \\
            --shortlist 2x64 --shortlist 4x128 --rerank 6x384 --out indexes/scifact

        adaretrieve index --corpus collection.tsv --shortlist 2x32 --factory BFlat --rerank-dtype int8 --out indexes/msmarco --shard 0/4

        adaretrieve index merge --out indexes/msmarco
    """
    if ctx.invoked_subcommand is not None:
        return
    setup(quiet)
    from adaretrieve.errors import AdaError
    from adaretrieve.index.build import build_index

    if corpus is None or out is None or not shortlist:
        raise AdaError("index needs --corpus, at least one --shortlist and --out (see adaretrieve index --help)")
    at_least_1({"--batch-size": batch_size, "--chunk-size": chunk_size, "--max-length": max_length})
    shard_t = None
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            shard_t = (i, n)
        except ValueError:
            raise AdaError(f"--shard {shard!r} is not of the form i/n, e.g. 0/4") from None

    enc = load_encoder(model, pooling, normalize, max_length, device, dtype, backend)
    if rerank is None:
        rerank = str(enc.full_size)
    elif rerank.lower() == "none":
        rerank = None
    m = build_index(corpus, enc, out, shortlist, rerank, factory=factory, batch_size=batch_size, chunk_size=chunk_size,
                    overwrite=overwrite, progress=not quiet, rerank_dtype=rerank_dtype, shard=shard_t)
    if m is None:
        typer.echo(f"shard {shard} done; run `adaretrieve index merge --out {out}` once every shard is done", err=True)
        return
    typer.echo(
        f"indexed {m.n_docs} docs into {out} (encoding {m.build['encode_seconds']:.1f}s, {m.build['docs_per_second'] or 0:.1f} docs/s): "
        f"shortlist {', '.join(str(s) for s in m.shortlist_sizes)}; rerank {m.rerank_size or 'none'}",
        err=True,
    )


@index_app.command("merge")
@handle_errors
def merge(out: Path = typer.Option(..., "--out", "-o", help="The index every shard was built for.")):
    """Assemble an index from the chunks its shards encoded (`adaretrieve index --shard i/n`)."""
    setup(True)
    from adaretrieve.index.build import merge_index

    m = merge_index(out, overwrite=True)
    typer.echo(f"merged {m.n_docs} docs into {out}", err=True)
