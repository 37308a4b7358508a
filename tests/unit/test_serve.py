"""`adaretrieve serve` in process (no network): answers equal Retriever.search, concurrent requests at
different sizes share encoder passes and each gets its own sequential answer, every bad input is a
4xx with one line, /metrics is valid Prometheus text, a rebuilt index is picked up."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import make_corpus, module_or_skip

module_or_skip("fastapi", "pip install 'adaretrieve[serve]' (fastapi, uvicorn, httpx)")
module_or_skip("httpx", "pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402

from adaretrieve.serve.app import create_app  # noqa: E402
from adaretrieve.serve.service import SearchService  # noqa: E402

SIZES = dict(shortlist=["1x8", "2x16"], rerank="4x32")


def build(model, corpus, out, overwrite=False):
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    build_index(corpus, Encoder(model, device="cpu"), out, progress=False, overwrite=overwrite, **SIZES)
    return out


@pytest.fixture(scope="module")
def index(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    return build(tiny_model, make_corpus(d / "corpus.jsonl", n=60), d / "ix")


@pytest.fixture(scope="module")
def retriever(index):
    from adaretrieve import Retriever

    return Retriever(index, device="cpu")


@pytest.fixture(scope="module")
def client(index):
    service = SearchService(index, device="cpu", max_batch=64, max_wait_ms=30)
    with TestClient(create_app(service)) as c:
        yield c


def same_hits(got: list[dict], want: list[tuple[str, float]], atol: float = 1e-5) -> None:
    """Equal rankings: scores equal to float rounding (a batch pads differently than one query alone),
    ids equal wherever the scores are not tied within that rounding."""
    assert len(got) == len(want)
    gs = np.array([h["score"] for h in got])
    ws = np.array([s for _, s in want])
    np.testing.assert_allclose(gs, ws, atol=atol)
    for i, (h, (d, _)) in enumerate(zip(got, want)):
        tied = any(abs(ws[i] - ws[j]) < atol for j in (i - 1, i + 1) if 0 <= j < len(ws))
        assert tied or h["id"] == d, (i, h, d)


TEXTS = ["the cell gene", "cancer risk in patients", "drug dose", "immune therapy of virus infection", "brain heart"]


def test_search_equals_the_library(client, retriever):
    one = client.post("/search", json={"queries": TEXTS[0]})
    assert one.status_code == 200, one.text
    body = one.json()
    # omitted settings resolve as everywhere else: top is all the last stage ranks (60 documents here)
    assert body["config"] == {"shortlist": "1x8", "k": 200, "then": [], "rerank": "4x32", "top": 200, "nprobe": None,
                              "ef_search": None, "deep_k": None, "depth": 200}
    assert len(body["results"]) == 1 and len(body["results"][0]) == 60
    same_hits(body["results"][0], retriever.search(TEXTS[:1])[0])
    assert set(body["timings_ms"]) >= {"queue", "encode", "shortlist", "gather", "rerank", "total"}

    many = client.post("/search", json={"queries": TEXTS, "shortlist": "1x8", "k": 20, "then": [{"size": "2x16", "k": 8}],
                                        "rerank": "4x32", "top": 5}).json()
    want = retriever.search(TEXTS, shortlist="1x8", k=20, then=[("2x16", 8)], rerank="4x32", top=5)
    for g, w in zip(many["results"], want, strict=True):
        same_hits(g, w)
    single = client.post("/search", json={"queries": TEXTS, "shortlist": "2x8", "rerank": "none", "top": 7}).json()
    for g, w in zip(single["results"], retriever.search(TEXTS, shortlist="2x8", rerank=None, top=7), strict=True):
        assert len(g) == 7
        same_hits(g, w)


CONFIGS = [
    {"shortlist": "1x8", "rerank": "none", "top": 5},
    {"shortlist": "2x16", "rerank": "none", "top": 8},
    {"shortlist": "1x8", "k": 30, "rerank": "4x32", "top": 10},
    {"shortlist": "2x8", "k": 20, "rerank": "4x16", "top": 6},
    {"shortlist": "1x4", "k": 40, "then": [{"size": "2x16", "k": 12}], "rerank": "4x32", "top": 4},
]


def _library_answer(retriever, texts, cfg):
    rr = cfg.get("rerank")
    return retriever.search(texts, shortlist=cfg["shortlist"], k=cfg.get("k", 200),
                            then=[(s["size"], s["k"]) for s in cfg.get("then", [])],
                            rerank=None if rr == "none" else rr, top=cfg["top"], batch_size=1)


@pytest.mark.parametrize("max_batch", [64, 1])
def test_concurrent_requests_at_different_sizes_each_get_their_sequential_answer(index, retriever, max_batch):
    """Requests at depths 1, 2 and 4 arrive at once: with batching they share encoder passes (the batch
    histogram shows passes of several texts), without it each runs alone; either way every answer
    equals the one the library gives for that request alone."""
    import httpx

    service = SearchService(index, device="cpu", max_batch=max_batch, max_wait_ms=50)
    app = create_app(service)
    jobs = [([TEXTS[i % 5], TEXTS[(i + 2) % 5]][: 1 + i % 2], CONFIGS[i % len(CONFIGS)]) for i in range(30)]
    want = [_library_answer(retriever, t, c) for t, c in jobs]

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return await asyncio.gather(*(c.post("/search", json={"queries": t, **cfg}) for t, cfg in jobs))

    service.start()
    try:
        responses = asyncio.run(go())
    finally:
        service.stop()
    for r, w in zip(responses, want):
        assert r.status_code == 200, r.text
        for g, ww in zip(r.json()["results"], w, strict=True):
            same_hits(g, ww)
    batches = service.metrics.value("adaretrieve_batch_queries")
    if max_batch == 1:
        assert batches == len(jobs)  # one request at a time
    else:
        assert batches < len(jobs) / 2, batches  # shared passes, not one per request


def test_threads_through_one_client(client, retriever):
    """The same through real threads and the synchronous client (each request its own thread)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(TEXTS[i % 5], CONFIGS[i % len(CONFIGS)]) for i in range(15)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda j: client.post("/search", json={"queries": j[0], **j[1]}), jobs))
    for r, (t, cfg) in zip(got, jobs):
        assert r.status_code == 200, r.text
        same_hits(r.json()["results"][0], _library_answer(retriever, [t], cfg)[0])


