"""The HTTP face of a SearchService: FastAPI routes, one-line errors, request metrics.

    POST /search    {"queries": "text" | ["text", ...], "shortlist": "2x64", "k": 200, "rerank": "6x384", "top": 10}
    GET  /health    what is served: index, generation, documents, model, sizes, defaults, the stop rule
    GET  /metrics   Prometheus text: requests, errors, latency per endpoint and per search stage, batch sizes

Every error is a JSON object ``{"error": "<one line>"}`` with a 4xx status for a bad request
(400 malformed JSON, 413 body too large, 422 a value that breaks a rule), 503 when the server is busy or a
file of its index is damaged (then /health is 503 too, saying why) and 500 for a bug.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adaretrieve._version import __version__
from adaretrieve.data.readers import visible
from adaretrieve.errors import AdaError, IndexDamaged
from adaretrieve.search.plan import DEFAULT
from adaretrieve.serve.service import Overloaded, SearchService

log = logging.getLogger(__name__)

MAX_QUERIES = 1024  # texts per request
MAX_QUERY_CHARS = 10_000  # a query is truncated to the model's max length (256 tokens for MiniLM) anyway
MAX_K = 10_000
MAX_TOP = 10_000
MAX_BODY_BYTES = 4 * 1024 * 1024
SIZE_PATTERN = r"^\s*[0-9]+\s*[xX]\s*[0-9]+\s*$"  # documented in the schema; parse_size gives the error messages
_SIZE_DOC = {"pattern": SIZE_PATTERN}
_QUERIES_DOC = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
                          {"type": "array", "minItems": 1, "maxItems": MAX_QUERIES,
                           "items": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}}]}
ENDPOINTS = ("/search", "/health", "/metrics", "/openapi.json", "/docs")


class Stage(BaseModel):
    """An intermediate exact stage of a funnel: rescore the candidates at ``size``, keep ``k``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    size: str = Field(..., description="Size LxD, stored in the index or a dim-prefix of a stored one.", examples=["4x128"],
                      json_schema_extra=_SIZE_DOC)
    k: int = Field(..., ge=1, le=MAX_K, description="Candidates kept by this stage (no more than the stage before).")


