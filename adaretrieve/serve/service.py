"""The search service behind `adaretrieve serve`, with no HTTP in it: an index and its query encoder
loaded once, and a micro-batcher that runs the queries of concurrent requests through shared encoder passes.

    service = SearchService("indexes/scifact", max_batch=32, max_wait_ms=2)
    service.start()
    job = service.submit(["do statins reduce cancer risk?"], service.plan(shortlist="2x64", k=200))
    job.result()   # [[(doc_id, score), ...]] best first, one list per query

Requests queue up while the encoder is busy; the batcher thread takes every waiting request up to
``max_batch`` queries (waiting up to ``max_wait_ms`` for the batch to fill) and runs the encoder
layer by layer as far as each text needs (``_Ladder``): every text of the batch runs to the shallowest
depth any request needs, the requests of that depth are searched (those with the same configuration
as one batch) and answered, and only the texts that need more resume from where they stopped, so a
text never runs a layer twice and a shallow request never waits for a deep one's layers. (The onnx
backends resume too, from segment graphs: see ``Encoder.resume``.)
``max_batch=1`` turns batching off. A request's answer equals what ``Retriever.search`` gives for it
alone, up to float rounding from padding a batch (about 1e-6 on a score).

With a stop rule (``adaptive``, from `adaretrieve calibrate`; `serve --adaptive`), the rule's plan is
the default plan and is answered by the cascade (``search.cascade``): after each stage the queries
the rule trusts are answered, before the others resume their encoding. A request may send
``adaptive=False`` to run that plan at full depth; a request for any other plan runs it as without a
rule (``request``). Its answers equal `search --adaptive`, to the same float rounding.

The index is re-opened between batches when its ``CURRENT`` generation moved on (checked at most
every ``reload_every`` seconds); a request then runs entirely on the old or entirely on the new one.
A stop rule is fitted on one generation: after a reload to another it is not applied (its plan is
answered at full depth, /health and every such response say why) until the rule file is calibrated
again for the generation served, which is then picked up between batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from adaretrieve.errors import AdaError, IndexDamaged
from adaretrieve.search.plan import DEFAULT, FunnelPlan, check_plan_sizes, resolve_described, resolve_plan
from adaretrieve.serve.metrics import BATCH_BUCKETS, LAYER_BUCKETS, Metrics
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
    m.histogram("adaretrieve_batch_queries", "Query texts per batch: the requests that share its encoder passes (a "
                "request of more than max-batch texts is a batch of its own, encoded max-batch at a time).", BATCH_BUCKETS)
    m.histogram("adaretrieve_query_layers", "Encoder layers run per query text; adaptive=\"true\": answered by the "
                "cascade (as deep as the stop rule let it go), \"false\": a fixed plan's depth.", LAYER_BUCKETS)
    m.counter("adaretrieve_adaptive_queries_total", "Query texts that asked for the cascade (serve --adaptive), by the "
              "stage they were answered at (0 = the shortlist) and whether the rule was applied (rule=\"active\") or "
              "did not fit the generation served (rule=\"stale\": answered at the last stage, full depth).")
    m.gauge("adaretrieve_adaptive_active", "1 while the stop rule of serve --adaptive fits the index generation served, "
            "0 while it does not (its plan is then answered at full depth).")
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
    adaptive: bool = False  # asks for the stop rule's cascade
    per_query: dict | None = None  # adaptive jobs: {"active", "exit_stage": [...], "layers": [...], "reason"?}

    def result(self, timeout: float | None = None) -> list[list[tuple[str, float]]]:
        return self.future.result(timeout)


class _Loaded:
    """One generation of the index, its encoder and the searchers built on it, swapped whole on reload."""

    def __init__(self, reader, encoder):
        from adaretrieve.search import SearcherCache

        self.reader, self.encoder = reader, encoder
        self.searchers = SearcherCache(reader)  # a derived shortlist is built once, not once per racing request
        self.adaptive: AdaptiveRule | None = None  # the stop rule as it stands for this generation

    def searcher(self, plan: FunnelPlan):
        return self.searchers.get(plan)


@dataclass(frozen=True)
class AdaptiveRule:
    """A stop rule file as served on one index generation: ``rule`` is None when the file does not fit
    this generation (``problem`` says why, and requests for its plan are answered at full depth)."""

    path: str
    described: dict | None  # the plan the rule was fitted for (``FunnelPlan.describe()``)
    plan: FunnelPlan | None  # that plan on this generation; None when it cannot be searched here
    rule: object | None  # the StopRule; None: stale
    problem: str | None
    stamp: tuple | None  # (mtime_ns, size) of the file when it was read

    @property
    def active(self) -> bool:
        return self.rule is not None

    def takes(self, plan: FunnelPlan) -> bool:
        """Whether ``plan`` is the rule's plan (its top may differ: only the last stage keeps more or fewer)."""
        return self.plan is not None and plan.with_top(self.plan.top) == self.plan


