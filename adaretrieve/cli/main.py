"""Entry point: `adaretrieve index | search | serve | eval | bench | train | adapt | mine | pretrain | tune | calibrate | export`."""

from __future__ import annotations

import os
import sys

import typer

from adaretrieve._version import __version__
from adaretrieve.cli.adapt_cmd import adapt
from adaretrieve.cli.bench_cmd import bench
from adaretrieve.cli.calibrate_cmd import calibrate
from adaretrieve.cli.common import debug
from adaretrieve.cli.eval_cmd import evaluate
from adaretrieve.cli.export_cmd import export
from adaretrieve.cli.index_cmd import index_app
from adaretrieve.cli.mine_cmd import mine
from adaretrieve.cli.pretrain_cmd import pretrain
from adaretrieve.cli.search_cmd import search
from adaretrieve.cli.serve_cmd import serve
from adaretrieve.cli.train_cmd import train
from adaretrieve.cli.tune_cmd import tune
from adaretrieve.errors import describe

app = typer.Typer(
    help="One Matryoshka embedding model, many sizes: index once, shortlist small, rerank full.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)
app.add_typer(index_app, name="index")
app.command("search")(search)
app.command("serve")(serve)
app.command("eval")(evaluate)
app.command("bench")(bench)
app.command("train")(train)
app.command("mine")(mine)
app.command("pretrain")(pretrain)
app.command("tune")(tune)
app.command("calibrate")(calibrate)
app.command("adapt")(adapt)
app.command("export")(export)


def _version(value: bool):
    if value:
        typer.echo(f"adaretrieve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors (or ADARETRIEVE_DEBUG=1).")):
    if debug:
        os.environ["ADARETRIEVE_DEBUG"] = "1"


def main() -> None:
    """Every command already ends in one line for a user's mistake (cli.common.handle_errors);
    this catches the same classes raised outside a command, e.g. while parsing options."""
    try:
        app()
    except KeyboardInterrupt:
        if debug():
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as e:
        msg = describe(e)
        if msg is None or debug():
            raise
        sys.stderr.write(f"error: {msg}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
