from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import BACKEND_HELP, at_least_1, handle_errors, load_encoder, setup

index_app = typer.Typer(invoke_without_command=True, add_completion=False)


def default_shortlist(full, rerank, qdrant: bool = False, n_docs: int | None = None) -> str:
    """The shortlist `index` stores when none is given: a compact code of the full size, reranked
    exactly at it, which the quality-per-byte measurements (benchmarks/results/codes/) found ahead of
    every small size per byte: ``pca128`` (128 sign bits of the corpus's principal directions, 16 B a
    document) for a model wider than 128 dims, its sign bits (dim/8 B) otherwise. Without a rerank
    (single stage), or for a Qdrant collection (which holds float vectors), the full size as float32;
    for a corpus of fewer than 128 documents (too few to fit 128 directions), the sign bits."""
    if rerank is None or qdrant or rerank != full:
        return str(full)
    return f"{full}:pca128" if full.dim > 128 and (n_docs is None or n_docs >= 128) else f"{full}:sign"


@index_app.callback()
@handle_errors
def index(
    ctx: typer.Context,
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="BEIR folder or corpus.jsonl[.gz], or an MS MARCO collection.tsv[.gz]."),
    model: str = typer.Option("minilm", "--model", "-m", help="Local folder, Hub id, or 'minilm' (the packaged all-MiniLM-L6-v2)."),
    shortlist: list[str] = typer.Option([], "--shortlist", "-s", help="Shortlist size(s) LxD, one FAISS index each; repeat or comma-separate (default: the full size's pca128 code, reranked at the full size: the best shortlist per byte measured). LxD:KIND stores that size as its own kind: sign (sign bits scored against the float query, dim/8 bytes), hamming (sign bits, Hamming), pcaM / itqM (M sign bits of a rotation fitted on the corpus, e.g. 6x384:itq128), sq8, rabitq, or any FAISS factory (6x384:IVF256,RaBitQ); without one, --factory."),
    rerank: Optional[str] = typer.Option(None, "--rerank", "-r", help="Size stored as float16 rows for exact reranking (default: the model's full size; 'none' for none)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Index directory to write (e.g. indexes/scifact), or a Qdrant collection (qdrant://HOST:PORT/COLLECTION, or qdrant:PATH for qdrant-client's local mode): the folder index is built first (see --folder), then uploaded."),
    folder: Optional[Path] = typer.Option(None, "--folder", help="With a Qdrant --out: where the folder index is built before the upload (default ~/.cache/adaretrieve/qdrant/<collection>); kept, so a rerun resumes either step."),
    factory: str = typer.Option("Flat", "--factory", help="FAISS factory for the shortlist indexes: Flat, SQfp16, SQ8, HNSW32, IVF1024,Flat; BFlat / BHNSW32 for sign bits (Hamming)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF factories: the nprobe every search uses unless it gives its own, recorded in the manifest (default 2 sqrt(lists): IVF4096 128, IVF256 32)."),
    ef_construction: Optional[int] = typer.Option(None, "--ef-construction", help="HNSW factories: the graph's efConstruction (FAISS's default 40; 200 builds a better graph, about 3x slower)."),
    rerank_dtype: str = typer.Option("float16", "--rerank-dtype", help="float16, or int8 with a per-vector scale (half the bytes)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Token limit (default: the model's, e.g. 256 for MiniLM)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="mean or cls (default: from the model's sentence-transformers config, else cls)."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="L2-normalise vectors (default: the model's convention)."),
    query_prefix: Optional[str] = typer.Option(None, "--query-prefix", help="Text put before every query, e.g. 'query: ' for E5 (default: the model folder's sentence-transformers 'query' prompt, else none); recorded in the manifest, so search applies it."),
    passage_prefix: Optional[str] = typer.Option(None, "--passage-prefix", help="Text put before every document, e.g. 'passage: ' (default: the folder's 'document' prompt, else none); recorded in the manifest."),
    batch_size: int = typer.Option(32, "--batch-size", help="Documents per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (float16 on CUDA only; bfloat16 autocast on CPU)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index (only once the new one is complete)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: encode only this process's share of the corpus; then `adaretrieve index merge`."),
    ray: bool = typer.Option(False, "--ray", help="Encode the chunks on Ray Data (an actor pool; a local Ray unless --ray-address). Optional extra: pip install 'adaretrieve\\[ray]'."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --ray: a running Ray cluster (e.g. ray://head:10001 or head:6379); the build folder must be on storage every node sees."),
    ray_actors: int = typer.Option(2, "--ray-actors", help="With --ray: encoder actors (one model each)."),
    ray_threads: int = typer.Option(1, "--ray-threads", help="With --ray: CPU threads (and Ray CPUs) per actor."),
    chunk_size: int = typer.Option(8192, "--chunk-size", help="Documents per checkpointed chunk (an interrupted build resumes from the last one)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Encode a corpus once and write a two-stage index.

    Encoded chunks are checkpointed beside the output: run the same command again after an
    interruption and it resumes. With --shard i/n, n processes share the corpus.

    Examples:

        adaretrieve index --corpus ../shared/data/beir/scifact --model minilm \\
            --shortlist 2x64 --shortlist 4x128 --rerank 6x384 --out indexes/scifact

        adaretrieve index --corpus ../shared/data/beir/scifact --shortlist 6x384:sign --shortlist 2x64 --rerank 6x384 --out indexes/scifact-sign

        adaretrieve index --corpus collection.tsv --shortlist 2x32 --factory BFlat --rerank-dtype int8 --out indexes/msmarco --shard 0/4

        adaretrieve index merge --out indexes/msmarco

        adaretrieve index --corpus collection.tsv --shortlist 2x32 --rerank 6x384 --out indexes/msmarco --ray --ray-actors 8

        adaretrieve index --corpus ../shared/data/beir/scifact --shortlist 2x64 --rerank 6x384 --out qdrant://localhost:6333/scifact

        adaretrieve index upload --index indexes/scifact --to qdrant:indexes/scifact-qdrant
    """
    if ctx.invoked_subcommand is not None:
        return
    setup(quiet)
    from adaretrieve.errors import AdaError
    from adaretrieve.index.build import build_index

    if corpus is None or out is None:
        raise AdaError("index needs --corpus and --out (see adaretrieve index --help)")
    at_least_1({"--batch-size": batch_size, "--chunk-size": chunk_size, "--max-length": max_length,
                "--ray-actors": ray_actors, "--ray-threads": ray_threads})
    if ray_address and not ray:
        raise AdaError("--ray-address needs --ray")
    shard_t = None
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            shard_t = (i, n)
        except ValueError:
            raise AdaError(f"--shard {shard!r} is not of the form i/n, e.g. 0/4") from None

    from adaretrieve.qdrant import is_qdrant, parse_location

    target = None
    if is_qdrant(out):
        if shard:
            raise AdaError("--shard builds folder indexes: build the shards into a folder, `index merge` it, then "
                           "`adaretrieve index upload --index DIR --to ...`")
        target = parse_location(out)
        out = str(folder or qdrant_folder(target))
    elif folder is not None:
        raise AdaError("--folder is for a Qdrant --out (the folder index built before the upload)")
    enc = load_encoder(model, pooling, normalize, max_length, device, dtype, query_prefix, passage_prefix, backend)
    if rerank is None:
        rerank = str(enc.full_size)
    elif rerank.lower() == "none":
        rerank = None
    if not shortlist:
        from adaretrieve.data.readers import resolve_corpus, validate_corpus
        from adaretrieve.sizes import parse_size

        shortlist = [default_shortlist(enc.full_size, parse_size(rerank) if rerank else None, qdrant=target is not None,
                                       n_docs=validate_corpus(resolve_corpus(corpus)))]
        if not quiet:
            typer.echo(f"no --shortlist: storing {shortlist[0]} (the best shortlist per byte measured: "
                       "benchmarks/results/codes/); add small sizes with --shortlist for adaptive depth", err=True)
    if target is not None and Path(out).exists() and not overwrite:
        from adaretrieve.index.codes import parse_shortlist
        from adaretrieve.search import IndexReader
        from adaretrieve.sizes import parse_size

        m = IndexReader(out).manifest  # built by an earlier run that stopped before or during its upload
        asked = ([f"{s}:{f}" for s, f in parse_shortlist(shortlist, factory)], str(parse_size(rerank)) if rerank else None,
                 enc.weights_hash())
        held = ([f"{e['size']}:{e['factory']}" for e in m.shortlist], str(m.rerank_size) if m.rerank else None,
                m.model.get("weights_sha256"))
        if asked != held:
            raise AdaError(f"{out} holds a folder index with shortlist {', '.join(held[0])}, rerank {held[1]} from "
                           f"{m.model.get('name')!r}, not this one; pass --overwrite to rebuild it, or --folder elsewhere")
        typer.echo(f"using the folder index already built at {out} (pass --overwrite to rebuild it)", err=True)
    else:
        m = build_index(corpus, enc, Path(out), shortlist, rerank, factory=factory, ef_construction=ef_construction, nprobe=nprobe, batch_size=batch_size,
                        chunk_size=chunk_size, overwrite=overwrite, progress=not quiet, rerank_dtype=rerank_dtype, shard=shard_t,
                        ray={"address": ray_address, "actors": ray_actors, "threads": ray_threads} if ray else None)
    if m is None:
        typer.echo(f"shard {shard} done; run `adaretrieve index merge --out {out}` once every shard is done", err=True)
        return
    typer.echo(
        f"indexed {m.n_docs} docs into {out} (encoding {m.build['encode_seconds']:.1f}s, {m.build['docs_per_second'] or 0:.1f} docs/s): "
        f"shortlist {', '.join(e['size'] + ('' if e['factory'] == 'Flat' else ':' + e['factory']) for e in m.shortlist)}; rerank {m.rerank_size or 'none'}",
        err=True,
    )
    if target is not None:
        _upload(Path(out), str(target), 256, overwrite, "none", quiet)


def qdrant_folder(target) -> Path:
    """Where `index --out qdrant:...` builds its folder index by default."""
    from adaretrieve.cache import cache_dir

    host = re.sub(r"\W+", "_", target.url or "local_" + str(Path(target.path).resolve()))
    return cache_dir() / "qdrant" / f"{host}-{target.collection}"


def _upload(index: Path, to: str, batch_size: int, overwrite: bool, quantization: str, quiet: bool) -> None:
    from adaretrieve.qdrant import upload
    from adaretrieve.search import IndexReader

    reader = IndexReader(index)
    meta = upload(reader, to, batch_size=batch_size, overwrite=overwrite, quantization=quantization, progress=not quiet)
    typer.echo(f"{to} holds {reader.n_docs} docs from {index}: shortlist {', '.join(meta['shortlist'])} (HNSW); "
               f"rerank {meta['rerank'] or 'none'} (on disk, quantisation {meta['quantization']})", err=True)


@index_app.command("upload")
@handle_errors
def upload_cmd(
    index: Path = typer.Option(..., "--index", "-i", help="A folder index from `adaretrieve index`."),
    to: str = typer.Option(..., "--to", help="qdrant://HOST:PORT/COLLECTION, or qdrant:PATH for qdrant-client's local mode."),
    batch_size: int = typer.Option(256, "--batch-size", help="Points per upsert."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a collection that holds another index."),
    quantization: str = typer.Option("none", "--quantization", help="Rerank vectors kept on disk, with an in-RAM copy: none, scalar (int8) or binary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Upload a folder index to Qdrant without re-encoding: one named vector per stored size, the doc
    id as payload, the index's manifest with the collection. An interrupted upload resumes when run again.

    Examples:

        adaretrieve index upload --index indexes/scifact --to qdrant://localhost:6333/scifact

        adaretrieve index upload --index indexes/scifact --to qdrant:indexes/scifact-qdrant
    """
    setup(quiet)
    at_least_1({"--batch-size": batch_size})
    _upload(index, to, batch_size, overwrite, quantization, quiet)


@index_app.command("merge")
@handle_errors
def merge(out: Path = typer.Option(..., "--out", "-o", help="The index every shard was built for.")):
    """Assemble an index from the chunks its shards encoded (`adaretrieve index --shard i/n`)."""
    setup(True)
    from adaretrieve.index.build import merge_index

    m = merge_index(out, overwrite=True)
    typer.echo(f"merged {m.n_docs} docs into {out}", err=True)
