from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import handle_errors, setup


@handle_errors
def export(
    model: str = typer.Option("minilm", "--model", "-m", help="Local folder (adapted or trained ones too), Hub id, 'minilm' or 'mpnet'."),
    size: str = typer.Option(..., "--size", "-s", help="The size to export, LxD (e.g. 2x64): layers cut to L, the first D dims."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write: a sentence-transformers model."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write onnx/model.onnx (the graph sentence-transformers' onnx backend loads); needs onnx + onnxruntime."),
    query_prefix: Optional[str] = typer.Option(None, "--query-prefix", help="Text put before queries (default: the model's query prompt); written as the 'query' prompt."),
    passage_prefix: Optional[str] = typer.Option(None, "--passage-prefix", help="Text put before passages (default: the model's); written as the 'document' prompt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check sentence-transformers' vectors equal adaretrieve's on sample texts (when it is installed)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Export one size of a model as a sentence-transformers folder whose encode() equals adaretrieve's LxD vectors.

    The backbone is cut to L layers; pooling, the adaptor's first D outputs (adapted models) or a
    slice to D dims, and normalisation follow as sentence-transformers modules. An adapted size
    whose map reads several layers needs SentenceTransformer(DIR, trust_remote_code=True) (a small
    module in the folder concatenates the layers' token states).

    Examples:

        adaretrieve export --model minilm --size 2x64 --out exports/minilm-2x64

        adaretrieve export --model checkpoints/minilm-adapt-scifact --size 2x64 --out exports/minilm-adapted-2x64 --onnx
    """
    setup(quiet)
    from adaretrieve.modeling.export import export_size

    summary = export_size(model, size, out, onnx=onnx, overwrite=overwrite, query_prefix=query_prefix,
                          passage_prefix=passage_prefix, verify=verify)
    try:
        typer.echo(json.dumps(summary))
    except OSError as e:  # the export is complete: say so, rather than read as a failed export
        from adaretrieve.errors import AdaError, io_reason

        raise AdaError(f"the export to {out} is complete, but its summary could not be written to stdout "
                       f"({io_reason(e) or e})") from None
    load = f"SentenceTransformer({str(out)!r}{', trust_remote_code=True' if summary['trust_remote_code'] else ''})"
    typer.echo(f"exported {summary['size']} of {summary['model']} to {out}: {load}", err=True)