def open_rule(path, reader, backend: str = "torch"):
    """(StopRule, its described plan, that plan on ``reader``'s index) of the rule file ``path``;
    AdaError in one line when it does not fit (another model or generation, not a rule file) or
    when the backend cannot resume an encoding."""
    from adaretrieve.search.calibrate import load_stop_rule
    from adaretrieve.search.cascade import check_cascade

    check_adaptive_backend(backend)
    rule, described = load_stop_rule(path, reader.manifest)
    plan = resolve_described(reader.manifest, described)
    check_cascade(plan)
    return rule, described, plan


def check_adaptive_backend(backend: str) -> None:
    if backend not in ("torch", "onnx", "onnx-int8"):
        raise AdaError(f"--adaptive resumes each query's encoding layer by layer, which needs --backend torch "
                       f"(not {backend})")


def _stamp(path) -> tuple | None:
    import os

    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


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
        adaptive: a stop rule file from `adaretrieve calibrate` for this index (see the module
            docstring); AdaError in one line now when it does not fit it. Torch backend only.
    """

    def __init__(self, index, model: str | None = None, device: str | None = None, max_batch: int = 32,
                 max_wait_ms: float = 2.0, reload_every: float = 1.0, threads: int | None = None,
                 metrics: Metrics | None = None, max_queue: int = 1024, backend: str = "torch",
                 adaptive: str | None = None):
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
        self.adaptive_path = None if adaptive is None else str(adaptive)
        if adaptive is not None:
            check_adaptive_backend(backend)  # one line before the model loads
        reader = IndexReader(index).open_all()  # a bad file is one line now, not a 500 per request later
        self._state = _Loaded(reader, load_index_encoder(reader, model, device, backend=backend, threads=threads))
        if adaptive is not None:
            self._state.adaptive = self._read_rule(self._state, at_start=True)
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
        """The plan a request that names nothing gets, as JSON: the stop rule's plan with ``adaptive``,
        else the index's defaults (``resolve_plan``)."""
        ad = self._state.adaptive
        if ad is not None and ad.plan is not None:
            return ad.plan.describe()
        return resolve_plan(self.reader.manifest).describe()

    def adaptive_status(self) -> dict | None:
        """What /health says of the stop rule (None without one): its file, whether it is applied, its plan."""
        ad = self._state.adaptive
        if ad is None:
            return None
        return {"rule": ad.path, "active": ad.active, "plan": ad.plan.name if ad.plan else None,
                **({"problem": ad.problem} if ad.problem else {})}

    def plan(self, shortlist: str | None = None, k: int | None = None, then: Sequence[tuple[str, int]] = (),
             rerank=DEFAULT, top: int | None = None, nprobe: int | None = None,
             ef_search: int | None = None) -> FunnelPlan:
        """The checked plan these arguments resolve to (``resolve_plan``: ``rerank`` omitted is the
        index's rerank size, ``None`` or ``"none"`` single stage; with a stop rule, naming none of
        shortlist, k, then, rerank is the rule's plan); AdaError naming the bad value otherwise.
        Opens what the plan searches (a derived shortlist is built here, so the HTTP layer calls
        this off its event loop)."""
        return self.request(False, shortlist, k, then, rerank, top, nprobe, ef_search)[0]

    def request(self, adaptive: bool | None = None, shortlist: str | None = None, k: int | None = None,
                then: Sequence[tuple[str, int]] = (), rerank=DEFAULT, top: int | None = None,
                nprobe: int | None = None, ef_search: int | None = None) -> tuple[FunnelPlan, bool]:
        """(plan, whether the cascade answers it) for a request. With a stop rule, a request naming none
        of shortlist, k, then, rerank gets the rule's plan (top, nprobe, ef_search may be given); the
        rule's plan, however spelled and whatever its top, is answered by the cascade unless
        ``adaptive`` is False. ``adaptive=True`` for another plan, or on a service without a rule, is
        an AdaError. Whether the rule still fits is decided by the batch that runs it."""
        state = self._state
        ad = state.adaptive
        own = shortlist is not None or k is not None or bool(then) or rerank is not DEFAULT
        if ad is not None and ad.plan is not None and not own:
            plan = resolve_described(state.reader.manifest, ad.described, top, nprobe, ef_search)
        else:
            plan = resolve_plan(state.reader.manifest, shortlist, k, then, rerank, top, nprobe, ef_search)
        check_plan_sizes(state.encoder, plan)
        try:
            state.searcher(plan)  # sizes the index cannot serve, nprobe on a flat index: AdaError now
        except IndexDamaged as e:
            self._note_damage(e)
            raise
        if ad is None:
            if adaptive:
                raise AdaError("adaptive: this server has no stop rule; start it with `adaretrieve serve --adaptive "
                               "RULE.json` (a rule from `adaretrieve calibrate`)")
            return plan, False
        takes = ad.takes(plan)
        if adaptive and not takes:
            if ad.plan is None:
                raise AdaError(f"adaptive: {ad.problem}")
            raise AdaError(f"adaptive: the stop rule was fitted for {ad.plan.name}; this request asks for {plan.name} "
                           "(name no plan field but top, or send adaptive false)")
        return plan, takes if adaptive is None else bool(adaptive)

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

    def submit(self, texts: Sequence[str], plan: FunnelPlan, adaptive: bool = False) -> Job:
        """Queue ``texts`` for search under ``plan``; the Job's future gets ``[[(doc_id, score), ...]]``.
        ``adaptive``: answer with the stop rule's cascade (``request`` says when a plan may); the Job's
        ``per_query`` then says each text's exit stage and layers, and whether the rule was applied."""
        if self._thread is None:
            raise RuntimeError("SearchService.start() was not called")
        job = Job(list(texts), plan, adaptive=bool(adaptive))
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

    def search(self, texts: Sequence[str], adaptive: bool | None = None, **plan) -> list[list[tuple[str, float]]]:
        """Blocking convenience: request, submit, wait."""
        p, ad = self.request(adaptive, **plan)
        return self.submit(texts, p, adaptive=ad).result()

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
        """Search a batch, running the encoder layer by layer as its requests need (``_Batch``)."""
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
        if ok:
            self.metrics.observe("adaretrieve_batch_queries", sum(len(j.texts) for j, _ in ok))
            _Batch(self, state, ok).run()

    def _failed(self, jobs: Sequence[Job], e: AdaError) -> None:
        if isinstance(e, IndexDamaged):
            self._note_damage(e)
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(e)

    def _answer(self, job: Job, hits: list, timings: dict, exit_stage: Sequence[int], layers: Sequence[int],
                cascaded: bool, reason: str | None = None) -> None:
        """Resolve ``job``'s future, after its timings, per-query info and metrics are in place."""
        job.timings.update(timings)
        for stage in STAGES:
            if stage in job.timings:
                self.metrics.observe("adaretrieve_stage_seconds", job.timings[stage], {"stage": stage})
        self.metrics.inc("adaretrieve_queries_total", value=len(job.texts))
        for n_layers, count in zip(*np.unique(np.asarray(layers), return_counts=True)):
            self.metrics.observe("adaretrieve_query_layers", int(n_layers), {"adaptive": str(cascaded).lower()},
                                 count=int(count))
        if job.adaptive:
            for stage, count in zip(*np.unique(np.asarray(exit_stage), return_counts=True)):
                self.metrics.inc("adaretrieve_adaptive_queries_total",
                                 {"stage": str(int(stage)), "rule": "active" if cascaded else "stale"}, float(count))
            job.per_query = {"active": cascaded, "exit_stage": [int(x) for x in exit_stage],
                             "layers": [int(x) for x in layers], **({"reason": reason} if reason else {})}
        job.future.set_result(hits)

    # -- reload -----------------------------------------------------------------------------------

    def _note_generation(self) -> None:
        r = self._state.reader
        self.metrics.set("adaretrieve_index_docs", r.n_docs)
        self.metrics.set("adaretrieve_index_info", 1, {"generation": r.generation or "none"}, clear=True)
        if self._state.adaptive is not None:
            self.metrics.set("adaretrieve_adaptive_active", 1 if self._state.adaptive.active else 0)

    def _read_rule(self, state: _Loaded, at_start: bool = False, described: dict | None = None) -> AdaptiveRule:
        """The stop rule file as it stands for ``state``'s generation. At start a rule that does not fit
        is an AdaError; later it is kept stale (``described``: the plan it was fitted for, from the
        file read before) and its plan is answered at full depth."""
        path, stamp = self.adaptive_path, _stamp(self.adaptive_path)
        try:
            rule, described, plan = open_rule(path, state.reader, self.backend)
            check_plan_sizes(state.encoder, plan)
            state.searcher(plan)
            return AdaptiveRule(path, described, plan, rule, None, stamp)
        except AdaError as e:
            if at_start:
                raise
            problem = (" ".join(str(e).split()) + "; until then its plan is answered at full depth (no early exit)")
        plan = None
        if described is not None:
            try:
                plan = resolve_described(state.reader.manifest, described)
                check_plan_sizes(state.encoder, plan)
                state.searcher(plan)
            except AdaError as e:
                plan, problem = None, f"{problem}; its plan cannot be searched on this generation ({e})"
        return AdaptiveRule(path, described, plan, None, problem, stamp)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.reload_every:
            return
        self._last_check = now
        if not self.reload():
            self._recheck_rule()

    def _recheck_rule(self) -> None:
        """A stale rule whose file changed is read again: calibrated for this generation, it applies from now."""
        state = self._state
        ad = state.adaptive
        if ad is None or ad.active or _stamp(ad.path) == ad.stamp:
            return
        state.adaptive = self._read_rule(state, described=ad.described)
        self._note_generation()
        if state.adaptive.active:
            log.info("stop rule %s fits generation %s: answering %s with the cascade again", ad.path,
                     state.reader.generation, state.adaptive.plan.name)

    def reload(self) -> bool:
        """Re-open the index if its generation moved on; True when it did. Keeps the encoder when it
        makes the new generation's query vectors too (no field of ``spec.QUERY_FIELDS`` differs), else
        loads the new generation's. A generation that fails to open is logged and the old one stays in
        service. A stop rule is read again for the new generation; one fitted on another is kept stale."""
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
            new = _Loaded(reader, enc)
            if old.adaptive is not None:
                new.adaptive = self._read_rule(new, described=old.adaptive.described)
        except Exception as e:  # a damaged or half-removed index: keep serving the old generation
            log.warning("index %s changed but could not be re-opened (%s); still serving generation %s",
                        self.index_dir, e, old.reader.generation)
            self.metrics.inc("adaretrieve_errors_total", {"endpoint": "reload", "reason": type(e).__name__})
            return False
        self._state = new
        self._damage = None
        self.metrics.inc("adaretrieve_index_reloads_total")
        self._note_generation()
        log.info("index %s: now serving generation %s", self.index_dir, reader.generation)
        if new.adaptive is not None and not new.adaptive.active:
            log.warning("stop rule %s: %s", new.adaptive.path, new.adaptive.problem)
        return True


