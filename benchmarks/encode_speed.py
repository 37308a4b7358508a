"""Encoding speed (issue 13, item 1): adaretrieve's encoder backends against sentence-transformers,
same texts, same max length, same threads, every row in one run.

    taskset -c 1 python benchmarks/encode_speed.py --model minilm --model mpnet --threads 1 \\
        [--queries 64] [--batches 6] [--corpus-docs 400] [--out benchmarks/results/encode-speed]

Query encoding: SciFact test queries at batch 1 (each query timed alone) and in batches of 32,
to the full size (the last layer). Methods are timed in turn on the same text (batch 1) or batch
(batch 32) before the next one, so load on the machine falls on all of them alike; each method has
its own warm-up first (the onnx backends export their graph then, or read it from the cache).
Corpus encoding: the first --corpus-docs SciFact documents (title + text, as ``adaretrieve index``
feeds them), batch 32, the whole set encoded --corpus-repeats times per method in turn; docs/s
from the median. adaretrieve produces every size of the model's ladder in that one pass
(e.g. 2x64, 4x128, 6x384), sentence-transformers the last layer only.

Rows: adaretrieve torch (fp32; and bf16 autocast), adaretrieve onnx, adaretrieve onnx-int8,
sentence-transformers (torch), and sentence-transformers ``backend="onnx"`` when it loads here
(it needs optimum; the reason is reported when it does not). optimum needs transformers < 5, so
``--st-onnx-python`` can name the python of another virtual environment with sentence-transformers
and optimum-onnx: this script then runs itself there (``--st-helper``) right after the main
measurements, on the same texts with the same protocol, timing that environment's
sentence-transformers torch and onnx backends in turn; those rows are compared with each other and,
through sentence-transformers torch, with the rest. Threads: torch.set_num_threads and ONNX
Runtime's intra-op threads are both --threads; pin the process with taskset for a quiet core.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import uptime  # noqa: E402


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None, help="minilm, mpnet, or a folder (repeat)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--queries", type=int, default=64, help="queries timed at batch 1")
    ap.add_argument("--batches", type=int, default=6, help="batches of 32 queries timed")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--corpus-docs", type=int, default=400, help="0: no corpus timing")
    ap.add_argument("--corpus-repeats", type=int, default=3)
    ap.add_argument("--corpus-models", default="minilm", help="comma-separated: the models whose corpus encoding is timed")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "beir" / "scifact")
    ap.add_argument("--no-st-onnx", action="store_true", help="skip sentence-transformers' onnx backend")
    ap.add_argument("--st-onnx-python", default="", help="python of a venv with sentence-transformers + optimum-onnx")
    ap.add_argument("--st-helper", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encode-speed")
    ap.add_argument("--note", default="")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    if args.st_helper is not None:
        return st_helper(args, np)
    from adaretrieve.bench import machine_info
    from adaretrieve.data import iter_corpus, read_queries
    from adaretrieve.data.readers import doc_text
    from adaretrieve.modeling import Encoder

    uptime_before = uptime()
    queries = list(read_queries(args.data / "queries.jsonl").values())
    docs = []
    for d in iter_corpus(args.data):
        docs.append(doc_text(d.title, d.text))
        if len(docs) >= args.corpus_docs:
            break
    models = args.model or ["minilm"]
    report = {"command": "taskset -c " + _affinity() + " python benchmarks/encode_speed.py " + shlex.join(argv or sys.argv[1:]),
              "threads": args.threads, "machine": machine_info(), "cpu_affinity": _affinity(),
              "uptime_before": uptime_before, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "note": args.note,
              "models": {}}
    for model in models:
        report["models"][model] = run_model(model, args, queries, docs, np, torch, Encoder)
        print(json.dumps(report["models"][model]["summary"], indent=1), flush=True)
    report["uptime_after"] = uptime()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(report))
    print(to_markdown(report))


def run_model(model, args, queries, docs, np, torch, Encoder) -> dict:
    base = Encoder(model, device="cpu")
    full = str(base.full_size)
    ladder = sorted({f"{max(1, base.n_layers // 3)}x{base.hidden_size // 6}",
                     f"{max(1, 2 * base.n_layers // 3)}x{base.hidden_size // 3}", full})
    encoders = {
        "adaretrieve torch": base,
        "adaretrieve torch bf16": Encoder(model, device="cpu", dtype="bfloat16"),
        "adaretrieve onnx": Encoder(model, device="cpu", backend="onnx", threads=args.threads),
        "adaretrieve onnx-int8": Encoder(model, device="cpu", backend="onnx-int8", threads=args.threads),
    }
    methods = {name: (lambda texts, e=e: e.encode(texts, [full], batch_size=len(texts))[base.full_size])
               for name, e in encoders.items()}
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(base.path, device="cpu")
    st.max_seq_length = base.max_length
    methods["sentence-transformers torch"] = lambda texts: st.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    skipped = {}
    if not args.no_st_onnx:
        try:
            st_onnx = SentenceTransformer(base.path, device="cpu", backend="onnx",
                                          model_kwargs={"provider": "CPUExecutionProvider"})
            st_onnx.max_seq_length = base.max_length
            methods["sentence-transformers onnx"] = lambda texts: st_onnx.encode(texts, batch_size=len(texts),
                                                                                 convert_to_numpy=True)
        except Exception as e:  # optimum missing, or no export offline
            skipped["sentence-transformers onnx"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"

    # same vectors? every method against adaretrieve torch on the first 32 queries
    ref = methods["adaretrieve torch"](queries[:32])
    agree = {}
    for name, fn in methods.items():
        v = np.asarray(fn(queries[:32]), dtype=np.float32)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        agree[name] = {"min_cosine": round(float((v * ref).sum(1).min()), 6),
                       "max_abs_diff": float(np.abs(v - ref).max())}

    def timed(fn, texts):
        t0 = time.perf_counter()
        fn(texts)
        return time.perf_counter() - t0

    for fn in methods.values():
        for i in range(args.warmup):
            fn([queries[i]])
            fn(queries[:32])
    b1 = {m: [] for m in methods}
    for i in range(args.queries):
        for name, fn in methods.items():
            b1[name].append(timed(fn, [queries[args.warmup + i]]))
    b32 = {m: [] for m in methods}
    for j in range(args.batches):
        batch = queries[32 * j : 32 * (j + 1)]
        for name, fn in methods.items():
            b32[name].append(timed(fn, batch) / len(batch))
    rows = {}
    for name in methods:
        a, b = np.array(b1[name]) * 1000, np.array(b32[name]) * 1000
        rows[name] = {"batch1_ms_p50": round(float(np.median(a)), 3), "batch1_ms_p95": round(float(np.percentile(a, 95)), 3),
                      "batch32_ms_per_query_p50": round(float(np.median(b)), 3), **agree[name]}
    for name in rows:
        for ref_name, tag in (("adaretrieve torch", "ours_torch"), ("sentence-transformers torch", "st_torch")):
            rows[name][f"batch1_speedup_vs_{tag}"] = round(rows[ref_name]["batch1_ms_p50"] / rows[name]["batch1_ms_p50"], 2)
            rows[name][f"batch32_speedup_vs_{tag}"] = round(
                rows[ref_name]["batch32_ms_per_query_p50"] / rows[name]["batch32_ms_per_query_p50"], 2)

    corpus = {}
    if args.corpus_docs and model in args.corpus_models.split(","):
        cm = {name: (lambda texts, e=e: e.encode(texts, ladder, batch_size=32))
              for name, e in encoders.items()}
        cm["sentence-transformers torch"] = lambda texts: st.encode(texts, batch_size=32, convert_to_numpy=True)
        if "sentence-transformers onnx" in methods:
            cm["sentence-transformers onnx"] = lambda texts: st_onnx.encode(texts, batch_size=32, convert_to_numpy=True)
        for fn in cm.values():
            fn(docs[:64])
        times = {m: [] for m in cm}
        for _ in range(args.corpus_repeats):
            for name, fn in cm.items():
                times[name].append(timed(fn, docs))
        for name, t in times.items():
            corpus[name] = {"docs_per_s": round(len(docs) / float(np.median(t)), 2), "seconds": [round(x, 2) for x in t]}
        for name in corpus:
            corpus[name]["speedup_vs_st_torch"] = round(corpus[name]["docs_per_s"] / corpus["sentence-transformers torch"]["docs_per_s"], 2)
    if args.st_onnx_python:
        rows.update(run_st_venv(args, base, queries, docs if corpus else [], corpus))
    return {
        "model": base.describe(), "full_size": full, "corpus_sizes": ladder if corpus else [],
        "queries_batch1": args.queries, "batches32": args.batches, "warmup": args.warmup,
        "corpus_docs": len(docs) if corpus else 0, "corpus_repeats": args.corpus_repeats if corpus else 0,
        "query_encoding": rows, "corpus_encoding": corpus, "skipped": skipped,
        "summary": {name: (r.get("batch1_ms_p50"), r.get("batch32_ms_per_query_p50")) for name, r in rows.items()},
    }


def run_st_venv(args, base, queries, docs, corpus) -> dict:
    """Time sentence-transformers torch and onnx in the venv of --st-onnx-python (same protocol)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"model": base.path, "max_length": base.max_length, "queries": queries, "docs": docs}))
        cmd = [args.st_onnx_python, __file__, "--st-helper", str(job), "--threads", str(args.threads),
               "--queries", str(args.queries), "--batches", str(args.batches), "--warmup", str(args.warmup),
               "--corpus-repeats", str(args.corpus_repeats)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return {"sentence-transformers onnx (other venv)": {"error": done.stderr.strip().splitlines()[-1][:300]}}
        out = json.loads((Path(tmp) / "job.out.json").read_text())
    rows = {}
    for name, r in out["query_encoding"].items():
        r["batch1_speedup_vs_st_torch"] = round(out["query_encoding"]["st torch"]["batch1_ms_p50"] / r["batch1_ms_p50"], 2)
        r["batch32_speedup_vs_st_torch"] = round(out["query_encoding"]["st torch"]["batch32_ms_per_query_p50"]
                                                 / r["batch32_ms_per_query_p50"], 2)
        r["versions"] = out["versions"]
        rows[f"sentence-transformers {out['versions']['sentence_transformers']} {name.split()[-1]} (other venv, after)"] = r
    for name, r in out.get("corpus_encoding", {}).items():
        r["speedup_vs_st_torch"] = round(r["docs_per_s"] / out["corpus_encoding"]["st torch"]["docs_per_s"], 2)
        corpus[f"sentence-transformers {out['versions']['sentence_transformers']} {name.split()[-1]} (other venv, after)"] = r
    return rows


def st_helper(args, np) -> None:
    """Runs in the other venv: sentence-transformers torch and onnx on the job's texts."""
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    job = json.loads(args.st_helper.read_text())
    queries, docs = job["queries"], job["docs"]
    t0 = time.perf_counter()
    models = {"st torch": SentenceTransformer(job["model"], device="cpu"),
              "st onnx": SentenceTransformer(job["model"], device="cpu", backend="onnx",
                                             model_kwargs={"provider": "CPUExecutionProvider"})}
    load_s = time.perf_counter() - t0
    for m in models.values():
        m.max_seq_length = job["max_length"]

    def timed(m, texts, bs):
        t = time.perf_counter()
        m.encode(texts, batch_size=bs, convert_to_numpy=True)
        return time.perf_counter() - t

    for m in models.values():
        for i in range(args.warmup):
            timed(m, [queries[i]], 1)
            timed(m, queries[:32], 32)
    b1 = {k: [] for k in models}
    for i in range(args.queries):
        for k, m in models.items():
            b1[k].append(1000 * timed(m, [queries[args.warmup + i]], 1))
    b32 = {k: [] for k in models}
    for j in range(args.batches):
        batch = queries[32 * j : 32 * (j + 1)]
        for k, m in models.items():
            b32[k].append(1000 * timed(m, batch, 32) / len(batch))
    ref = models["st torch"].encode(queries[:32], convert_to_numpy=True)
    out = {"versions": {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__},
           "load_seconds": round(load_s, 1), "query_encoding": {}, "corpus_encoding": {}}
    for k, m in models.items():
        v = m.encode(queries[:32], convert_to_numpy=True)
        out["query_encoding"][k] = {
            "batch1_ms_p50": round(float(np.median(b1[k])), 3), "batch1_ms_p95": round(float(np.percentile(b1[k], 95)), 3),
            "batch32_ms_per_query_p50": round(float(np.median(b32[k])), 3),
            "min_cosine": round(float((v * ref).sum(1).min()), 6), "max_abs_diff": float(np.abs(v - ref).max())}
    if docs:
        for m in models.values():
            timed(m, docs[:64], 32)
        times = {k: [] for k in models}
        for _ in range(args.corpus_repeats):
            for k, m in models.items():
                times[k].append(timed(m, docs, 32))
        for k, t in times.items():
            out["corpus_encoding"][k] = {"docs_per_s": round(len(docs) / float(np.median(t)), 2),
                                         "seconds": [round(x, 2) for x in t]}
    args.st_helper.with_name("job.out.json").write_text(json.dumps(out))


def _affinity() -> str:
    return ",".join(map(str, sorted(os.sched_getaffinity(0))))


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Encoding speed: adaretrieve backends against sentence-transformers", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores (process pinned to CPU {r['cpu_affinity']}); {r['threads']} thread(s) "
             f"for torch and ONNX Runtime; torch {m['torch']}; {r['date']}.  ",
             f"Load before: `{r['uptime_before']}`; after: `{r.get('uptime_after', '?')}`.",
             *([f"Note: {r['note']}"] if r.get("note") else []), ""]
    for name, d in r["models"].items():
        md = d["model"]
        lines += [f"## {name} ({md['n_layers']}x{md['hidden_size']}, max length {md['max_length']})", "",
                  f"Query encoding to {d['full_size']}: SciFact queries, {d['queries_batch1']} timed one at a time and "
                  f"{d['batches32']} batches of 32, after {d['warmup']} warm-up calls per method. Speed-ups are "
                  "ratios of medians measured in this run. Agreement: against adaretrieve torch on 32 queries.", "",
                  "| method | batch 1 ms p50 | p95 | x ours torch | x ST torch | batch 32 ms/query | x ours torch | x ST torch "
                  "| min cosine | max abs diff |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for meth, x in d["query_encoding"].items():
            if "error" in x:
                lines.append(f"| {meth} | failed: {x['error']} | | | | | | | | |")
                continue
            g = lambda key, x=x: x.get(key, "-")  # noqa: E731
            lines.append(f"| {meth} | {x['batch1_ms_p50']} | {x['batch1_ms_p95']} | {g('batch1_speedup_vs_ours_torch')} | "
                         f"{x['batch1_speedup_vs_st_torch']} | {x['batch32_ms_per_query_p50']} | "
                         f"{g('batch32_speedup_vs_ours_torch')} | {x['batch32_speedup_vs_st_torch']} | {x['min_cosine']} | "
                         f"{x['max_abs_diff']:.2e} |")
        if any("other venv" in k for k in d["query_encoding"]):
            lines.append("\nRows marked (other venv, after): measured by the same protocol in a second virtual environment "
                         "(optimum needs transformers < 5) right after the rows above, not interleaved with them; compare "
                         "them with each other, and with the rest only through sentence-transformers torch. Their agreement "
                         "columns are against that venv's sentence-transformers torch.")
        for meth, why in d["skipped"].items():
            lines.append(f"\n{meth}: not measured ({why}).")
        if d["corpus_encoding"]:
            lines += ["", f"Corpus encoding: the first {d['corpus_docs']} SciFact documents, batch 32, "
                      f"{d['corpus_repeats']} passes per method in turn (median). adaretrieve writes every size of "
                      f"{', '.join(d['corpus_sizes'])} in the one pass; sentence-transformers the last layer only.", "",
                      "| method | docs/s | x ST torch | seconds per pass |", "| --- | ---: | ---: | --- |"]
            for meth, x in d["corpus_encoding"].items():
                lines.append(f"| {meth} | {x['docs_per_s']} | {x['speedup_vs_st_torch']} | {', '.join(map(str, x['seconds']))} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
