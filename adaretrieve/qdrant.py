"""Qdrant as an index location: one named vector per stored size, and Qdrant's Query API runs the
two stages (``prefetch`` on the small vector with a limit, then ``query`` on the full vector;
nested prefetches for a funnel).

A location is ``qdrant://HOST:PORT/COLLECTION`` (a Qdrant server or cluster) or ``qdrant:PATH``
(qdrant-client's embedded local mode: storage in folder PATH, the collection named after it).

``upload`` copies a folder index into a collection without re-encoding: point id = row number,
payload ``{"docid": ...}``, one named vector per shortlist size (HNSW-indexed) and one for the
rerank size (no HNSW graph, on disk; optionally scalar- or binary-quantised in RAM), in batches.
The folder index's manifest is stored in the collection's metadata with ``complete: false`` until
the last batch is in, so an interrupted upload resumes (ids are row numbers: nothing is missing or
duplicated) and a collection for another model or other sizes is refused. No torch here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from adaretrieve.errors import AdaError
from adaretrieve.index.format import Manifest, check_encoder
from adaretrieve.search.plan import DEFAULT, FunnelPlan, resolve_plan, stored_entry
from adaretrieve.sizes import Size, parse_size, truncate

log = logging.getLogger(__name__)
META_KEY = "adaretrieve"
QUANTIZATION = ("none", "scalar", "binary")


@dataclass(frozen=True)
class QdrantLocation:
    url: str | None  # http://HOST:PORT for a server
    path: str | None  # a local-mode storage folder
    collection: str

    def __str__(self) -> str:
        return f"qdrant://{self.url.removeprefix('http://')}/{self.collection}" if self.url else f"qdrant:{self.path}"


def is_qdrant(location: str | Path | None) -> bool:
    return location is not None and str(location).startswith("qdrant:")


def parse_location(s: str) -> QdrantLocation:
    """``qdrant://HOST:PORT/COLLECTION`` or ``qdrant:PATH``; AdaError for anything else."""
    s = str(s)
    if s.startswith("qdrant://"):
        host, _, coll = s[len("qdrant://"):].partition("/")
        if not re.fullmatch(r"[\w.\-]+(:\d+)?", host) or not re.fullmatch(r"[\w.\-]+", coll):
            raise AdaError(f"{s!r} is not a Qdrant location: expected qdrant://HOST:PORT/COLLECTION "
                           "(e.g. qdrant://localhost:6333/scifact) or qdrant:PATH for a local folder")
        return QdrantLocation(f"http://{host if ':' in host else host + ':6333'}", None, coll)
    if s.startswith("qdrant:") and s[len("qdrant:"):].strip():
        path = Path(s[len("qdrant:"):]).expanduser()
        if not re.fullmatch(r"[\w.\-]+", path.resolve().name):
            raise AdaError(f"{s!r}: the folder name {path.name!r} names the collection: use letters, digits, '.', '-', '_'")
        return QdrantLocation(None, str(path), path.resolve().name)
    raise AdaError(f"{s!r} is not a Qdrant location: expected qdrant://HOST:PORT/COLLECTION or qdrant:PATH")


def connect(loc: QdrantLocation, timeout: float = 10.0, create: bool = True):
    """A QdrantClient for ``loc``, checked to answer; one-line AdaError otherwise. ``create``: a local
    storage folder that does not exist may be made (an upload); a reader passes False, since a local
    client creates its folder as a side effect."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise AdaError("Qdrant locations need qdrant-client: pip install 'adaretrieve[qdrant]'") from None
    if loc.path and not create and not Path(loc.path).is_dir():
        raise AdaError(f"{loc}: no Qdrant storage folder {loc.path} (upload an index with "
                       f"`adaretrieve index upload --index DIR --to {loc}`)")
    if loc.path:
        try:
            return QdrantClient(path=loc.path)
        except (RuntimeError, OSError, ValueError) as e:
            raise AdaError(f"{loc}: {str(e).splitlines()[0][:200]}") from None
    client = QdrantClient(url=loc.url, timeout=int(max(1, timeout)), check_compatibility=False)
    try:
        client.get_collections()
    except Exception as e:  # connection refused, DNS, timeout, TLS: whatever the transport raises
        raise AdaError(f"cannot reach Qdrant at {loc.url} ({str(e).splitlines()[0][:120]}); is the server running? "
                       "(e.g. docker run -p 6333:6333 qdrant/qdrant)") from None
    return client


def _meta(client, loc: QdrantLocation) -> dict | None:
    """The collection's adaretrieve metadata; None when there is no such collection."""
    if not client.collection_exists(loc.collection):
        return None
    meta = (client.get_collection(loc.collection).config.metadata or {}).get(META_KEY)
    if meta is None:
        raise AdaError(f"collection {loc.collection!r} at {loc} was not written by adaretrieve; choose another name")
    return meta


