from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Optional

import typer

from adaretrieve.cli.common import BACKEND_HELP, at_least_1, handle_errors, setup
from adaretrieve.errors import AdaError


def _check_port(host: str, port: int) -> None:
    """Bind and release ``host:port`` now, so a taken port is one line before the model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise AdaError(f"--host {host!r} is not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise AdaError(f"cannot listen on {host}:{port}: {e.strerror}") from None


@handle_errors
def serve(
    index: Path = typer.Option(..., "--index", "-i", help="Index directory from `adaretrieve index`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", help="Server processes; each loads the model and opens the index "
                                "(the rerank rows are a shared memory map) and batches its own requests."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most query texts per encoder pass; 1 turns micro-batching off."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", help="How long a request waits for others to share its "
                                      "encoder pass (requests that queue while the encoder is busy share it anyway)."),
    max_queue: int = typer.Option(1024, "--max-queue", help="Most query texts waiting for the encoder per worker; a "
                                  "request beyond it is refused at once with 503 and Retry-After (the client retries) "
                                  "instead of waiting behind all of them."),
    reload_every: float = typer.Option(1.0, "--reload-every", help="Seconds between checks for a rebuilt index; a new "
                                       "generation is served from the next batch on."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Query encoder (default: the model that built the index)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device for the query encoder (cpu, cuda, cuda:1; default: cuda when available)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per worker (default: torch's, one "
                                          "per core); with several workers, cores / workers."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    adaptive: Optional[Path] = typer.Option(None, "--adaptive", help="A stop rule from `adaretrieve calibrate` for this "
                                            "index: its plan becomes the default plan, answered with early exit per "
                                            "query (a request may send \"adaptive\": false); checked now. After the "
                                            "index is rebuilt it answers at full depth until calibrated again (see "
                                            "/health)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (uvicorn's access log)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr; results and errors only."),
):
    """Serve an index over HTTP: POST /search, GET /health, GET /metrics; OpenAPI at /openapi.json, a page at /docs.

    Examples:

        adaretrieve serve --index indexes/scifact --port 8000

        adaretrieve serve --index indexes/scifact --adaptive scifact-rule.json

        curl -s localhost:8000/search -H 'content-type: application/json' \\
            -d '{"queries": ["do statins reduce cancer risk?"], "shortlist": "2x64", "k": 200, "rerank": "6x384", "top": 10}'
    """
    setup(quiet)
    at_least_1({"--workers": workers, "--max-batch": max_batch, "--threads": threads, "--max-queue": max_queue})
    if not 0 <= port <= 65535:
        raise AdaError(f"--port {port} is outside 0..65535")
    if max_wait_ms < 0 or reload_every < 0:
        raise AdaError(f"--max-wait-ms ({max_wait_ms}) and --reload-every ({reload_every}) must be at least 0")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise AdaError(f"serve needs fastapi and uvicorn ({e.name} is missing): pip install 'adaretrieve[serve]'") from None
    from adaretrieve.serve.app import create_app
    from adaretrieve.serve.protocol import IMPORT_PATH
    from adaretrieve.serve.service import SearchService

    _check_port(host, port)
    cfg = {"index": str(index), "model": model, "device": device, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
           "reload_every": reload_every, "threads": threads, "max_queue": max_queue, "backend": backend,
           "adaptive": None if adaptive is None else str(adaptive)}
    log_level = "warning" if quiet else "info"
    if workers == 1:
        app = create_app(SearchService(**cfg))  # loads here: a bad index or model is one line before listening
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, http=IMPORT_PATH)
        return
    from adaretrieve.search import IndexReader

    reader = IndexReader(index).open_all()  # a missing or damaged index (any file) is one line here, not a traceback per worker
    if adaptive is not None:
        from adaretrieve.serve.service import open_rule

        open_rule(adaptive, reader, backend)  # a rule that does not fit: one line here, not one per worker
    os.environ["ADARETRIEVE_SERVE"] = json.dumps(cfg)
    uvicorn.run("adaretrieve.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log, http=IMPORT_PATH)  # stalled clients time out
