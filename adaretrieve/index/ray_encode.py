"""Corpus encoding on Ray Data: the chunks a build still needs, encoded by a pool of actors.

The driver reads the corpus once (any format the readers take, gzip included) and writes each
missing chunk's ids and texts to ``<build folder>/ray-texts/``; Ray Data maps an actor class over
the chunk numbers (``map_batches`` with a callable class: the model is loaded once per actor), and
each actor encodes its chunk and writes exactly the chunk file a single process writes
(``index.encode.encode_chunk``), then removes the texts. The index is assembled as always. So a
build with ``--ray`` is the same build: resumable (chunks already there are skipped; an interrupted
Ray job loses only the chunks in flight), and with the same threads per encoder, byte-identical.
Each actor's encoder has the driver's backend, device and dtype.

On one machine ``ray.init()`` starts a local Ray; with an address it joins a running cluster,
where the build folder must be on storage every node sees (as for ``--shard``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from adaretrieve.errors import AdaError
from adaretrieve.index.encode import encode_chunk

log = logging.getLogger(__name__)
TEXTS = "ray-texts"


def _ray():
    try:
        import ray
    except ImportError:
        raise AdaError("--ray needs Ray: pip install 'adaretrieve[ray]'") from None
    return ray


def start(address: str | None, actors: int):
    """Join the Ray cluster at ``address`` (or start a local one); one line when it does not answer."""
    ray = _ray()
    if address and address != "auto":
        _check_reachable(address)  # first: a Ray already running in this process must not hide a bad address
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=max(actors, 1), **kw)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        where = f"at {address}" if address else "locally"
        raise AdaError(f"cannot start or reach a Ray cluster {where} ({str(e).strip().splitlines()[-1][:160]})") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray waits minutes on an address nobody answers: try a TCP connection first."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise AdaError(f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise AdaError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with `ray start --head` "
                       "or leave out --ray-address for a local Ray") from None


class ChunkEncoder:
    """A Ray Data actor: one encoder for the actor's lifetime; ``__call__`` encodes whole chunks.
    ``threads``: torch's intra-op threads, and the onnx backends' (one Ray CPU each)."""

    def __init__(self, bdir: str, model: dict, sizes: list[str], batch_size: int, threads: int, device: str | None,
                 dtype: str | None, backend: str = "torch"):
        import torch

        from adaretrieve.modeling.encoder import Encoder

        torch.set_num_threads(threads)
        self.bdir = Path(bdir)
        self.enc = Encoder(model["path"], pooling=model["pooling"], normalize=model["normalize"],
                           max_length=model["max_length"], device=device, dtype=dtype, backend=backend, threads=threads)
        if self.enc.weights_hash() != model["weights_sha256"]:
            raise AdaError(f"the model at {model['path']} on this Ray node is not the one the build started with")
        self.sizes = sizes
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        done = []
        for c in batch["chunk"]:
            c = int(c)
            src = self.bdir / TEXTS / f"{c:06d}.json"
            data = json.loads(src.read_text(encoding="utf-8"))
            done.append(encode_chunk(self.enc, self.bdir, c, data["ids"], data["texts"], self.sizes, self.batch_size))
            src.unlink(missing_ok=True)
        return {"chunk": list(batch["chunk"]), "docs": done}


def encode_chunks(chunk_texts, encoder, bdir: Path, todo: list[int], sizes: list, batch_size: int,
                  address: str | None = None, actors: int = 2, threads: int = 1, progress: bool = True,
                  device: str | None = None, dtype: str | None = None, backend: str = "torch") -> int:
    """Encode the chunks ``todo`` on Ray. ``chunk_texts`` yields ``(c, ids, texts)`` for every chunk in
    corpus order (read once), texts with the passage prefix. Each actor loads the model ``encoder``
    describes with ``backend``, ``device``, ``dtype`` and ``threads``. Returns the number of documents encoded."""
    if actors < 1 or threads < 1:
        raise AdaError(f"--ray-actors ({actors}) and --ray-threads ({threads}) must be at least 1")
    ray = start(address, actors)
    texts = bdir / TEXTS
    texts.mkdir(exist_ok=True)
    want = set(todo)
    for c, ids, txt in chunk_texts:
        if c in want and not (texts / f"{c:06d}.json").exists():
            tmp = texts / f".{c:06d}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"ids": ids, "texts": txt}), encoding="utf-8")
            tmp.replace(texts / f"{c:06d}.json")
    model = encoder.describe()
    from tqdm.auto import tqdm

    ds = ray.data.from_items([{"chunk": c} for c in todo]).map_batches(
        ChunkEncoder, batch_size=1, concurrency=actors, num_cpus=threads,
        fn_constructor_kwargs=dict(bdir=str(bdir), model=model, sizes=[str(s) for s in sizes], batch_size=batch_size,
                                   threads=threads, device=device, dtype=dtype, backend=backend))
    n = 0
    with tqdm(total=len(todo), unit="chunk", desc=f"indexing on Ray ({actors} actors)", disable=not progress) as bar:
        for row in ds.iter_rows():
            n += int(row["docs"])
            bar.update(1)
    if not any(texts.iterdir()):
        texts.rmdir()
    return n
