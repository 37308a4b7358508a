"""What every command shares: one-line errors, logging set once, quiet switch."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click
import typer

from adaretrieve.errors import AdaError, describe


def setup(quiet: bool = False) -> None:
    """Configure logging and silence library chatter; called once per command."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs which SIMD build it picked
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


def print_metrics(means: dict[str, float], as_json: bool) -> None:
    """Mean metrics on stdout: ``name<TAB>value`` lines (4 decimals), or one JSON object (5)."""
    if as_json:
        typer.echo(json.dumps({k: round(v, 5) for k, v in means.items()}))
    else:
        for k, v in means.items():
            typer.echo(f"{k}\t{v:.4f}")


def fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def debug() -> bool:
    """Tracebacks instead of one-line errors: ADARETRIEVE_DEBUG=1 (or `adaretrieve --debug ...`)."""
    return os.environ.get("ADARETRIEVE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def handle_errors(fn):
    """Turn a user's mistake into one line on stderr and exit status 2: AdaError, and the failures
    a bad input causes deeper down (see ``errors.describe``). Anything else is a bug and keeps its
    traceback; so does everything under ADARETRIEVE_DEBUG=1. Ctrl-C is one line and status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if debug():
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:
            msg = describe(e)
            if msg is None or debug():
                raise
            fail(msg)

    return wrapper


def at_least_1(options: dict[str, int | None]) -> None:
    """Counts and sizes given on the command line (``{"--batch-size": 0}``) must be at least 1:
    checked before any model loads, naming the option."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise AdaError(f"{name} {value} must be at least 1")


BACKEND_HELP = ("Encoder backend: torch, onnx (ONNX Runtime, same vectors, graph exported once and cached under "
                "~/.cache/adaretrieve or $ADARETRIEVE_CACHE) or onnx-int8 (int8 weights: faster, slightly different vectors). "
                "The onnx ones need `pip install 'adaretrieve\\[onnx]'`.")


def load_encoder(model: str, pooling=None, normalize=None, max_length=None, device=None, dtype=None,
                 query_prefix=None, passage_prefix=None, backend="torch"):
    from adaretrieve.modeling import Encoder

    return Encoder(model, pooling=pooling, normalize=normalize, max_length=max_length, device=device, dtype=dtype,
                   query_prefix=query_prefix, passage_prefix=passage_prefix, backend=backend)


def check_query_text(query: str) -> None:
    """A query given on the command line must show something and be valid Unicode (as every query
    in a file must: ``data.readers.read_queries``)."""
    from adaretrieve.data.readers import check_unicode, visible

    if not visible(query):
        raise AdaError("the query text is empty" + (f" (only invisible or control characters: {query!r:.40})"
                                                    if query.strip() else ""))
    check_unicode(query, "the query", "text")


def check_run_out(out, index: str) -> None:
    """``--out`` of a run: ``-`` (stdout), or a file that is not a folder and lies in no index folder
    (``--out INDEX/CURRENT`` would replace the pointer of the index being read)."""
    from pathlib import Path

    if out is None or str(out) == "-":
        return
    out = Path(out)
    if out.is_dir():
        raise AdaError(f"--out {out} is a folder; give a file name for the run")
    real = Path(os.path.realpath(out))
    for d in real.parents:
        if (d / "CURRENT").is_file() or ((d / "manifest.json").is_file() and (d / "docids.txt").exists()):
            raise AdaError(f"--out {out} is inside the index folder {d}; writing a run there would damage the index, "
                           "give a file outside it")
