from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, load_encoder, setup


@handle_errors
def index(
    corpus: Path = typer.Option(..., "--corpus", help="BEIR folder or corpus.jsonl[.gz], or an MS MARCO collection.tsv[.gz]."),
    model: str = typer.Option("minilm", "--model", "-m", help="Local folder, Hub id, or 'minilm' (the packaged all-MiniLM-L6-v2)."),
    shortlist: list[str] = typer.Option(..., "--shortlist", "-s", help="Shortlist size(s) LxD, one FAISS index each; repeat or comma-separate."),
    rerank: Optional[str] = typer.Option(None, "--rerank", "-r", help="Size stored as float16 rows for exact reranking (default: the model's full size; 'none' for none)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write (e.g. indexes/scifact)."),
    factory: str = typer.Option("Flat", "--factory", help="FAISS factory for the shortlist indexes: Flat, SQfp16, SQ8, HNSW32, IVF1024,Flat; BFlat / BHNSW32 for sign bits (Hamming)."),
    rerank_dtype: str = typer.Option("float16", "--rerank-dtype", help="float16, or int8 with a per-vector scale (half the bytes)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Token limit (default: the model's, e.g. 256 for MiniLM)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="mean or cls (default: from the model's sentence-transformers config, else cls)."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="L2-normalise vectors (default: the model's convention)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Documents per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (half precision on CUDA only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index (only once the new one is complete)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Encode a corpus once and write a two-stage index.

    Example:

        adaretrieve index --corpus ../shared/data/beir/scifact --model minilm \\
            --shortlist 2x64 --shortlist 4x128 --rerank 6x384 --out indexes/scifact
    """
    setup(quiet)
    from adaretrieve.index.build import build_index

    enc = load_encoder(model, pooling, normalize, max_length, device, dtype)
    if rerank is None:
        rerank = str(enc.full_size)
    elif rerank.lower() == "none":
        rerank = None
    m = build_index(corpus, enc, out, shortlist, rerank, factory=factory, batch_size=batch_size,
                    overwrite=overwrite, progress=not quiet, rerank_dtype=rerank_dtype)
    typer.echo(
        f"indexed {m.n_docs} docs into {out} in {m.build['seconds']:.1f}s ({m.build['docs_per_second']:.1f} docs/s): "
        f"shortlist {', '.join(str(s) for s in m.shortlist_sizes)}; rerank {m.rerank_size or 'none'}",
        err=True,
    )