class SearchRequest(BaseModel):
    """One or many query texts and how to search them; every field but ``queries`` has the index's default."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"queries": "do statins reduce the risk of cancer?"},
        {"queries": ["do statins reduce the risk of cancer?", "vitamin D and bone density"], "shortlist": "2x64",
         "k": 200, "rerank": "6x384", "top": 10},
        {"queries": ["vitamin D and bone density"], "shortlist": "2x32", "k": 1000, "then": [{"size": "4x128", "k": 100}],
         "rerank": "6x384", "top": 10},
        {"queries": ["vitamin D and bone density"], "shortlist": "6x384", "rerank": "none", "top": 5},
    ]})
    queries: Union[str, list[str]] = Field(
        ..., description=f"A query text or a list of 1 to {MAX_QUERIES}; each non-blank, at most {MAX_QUERY_CHARS} characters.",
        examples=["do statins reduce the risk of cancer?"], json_schema_extra=_QUERIES_DOC)
    shortlist: Optional[str] = Field(None, description="Shortlist size LxD (default: the index's first shortlist size).",
                                     examples=["2x64"], json_schema_extra=_SIZE_DOC)
    k: Optional[int] = Field(None, ge=1, le=MAX_K, description="Candidates the shortlist keeps (default 200; single "
                             "stage: top).")
    then: list[Stage] = Field(default_factory=list, max_length=16, description="Intermediate exact stages of a funnel.")
    rerank: Optional[str] = Field(None, description="Rerank size LxD, or 'none' (or null) for single stage (omitted: "
                                  "the index's rerank size).", examples=["6x384"],
                                  json_schema_extra={"pattern": r"^(none|\s*[0-9]+\s*[xX]\s*[0-9]+\s*)$"})
    top: Optional[int] = Field(None, ge=1, le=MAX_TOP, description="Results per query (default: all the last stage "
                               "ranks, its k; a search with a rerank or then stage returns at most its last k).")
    nprobe: Optional[int] = Field(None, ge=1, le=1_000_000, description="IVF shortlists: inverted lists probed per query.")
    ef_search: Optional[int] = Field(None, ge=1, le=1_000_000, description="HNSW shortlists: candidate list size per query.")
    adaptive: Optional[bool] = Field(None, description="With `serve --adaptive RULE`: the rule's plan (the default "
                                     "plan) is answered by its cascade, each query stopping at the first stage the "
                                     "rule trusts, unless this is false (full depth); true with any other plan, or on "
                                     "a server without a rule, is a 422.")

    @field_validator("queries", mode="before")
    @classmethod
    def _texts(cls, v):
        texts = [v] if isinstance(v, str) else v
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("must be a string or a list of strings")
        if not 1 <= len(texts) <= MAX_QUERIES:
            raise ValueError(f"{len(texts)} queries; give 1 to {MAX_QUERIES} per request")
        for i, t in enumerate(texts):
            if len(t) > MAX_QUERY_CHARS:
                raise ValueError(f"query {i} is {len(t)} characters long; the limit is {MAX_QUERY_CHARS}")
            if not visible(t):  # whitespace, NUL, control or zero-width characters only
                raise ValueError(f"query {i} is empty" + (" (only invisible or control characters)" if t.strip() else ""))
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON can spell a lone surrogate (\ud800); no tokenizer takes it
                raise ValueError(f"query {i} is not valid Unicode ({e.reason} at character {e.start})") from None
        return texts


class Hit(BaseModel):
    id: str = Field(..., description="Document id.")
    score: float = Field(..., description="Score at the last stage (inner product of the normalised vectors).")


class SearchResponse(BaseModel):
    results: list[list[Hit]] = Field(..., description="One list per query, best first.")
    config: dict = Field(..., description="The search configuration used, defaults filled in.")
    generation: Optional[str] = Field(None, description="The index generation that answered.")
    timings_ms: dict = Field(..., description="Milliseconds per stage of the batch this request ran in.")
    adaptive: Optional[dict] = Field(None, description="Requests answered for the stop rule's plan: 'active' (the "
                                     "rule was applied; false when it does not fit the generation served, with "
                                     "'reason'), and per query its 'exit_stage' (0 = the shortlist) and encoder "
                                     "'layers' run.")


class ErrorResponse(BaseModel):
    error: str = Field(..., description="One line: the rule and the bad value.")


class _Guard:
    """Pure ASGI middleware: counts and times every HTTP request by endpoint and status, and refuses a
    body over ``max_body`` bytes with 413, whether it announces its length or arrives chunked."""

    def __init__(self, app, metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = [500]
        received = 0

        async def counted_receive():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_body:  # FastAPI passes an HTTPException through its body parsing
                    raise StarletteHTTPException(413, f"request body is over {self.max_body} bytes, the limit")
            return msg

        async def seen_send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.max_body:
                self.metrics.inc("adaretrieve_errors_total", {"endpoint": endpoint, "reason": "413"})
                body = json.dumps({"error": f"request body is {length.decode('latin-1')[:40]} bytes; the limit is "
                                            f"{self.max_body}"}).encode()
                await seen_send({"type": "http.response.start", "status": 413,
                                 "headers": [(b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode())]})
                await seen_send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, counted_receive, seen_send)
        finally:
            self.metrics.inc("adaretrieve_requests_total", {"endpoint": endpoint, "status": str(status[0])})
            self.metrics.observe("adaretrieve_request_seconds", time.perf_counter() - t0, {"endpoint": endpoint})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def _sent_as_json(request: Request) -> bool:
    """True when the request's content type is one FastAPI parses as JSON (application/json, */*+json)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def _validation_line(exc: RequestValidationError, sent_as_json: bool = True) -> tuple[int, str]:
    """A status and one line for the first problem pydantic found. ``sent_as_json``: the body was
    declared JSON, so a string body is a JSON string, not unparsed text."""
    errs = exc.errors()
    if not errs:
        return 422, "invalid request"
    e = errs[0]
    if e.get("type") == "json_invalid":
        why = (e.get("ctx") or {}).get("error", "")
        return 400, _one_line(f"request body is not valid JSON{': ' + str(why) if why else ''}")
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if e.get("type") == "missing" and not loc:
        return 422, 'request body is missing: send JSON such as {"queries": ["text"]}'
    if e.get("type") in ("model_attributes_type", "dict_type"):
        if isinstance(e.get("input"), bytes) or (isinstance(e.get("input"), str) and not sent_as_json):
            # FastAPI parses JSON only when the content type says so; otherwise the body arrives as text
            return 422, "request body must be JSON sent with content-type: application/json"
        return 422, 'request body must be a JSON object such as {"queries": ["text"]}'
    if e.get("type") == "extra_forbidden":
        return 422, _one_line(f"unknown field {'.'.join(loc)!r}; the fields are {', '.join(SearchRequest.model_fields)}")
    return 422, _one_line(f"{'.'.join(loc) or 'request'}: {msg}")


