"""What every command shares: one-line errors, logging set once, quiet switch."""

from __future__ import annotations

import functools
import logging
import os
import sys

import typer

from adaretrieve.errors import AdaError


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


def fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def handle_errors(fn):
    """Turn AdaError (a user mistake) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AdaError as e:
            fail(str(e))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def load_encoder(model: str, pooling=None, normalize=None, max_length=None, device=None, dtype=None):
    from adaretrieve.modeling import Encoder

    return Encoder(model, pooling=pooling, normalize=normalize, max_length=max_length, device=device, dtype=dtype)