def is_code(factory: str) -> bool:
    """Shortlist kinds Qdrant has no counterpart for: sign bits scored against float queries, RaBitQ and
    PQ codes (Hamming sign bits, ``B...``, are refused where their rows are read)."""
    return factory == "sign" or re.fullmatch(r"(pca|itq)\d+", factory) is not None or any(p.startswith(("RaBitQ", "PQ")) for p in factory.split(","))


def _size_rows(reader, size: Size):
    """Rows [n_docs, >=dim] holding ``size`` as the folder index searches it: the rerank rows (float16 /
    int8) for the rerank size, as adaretrieve rescores with them even beside a flat shortlist of that
    size; a stored flat shortlist's own float32 vectors; else a stored prefix."""
    from adaretrieve.search.reader import faiss_flat_vectors

    if size == reader.manifest.rerank_size:
        return reader.rerank_rows()
    entry = stored_entry(reader.manifest, size)
    if entry is not None:
        if entry.get("metric") == "hamming":
            raise AdaError(f"shortlist {size} is binary (sign bits, Hamming): Qdrant stores float vectors; "
                           "build the folder index with a float factory (Flat, HNSW32, SQ8 ...) to upload it")
        ix = reader.shortlist_index(size)
        if entry["factory"] == "Flat":
            return faiss_flat_vectors(ix)
        if reader.manifest.rerank_size is None or reader.manifest.rerank_size.layer != size.layer:
            try:
                return ix.reconstruct_n(0, ix.ntotal)
            except RuntimeError:
                raise AdaError(f"shortlist {size} ({entry['factory']}) cannot give its vectors back; build the folder "
                               "index with a Flat shortlist to upload it") from None
    return reader.rerank_source(size)


def upload(reader, location: str | QdrantLocation, batch_size: int = 256, overwrite: bool = False,
           quantization: str = "none", progress: bool = True, client=None) -> dict:
    """Copy the folder index ``reader`` into a Qdrant collection (see the module doc); resumes an
    interrupted upload of the same index. Returns the collection's metadata."""

    loc = parse_location(location) if isinstance(location, str) else location
    if quantization not in QUANTIZATION:
        raise AdaError(f"--quantization {quantization!r} is not one of {', '.join(QUANTIZATION)}")
    if batch_size < 1:
        raise AdaError(f"batch size {batch_size} must be at least 1")
    if client is not None:
        return _upload(reader, loc, batch_size, overwrite, quantization, progress, client)
    client = connect(loc)
    try:
        return _upload(reader, loc, batch_size, overwrite, quantization, progress, client)
    finally:
        client.close()  # local mode: releases the storage folder's lock


