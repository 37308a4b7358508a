"""The search service behind `adaretrieve serve`, with no HTTP in it: an index and its query encoder
loaded once, and a micro-batcher that runs the queries of concurrent requests through one encoder pass.

    service = SearchService("indexes/scifact", max_batch=32, max_wait_ms=2)
    service.start()
    job = service.submit(["do statins reduce cancer risk?"], service.plan(shortlist="2x64", k=200))
    job.result()   # [[(doc_id, score), ...]] best first, one list per query

Requests queue up while the encoder is busy; the batcher thread takes every waiting request up to
``max_batch`` queries (waiting up to ``max_wait_ms`` for the batch to fill), encodes all their texts
in one pass to the deepest layer any of them needs, then searches each group of requests with the
same configuration as one batch. ``max_batch=1`` turns batching off (one request's queries at a
time). A request's answer equals what ``Retriever.search`` gives for it alone, up to float rounding
from padding a batch (about 1e-6 on a score).

The index is re-opened between batches when its ``CURRENT`` generation moved on (checked at most
every ``reload_every`` seconds); a request then runs entirely on the old or entirely on the new one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from adaretrieve.errors import AdaError, IndexDamaged
from adaretrieve.search.plan import DEFAULT, FunnelPlan, check_plan_sizes, resolve_plan
from adaretrieve.serve.metrics import BATCH_BUCKETS, Metrics
from adaretrieve.spec import QUERY_FIELDS

log = logging.getLogger(__name__)

STAGES = ("queue", "encode", "shortlist", "gather", "rerank")


def service_metrics() -> Metrics:
    """The service's metrics, declared once (the HTTP layer adds to the same registry)."""
    m = Metrics()
    m.counter("adaretrieve_requests_total", "HTTP requests answered, by endpoint and status code.")
    m.counter("adaretrieve_errors_total", "Requests answered with an error, by endpoint and reason.")
    m.counter("adaretrieve_queries_total", "Query texts searched.")
    m.histogram("adaretrieve_request_seconds", "Time from a request's arrival to its answer, by endpoint.")
    m.histogram("adaretrieve_stage_seconds", "Time per search stage of the batch a request ran in: queue (waiting for "
                "the encoder), encode (one pass for the whole batch), shortlist, gather (reading candidate rows), rerank.")
    m.histogram("adaretrieve_batch_queries", "Query texts per batch: the requests that share one encoder call (a "
                "request of more than max-batch texts is a batch of its own, encoded max-batch at a time).", BATCH_BUCKETS)
    m.counter("adaretrieve_index_reloads_total", "Times the index was re-opened at a new generation.")
    m.gauge("adaretrieve_index_docs", "Documents in the index being served.")
    m.gauge("adaretrieve_index_info", "The generation being served (value 1).")
    return m


class Overloaded(AdaError):
    """More query texts are waiting than the service's ``max_queue``: the request is refused now
    (HTTP 503) rather than queued without bound behind them."""


@dataclass
class Job:
    texts: list[str]
    plan: FunnelPlan
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    timings: dict = field(default_factory=dict)  # seconds per stage, filled in by the batcher
    generation: str | None = None

    def result(self, timeout: float | None = None) -> list[list[tuple[str, float]]]:
        return self.future.result(timeout)


class _Loaded:
    """One generation of the index, its encoder and the searchers built on it, swapped whole on reload."""

    def __init__(self, reader, encoder):
        from adaretrieve.search import SearcherCache

        self.reader, self.encoder = reader, encoder
        self.searchers = SearcherCache(reader)  # a derived shortlist is built once, not once per racing request

    def searcher(self, plan: FunnelPlan):
        return self.searchers.get(plan)