class _Ladder:
    """The query encoding of one batch, run layer by layer as its requests need. Torch: one
    ``EncodeState`` for the batch; each call that needs a deeper layer resumes only the texts still
    needed that deep (``carry``), so no text runs a layer twice. The onnx backends resume as torch
    does (segment graphs)."""

    def __init__(self, encoder, texts: list[str], batch_size: int, resume: bool = True):
        self.encoder = encoder
        self.texts = encoder.queries(texts)  # the index's query prefix
        self.batch_size = batch_size
        self.resumable = resume  # False: nothing to resume (one depth); torch and onnx states both resume
        self.state = None
        self.depth = 0
        self.seconds = 0.0  # encoder time so far

    def vectors(self, rows: np.ndarray, sizes: Sequence, carry: np.ndarray) -> dict:
        """``{size: [len(rows), dim]}`` for the texts at ``rows`` (positions in the batch). When
        ``sizes`` reach deeper than the layers run so far, the texts at ``carry`` (every one still
        needed at that depth or deeper) run the missing layers and the others are dropped. The
        first call must be at the shallowest depth of the batch: it runs every text."""
        t0 = time.perf_counter()
        enc, depth = self.encoder, max(s.layer for s in sizes)
        if not self.resumable:
            out = enc.encode([self.texts[i] for i in rows], sizes, batch_size=self.batch_size)
        elif self.state is None:
            vecs, self.state = enc.encode_to(self.texts, sizes, batch_size=self.batch_size)
            out = {s: v[rows] for s, v in vecs.items()}
        elif depth > self.state.depth:
            keep = np.union1d(carry, rows)
            vecs, self.state = enc.resume(self.state, sizes, rows=keep)
            at = np.searchsorted(keep, rows)
            out = {s: v[at] for s, v in vecs.items()}
        else:
            out, _ = enc.resume(self.state, sizes, rows=rows)  # no layer runs: the pooled states are held
        self.seconds += time.perf_counter() - t0
        return out