def docs_page(schema: dict) -> str:
    """/docs: the endpoints, the request fields and the examples of ``schema`` (the OpenAPI document)
    as one HTML page with nothing to fetch: FastAPI's default page loads Swagger UI from a CDN and
    is blank on a machine without internet. /openapi.json stays the schema for tools."""
    from html import escape

    parts = [f"<h1>{escape(schema['info']['title'])} {escape(schema['info']['version'])}</h1>",
             f"<p>{escape(schema['info'].get('description', ''))}</p>",
             '<p>The machine-readable schema (OpenAPI 3) is <a href="/openapi.json">/openapi.json</a>; load it into any '
             "OpenAPI viewer or client generator.</p>"]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2>{method.upper()} {escape(path)}</h2><p>{escape(op.get('summary', ''))}</p>")
            codes = ", ".join(f"{c} {escape(r.get('description', ''))}" for c, r in op.get("responses", {}).items())
            parts.append(f"<p><b>Responses:</b> {codes}</p>")
            ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
            if not ref:
                continue
            body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
            rows = "".join(f"<tr><td><code>{escape(k)}</code></td><td>{escape(v.get('description', ''))}</td></tr>"
                           for k, v in body.get("properties", {}).items())
            parts.append(f"<table><tr><th>field</th><th>meaning</th></tr>{rows}</table><h3>Examples</h3>")
            parts += [f"<pre>{escape(json.dumps(x, indent=2))}</pre>" for x in body.get("examples", [])]
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}td,th{border:1px solid #ccc;"
             "padding:.3em;text-align:left;vertical-align:top}table{border-collapse:collapse}pre{background:#f4f4f4;padding:.5em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(schema['info']['title'])} API</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def create_app(service: SearchService, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app over ``service``; its lifespan starts and stops the service's batcher."""
    from contextlib import asynccontextmanager

    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="adaretrieve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Two-stage dense retrieval over one index: a shortlist at a small size LxD, exact rerank "
                              "at a large one. Concurrent requests share encoder passes (micro-batching).")

    def error(status: int, msg: str, endpoint: str, reason: str) -> JSONResponse:
        metrics.inc("adaretrieve_errors_total", {"endpoint": endpoint, "reason": reason})
        return JSONResponse({"error": msg}, status_code=status)

    def endpoint_of(request: Request) -> str:
        return request.url.path if request.url.path in ENDPOINTS else "other"

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, msg = _validation_line(exc, _sent_as_json(request))
        return error(status, msg, endpoint_of(request), "bad_json" if status == 400 else "invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # FastAPI's json.loads gave up
            return error(400, "request body is not usable JSON: it is nested too deeply (more than about 1000 levels "
                              "of arrays or objects)", endpoint_of(request), "bad_json")
        if exc.status_code == 400:  # FastAPI could not decode the body before parsing it (bytes that are not UTF-8)
            return error(400, "request body is not valid JSON (it must be UTF-8 text)", endpoint_of(request), "bad_json")
        return error(exc.status_code, _one_line(exc.detail), endpoint_of(request), str(exc.status_code))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error(500, _one_line(f"internal error ({type(exc).__name__}); the server log has the traceback"),
                     endpoint_of(request), "internal")

    app.add_middleware(_Guard, metrics=metrics, max_body=max_body)

    bad = {400: {"model": ErrorResponse, "description": "Malformed JSON."},
           413: {"model": ErrorResponse, "description": "Body larger than the limit."},
           422: {"model": ErrorResponse, "description": "A value breaks a rule (empty query, unknown size, k < 1, ...)."},
           503: {"model": ErrorResponse, "description": "More query texts wait than --max-queue: retry after the "
                 "Retry-After seconds."}}

    @app.post("/search", response_model=SearchResponse, responses=bad, summary="Search one or many queries")
    async def search(req: SearchRequest):
        t0 = time.perf_counter()
        # omitted and null differ for rerank: omitted is the index's rerank size, null (or "none") none
        rerank = req.rerank if "rerank" in req.model_fields_set else DEFAULT
        try:  # off the event loop: planning may build a derived shortlist (seconds at 1M documents)
            plan, adaptive = await run_in_threadpool(service.request, adaptive=req.adaptive, shortlist=req.shortlist,
                                                     k=req.k, then=[(s.size, s.k) for s in req.then], rerank=rerank,
                                                     top=req.top, nprobe=req.nprobe, ef_search=req.ef_search)
        except IndexDamaged as e:  # the server's files, not the request: 503, and /health says so
            return error(503, _one_line(str(e)), "/search", "index_damaged")
        except AdaError as e:
            return error(422, _one_line(str(e)), "/search", "invalid")
        try:
            job = service.submit(req.queries, plan, adaptive=adaptive)
        except Overloaded as e:
            response = error(503, _one_line(str(e)), "/search", "overloaded")
            response.headers["Retry-After"] = "1"
            return response
        try:
            hits = await asyncio.wrap_future(job.future)
        except IndexDamaged as e:
            return error(503, _one_line(str(e)), "/search", "index_damaged")
        except AdaError as e:  # the index was reloaded and no longer serves this plan
            return error(422, _one_line(str(e)), "/search", "invalid")
        timings = {k: round(1000 * v, 3) for k, v in job.timings.items()}
        timings["total"] = round(1000 * (time.perf_counter() - t0), 3)
        body = {"results": [[{"id": d, "score": s} for d, s in h] for h in hits], "config": plan.describe(),
                "generation": job.generation, "timings_ms": timings}
        if job.per_query is not None:
            body["adaptive"] = job.per_query
        return JSONResponse(body)  # built by hand: validating thousands of hits through pydantic costs more than the search

    @app.get("/health", summary="What is served", responses={503: {"description": "Not healthy: 'problem' says why."}})
    async def health():
        r, enc = service.reader, service.encoder
        m = r.manifest
        problem = service.problem()
        body = {"status": "ok" if problem is None else "degraded", **({"problem": problem} if problem else {}),
                "index": str(service.index_dir), "generation": r.generation, "n_docs": r.n_docs,
                "model": {"name": m.model.get("name"), "weights_sha256": m.model.get("weights_sha256"),
                          "layers": enc.n_layers, "hidden_size": enc.hidden_size},
                "shortlist_sizes": [str(s) for s in m.shortlist_sizes],
                "rerank_size": str(m.rerank_size) if m.rerank_size else None,
                "defaults": service.defaults(), "adaptive": service.adaptive_status(), "max_batch": service.max_batch, "max_queue": service.max_queue,
                "max_wait_ms": 1000 * service.max_wait, "pid": os.getpid(), "version": __version__}
        return JSONResponse(body, status_code=200 if problem is None else 503)

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return HTMLResponse(docs_page(app.openapi()))

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory` with several worker processes: each loads the model and index named in
    ADARETRIEVE_SERVE (JSON of SearchService's arguments) once."""
    cfg = json.loads(os.environ["ADARETRIEVE_SERVE"])
    return create_app(SearchService(**cfg))