BAD = [
    ("malformed JSON", b'{"queries": ["a"', 400, "not valid JSON"),
    ("not UTF-8", b'{"queries": "\xff"}', 400, "not valid JSON (it must be UTF-8 text)"),
    ("k a boolean", {"queries": "cell", "k": True}, 422, "k: Input should be a valid integer"),
    ("k a string", {"queries": "cell", "k": "5"}, 422, "k: Input should be a valid integer"),
    ("not an object", b'["a"]', 422, "JSON object"),
    ("no body", b"", 422, "body is missing"),
    ("JSON sent as a form", ("queries=cell", "application/x-www-form-urlencoded"), 422, "content-type: application/json"),
    ("empty query", {"queries": ""}, 422, "query 0 is empty"),
    ("blank query in a list", {"queries": ["the cell", "  \t"]}, 422, "query 1 is empty"),
    ("a query of NULs", {"queries": ["\u0000\u0000"]}, 422, "query 0 is empty (only invisible or control characters)"),
    ("a query of zero-width spaces", {"queries": ["the cell", "\u200b\u200b"]}, 422, "query 1 is empty"),
    ("no queries", {"queries": []}, 422, "0 queries"),
    ("1 MB query", {"queries": "cell " * 200_000}, 422, "1000000 characters"),
    ("a lone surrogate", b'{"queries": "cell \\ud800"}', 422, "query 0 is not valid Unicode"),
    ("queries of the wrong type", {"queries": 5}, 422, "string or a list of strings"),
    ("unknown size (deeper than the model)", {"queries": "cell", "shortlist": "9x8"}, 422, "layer 9 is outside 1..4"),
    ("size not in the index", {"queries": "cell", "shortlist": "3x16"}, 422, "not in index"),
    ("not a size", {"queries": "cell", "rerank": "big"}, 422, "not of the form"),
    ("k < 1", {"queries": "cell", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("top > 10000", {"queries": "cell", "top": 10001}, 422, "top: Input should be less than or equal to 10000"),
    ("a funnel that widens", {"queries": "cell", "k": 5, "then": [{"size": "2x16", "k": 9}]}, 422, "a funnel narrows"),
    ("nprobe on a flat index", {"queries": "cell", "nprobe": 4}, 422, "nprobe applies to IVF"),
    ("unknown field", {"queries": "cell", "topk": 3}, 422, "unknown field 'topk'"),
    # trial 3: h-size-empty, h-deep, h-string-body
    ("an empty shortlist size", {"queries": "cell", "shortlist": ""}, 422, "size '' is not of the form LAYERSxDIMS"),
    ("a blank rerank size", {"queries": "cell", "rerank": " "}, 422, "size ' ' is not of the form LAYERSxDIMS"),
    ("JSON nested 200000 deep", b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    ("a JSON string body", b'"x"', 422, 'request body must be a JSON object such as {"queries": ["text"]}'),
    ("a JSON number body", b"5", 422, "request body must be a JSON object"),
]


@pytest.mark.parametrize("body,status,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_with_one_line(client, body, status, words):
    if isinstance(body, (bytes, tuple)):
        content, ctype = body if isinstance(body, tuple) else (body, "application/json")
        r = client.post("/search", content=content, headers={"content-type": ctype})
    else:
        r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert "\n" not in msg and len(msg) < 600 and words in msg, msg


def test_body_over_the_limit_is_413(index):
    service = SearchService(index, device="cpu")
    with TestClient(create_app(service, max_body=1000)) as c:
        r = c.post("/search", json={"queries": "cell " * 300})
        assert r.status_code == 413 and "limit is 1000" in r.json()["error"]

        def chunks():  # no content-length: counted as it arrives
            for _ in range(10):
                yield b" " * 200

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert c.get("/nowhere").status_code == 404 and "error" in c.get("/nowhere").json()


def test_health(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["n_docs"] == 60 and h["generation"].startswith("gen-")
    assert h["shortlist_sizes"] == ["1x8", "2x16"] and h["rerank_size"] == "4x32"
    assert h["defaults"] == {"shortlist": "1x8", "k": 200, "then": [], "rerank": "4x32", "top": 200, "nprobe": None,
                             "ef_search": None, "deep_k": None, "depth": 200}


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict, float]]]:
    """A strict reader of the text format: every line a HELP/TYPE comment or a sample of a declared metric."""
    assert text.endswith("\n")
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, line
        name, value = m.group(1), float(m.group(4))
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert base in types, line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.setdefault(name, []).append((labels, value))
    for name, kind in types.items():  # histogram buckets are cumulative and end at +Inf == count
        if kind != "histogram":
            continue
        counts = {tuple(sorted(lb.items())): v for lb, v in samples.get(f"{name}_count", [])}
        for key, n in counts.items():
            b = [(lb["le"], v) for lb, v in samples[f"{name}_bucket"]
                 if tuple(sorted((k, x) for k, x in lb.items() if k != "le")) == key]
            values = [v for _, v in b]
            assert values == sorted(values) and b[-1] == ("+Inf", n), (name, key, b)
    return samples


def test_metrics_are_prometheus_text(client):
    client.post("/search", json={"queries": ["the cell", "gene"]})
    client.post("/search", json={"queries": ""})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = parse_prometheus(r.text)
    reqs = {(lb["endpoint"], lb["status"]): v for lb, v in s["adaretrieve_requests_total"]}
    assert reqs[("/search", "200")] >= 1 and reqs[("/search", "422")] >= 1
    errors = {(lb["endpoint"], lb["reason"]): v for lb, v in s["adaretrieve_errors_total"]}
    assert errors[("/search", "invalid")] >= 1
    stages = {lb["stage"] for lb, _ in s["adaretrieve_stage_seconds_count"]}
    assert stages == {"queue", "encode", "shortlist", "gather", "rerank"}
    assert s["adaretrieve_index_docs"] == [({}, 60.0)]
    assert s["adaretrieve_queries_total"][0][1] >= 2


def test_openapi_schema_has_examples_that_work(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/search"]["post"]
    assert {"200", "400", "413", "422"} <= set(op["responses"])
    req = schema["components"]["schemas"]["SearchRequest"]
    assert req["examples"]
    sizes = {"2x64": "1x8", "2x32": "1x4", "6x384": "4x32", "4x128": "2x16"}  # the examples name MiniLM sizes
    for ex in req["examples"]:
        ex = {k: ([{"size": sizes[s["size"]], "k": min(s["k"], 100)} for s in v] if k == "then" else sizes.get(v, v) if isinstance(v, str) else v)
              for k, v in ex.items()}
        r = client.post("/search", json=ex)
        assert r.status_code == 200, (ex, r.text)


def test_a_rebuilt_index_is_served_from_the_next_batch(tiny_model, tmp_path):
    ix = build(tiny_model, make_corpus(tmp_path / "a.jsonl", n=30), tmp_path / "ix")
    service = SearchService(ix, device="cpu", reload_every=0)
    with TestClient(create_app(service)) as c:
        first = c.post("/search", json={"queries": "cell", "rerank": "none", "top": 100}).json()
        assert len(first["results"][0]) == 30
        build(tiny_model, make_corpus(tmp_path / "b.jsonl", n=45, seed=3), ix, overwrite=True)
        second = c.post("/search", json={"queries": "cell", "rerank": "none", "top": 100}).json()
        assert len(second["results"][0]) == 45 and second["generation"] != first["generation"]
        assert c.get("/health").json()["n_docs"] == 45
        assert service.metrics.value("adaretrieve_index_reloads_total") == 1


def test_cli_serve_checks_before_listening(index, tmp_path, monkeypatch):
    """Bad options and a missing index are one `error:` line; good ones reach uvicorn.run with the app."""
    import socket

    import uvicorn

    from adaretrieve.cli.main import app

    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, ["serve", *map(str, args)])

    for args, words in [(("--index", tmp_path / "none"), "does not exist"),
                        (("--index", index, "--max-batch", 0), "--max-batch 0 must be at least 1"),
                        (("--index", index, "--port", 70000), "outside 0..65535"),
                        (("--index", index, "--threads", 0), "--threads 0 must be at least 1"),
                        (("--index", index, "--max-wait-ms", -1), "must be at least 0"),
                        (("--index", index, "--max-queue", 0), "--max-queue 0 must be at least 1")]:
        res = run(*args)
        assert res.exit_code == 2 and res.stderr.startswith("error: ") and words in res.stderr, res.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = run("--index", index, "--port", s.getsockname()[1])
        assert res.exit_code == 2 and "cannot listen on 127.0.0.1" in res.stderr, res.output
    seen = {}
    monkeypatch.delenv("ADARETRIEVE_SERVE", raising=False)  # restored after the test
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    res = run("--index", index, "--port", 0, "--max-batch", 8, "--max-queue", 100, "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 0
    with TestClient(seen["app"]) as c:
        health = c.get("/health").json()
        assert health["max_batch"] == 8 and health["max_queue"] == 100
    res = run("--index", index, "--port", 0, "--workers", 2, "--quiet")
    assert res.exit_code == 0 and seen["app"] == "adaretrieve.serve.app:app_from_env" and seen["workers"] == 2
    assert json.loads(__import__("os").environ["ADARETRIEVE_SERVE"])["index"] == str(index)


def test_serve_applies_the_query_prefix_the_index_recorded(tiny_model, tmp_path):
    from adaretrieve import Retriever
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder

    enc = Encoder(tiny_model, device="cpu", query_prefix="query: ", passage_prefix="passage: ")
    ix = tmp_path / "px"
    build_index(make_corpus(tmp_path / "corpus.jsonl", n=60), enc, ix, progress=False, **SIZES)
    r = Retriever(ix, device="cpu")
    assert r.encoder.query_prefix == "query: "
    with TestClient(create_app(SearchService(ix, device="cpu", max_batch=8, max_wait_ms=5))) as c:
        got = c.post("/search", json={"queries": TEXTS[1], "top": 10}).json()["results"][0]
    same_hits(got, r.search(TEXTS[1:2], top=10)[0])
    plain = Encoder(tiny_model, device="cpu")  # without the prefix the query vector, and so the scores, differ
    s = enc.check_sizes(["4x32"])[0]
    assert not np.allclose(plain.encode([TEXTS[1]], [s])[s], enc.encode_queries([TEXTS[1]], [s])[s], atol=1e-4)


def test_a_full_queue_refuses_at_once_with_503_and_serves_again_once_drained(index):
    """Requests beyond --max-queue waiting query texts are refused at once (503, Retry-After, one
    line) instead of queueing without bound; the waiting ones are all answered; afterwards the
    service takes requests again. A request alone may be longer than the limit."""
    import threading

    from adaretrieve.serve.service import Overloaded

    service = SearchService(index, device="cpu", max_batch=4, max_wait_ms=0, max_queue=6)
    gate = threading.Event()
    real = service._run

    def held(jobs):  # the encoder is busy until the gate opens
        gate.wait(10)
        real(jobs)

    service._run = held
    with TestClient(create_app(service)) as c:
        plan = service.plan()
        first = service.submit(["cell"], plan)  # taken by the batcher, which then waits at the gate
        deadline = __import__("time").monotonic() + 5
        while service.waiting() and __import__("time").monotonic() < deadline:
            pass
        queued = [service.submit(["cell", "gene", "drug"], plan) for _ in range(2)]  # 6 waiting: the limit
        with pytest.raises(Overloaded, match="6 query texts are waiting"):
            service.submit(["virus"], plan)
        r = c.post("/search", json={"queries": "virus"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "\n" not in r.json()["error"] and "--max-queue" in r.json()["error"]
        gate.set()
        assert len(first.result(10)) == 1 and all(len(j.result(10)) == 3 for j in queued)
        assert service.waiting() == 0
        assert c.post("/search", json={"queries": ["a"] * 9}).status_code == 200  # alone, longer than the limit
        assert service.metrics.value("adaretrieve_errors_total", {"endpoint": "/search", "reason": "overloaded"}) == 1
    with pytest.raises(Exception, match="max queue"):
        SearchService(index, device="cpu", max_queue=0)


def test_a_batch_runs_each_layer_once_per_text_and_the_shallow_request_never_runs_deep_layers(index, retriever):
    """A12: a 1-layer request and a 4-layer request share a batch: layer 1 runs once for all 4 texts, the
    shallow request is answered, and only the deep one's 3 texts resume from there through layers 2-4
    (issue 25: before, the deep request ran layer 1 again in a pass of its own). Counted with layer hooks."""
    service = SearchService(index, device="cpu", max_batch=64, max_wait_ms=200)
    calls: list[tuple[int, int]] = []  # (layer, texts in the pass)
    layers = service.encoder.model.encoder.layer
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=n: calls.append((n, a[0].shape[0])))
             for n, layer in enumerate(layers)]
    service.start()
    try:
        shallow = service.submit(TEXTS[:1], service.plan(shortlist="1x8", rerank="none", top=5))
        deep = service.submit(TEXTS[1:4], service.plan(shortlist="1x8", k=20, rerank="4x32", top=5))
        got_shallow, got_deep = shallow.result(30), deep.result(30)
    finally:
        service.stop()
        for h in hooks:
            h.remove()
    assert calls == [(0, 4), (1, 3), (2, 3), (3, 3)]  # layer 1 for the 4 texts, layers 2-4 for the deep one's 3
    same_hits([{"id": d, "score": s} for d, s in got_shallow[0]], retriever.search(TEXTS[:1], shortlist="1x8",
                                                                                  rerank="none", top=5)[0])
    for g, w in zip(got_deep, retriever.search(TEXTS[1:4], shortlist="1x8", k=20, rerank="4x32", top=5), strict=True):
        same_hits([{"id": d, "score": s} for d, s in g], w)


def test_planning_a_derived_shortlist_does_not_block_the_event_loop(index, monkeypatch):
    """A11: while a request's plan builds a derived shortlist (slow at 1M documents), /health answers."""
    import threading
    import time as _time

    import httpx

    from adaretrieve.search import reader as reader_mod

    service = SearchService(index, device="cpu")
    app = create_app(service)
    real = reader_mod.IndexReader.shortlist_index
    started = threading.Event()

    def slow(self, size):
        started.set()
        _time.sleep(1.0)
        return real(self, size)

    monkeypatch.setattr(reader_mod.IndexReader, "shortlist_index", slow)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            search = asyncio.ensure_future(c.post("/search", json={"queries": TEXTS[0], "shortlist": "2x8"}))
            while not started.is_set():
                await asyncio.sleep(0.005)
            t0 = _time.perf_counter()
            health = await c.get("/health")
            waited = _time.perf_counter() - t0
            return health, waited, await search

    service.start()
    try:
        health, waited, search = asyncio.run(go())
    finally:
        service.stop()
    assert health.status_code == 200 and search.status_code == 200, search.text
    assert waited < 0.5, f"/health waited {waited:.2f} s behind a search's planning"


# -- trial 3: a damaged or moved index (sv-index-bad, sv-index-moved) ------------------------------------


def _int8_without_scale(index, tmp_path):
    import shutil

    from adaretrieve.index.format import current_generation

    ix = shutil.copytree(index, tmp_path / "bad")
    g = current_generation(ix)
    m = json.loads((g / "manifest.json").read_text())
    m["rerank"]["dtype"] = "int8"
    (g / "manifest.json").write_text(json.dumps(m))
    return ix


@pytest.mark.parametrize("damage", ["int8_no_scale", "shortlist_missing"])
def test_serve_refuses_to_start_when_a_file_its_plans_need_is_bad(index, tmp_path, monkeypatch, damage):
    """sv-index-bad: files were opened lazily, so serve started, /health said ok and every rerank was a 500."""
    import shutil

    import uvicorn

    from adaretrieve.cli.main import app
    from adaretrieve.errors import AdaError
    from adaretrieve.index.format import current_generation

    if damage == "int8_no_scale":
        ix, words = _int8_without_scale(index, tmp_path), "need a 'scale_file'"
    else:
        ix = shutil.copytree(index, tmp_path / "bad")
        (current_generation(ix) / "shortlist-2x16.faiss").unlink()
        words = "shortlist-2x16.faiss is missing"
    with pytest.raises(AdaError, match=words):
        SearchService(ix, device="cpu")
    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: ran.append(a))
    for workers in ("1", "2"):
        res = CliRunner().invoke(app, ["serve", "-q", "--index", str(ix), "--port", "0", "--workers", workers])
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.output
    assert not ran


def test_a_moved_index_is_never_a_client_error_and_health_says_so(index, tmp_path):
    """sv-index-moved: after the folder moved, a size not used yet was a 422 'the index is damaged' while
    /health said ok. Every file is open from the start now: the request is answered, /health is 503."""
    import shutil

    ix = shutil.copytree(index, tmp_path / "srv")
    service = SearchService(ix, device="cpu")
    with TestClient(create_app(service)) as c:
        assert c.get("/health").status_code == 200
        shutil.move(ix, tmp_path / "srv-moved")
        r = c.post("/search", json={"queries": "cell", "shortlist": "2x8", "k": 10, "top": 2})  # derived, never used
        assert r.status_code == 200, r.text
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] != "ok" and "srv" in h.json()["problem"], h.text


def test_a_server_side_file_fault_is_a_5xx_and_health_not_ok(index, monkeypatch):
    from adaretrieve.errors import IndexDamaged
    from adaretrieve.search import reader as reader_mod

    service = SearchService(index, device="cpu")
    with TestClient(create_app(service)) as c:
        def broken(self, size):
            raise IndexDamaged(f"{index}/shortlist-{size}.faiss is missing; the index is damaged, rebuild it")

        monkeypatch.setattr(reader_mod.IndexReader, "shortlist_index", broken)
        r = c.post("/search", json={"queries": "cell", "shortlist": "2x4"})
        assert r.status_code == 503 and "is missing" in r.json()["error"], r.text
        h = c.get("/health")
        assert h.status_code == 503 and "is missing" in h.json()["problem"], h.text


# -- trial 3: stalled clients (sv-slowloris) ---------------------------------------------------------------


def test_stalled_clients_are_closed_within_the_read_timeout(index, monkeypatch):
    """sv-slowloris: 300 connections that sent headers and half a body (or half the headers) were still
    open after 22 s, each holding a descriptor. The server closes each once the read timeout passes,
    and answers other clients meanwhile."""
    import socket
    import threading
    import time as _time

    import uvicorn

    from adaretrieve.serve import protocol

    monkeypatch.setattr(protocol.TimedH11Protocol, "read_timeout", 1.0)
    service = SearchService(index, device="cpu")
    server = uvicorn.Server(uvicorn.Config(create_app(service), http=protocol.TimedH11Protocol, log_level="warning"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            _time.sleep(0.05)
        assert server.started
        stalled = [b"POST /search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
                   b'{"queries": ', b"POST /search HTTP/1.1\r\nHost: x\r\ncontent-", b""]
        socks = []
        for head in stalled:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head)
            socks.append(s)
        t0 = _time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as ok:  # another client is served meanwhile
            ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ok.settimeout(5)
            assert ok.recv(100).startswith(b"HTTP/1.1 200")
        for s in socks:
            s.settimeout(6)
            try:
                while s.recv(4096):  # whatever is answered, then the end of the stream
                    pass
            except ConnectionResetError:
                pass
            s.close()
        waited = _time.perf_counter() - t0
        assert waited < 4, f"stalled connections still open after {waited:.1f} s"
    finally:
        server.should_exit = True
        thread.join(10)


def test_serve_runs_uvicorn_with_the_read_timeout_protocol(index, monkeypatch):
    import uvicorn

    from adaretrieve.cli.main import app

    seen = {}
    monkeypatch.delenv("ADARETRIEVE_SERVE", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    for workers in ("1", "2"):
        res = CliRunner().invoke(app, ["serve", "-q", "--index", str(index), "--port", "0", "--workers", workers])
        assert res.exit_code == 0, res.output
        assert seen["http"] == "adaretrieve.serve.protocol:TimedH11Protocol"


def test_docs_is_a_self_contained_page(client):
    """newcomer-3: /docs loaded Swagger UI from cdn.jsdelivr.net, a blank page offline."""
    for path in ("/docs", "/redoc"):
        r = client.get(path)
        if path == "/redoc":
            assert r.status_code == 404
            continue
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.I), re.findall(r"\S*//\S+", r.text)[:3]
        assert "/openapi.json" in r.text and "POST /search" in r.text and "do statins reduce the risk of cancer?" in r.text
