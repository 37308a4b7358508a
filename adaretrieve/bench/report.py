"""Reports of a suite: Markdown (every row, per-stage latency, measured memory, pinned checks) and
PNG plots of quality against latency and memory, each with its Pareto front (``verdicts.pareto``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from adaretrieve.bench.measure import load_rows
from adaretrieve.bench.verdicts import metric_of, pareto


def plot_report(res: dict, out_dir: Path, metric: str | None = None) -> list[Path]:
    """PNG plots of quality against batch-1 latency and against resident bytes per document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(res)
    if not rows:
        return []
    metric = metric or next(iter(rows[0].metrics))
    paths = []
    for key, label, fname in (("latency", "ms per query, batch 1 (encode + search, median)", "quality_vs_latency.png"),
                              ("memory", "bytes per document resident in RAM", "quality_vs_memory.png")):
        pts, names = [], []
        for r in rows:
            if key == "latency":
                if r.end_to_end_ms_batch1 is not None:
                    cost = r.end_to_end_ms_batch1.p50
                elif r.encode_ms_batch1 is None and r.kind in ("hybrid", "rrf"):
                    continue  # an older file: its hybrid rows had no encoding time of their own
                else:
                    cost = (r.encode_ms_batch1.p50 if r.encode_ms_batch1 else 0.0) + r.search_ms_batch1.p50
            else:
                if r.resident_bytes_per_doc is None:
                    continue
                cost = r.resident_bytes_per_doc
            quality = metric_of({"metrics": r.metrics, "depth": r.depth}, metric)  # a shallow row: at its depth
            if quality is None:
                continue
            pts.append((cost, quality))
            names.append(r.config)
        if not pts:
            continue
        front = pareto(pts)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue")
        fp = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in fp], [p[1] for p in fp], color="tab:red", label="Pareto front")
        for (x, y), n in zip(pts, names):
            ax.annotate(n, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_title(f"{res['suite']}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / fname
        fig.savefig(path, dpi=130)
        plt.close(fig)
        paths.append(path)
    return paths


def _cutoff(name: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.*)@(\d+)", name)
    return (m[1], int(m[2])) if m else (name, None)


def metric_columns(rows, asked=()) -> list[str]:
    """The metric columns of a table: every measure a row has, in the suite's order, recalls of one
    kind side by side by cut-off. A row shallower than a recall's cut-off has it under its own depth
    (``R@50`` for a k=50 row; the R@100 column shows "-" there), never under the deeper name."""
    names = list(dict.fromkeys([*asked, *(k for r in rows for k in r.metrics)]))
    names = [n for n in names if any(n in r.metrics for r in rows)]
    out: list = []
    groups: dict[str, list[str]] = {}
    for n in names:
        kind, cut = _cutoff(n)
        if cut is None or not kind.startswith("R") or kind.startswith("RR"):
            out.append(n)
            continue
        if kind not in groups:
            groups[kind] = []
            out.append((kind,))
        groups[kind].append(n)
    flat = []
    for x in out:
        flat += sorted(groups[x[0]], key=lambda n: _cutoff(n)[1]) if isinstance(x, tuple) else [x]
    return flat


STAGES = ("encode_to_shortlist_layer", "encode_to_rerank_layer", "encode_deeper", "bm25", "shortlist", "gather", "rerank",
          "fusion")


def to_markdown(res: dict, command: str) -> str:
    rows = load_rows(res)
    metrics = metric_columns(rows, res.get("metrics") or ())
    m = res["machine"]
    timing = res.get("timing")
    lines = [
        f"# {res['suite']}",
        "",
        res.get("description", "").strip(),
        "",
        f"Command: `{command}`  ",
        f"Model: `{res['model']['name']}` ({res['model']['n_layers']}x{res['model']['hidden_size']}, {res['model']['pooling']} pooling, "
        f"normalise {res['model']['normalize']}, max length {res['model']['max_length']}); "
        f"{res['index']['n_docs']} docs, {res['n_queries']} queries.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), faiss {m['faiss']}; {res['date']}.  ",
        *([f"Encoder backend: {res['backend']}.  "] if res.get("backend", "torch") != "torch" else []),
        *([f"Query encoder backend: {res['query_backend']} (the index's documents: {res.get('backend', 'torch')}).  "]
          if res.get("query_backend") else []),
        f"Index build: {res['index']['build'].get('encode_seconds', '?')} s encoding "
        f"({res['index']['build'].get('docs_per_second', '?')} docs/s).",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
    ]
    if timing:
        lines += [
            f"Every row is timed the same way: batch 1 over the first {timing['latency_queries']} queries after "
            f"{timing['warmup']} warm-up queries (median, p95), batched as the median of {timing['repeats']} searches over "
            f"every query after {timing['warmup_batched']} warm-up search, divided by the number of queries. Search "
            "excludes query encoding (timed per depth, the same way); end to end is measured per query, encoding "
            "included. BM25 uses one Lucene searcher for the whole suite: JVM start and searcher open are reported "
            "once below, not per query"
            + (f"; it searches a batch on {m['search_threads']} threads, as FAISS does for the dense rows"
               if m.get("search_threads") else
               "; it searched its batches on 1 thread, the dense rows on FAISS's default OpenMP threads (this report "
               "predates giving BM25 the same)" if any(r.kind in ("bm25", "hybrid", "rrf") for r in rows) else "")
            + ". Hybrid = BM25 + rerank (+ encoding to the rerank layer end to end); RRF = "
            "BM25 + dense search + fusion (+ encoding). Cold: " + timing["cold"] + ".",
            "",
        ]
        if not any(r.search_ms_batch1_cold for r in rows):
            lines += ["No row here has a cold figure: none reads rerank rows through the memory map (a stored flat "
                      "shortlist index at the rerank size serves the rerank from its float32 vectors in RAM).", ""]
    else:
        lines += ["Timings predate the timing fix (issue 11, item 14): BM25 opened a searcher per call, hybrid and RRF "
                  "rows copy BM25's timing, batched figures are single runs without warm-up.", ""]
    lines += [
        "Latency is per query at batch size 1 (median): query encoding up to the deepest layer the configuration "
        "needs, and search. Search over all queries at once is the batched column.",
        "",
        "| configuration | " + " | ".join(metrics) + " | encode ms (layers) | search ms | search ms cold | end to end ms "
        "| search ms batched | RAM B/doc est. / measured |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        enc = r.encode_ms_batch1
        enc_s = f"{enc.p50:.2f} ({r.encode_layers})" if enc and r.encode_layers else ("-" if enc is None else "0")
        if r.search_includes_encoding:
            enc_s = f"in search ({r.mean_layers:g} of {r.encode_layers})"
        cold = "-" if r.search_ms_batch1_cold is None else f"{r.search_ms_batch1_cold.p50:.3f}"
        e2e = "-" if r.end_to_end_ms_batch1 is None else f"{r.end_to_end_ms_batch1.p50:.2f}"
        ram = "-" if r.resident_bytes_per_doc is None else f"{r.resident_bytes_per_doc:g}"
        if r.resident_measured:
            ram += f" / {r.resident_measured['anon_bytes_per_doc']:g}"
        lines.append(
            f"| {r.config} | " + " | ".join("-" if k not in r.metrics else f"{r.metrics[k]:.4f}" for k in metrics)
            + f" | {enc_s} | {r.search_ms_batch1.p50:.3f} | {cold} | {e2e}"
            + f" | {r.search_ms_batched:.3f} | {ram} |"
        )
    measured = [r for r in rows if r.resident_measured]
    if measured:
        lines += ["", "RAM B/doc: estimated from the shortlist's FAISS factory / measured: private memory per document "
                  "of a fresh process (numpy + FAISS, no torch) that opens the index and answers every query at batch 1 "
                  "with that configuration (`adaretrieve.search.resident`). The query encoder's memory is the same for "
                  "every row and not included. Memory-mapped index files (rerank rows, doc ids) are page cache, shared "
                  "and reclaimable; their pages mapped after all queries:", "",
                  "| configuration | private MB | index-file pages mapped MB | RSS growth MB |", "| --- | ---: | ---: | ---: |"]
        for r in measured:
            m = r.resident_measured
            lines.append(f"| {r.config} | {m['anon_bytes'] / 2**20:.1f} | {m['file_bytes'] / 2**20:.1f} | "
                         f"{m['rss_bytes'] / 2**20:.1f} |")
    staged = [r for r in rows if r.stages_ms_batch1]
    if staged:
        cols = [k for k in STAGES if any(k in r.stages_ms_batch1 for r in staged)]
        lines += ["", "Latency per stage, ms per query: batch 1 median (p95), then batched (all queries, encoding in "
                  "batches of 64). Encoding runs once to the deepest layer a configuration needs; the time to reach the "
                  "shortlist layer alone is what a shortlist-first pipeline waits before searching. Total is measured end "
                  "to end (encode the query, then search) per query; queries/s are one process, encoding + search.", "",
                  "| configuration | " + " | ".join(k.replace("_", " ") for k in cols)
                  + " | end to end p50 | p95 | q/s batch 1 | q/s batched | disk B/doc |",
                  "| --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | ---: | ---: |"]

        def cell(r, k):
            one, many = r.stages_ms_batch1.get(k), r.stages_ms_batched.get(k)
            if one is None:
                return "-"
            return f"{one.p50:.3f} ({one.p95:.3f}) / {many:.3f}"

        for r in staged:
            e = r.end_to_end_ms_batch1
            lines.append(f"| {r.config} | " + " | ".join(cell(r, k) for k in cols)
                         + f" | {e.p50:.2f} | {e.p95:.2f} | {r.qps_batch1:.1f} | {r.qps_batched:.1f} | "
                         f"{'-' if r.disk_bytes_per_doc is None else r.disk_bytes_per_doc} |")
    lines += adaptive_table(rows, metrics)
    lines += quality_per_byte(rows, metrics)
    setup = next((r.extra["bm25_setup_seconds"] for r in rows if "bm25_setup_seconds" in r.extra), None)
    if setup:
        lines += ["", f"BM25 set-up, once per suite (not in any latency above): JVM start {setup['jvm_start']} s, "
                  f"Lucene searcher open {setup['searcher_open']} s."]
    if res["checks"]:
        lines += ["", "Pinned expectations:", "", "| configuration | metric | expected | tolerance | got | ok |", "| --- | --- | ---: | ---: | ---: | --- |"]
        for c in res["checks"]:
            got = "missing" if c["got"] is None else f"{c['got']:.5f}"
            lines.append(f"| {c['config']} | {c['metric']} | {c['expected']} | {c['tolerance']} | {got} | {'yes' if c['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def adaptive_table(rows, metrics: list[str]) -> list[str]:
    """The adaptive-depth table: each cascade row beside the same plan always run in full (when the
    suite has that row), with its encoder cost, its answers per stage and its end to end latency.
    Empty without adaptive rows."""
    cascades = [r for r in rows if r.kind == "adaptive" and r.adaptive]
    if not cascades or not metrics:
        return []
    first = metrics[0]
    by_name = {r.config: r for r in rows}

    def q(r):
        v = metric_of({"metrics": r.metrics, "depth": r.depth}, first)
        return "-" if v is None else f"{v:.4f}"

    out = ["", "## Adaptive depth", "",
           "Cascades whose stop rule was fitted without labels on other texts (`fitted on`), each query stopping at "
           "the first stage the rule trusts; the others resume their encoding deeper. Encoder cost: mean layers run "
           "over the plan's. Answered per stage: the share of the queries stopping at each stage, the last going all "
           "the way. Their search encodes as it goes, so their search columns above include the encoding (in the stage "
           "table, encode deeper is the median over the queries that went on); end to end is measured per query as "
           "every row's is.", "",
           f"| configuration | {first} | always full {first} | answered per stage | mean layers | encoder cost "
           "| end to end ms | always full end to end ms | fitted on |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in cascades:
        a = r.adaptive
        full = by_name.get(a.get("always_full"))
        on = a.get("fitted_on") or {}
        src = f"{on['pseudo_queries']} pseudo-queries" if on.get("pseudo_queries") else \
            f"{on.get('n_queries', '?')} queries" + (f" ({on['query_split']})" if on.get("query_split") else "")
        e2e = "-" if r.end_to_end_ms_batch1 is None else f"{r.end_to_end_ms_batch1.p50:.2f}"
        full_e2e = "-" if full is None or full.end_to_end_ms_batch1 is None else f"{full.end_to_end_ms_batch1.p50:.2f}"
        out.append(f"| {r.config} | {q(r)} | {'-' if full is None else q(full)} | "
                   f"{' / '.join(f'{x:.2f}' for x in r.stop_share or [])} | {r.mean_layers:g} of {r.encode_layers} | "
                   f"{r.encoder_cost:.3f} | {e2e} | {full_e2e} | {src} |")
    return out


def quality_per_byte(rows, metrics: list[str]) -> list[str]:
    """The bytes-per-document table: every row whose shortlist codes' bytes are known, by those bytes,
    with the suite's first metric and first recall (at the row's depth, ``metric_of``), and whether it is
    on the Pareto front of bytes against the first metric (``verdicts.pareto``). Empty without such rows."""
    known = [r for r in rows if r.resident_bytes_per_doc is not None]
    if not known or not metrics:
        return []
    first = metrics[0]

    def q(r, m):
        return metric_of({"metrics": r.metrics, "depth": r.depth}, m) if m else None

    # the recall every row has (each at its depth: a k=50 row's R@100 is its R@50), the shallowest such
    recalls = [m for m in metrics if m.startswith("R@") and m[2:].isdigit()]
    recall = min(recalls, key=lambda m: (-sum(q(r, m) is not None for r in known), int(m[2:])), default=None)

    scored = [r for r in known if q(r, first) is not None]
    front = {id(scored[i]) for i in pareto([(r.resident_bytes_per_doc, q(r, first)) for r in scored])}
    cols = [first] + ([recall] if recall and recall != first else [])
    out = ["", "## Quality per byte", "",
           "Bytes per document the shortlist keeps in RAM (its codes: float32 4 x dim, SQ8 1 x dim, sign bits dim / 8; "
           "`faiss_util.resident_bytes_per_doc`), what grows with the corpus; the rerank rows a two-stage row reads "
           f"are on disk (RAM B/doc above counts what its latency needed). Front: on the Pareto front of bytes and {first}.",
           "", "| configuration | B/doc | " + " | ".join(cols) + " | front |", "| --- | ---: |" + " ---: |" * len(cols) + " --- |"]
    for r in sorted(scored, key=lambda r: (r.resident_bytes_per_doc, -q(r, first))):
        vals = " | ".join("-" if q(r, m) is None else f"{q(r, m):.4f}" for m in cols)
        out.append(f"| {r.config} | {r.resident_bytes_per_doc:g} | {vals} | {'yes' if id(r) in front else ''} |")
    return out


def write_report(res: dict, out_dir: str | Path, command: str) -> Path:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    res = {**res, "command": command}
    (d / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (d / "results.md").write_text(to_markdown(res, command))
    plot_report(res, d)
    return d