class SearchService:
    """An index served to concurrent callers (see the module docstring).

    Args:
        index: index directory from `adaretrieve index`.
        model, device: the query encoder (default: the model that built the index; another is refused).
        max_batch: most query texts per encoder pass (1: no batching).
        max_wait_ms: how long the first request of a batch waits for others to join it.
        reload_every: seconds between checks for a new generation of the index (0: before every batch).
        threads: torch threads for encoding (None: torch's default); intra-op threads of the onnx backends.
        backend: the query encoder's backend: torch, onnx or onnx-int8 (see ``Encoder``).
        max_queue: most query texts waiting for the encoder; a request that would go past it is refused
            at once (``Overloaded``, HTTP 503) unless nothing waits (a request alone may be longer).
    """

    def __init__(self, index, model: str | None = None, device: str | None = None, max_batch: int = 32,
                 max_wait_ms: float = 2.0, reload_every: float = 1.0, threads: int | None = None,
                 metrics: Metrics | None = None, max_queue: int = 1024, backend: str = "torch"):
        from adaretrieve.retriever import load_index_encoder
        from adaretrieve.search import IndexReader

        if max_batch < 1:
            raise AdaError(f"max batch {max_batch} must be at least 1")
        if max_wait_ms < 0:
            raise AdaError(f"max wait {max_wait_ms} ms must be at least 0")
        if max_queue < 1:
            raise AdaError(f"max queue {max_queue} must be at least 1")
        self.max_queue = int(max_queue)
        self._waiting = 0  # query texts submitted and not yet taken into a batch
        self._waiting_lock = threading.Lock()
        self.threads = threads
        self.index_dir = index
        self.model, self.device, self.backend = model, device, backend
        self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1000.0
        self.reload_every = reload_every
        self.metrics = metrics or service_metrics()
        self._damage: str | None = None  # the last IndexDamaged a request met, until a reload succeeds
        reader = IndexReader(index).open_all()  # a bad file is one line now, not a 500 per request later
        self._state = _Loaded(reader, load_index_encoder(reader, model, device, backend=backend, threads=threads))
        self._note_generation()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._carry: Job | None = None
        self._last_check = time.monotonic()
        self.started = time.time()

    # -- what the service serves --------------------------------------------------------------

    @property
    def reader(self):
        return self._state.reader

    @property
    def encoder(self):
        return self._state.encoder

    def problem(self) -> str | None:
        """Why the service is not healthy, or None: a file fault a request met, or the generation it
        serves gone from disk (moved or deleted; it is still answered from the files held open)."""
        if self._damage:
            return self._damage
        from adaretrieve.index.format import MANIFEST

        r = self.reader
        if not (r.gen_dir / MANIFEST).exists():
            return (f"index {self.index_dir}: the generation being served ({r.generation or r.gen_dir}) is no longer "
                    "on disk (moved or deleted?); answering from the files held open until a new one can be opened")
        return None

    def _note_damage(self, e: IndexDamaged) -> None:
        self._damage = str(e)
        log.error("index %s: %s", self.index_dir, e)

    def defaults(self) -> dict:
        """The plan a request that names nothing gets (``resolve_plan``), as JSON."""
        return resolve_plan(self.reader.manifest).describe()

    def plan(self, shortlist: str | None = None, k: int | None = None, then: Sequence[tuple[str, int]] = (),
             rerank=DEFAULT, top: int | None = None, nprobe: int | None = None,
             ef_search: int | None = None) -> FunnelPlan:
        """The checked plan these arguments resolve to (``resolve_plan``: ``rerank`` omitted is the
        index's rerank size, ``None`` or ``"none"`` single stage); AdaError naming the bad value
        otherwise. Opens what the plan searches (a derived shortlist is built here, so the HTTP
        layer calls this off its event loop)."""
        state = self._state
        plan = resolve_plan(state.reader.manifest, shortlist, k, then, rerank, top, nprobe, ef_search)
        check_plan_sizes(state.encoder, plan)
        try:
            state.searcher(plan)  # sizes the index cannot serve, nprobe on a flat index: AdaError now
        except IndexDamaged as e:
            self._note_damage(e)
            raise
        return plan

    # -- the batcher ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="adaretrieve-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None

    def submit(self, texts: Sequence[str], plan: FunnelPlan) -> Job:
        """Queue ``texts`` for search under ``plan``; the Job's future gets ``[[(doc_id, score), ...]]``."""
        if self._thread is None:
            raise RuntimeError("SearchService.start() was not called")
        job = Job(list(texts), plan)
        with self._waiting_lock:
            if self._waiting and self._waiting + len(job.texts) > self.max_queue:
                raise Overloaded(f"the server is busy: {self._waiting} query texts are waiting (--max-queue "
                                 f"{self.max_queue}); retry shortly")
            self._waiting += len(job.texts)
        self._queue.put(job)
        return job

    def waiting(self) -> int:
        """Query texts submitted and not yet taken into a batch."""
        return self._waiting

    def search(self, texts: Sequence[str], **plan) -> list[list[tuple[str, float]]]:
        """Blocking convenience: plan, submit, wait."""
        return self.submit(texts, self.plan(**plan)).result()

    def _take_batch(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and the requests that join it: every one already waiting, then any arriving
        within max wait, up to max_batch texts. Also whether a stop was asked for meanwhile."""
        jobs, n = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait
        while n < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if nxt is None:
                return jobs, True
            if n + len(nxt.texts) > self.max_batch:
                self._carry = nxt  # starts the next batch
                break
            jobs.append(nxt)
            n += len(nxt.texts)
        return jobs, False

    def _loop(self) -> None:
        if self.threads is not None:  # set in the thread that encodes: OpenMP's setting is per thread
            import torch

            torch.set_num_threads(int(self.threads))
        self._carry = None
        stop = False
        while not stop:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                break
            jobs, stop = self._take_batch(first)
            with self._waiting_lock:
                self._waiting -= sum(len(j.texts) for j in jobs)
            try:
                self._maybe_reload()
                self._run(jobs)
            except Exception as e:  # a bug or an unreadable file: fail these requests, keep serving
                log.exception("batch of %d requests failed", len(jobs))
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)

    def _run(self, jobs: list[Job]) -> None:
        """Search a batch: one encoder pass per distinct depth, shallowest first (a request whose plan
        needs 2 layers never waits for the layers 3.. of a deeper one beside it), then each group of
        requests with the same plan searched as one batch."""
        state = self._state
        t0 = time.perf_counter()
        for j in jobs:
            j.timings["queue"] = t0 - j.submitted
            j.generation = state.reader.generation
        ok: list[tuple[Job, object]] = []
        for j in jobs:  # a plan checked against an older generation may not fit a reloaded one
            try:
                ok.append((j, state.searcher(j.plan)))
            except AdaError as e:
                if isinstance(e, IndexDamaged):
                    self._note_damage(e)
                j.future.set_exception(e)
        by_depth: dict[int, list[tuple[Job, object]]] = {}
        for j, srch in ok:
            by_depth.setdefault(j.plan.layers, []).append((j, srch))
        for depth in sorted(by_depth):
            self._run_depth(state, by_depth[depth])

    def _run_depth(self, state, ok: list[tuple[Job, object]]) -> None:
        """Encode the texts of requests whose plans run the same layers in one pass, then search."""
        import numpy as np

        t0 = time.perf_counter()
        sizes = list(dict.fromkeys(s for j, _ in ok for s in j.plan.sizes()))
        texts = [t for j, _ in ok for t in j.texts]
        qv = state.encoder.encode_queries(texts, sizes, batch_size=self.max_batch)  # the index's query prefix
        t1 = time.perf_counter()
        self.metrics.observe("adaretrieve_batch_queries", len(texts))
        starts, at = [], 0
        for j, _ in ok:
            starts.append(at)
            at += len(j.texts)
        groups: dict[FunnelPlan, list[int]] = {}
        for i, (j, _) in enumerate(ok):
            groups.setdefault(j.plan, []).append(i)
        ids = state.reader.docids
        for plan, members in groups.items():
            srch = ok[members[0]][1]
            rows_of = np.concatenate([np.arange(starts[i], starts[i] + len(ok[i][0].texts)) for i in members])
            timings: dict = {}
            try:
                scores, rows = srch.search({s: qv[s][rows_of] for s in plan.sizes()}, timings=timings)
            except AdaError as e:
                if isinstance(e, IndexDamaged):
                    self._note_damage(e)
                for i in members:
                    ok[i][0].future.set_exception(e)
                continue
            at = 0
            for i in members:
                job = ok[i][0]
                n = len(job.texts)
                job.timings.update(encode=t1 - t0, **timings)
                hits = [[(ids[r], float(x)) for r, x in zip(rr, sc) if r >= 0]
                        for rr, sc in zip(rows[at : at + n], scores[at : at + n])]
                at += n
                for stage in STAGES:
                    if stage in job.timings:
                        self.metrics.observe("adaretrieve_stage_seconds", job.timings[stage], {"stage": stage})
                self.metrics.inc("adaretrieve_queries_total", value=n)
                job.future.set_result(hits)

    # -- reload -----------------------------------------------------------------------------------

    def _note_generation(self) -> None:
        r = self._state.reader
        self.metrics.set("adaretrieve_index_docs", r.n_docs)
        self.metrics.set("adaretrieve_index_info", 1, {"generation": r.generation or "none"}, clear=True)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.reload_every:
            return
        self._last_check = now
        self.reload()

    def reload(self) -> bool:
        """Re-open the index if its generation moved on; True when it did. Keeps the encoder when it
        makes the new generation's query vectors too (no field of ``spec.QUERY_FIELDS`` differs), else
        loads the new generation's. A generation that fails to open is logged and the old one stays in service."""
        from adaretrieve.retriever import load_index_encoder
        from adaretrieve.search import IndexReader

        old = self._state
        try:
            if not old.reader.changed():
                return False
            reader = IndexReader(self.index_dir).open_all()
            same = not reader.manifest.vector_spec.differs(old.encoder.spec(), QUERY_FIELDS)
            enc = old.encoder if same else load_index_encoder(reader, self.model, self.device, backend=self.backend,
                                                               threads=self.threads)
        except Exception as e:  # a damaged or half-removed index: keep serving the old generation
            log.warning("index %s changed but could not be re-opened (%s); still serving generation %s",
                        self.index_dir, e, old.reader.generation)
            self.metrics.inc("adaretrieve_errors_total", {"endpoint": "reload", "reason": type(e).__name__})
            return False
        self._state = _Loaded(reader, enc)
        self._damage = None
        self.metrics.inc("adaretrieve_index_reloads_total")
        self._note_generation()
        log.info("index %s: now serving generation %s", self.index_dir, reader.generation)
        return True
