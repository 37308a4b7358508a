"""Load test of `adaretrieve serve` on loopback (127.0.0.1 only), with an asyncio httpx client.

    python benchmarks/serve_load.py --index indexes/scifact-minilm --data ../shared/data/beir/scifact \
        --duration 60 --soak 600 --out benchmarks/results/serve

What it does, in order, against a server it starts itself (`adaretrieve serve --quiet`) and stops:
1. equality: every judged SciFact test query, one request each (8 in flight, so they share batches),
   against `adaretrieve search --format jsonl` over the same index and configuration;
2. load: for each concurrency (1, 8, 32), ``--duration`` seconds of closed-loop clients, each
   sending the next test query as soon as its last answer came back: requests/s, latency
   p50/p95/p99, errors; then the server is restarted with `--max-batch 1` (batching off) for the
   batching-off row at the highest concurrency;
3. soak: ``--soak`` seconds at concurrency 8 with batching on, the server's resident memory (VmRSS)
   sampled every ``--rss-every`` seconds.

Every phase is bounded in time and in requests (``--max-requests``). `uptime` is recorded before
and after each phase, since the machine may be shared. Results: results.json and results.md in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"  # loopback only, by design
WANT_SHORT, WANT_RERANK = "2x64", "6x384"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def nearest(sizes, want):
    """The stored size nearest to ``want`` (same layer and dim first, then by layer, then dim)."""
    from adaretrieve.sizes import parse_size

    w = parse_size(want)
    return min(sizes, key=lambda s: (abs(s.layer - w.layer), abs(s.dim - w.dim)))


class Server:
    """`adaretrieve serve` as a child process on loopback, optionally pinned with taskset."""

    def __init__(self, index: str, port: int, max_batch: int, max_wait_ms: float, cpus: str | None, log: Path,
                 threads: int | None = None):
        self.cmd = [str(Path(sys.executable).parent / "adaretrieve"), "serve", "--index", index, "--host", HOST,
                    "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--quiet"]
        if threads:
            self.cmd += ["--threads", str(threads)]
        if cpus:
            self.cmd = ["taskset", "-c", cpus, *self.cmd]
        self.url = f"http://{HOST}:{port}"
        self.log = open(log, "a")
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        import httpx

        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < 300:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.startup_s = time.time() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("server did not answer /health within 300 s")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def closed_loop(url: str, bodies: list[dict], concurrency: int, duration: float, max_requests: int,
                      on_tick=None, tick: float = 5.0) -> dict:
    """``concurrency`` clients, each sending the next body when its last answer arrived, for
    ``duration`` seconds or ``max_requests`` requests. Latencies of the 2xx answers; errors counted."""
    import httpx

    lat: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop_at = time.perf_counter() + duration

    async def client(c: httpx.AsyncClient):
        nonlocal sent
        while time.perf_counter() < stop_at and sent < max_requests:
            body = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post("/search", json=body)
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    async def ticker():
        while time.perf_counter() < stop_at and sent < max_requests:
            await asyncio.sleep(tick)
            on_tick()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as c:
        t0 = time.perf_counter()
        tasks = [client(c) for _ in range(concurrency)] + ([ticker()] if on_tick else [])
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    out = {"concurrency": concurrency, "seconds": round(wall, 2), "requests": len(lat), "errors": errors,
           "error_count": sum(errors.values()), "requests_per_s": round(len(lat) / wall, 2)}
    if len(ms):
        out.update({f"p{p}_ms": round(float(np.percentile(ms, p)), 2) for p in (50, 95, 99)})
        out["mean_ms"] = round(float(ms.mean()), 2)
    return out


def scrape(url: str) -> dict:
    """Mean seconds per stage and mean texts per batch from the server's /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    sums, counts = {}, {}
    for line in text.splitlines():
        if line.startswith("adaretrieve_stage_seconds_sum"):
            sums[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        if line.startswith("adaretrieve_stage_seconds_count"):
            counts[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    batch = {}
    for line in text.splitlines():
        if line.startswith("adaretrieve_batch_queries_sum") or line.startswith("adaretrieve_batch_queries_count"):
            batch[line.split(" ")[0].rsplit("_", 1)[1]] = float(line.rsplit(" ", 1)[1])
    return {"stage_ms_mean": {s: round(1000 * sums[s] / counts[s], 3) for s in sums if counts.get(s)},
            "texts_per_batch_mean": round(batch["sum"] / batch["count"], 2) if batch.get("count") else None,
            "batches": int(batch.get("count", 0))}


def equality(url: str, index: str, queries: Path, qrels: Path, cfg: dict, qids: list[str], texts: dict, work: Path) -> dict:
    """HTTP answers for every judged query equal to `adaretrieve search`'s run over the same index."""
    import httpx

    run = work / "cli.jsonl"
    cmd = [str(Path(sys.executable).parent / "adaretrieve"), "search", "--index", index, "--queries", str(queries),
           "--qrels", str(qrels), "--shortlist", cfg["shortlist"], "--k", str(cfg["k"]), "--rerank", cfg["rerank"],
           "--top", str(cfg["k"]), "--format", "jsonl", "--out", str(run), "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True)
    want = {json.loads(line)["qid"]: json.loads(line)["hits"] for line in run.read_text().splitlines()}

    async def ask():
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            async def one(q):
                async with sem:
                    r = await c.post("/search", json={"queries": texts[q], **cfg, "top": cfg["k"]})
                    r.raise_for_status()
                    return q, r.json()["results"][0]
            return dict(await asyncio.gather(*(one(q) for q in qids)))

    got = asyncio.run(ask())
    same_ids = same_up_to_ties = 0
    max_diff = 0.0
    for q in qids:
        g, w = got[q], want[q]
        gs, ws = np.array([h["score"] for h in g]), np.array([h["score"] for h in w])
        assert len(g) == len(w), (q, len(g), len(w))
        max_diff = max(max_diff, float(np.abs(gs - ws).max()))
        if [h["id"] for h in g] == [h["docid"] for h in w]:
            same_ids += 1
        elif all(a["id"] == b["docid"] or any(abs(ws[i] - ws[j]) < 1e-5 for j in (i - 1, i + 1) if 0 <= j < len(ws))
                 for i, (a, b) in enumerate(zip(g, w))):
            same_up_to_ties += 1
    return {"queries": len(qids), "depth": cfg["k"], "identical_rankings": same_ids,
            "differ_only_within_ties_1e-5": same_up_to_ties, "mismatched": len(qids) - same_ids - same_up_to_ties,
            "max_abs_score_diff": max_diff,
            "command": " ".join(cmd[1:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="indexes/scifact-minilm")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/beir/scifact"))
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per load phase")
    ap.add_argument("--soak", type=float, default=600.0, help="seconds of the memory soak (0: none)")
    ap.add_argument("--rss-every", type=float, default=5.0)
    ap.add_argument("--max-requests", type=int, default=200_000, help="bound on requests per phase")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--server-threads", type=int, default=None, help="serve --threads (default: torch's)")
    ap.add_argument("--server-cpus", default=None, help="taskset CPU list for the server (default: not pinned)")
    ap.add_argument("--client-cpus", default=None, help="taskset CPU list for this client (default: not pinned)")
    ap.add_argument("--skip-equality", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve"))
    args = ap.parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for part in args.client_cpus.split(",") for c in
                                 (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})

    from adaretrieve.bench import machine_info
    from adaretrieve.data import read_qrels, read_queries
    from adaretrieve.search import IndexReader

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    queries, qrels = data / "queries.jsonl", data / "qrels/test.tsv"
    texts = read_queries(queries)
    qids = [q for q in read_qrels(qrels) if q in texts]
    m = IndexReader(args.index).manifest
    short = nearest(m.shortlist_sizes, WANT_SHORT)
    rerank = m.rerank_size if m.rerank_size else nearest(m.shortlist_sizes, WANT_RERANK)
    sizes_note = ("index stores the asked sizes" if (str(short), str(rerank)) == (WANT_SHORT, WANT_RERANK) else
                  f"asked {WANT_SHORT} -> {WANT_RERANK}; nearest stored: {short} -> {rerank}")
    cfg = {"shortlist": str(short), "k": 200, "rerank": str(rerank), "top": 10}
    bodies = [{"queries": texts[q], **cfg} for q in qids]
    res: dict = {
        "command": "python " + shlex.join([f"benchmarks/{Path(__file__).name}", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note, "machine": machine_info(), "index": args.index, "n_docs": m.n_docs,
        "model": m.model.get("name"), "config": cfg, "sizes_note": sizes_note, "queries": len(qids),
        "server": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "cpus": args.server_cpus or "not pinned",
                   "workers": 1, "torch_threads": args.server_threads or "torch's default (one per core)"},
        "client": {"kind": "asyncio httpx closed loop, one process", "cpus": args.client_cpus or "not pinned",
                   "duration_s": args.duration, "max_requests": args.max_requests},
        "phases": [],
    }
    log = out / "server.log"
    log.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))

    def save():
        (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "results.md").write_text(render(res))

    def phase(name, fn, **extra):
        before = uptime()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ... ({before})", flush=True)
        r = fn()
        r.update(name=name, uptime_before=before, uptime_after=uptime(), **extra)
        res["phases"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("rss_samples",)}), flush=True)
        save()
        return r

    try:
        with Server(args.index, args.port, args.max_batch, args.max_wait_ms, args.server_cpus, log, args.server_threads) as srv:
            res["server"]["startup_s"] = round(srv.startup_s, 1)
            asyncio.run(closed_loop(srv.url, bodies, 4, 5.0, 200))  # warm-up: first passes, page cache
            if not args.skip_equality:
                res["equality"] = equality(srv.url, args.index, queries, qrels, cfg, qids, texts, work)
                print(json.dumps(res["equality"]), flush=True)
            for c in args.concurrency:
                before = scrape(srv.url)
                r = phase(f"batching on, concurrency {c}",
                          lambda c=c: asyncio.run(closed_loop(srv.url, bodies, c, args.duration, args.max_requests)),
                          batching=True)
                r.update(_delta(before, scrape(srv.url)))
            if args.soak > 0:
                samples: list[tuple[float, float]] = []
                t0 = time.time()
                pid = srv.proc.pid

                def sample():
                    samples.append((round(time.time() - t0, 1), round(rss_mb(pid), 1)))

                sample()

                def soak():
                    r = asyncio.run(closed_loop(srv.url, bodies, 8, args.soak, 10**9, on_tick=sample, tick=args.rss_every))
                    sample()
                    rss = np.array([s[1] for s in samples])
                    warm = rss[min(len(rss) - 1, max(1, int(60 / args.rss_every))):]  # after the first minute
                    r.update(rss_samples=samples, rss_start_mb=float(rss[0]), rss_end_mb=float(rss[-1]),
                             rss_min_mb=float(rss.min()), rss_max_mb=float(rss.max()),
                             rss_after_1min_mb=float(warm[0]),
                             rss_growth_after_1min_pct=round(100 * (warm.max() - warm[0]) / warm[0], 2),
                             rss_spread_after_1min_pct=round(100 * (warm.max() - warm.min()) / warm.min(), 2))
                    return r

                before = scrape(srv.url)
                r = phase("soak, batching on, concurrency 8", soak, batching=True)
                r.update(_delta(before, scrape(srv.url)))
        if args.concurrency:
            c = max(args.concurrency)
            with Server(args.index, args.port, 1, 0.0, args.server_cpus, log, args.server_threads) as srv:
                asyncio.run(closed_loop(srv.url, bodies, 4, 5.0, 200))
                before = scrape(srv.url)
                r = phase(f"batching off (--max-batch 1), concurrency {c}",
                          lambda: asyncio.run(closed_loop(srv.url, bodies, c, args.duration, args.max_requests)),
                          batching=False)
                r.update(_delta(before, scrape(srv.url)))
            on = next(p for p in res["phases"] if p.get("batching") and p["concurrency"] == c and "soak" not in p["name"])
            res["batching_speedup_at_max_concurrency"] = round(on["requests_per_s"] / r["requests_per_s"], 2)
        save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if log.exists() and log.stat().st_size == 0:  # the server ran --quiet and said nothing
        log.unlink()
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _delta(before: dict, after: dict) -> dict:
    """What the server's own metrics say about one phase (the difference of two scrapes)."""
    return {"server_stage_ms_mean_cumulative": after["stage_ms_mean"],
            "server_texts_per_batch_in_phase": None if after["batches"] == before["batches"] else round(
                ((after["texts_per_batch_mean"] or 0) * after["batches"] - (before["texts_per_batch_mean"] or 0) * before["batches"])
                / (after["batches"] - before["batches"]), 2)}


def render(res: dict) -> str:
    m = res["machine"]
    threads = res["server"].get("torch_threads", "torch's default (one per core)")
    lines = [
        "# `adaretrieve serve` load test (loopback)", "",
        f"Command: `{res['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs: see the load averages per phase), "
        f"torch {m['torch']}, faiss {m['faiss']}. Server: 1 worker process, max batch {res['server']['max_batch']}, "
        f"max wait {res['server']['max_wait_ms']} ms, torch threads {threads}, CPUs {res['server']['cpus']}; client: {res['client']['kind']}, "
        f"CPUs {res['client']['cpus']}, on the same machine.", "",
        f"Index `{res['index']}` ({res['n_docs']:,} docs, model {res['model']}); every request is one SciFact test query "
        f"(cycling over {res['queries']}), shortlist {res['config']['shortlist']} k={res['config']['k']} -> rerank "
        f"{res['config']['rerank']}, top {res['config']['top']} ({res['sizes_note']}).", "",
    ]
    if res.get("note"):
        lines += [f"Note: {res['note']}", ""]
    lines += ["| phase | seconds | requests | req/s | p50 ms | p95 ms | p99 ms | errors | texts/batch | load average (1 min) before -> after |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in res["phases"]:
        la = lambda u: u.split("load average:")[1].split(",")[0].strip() if "load average:" in u else "?"
        lines.append(f"| {p['name']} | {p['seconds']} | {p['requests']} | {p['requests_per_s']} | {p.get('p50_ms', '-')} | "
                     f"{p.get('p95_ms', '-')} | {p.get('p99_ms', '-')} | {p['error_count']} | "
                     f"{p.get('server_texts_per_batch_in_phase', '-')} | {la(p['uptime_before'])} -> {la(p['uptime_after'])} |")
    lines.append("")
    if "batching_speedup_at_max_concurrency" in res:
        lines += [f"Micro-batching at the highest concurrency: {res['batching_speedup_at_max_concurrency']}x the "
                  "requests/s of batching off (`--max-batch 1`).", ""]
    soak = next((p for p in res["phases"] if p["name"].startswith("soak")), None)
    if soak:
        lines += [f"Soak: {soak['seconds']} s at concurrency 8, server RSS sampled every few seconds: start "
                  f"{soak['rss_start_mb']:.1f} MB, after the first minute {soak['rss_after_1min_mb']:.1f} MB, end "
                  f"{soak['rss_end_mb']:.1f} MB, max {soak['rss_max_mb']:.1f} MB; after the first minute RSS rose at most "
                  f"{soak['rss_growth_after_1min_pct']}% above its value then (spread {soak['rss_spread_after_1min_pct']}%).", ""]
    eq = res.get("equality")
    if eq:
        lines += [f"Equality with `adaretrieve {eq['command']}`: {eq['queries']} queries at depth {eq['depth']}, "
                  f"{eq['identical_rankings']} identical rankings, {eq['differ_only_within_ties_1e-5']} differing only "
                  f"between documents whose scores tie within 1e-5, {eq['mismatched']} mismatched, largest score difference {eq['max_abs_score_diff']:.2e} "
                  "(the HTTP queries shared batches with other queries; the CLI encoded them 64 at a time).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