class _Batch:
    """One batch of requests (``SearchService._run``). Requests of fixed plans are grouped by depth and
    answered shallowest first, each group as soon as its layers have run; requests for the stop rule's
    plan run as one cascade (at the largest top among them: the others take a prefix), whose
    ``encode_more`` first answers the fixed groups on the way to the depth it asks for, and whose
    ``on_exit`` answers each request once all its texts have stopped, before the rest go deeper."""

    def __init__(self, service: SearchService, state: _Loaded, ok: list[tuple[Job, object]]):
        self.service, self.state = service, state
        self.ad = state.adaptive
        texts: list[str] = []
        self.span: dict[int, np.ndarray] = {}  # id(job) -> positions of its texts in the batch
        for j, _ in ok:
            self.span[id(j)] = np.arange(len(texts), len(texts) + len(j.texts))
            texts += j.texts
        self.cascading: list[Job] = []
        self.fixed: dict[int, dict[FunnelPlan, list[tuple[Job, object]]]] = {}  # depth -> plan -> requests
        for j, srch in ok:
            if j.adaptive and self.ad is not None and self.ad.active and self.ad.takes(j.plan):
                self.cascading.append(j)
            else:
                self.fixed.setdefault(j.plan.layers, {}).setdefault(j.plan, []).append((j, srch))
        # one depth and no cascade: a plain pass, holding no state to resume from
        self.ladder = _Ladder(state.encoder, texts, service.max_batch, resume=bool(self.cascading) or len(self.fixed) > 1)
        self.live = np.zeros(0, dtype=np.int64)  # positions of the cascade's texts still going deeper

    def run(self) -> None:
        if self.cascading:
            self._cascade()
        self._climb(max(self.fixed, default=0))

    def _carry(self, depth: int) -> np.ndarray:
        """Positions of the texts still needed at ``depth`` or deeper."""
        parts = [self.span[id(j)] for d, groups in self.fixed.items() if d >= depth
                 for members in groups.values() for j, _ in members]
        return np.unique(np.concatenate([self.live, *parts]))

    def _climb(self, target: int) -> None:
        """Answer the fixed groups of depth <= ``target``, shallowest first, each depth's from one pass."""
        for depth in sorted(d for d in self.fixed if d <= target):
            groups = self.fixed[depth]
            rows = np.concatenate([self.span[id(j)] for members in groups.values() for j, _ in members])
            sizes = list(dict.fromkeys(s for plan in groups for s in plan.sizes()))
            vecs = self.ladder.vectors(rows, sizes, self._carry(depth))
            where = {int(r): i for i, r in enumerate(rows)}
            del self.fixed[depth]
            for plan, members in groups.items():
                self._search_fixed(plan, members, vecs, where)

    def _search_fixed(self, plan: FunnelPlan, members: list, vecs: dict, where: dict) -> None:
        idx = np.array([where[int(r)] for j, _ in members for r in self.span[id(j)]])
        timings: dict = {}
        try:
            scores, rows = members[0][1].search({s: vecs[s][idx] for s in plan.sizes()}, timings=timings)
        except AdaError as e:
            self.service._failed([j for j, _ in members], e)
            return
        ids, at = self.state.reader.docids, 0
        reason = None
        if any(j.adaptive for j, _ in members):
            reason = (self.ad.problem if self.ad is not None and self.ad.problem else
                      "the stop rule served now was fitted for another plan; answered at full depth")
        for j, _ in members:
            n = len(j.texts)
            hits = [[(ids[r], float(x)) for r, x in zip(rr, sc) if r >= 0]
                    for rr, sc in zip(rows[at : at + n], scores[at : at + n])]
            at += n
            self.service._answer(j, hits, {"encode": self.ladder.seconds, **timings}, [plan.stages - 1] * n,
                                 [plan.layers] * n, False, reason)

    def _cascade(self) -> None:
        from adaretrieve.search.cascade import cascade, stage_sizes

        jobs = self.cascading
        plan = self.ad.plan.with_top(max(j.plan.top for j in jobs))
        try:
            srch = self.state.searcher(plan)
        except AdaError as e:
            self.service._failed(jobs, e)
            return
        stage_layer = [s.layer for s, _ in stage_sizes(plan)]
        pos = np.concatenate([self.span[id(j)] for j in jobs])  # cascade query i is the batch's text pos[i]
        owner = [(ji, o) for ji, j in enumerate(jobs) for o in range(len(j.texts))]
        hits: list[list] = [[None] * len(j.texts) for j in jobs]
        exits = [[0] * len(j.texts) for j in jobs]
        left = [len(j.texts) for j in jobs]
        ids = self.state.reader.docids
        timings: dict = {}

        def encode_more(active, sizes):
            self.live = pos[active]
            target = max(s.layer for s in sizes)
            self._climb(target)  # fixed requests on the way are answered before the deeper layers run
            return self.ladder.vectors(pos[active], sizes, self._carry(target))

        def on_exit(stage, positions, scores, rows):
            for p, sc, rr in zip(positions, scores, rows):
                ji, o = owner[p]
                hits[ji][o] = [(ids[r], float(x)) for r, x in zip(rr, sc) if r >= 0][: jobs[ji].plan.top]
                exits[ji][o] = stage
                left[ji] -= 1
                if left[ji] == 0:
                    t = {"encode": self.ladder.seconds, **{k: v for k, v in timings.items() if k != "encode_more"}}
                    self.service._answer(jobs[ji], hits[ji], t, exits[ji], [stage_layer[e] for e in exits[ji]], True)

        self.live = pos
        self._climb(plan.shortlist.layer)  # shallower fixed requests first
        first_sizes = [s for s in plan.sizes() if s.layer == plan.shortlist.layer]
        try:
            first = self.ladder.vectors(pos, first_sizes, self._carry(plan.shortlist.layer))
            cascade(plan, self.ad.rule, srch.index, srch.sources, self.state.reader.normalize, first, encode_more,
                    srch.params, timings, deep=srch.deep, on_exit=on_exit)
        except AdaError as e:  # a file fault mid-cascade: the requests not yet answered fail, the rest go on
            self.service._failed(jobs, e)
        finally:
            self.live = np.zeros(0, dtype=np.int64)