def _upload(reader, loc: QdrantLocation, batch_size: int, overwrite: bool, quantization: str, progress: bool, client) -> dict:
    from qdrant_client import models

    from adaretrieve.search.twostage import takes_as_stored

    m = reader.manifest
    for e in m.shortlist:
        if is_code(e.get("factory", "Flat")):
            raise AdaError(f"shortlist {e['size']} is stored as {e['factory']!r} codes, which a Qdrant collection cannot "
                           "hold (it keeps float vectors under HNSW; --quantization sets its own codes for the rerank "
                           f"vectors): rebuild the folder index with a float kind for {e['size']} to upload it")
    short = list(dict.fromkeys(m.shortlist_sizes))
    sizes = short + ([m.rerank_size] if m.rerank_size and m.rerank_size not in short else [])
    want = {"manifest": asdict(m), "shortlist": [str(s) for s in short], "rerank": str(m.rerank_size) if m.rerank else None,
            "quantization": quantization, "complete": False}
    have = _meta(client, loc)
    if have is not None and overwrite:
        client.delete_collection(loc.collection)
        have = None
    start = 0
    if have is not None:
        diff = _differences(have, want)
        if diff:
            raise AdaError(f"collection {loc.collection!r} at {loc} holds another index ({'; '.join(diff)}); "
                           "pass --overwrite to replace it, or choose another collection")
        if have.get("complete"):
            log.info("%s already holds this index (%d points)", loc, m.n_docs)
            return have
        done = client.count(loc.collection, exact=True).count
        start = max(0, done // batch_size * batch_size - batch_size)  # the last batch again: upserts by id are idempotent
        log.info("resuming the upload to %s: %d of %d points there", loc, done, m.n_docs)
    else:
        rerank_only = {m.rerank_size} - set(short) if m.rerank_size else set()
        quant = {"scalar": models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8,
                                                                                             always_ram=True)),
                 "binary": models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))}.get(quantization)
        vectors = {str(s): models.VectorParams(size=s.dim, distance=models.Distance.DOT, on_disk=s in rerank_only,
                                               hnsw_config=models.HnswConfigDiff(m=0) if s in rerank_only else None,
                                               quantization_config=quant if s in rerank_only else None)
                   for s in sizes}
        client.create_collection(loc.collection, vectors_config=vectors, metadata={META_KEY: want})
    sources = {s: _size_rows(reader, s) for s in sizes}
    from tqdm.auto import tqdm

    with tqdm(total=m.n_docs, initial=start, unit="doc", desc=f"upload {loc.collection}", disable=not progress) as bar:
        for a in range(start, m.n_docs, batch_size):
            b = min(a + batch_size, m.n_docs)
            vec = {}
            for s, src in sources.items():
                x = np.asarray(src[a:b], dtype=np.float32)
                # the values adaretrieve scores with: rows at their stored width as stored, others cut and renormalised
                vec[str(s)] = (x if takes_as_stored(src, s.dim) else truncate(x, s.dim, m.normalize)).tolist()
            client.upsert(loc.collection, points=models.Batch(ids=list(range(a, b)), vectors=vec,
                                                              payloads=[{"docid": reader.docids[i]} for i in range(a, b)]),
                          wait=True)
            bar.update(b - a)
    count = client.count(loc.collection, exact=True).count
    if count != m.n_docs:
        raise AdaError(f"{loc} holds {count} points after the upload, the index has {m.n_docs}; run the upload again")
    done = {**want, "complete": True}
    client.update_collection(loc.collection, metadata={META_KEY: done})
    return done


def _differences(have: dict, want: dict) -> list[str]:
    out = []
    hm, wm = have.get("manifest", {}), want["manifest"]
    if hm.get("model", {}).get("weights_sha256") != wm["model"].get("weights_sha256"):
        out.append(f"model {hm.get('model', {}).get('name')!r} (sha256 {str(hm.get('model', {}).get('weights_sha256'))[:12]}), "
                   f"not {wm['model'].get('name')!r} (sha256 {str(wm['model'].get('weights_sha256'))[:12]})")
    for key in ("shortlist", "rerank", "quantization"):
        if have.get(key) != want[key]:
            out.append(f"{key} {have.get(key)}, not {want[key]}")
    if hm.get("n_docs") != wm["n_docs"]:
        out.append(f"{hm.get('n_docs')} documents, not {wm['n_docs']}")
    if hm.get("generation") != wm.get("generation"):
        out.append(f"index generation {hm.get('generation')}, not {wm.get('generation')}")
    return out


class QdrantIndex:
    """A collection written by ``upload``, searched like a folder index: ``manifest`` and
    ``check_encoder`` for the query encoder, ``search`` for any configuration of its stored sizes."""

    def __init__(self, location: str | QdrantLocation, client=None):
        self.loc = parse_location(location) if isinstance(location, str) else location
        self.client = client or connect(self.loc, create=False)
        try:
            meta = _meta(self.client, self.loc)
        except BaseException:
            self.close()
            raise
        if meta is None:
            self.close()
            raise AdaError(f"{self.loc}: no collection {self.loc.collection!r} (upload an index with "
                           f"`adaretrieve index upload --index DIR --to {self.loc}`)")
        if not meta.get("complete"):
            self.close()
            raise AdaError(f"{self.loc}: the upload of this collection did not finish; run the same upload again to complete it")
        self.meta = meta
        self.manifest = Manifest(**meta["manifest"])
        self.dir = str(self.loc)

    def close(self) -> None:
        """Let go of the client (in local mode, the storage folder's lock)."""
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()

    def __del__(self):
        self.close()

    @property
    def n_docs(self) -> int:
        return self.manifest.n_docs

    def check_encoder(self, spec, name: str) -> None:
        check_encoder(self.manifest, str(self.loc), spec, name)

    def stored(self) -> list[Size]:
        return [parse_size(s) for s in self.meta["shortlist"]] + ([parse_size(self.meta["rerank"])] if self.meta["rerank"] else [])

    def _check(self, size: Size, what: str) -> str:
        if size not in self.stored():
            raise AdaError(f"{what} {size} is not stored in {self.loc} (it has {', '.join(map(str, self.stored()))}; "
                           "Qdrant cannot cut stored vectors to a prefix)")
        return str(size)

    def plan(self, shortlist: str | Size | None = None, k: int | None = None, then=(), rerank=DEFAULT,
             top: int | None = None, nprobe: int | None = None, ef_search: int | None = None) -> FunnelPlan:
        """The plan these arguments mean for this collection (``resolve_plan`` with no nprobe: Qdrant has none)."""
        return resolve_plan(self.manifest, shortlist, k, then, rerank, top, nprobe, ef_search, engine="qdrant")

    def search(self, queries: dict[Size, np.ndarray], plan: FunnelPlan, exact: bool = False) -> list[list[tuple[str, float]]]:
        """``[(doc_id, score), ...]`` best first, one list per query, for ``plan`` (from ``plan`` or
        ``resolve_plan``): the shortlist's top ``k`` by ``prefetch`` (HNSW with ``plan.ef_search``),
        each ``then`` stage and the ``rerank`` rescoring the previous stage's points."""
        from qdrant_client import models

        if plan.nprobe is not None:
            raise AdaError("nprobe applies to FAISS IVF shortlists, not to a Qdrant collection (use ef_search)")
        top, ef_search = plan.top, plan.ef_search
        for s, what in ((plan.shortlist, "shortlist size"), *((s, "--then size") for s, _ in plan.then),
                        *(((plan.rerank, "rerank size"),) if plan.rerank else ())):
            self._check(s, what)
        params = models.SearchParams(hnsw_ef=ef_search, exact=exact)
        n = len(next(iter(queries.values())))
        requests = []
        for i in range(n):
            def q(s: Size, i: int = i) -> list[float]:
                return np.asarray(queries[s][i], dtype=np.float32).tolist()

            if plan.stages == 1:
                requests.append(models.QueryRequest(query=q(plan.shortlist), using=str(plan.shortlist), limit=top,
                                                    params=params, with_payload=True))
                continue
            # nested prefetches: the shortlist, then every stage but the last; the last stage is the query
            last = plan.rerank or plan.then[-1][0]
            pre = models.Prefetch(query=q(plan.shortlist), using=str(plan.shortlist), limit=plan.k, params=params)
            for s, kk in plan.then if plan.rerank else plan.then[:-1]:
                pre = models.Prefetch(prefetch=pre, query=q(s), using=str(s), limit=kk)
            requests.append(models.QueryRequest(prefetch=pre, query=q(last), using=str(last), limit=plan.depth,
                                                with_payload=True))
        out = []
        for a in range(0, n, 64):
            for res in self.client.query_batch_points(self.loc.collection, requests=requests[a:a + 64]):
                out.append([(p.payload["docid"], float(p.score)) for p in res.points])
        return out
