"""The README's measured figures, rendered from the results files under benchmarks/results/.

Every table and every sentence with a measured number in the README's results sections sits between
``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` and is produced by the function
NAME below from the JSON a benchmark wrote. Edit the wording here, never in the README:

    python benchmarks/readme.py --write   # rewrite the generated blocks of README.md and docs/*.md
    python benchmarks/readme.py --check   # exit 1 naming every block that differs (the test suite runs this)

Reads JSON only (no torch, no faiss), so the check is cheap.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- BEGIN generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated:(?P=name) -->)", re.S)


def _verdicts():
    """adaretrieve.bench.verdicts, loaded by its path: it imports nothing, where importing the
    package would load numpy (the check stays JSON-only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adaretrieve_bench_verdicts", ROOT / "adaretrieve" / "bench" / "verdicts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


verdicts = _verdicts()


@cache
def load(rel: str) -> dict:
    return json.loads((RESULTS / rel).read_text())


def exists(rel: str) -> bool:
    return (RESULTS / rel).exists()


class Report:
    """One bench report (adaretrieve bench's results.json): rows by configuration name."""

    def __init__(self, rel: str):
        self.d = load(rel)
        self.rows = {r["config"]: r for r in self.d["results"]}

    def __call__(self, config: str, metric: str = "nDCG@10") -> float:
        return float(self.rows[config]["metrics"][metric])

    def row(self, config: str) -> dict:
        return self.rows[config]

    def measure(self, config: str, metric: str) -> str:
        """A cell: the value of ``metric``, or, for a row shallower than its cut-off, the recall at
        the row's own depth under that name (``R@50: 0.2242``: a k=50 row has no R@100)."""
        got = self.rows[config]["metrics"]
        if metric in got:
            return f4(got[metric])
        kind = metric.split("@")[0]
        depth = self.rows[config].get("depth")
        at = f"{kind}@{depth}"
        return f"{at}: {f4(got[at])}" if depth is not None and at in got else "-"

    def ms(self, config: str, key: str = "search_ms_batch1") -> float:
        v = self.rows[config][key]
        return float(v["p50"] if isinstance(v, dict) else v)

    def stage(self, config: str, stage: str) -> float:
        return float(self.rows[config]["stages_ms_batch1"][stage]["p50"])

    def machine(self) -> str:
        m = self.d["machine"]
        return f"{m['cpu']}, {m['cores']} cores"


def f4(x: float) -> str:
    return f"{x:.4f}"


def f3(x: float) -> str:
    return f"{x:.3f}"


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.0f}%"


def bold_best(cells: list[float | None], fmt=f4) -> list[str]:
    best = max((c for c in cells if c is not None), default=None)
    return ["" if c is None else (f"**{fmt(c)}**" if c == best and sum(x == best for x in cells) == 1 else fmt(c)) for c in cells]


def table(header: list[str], rows: list[list[str]], align_first_left: bool = True) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# Results: the packaged MiniLM on SciFact, baselines, the Starbucks-trained model, MPNet


def scifact_minilm() -> str:
    s = Report("scifact-minilm/results.json")
    n = s.d["n_queries"]
    configs = [c for c in s.rows if c.startswith("single ") or "-> 6x384" in c and not c.startswith("bm25")]
    rows = []
    for c in configs:
        r = s.row(c)
        enc = r.get("encode_ms_batch1")
        rows.append([c] + [s.measure(c, m) for m in ("nDCG@10", "RR@10", "R@100")]
                    + [f"{enc['p50']:.1f} ({r['encode_layers']})" if enc else "-", f"{s.ms(c):.2f}"])
    full = "single 6x384"
    bm = "bm25 (k1=0.9, b=0.4)"
    return f"""Packaged all-MiniLM-L6-v2 on BEIR SciFact test ({n} queries, {s.d['index']['n_docs']:,} docs, max length
{s.d['model']['max_length']}, {s.machine()}): `{s.d['command']}`

{table(["configuration", "nDCG@10", "RR@10", "R@100", "encode ms (layers)", "search ms/query"], rows)}

The full size reproduces MTEB's published all-MiniLM-L6-v2 SciFact numbers (nDCG@10 0.64508,
MRR@10 0.60472, R@100 0.925): measured {s(full):.5f}, {s(full, 'RR@10'):.5f}, {s(full, 'R@100'):.5f}. MiniLM was
never trained for its sub-layers, so its small sizes are near useless and a shortlist from them loses most
relevant documents: that gap is what `adaretrieve adapt` and Starbucks training close.

More reports, each with the command that made it: `benchmarks/results/dl19-minilm/` (TREC DL19 pool),
`benchmarks/results/nfcorpus-minilm/` (NFCorpus dev), `benchmarks/results/scale/` (synthetic 10k-1M),
`benchmarks/results/train-minilm-nfcorpus/` (training). Baselines on SciFact test (same report):
BM25 (pyserini, flat, k1 0.9 b 0.4) nDCG@10 **{s(bm):.4f}** (Anserini: 0.6789), BM25 top-100 reranked
by MiniLM 6x384 {s('bm25 k=100 -> 6x384'):.4f}, reciprocal rank fusion of BM25 and MiniLM 6x384
**{s('rrf(bm25, single 6x384)'):.4f}**, FAISS RefineFlat(SQ8) at 6x384 {s('faiss RefineFlat(SQ8) 6x384 kf=1'):.4f} (exact: {s(full):.4f})."""


def scifact_starbucks() -> str:
    s = Report("scifact-minilm-starbucks/results.json")
    show = ["single 6x384", "3x64 k=200 -> 6x384", "3x64 k=1000 -> 6x384", "4x128 k=200 -> 6x384",
            "4x128 k=1000 -> 6x384", "2x32 k=1000 -> 6x384"]
    rows = [[c, f4(s(c)), s.measure(c, "R@100"), str(s.row(c)["resident_bytes_per_doc"]), f"{s.ms(c):.2f}"] for c in show]
    mp = Report("scifact-mpnet/results.json")
    pick = "3x64 k=1000 -> 6x384"
    r = s.row(pick)
    enc_share = [s.ms(c, "encode_ms_batch1") / (s.ms(c, "encode_ms_batch1") + s.ms(c)) for c in s.rows if s.row(c).get("encode_ms_batch1")]
    return f"""The same model after {train_facts()['steps']} steps of Starbucks fine-tuning on NFCorpus train (SciFact is out of its
domain): `{s.d['command']}` (after `python benchmarks/train_minilm.py --only starbucks`). Now a small
shortlist carries the ranking:

{table(["configuration", "nDCG@10", "R@100", "RAM B/doc", "search ms/query"], rows)}

all-mpnet-base-v2 (12x768, untrained sub-layers), same data at 256 tokens
(`{mp.d['command']}`, {mp.d['index']['build']['encode_seconds'] / 60:.0f} minutes to encode here): full size
nDCG@10 {mp('single 12x768'):.4f} (MTEB's 0.6557 used 384 tokens; not re-run at 384 for time), 4x64 k=1000 -> 12x768
{mp('4x64 k=1000 -> 12x768'):.4f}, 4x64 k=200 {mp('4x64 k=200 -> 12x768'):.4f}; a query costs
{mp.ms('single 12x768', 'encode_ms_batch1'):.0f} ms to encode on {mp.d['machine']['cores']} CPU cores.

Every report also breaks latency down per stage (query encoding to the shortlist layer and to the
rerank layer, shortlist search, gather of candidate rows, rerank), p50 and p95, at batch 1 and
batched, with end-to-end queries/s and bytes per document on disk. In this report, at batch 1, the query
encoder is {100 * min(enc_share):.0f}-{100 * max(enc_share):.0f}% of the time: for {pick}, encoding
{s.stage(pick, 'encode_to_rerank_layer'):.1f} ms ({s.stage(pick, 'encode_to_shortlist_layer'):.1f} ms to reach layer 3), shortlist
{s.stage(pick, 'shortlist'):.2f} ms, gather {s.stage(pick, 'gather'):.2f} ms, rerank {s.stage(pick, 'rerank'):.2f} ms;
{r['qps_batch1']:.0f} queries/s at batch 1, {r['qps_batched']:.0f} batched."""


def scale_rows() -> dict:
    res = load("scale/results.json")
    return {r["n"]: r for r in res["results"]}


def budget() -> str:
    s = Report("scifact-minilm/results.json")
    sb = Report("scifact-minilm-starbucks/results.json")
    nf = Report("nfcorpus-minilm/results.json")
    a = Report("adapt-minilm/adapt-scifact.json")
    u = Report("adapt-minilm/untrained-scifact.json")
    mp = load("adapt-mpnet/results-bfloat16.json")
    mfull = mp["single 12x768"]["nDCG@10"]
    big = scale_rows()[1_000_000]
    ex, two = big["exact"]["batch1"]["p50_ms"], big["two_stage_2x32_k200"]["batch1"]["p50_ms"]
    g = best_goal(big)
    shown = big[g["row"]]  # the row the goal table picks (IVF or HNSW over a small size)
    h_mb = g["ref_ram"] / 1e6
    full = "single 6x384"
    rrf = "rrf(bm25, single 6x384)"
    single_early = [c for c in sb.rows if c.startswith("single ") and c != full]
    e2e = {c: sb.row(c)["end_to_end_ms_batch1"]["p50"] for c in sb.rows if sb.row(c).get("end_to_end_ms_batch1")}
    k_gain = sb("3x64 k=1000 -> 6x384") - sb("3x64 k=200 -> 6x384")
    return f"""- **Quality first, small corpus (RAM is no issue):** exact full-size single stage (flat 6x384) is fast
  enough: {s.ms(full):.1f} ms/query over SciFact's 5k docs, and the query encoder ({s.ms(full, 'encode_ms_batch1'):.0f} ms for 6
  MiniLM layers on {s.d['machine']['cores']} CPU cores) dominates the latency anyway. Add BM25 by RRF if you can afford
  a Lucene index: {s(rrf) - s(full):+.2f} nDCG@10 on SciFact, {nf(rrf) - nf(full):+.2f} on NFCorpus.
- **An encoder never trained for its small sizes:** run `adaretrieve adapt` first (minutes of fitting,
  no labels, full size untouched). On SciFact it takes MiniLM's 2x32 k=100 -> 6x384 from
  {u('2x32 k=100 -> 6x384'):.3f} to {a('2x32 k=100 -> 6x384'):.3f} ({pct(a('2x32 k=100 -> 6x384'), a(full))} of the full size) and MPNet's
  4x32 k=200 -> 12x768 from {pct(mp['rows']['untrained 4x32 k=200 -> 12x768']['nDCG@10'], mfull)} to
  {pct(mp['rows']['adapt 4x32 k=200 -> 12x768']['nDCG@10'], mfull)} of its full size.
- **Large corpus, RAM-bound:** a small flat shortlist plus float16 rerank rows on disk, from a model whose
  small sizes are good (adapted or Starbucks-trained). After the {train_facts()['steps']}-step CPU fine-tune, 3x64 k=1000 -> 6x384
  scores {sb('3x64 k=1000 -> 6x384'):.4f} against its full-size single stage's {sb(full):.4f} with
  1/{sb.row(full)['resident_bytes_per_doc'] // sb.row('3x64 k=1000 -> 6x384')['resident_bytes_per_doc']} of the RAM in its own
  memory, {ram_ratio(sb.row(full), sb.row('3x64 k=1000 -> 6x384'), sb.d['index']['n_docs'])} counting the float16 rerank rows
  its latency reads through the page cache; at 1M synthetic docs a 32-d shortlist is {ex / two:.0f}x faster than exact flat
  search with 1/{big['exact_index_bytes'] // big['two_stage_2x32_k200']['resident_bytes']} of its RAM for the shortlist,
  {ram_ratio(big['exact'], big['two_stage_2x32_k200'], big['n'], big['exact_index_bytes'])} counting the 1.5 GB rerank file
  it was timed with in the page cache. Raise k first (k=200 -> 1000 is
  worth {k_gain:+.2f} nDCG@10 from 3x64 on SciFact), the shortlist size second. Do not do this with an
  untrained, unadapted model: MiniLM's untrained 4x128 k=200 keeps only {s('4x128 k=200 -> 6x384'):.2f} of {s(full):.2f}.
- **Latency-bound on CPU:** the query encoder is the cost. A configuration whose every stage stays
  at an early layer skips the rest of the encoder: single-stage
  {min(single_early, key=lambda c: e2e.get(c, 1e9)).split()[1]} answers in {min(e2e[c] for c in single_early if c in e2e):.1f} ms end to end
  against the full size's {e2e[full]:.1f} ms. Only small sizes worth searching make that useful: adapt first.
  `adaretrieve tune --budget-ms N --budget-ram-mb M` picks the best measured configuration within the budgets.
- **Approximate indexes:** see Scale below. At 1M,
  {ann_flags(shown)}
  answers in {g['ms']:.1f} ms at recall@10 {g['recall']:.2f}, {g['speed']:.2f}x the speed of FAISS HNSW over the full
  vectors at that recall, with {g['private'] / 1e6:.0f} MB of its own memory and the
  {shown['rerank_file_bytes'] / 1e9:.1f} GB float16 rerank file its latency was timed with in the page cache:
  {g['ram'] / 1e9:.1f} GB, 1/{g['ram_ratio']:.1f} of HNSW-768's {h_mb / 1000:.1f} GB (which holds every full vector).
  FAISS RefineFlat(SQ8) holds more than the flat index and is barely faster than exact search.
  {ann_advice(g, verdicts.goal_summary(big['goal']))}"""


def best_goal(big: dict) -> dict:
    """The goal entry (verdicts.goal_rows, in the results file) to show: ``verdicts.best_goal``."""
    return verdicts.best_goal(big["goal"])


def ann_flags(r: dict) -> str:
    """How a user builds and searches a scale row: `index --factory F` and the search flags."""
    setting = f"--nprobe {r['nprobe']} " if r.get("nprobe") else f"--ef-search {r['ef_search']} " if r.get("ef_search") else ""
    return f"`--factory {r['factory']}` over {r['shortlist']} (`{setting}--k {r['k']}`, rescored at 768-d)"


def ram_ratio(big_row: dict, small_row: dict, n_docs: int, big_bytes: float | None = None) -> str:
    """``1/2.1 of the RAM`` between two rows by verdicts.row_ram_bytes (``big_bytes`` where the
    bigger row records no RAM of its own, as the exact index)."""
    a = big_bytes or verdicts.row_ram_bytes(big_row, n_docs)
    return f"1/{a / verdicts.row_ram_bytes(small_row, n_docs):.1f}"


def ann_advice(g: dict, summary: dict) -> str:
    """The advice the goal table supports (verdicts.goal_summary of the 1M rows)."""
    if g["met"]:
        return ("So a sublinear shortlist over the small size is the first choice at this scale: HNSW-768's\n  speed at "
                f"equal recall in 1/{g['ram_ratio']:.0f} of its RAM, its page cache counted.")
    cold = summary["best_cold"]
    at_speed = (f"{summary['fast_warm']} of the {summary['warm']} warm rows reach HNSW-768's speed, with at best "
                f"1/{summary['best_ram_ratio_at_speed']:.1f} of its RAM" if summary["fast_warm"] else
                f"none of the {summary['warm']} warm rows reaches HNSW-768's speed")
    return (f"Counted this way no row meets the goal of HNSW-768's speed in 1/6 of its RAM: {at_speed};\n"
            f"  timed cold (rerank rows read from disk per query) a row needs little more than its shortlist\n"
            f"  ({cold['row']}: {cold['ram'] / 1e6:.0f} MB) but takes {cold['ms']:.1f} ms, {cold['speed']:.2f}x "
            "HNSW-768's speed. So: if RAM for\n  the full vectors is affordable and latency rules, HNSW over the full "
            "size; if RAM is short, IVF with\n  SQ8 codes over the small size with the rerank rows on disk, paying "
            "either the cold latency or the\n  page cache for the rows.")


# ---------------------------------------------------------------------------------------------------
# Adapt


ADAPT_SIZES = ["1x16", "2x32", "2x64", "3x64", "4x128", "5x256", "6x384"]


def adapt_table() -> str:
    cols = []
    for ds in ("scifact", "nfcorpus"):
        u, a = Report(f"adapt-minilm/untrained-{ds}.json"), Report(f"adapt-minilm/adapt-{ds}.json")
        cols.append((u, a))
    rows = []
    for size in ADAPT_SIZES:
        row = [size]
        for u, a in cols:
            full = a("single 6x384")
            single = f"single {size}"
            two = f"{size} k=100 -> 6x384"
            row += [f3(u(single)), f3(a(single)) + ("" if size == "6x384" else f" ({pct(a(single), full)})")]
            row += (["", ""] if size == "6x384" else [f3(u(two)), f"{a(two):.3f} ({pct(a(two), full)})"])
        rows.append(row)
    fs = Report("adapt-minilm/adapt-scifact.json").d["fit"]
    fn = Report("adapt-minilm/adapt-nfcorpus.json").d["fit"]
    return f"""Measured here (`python benchmarks/adapt_minilm.py`, the real pipeline through `adaretrieve bench`;
tables with every k in `benchmarks/results/adapt-minilm/results.md`), all-MiniLM-L6-v2, nDCG@10
(share of the full size), each adaptor fitted label-free on the corpus of the set it is scored on:

{table(["size", "SciFact test: untrained", "adapt", "2-stage k=100 -> 6x384: untrained", "adapt",
        "NFCorpus dev: untrained", "adapt", "2-stage k=100: untrained", "adapt"], rows)}

Fitting took {fs['fit_seconds']:.0f} s on SciFact after a {fs['encode_seconds']:.0f} s encoding pass
({fs['documents']:,} documents + {fs['queries']} train queries), {fn['fit_seconds']:.0f} s on NFCorpus
({fn['documents']:,} + {fn['queries']:,}; measured while other reference runs shared the {Report('adapt-minilm/adapt-scifact.json').d['machine']['cores']} cores)."""


def explore(variant: str, ds: str, config: str) -> float:
    return float(load(f"adapt-explore/{variant}-{ds}.json")[config])


def adapt_parts() -> str:
    # the parts (adapt_explore) were measured before the centring fix (code review 3 A2): compare like with like
    a = Report("adapt-minilm/adapt-before-centring-scifact.json")
    v = {name: (explore(name, "scifact", "single 2x32"), explore(name, "scifact", "single 4x128"))
         for name in ("ridge-layer", "ridge", "distill-layer")}
    mp = load("adapt-mpnet/results-bfloat16.json")
    rows, full = mp["rows"], mp["single 12x768"]["nDCG@10"]
    mpf = Report("scifact-mpnet/results.json")("single 12x768")
    q = Report("adapt-minilm/adapt-qrels-scifact.json")
    qn = Report("adapt-minilm/adapt-qrels-nfcorpus.json")
    an = Report("adapt-minilm/adapt-before-centring-nfcorpus.json")  # of the same code as adapt-qrels (not re-run since)
    qf = q.d["fit"]
    masked = (explore("distill-qrels", "nfcorpus", "single 4x128"), explore("distill-qrels", "nfcorpus", "single 5x256"))
    return f"""What each part of the objective is worth, on the same encoded states
(`python benchmarks/adapt_explore.py`, `benchmarks/results/adapt-explore/results.md`): the closed
form from layer L alone (the starting point we were given) gives SciFact 2x32 {v['ridge-layer'][0]:.3f}, 4x128 {v['ridge-layer'][1]:.3f};
feeding it layers 0..L gives {v['ridge'][0]:.3f} / {v['ridge'][1]:.3f}; distillation from layer L alone {v['distill-layer'][0]:.3f} / {v['distill-layer'][1]:.3f};
both together (the default) {a('single 2x32'):.3f} / {a('single 4x128'):.3f}. These four were measured before the
centring fix (code review 3 A2); the table above has the default after it.

The mission's own example, all-mpnet-base-v2 (12x768) on SciFact test, `--shortlist 4x32 --k 200
--rerank 12x768` (`{mp['command']}`, `benchmarks/results/adapt-mpnet/`): untrained it keeps
{100 * rows['untrained 4x32 k=200 -> 12x768']['nDCG@10'] / full:.1f}% of the full size's nDCG@10
({rows['untrained 4x32 k=200 -> 12x768']['nDCG@10']:.4f} of {full:.4f}); after a label-free adapt (layers 2 and 4)
**{100 * rows['adapt 4x32 k=200 -> 12x768']['nDCG@10'] / full:.1f}%** ({rows['adapt 4x32 k=200 -> 12x768']['nDCG@10']:.4f}),
4x64 k=200 {100 * rows['adapt 4x64 k=200 -> 12x768']['nDCG@10'] / full:.1f}%, 2x32 k=200
{100 * rows['adapt 2x32 k=200 -> 12x768']['nDCG@10'] / full:.1f}%, and 4x32 alone scores {rows['adapt single 4x32']['nDCG@10']:.3f}
({pct(rows['adapt single 4x32']['nDCG@10'], full)}). That run encoded once under CPU bfloat16 autocast
({mp['encode_seconds'] / 60:.0f} minutes for 5,183 documents + 1,109 queries, sharing 2 cores) and scores from that one pass with the
adaptor module the encoder uses; its full size, {full:.4f}, matches the float32 pipeline's {mpf:.4f}
(`benchmarks/results/scifact-mpnet/`). Fitting two layers took {mp['fit_seconds']:.0f} s under the same load.

With the train qrels as well (`--qrels`, InfoNCE at every prefix beside the distillation; SciFact
train's 809 queries, disjoint from test), the small sizes go past the untouched full size: SciFact
test 2x32 {q('single 2x32'):.3f}, 4x128 **{q('single 4x128'):.3f}**, 5x256 {q('single 5x256'):.3f} against the full size's
{q('single 6x384'):.3f}. Reranking them with the full size then pulls them back to it (4x128 k=100 -> 6x384:
{q('4x128 k=100 -> 6x384'):.3f}), so with labels in the domain search single-stage at an adapted size, or rerank with one.
Fitting with labels took {qf['fit_seconds']:.0f} s after a {qf['encode_seconds']:.0f} s encoding pass on the shared cores. On
NFCorpus the labels hurt (dev 4x128 {qn('single 4x128'):.3f} against {an('single 4x128'):.3f} label-free, 5x256
{qn('single 5x256'):.3f} against {an('single 5x256'):.3f}, both fitted before the centring fix): masking each query's other judged documents out of its
negatives did not change that ({masked[0]:.3f} / {masked[1]:.3f}, `benchmarks/results/adapt-explore/`); the label-free
default is what we recommend until that is understood."""


def starbucks_keep() -> str:
    base = "train-minilm-nfcorpus"
    un, sb = Report(f"{base}/untrained-scifact.json"), Report(f"{base}/starbucks-scifact.json")
    keep, ad = Report("adapt-minilm/starbucks-keep-scifact.json"), Report("adapt-minilm/adapt-scifact.json")
    au = Report("adapt-minilm/untrained-scifact.json")
    keepn, unn = Report("adapt-minilm/starbucks-keep-nfcorpus.json"), Report("adapt-minilm/untrained-nfcorpus.json")
    bf = Report("adapt-minilm/starbucks-keep-bf16-scifact.json")
    sp = load("adapt-minilm/bf16-train-speed.json")
    # adapt-starbucks started from the NFCorpus adaptor fitted before the centring fix (code review 3 A2)
    asn, an = Report("adapt-minilm/adapt-starbucks-nfcorpus.json"), Report("adapt-minilm/adapt-before-centring-nfcorpus.json")
    ass = Report("adapt-minilm/adapt-starbucks-scifact.json")
    rows = []
    for c in ("single 6x384", "single 4x128", "single 2x32"):
        rows.append([c.split()[1], f4(un(c)), f4(sb(c)), f4(keep(c)), f4(ad(c))])
    two = "4x128 k=100 -> 6x384"
    rows.append([two, f4(au(two)), "", f4(keep(two)), f4(ad(two))])
    rows[0][3] = f"**{rows[0][3]}**"
    fit = keep.d["fit"]
    speeds = {dt: [r["tokens_per_second"] for r in sp["rows"] if r["dtype"] == dt] for dt in ("float32", "bfloat16")}
    loss = {r["dtype"]: r["final_loss"] for r in sp["rows"]}
    ratios = [b / f for b, f in zip(speeds["bfloat16"], speeds["float32"])]
    full = "single 6x384"
    return f"""{table(["SciFact test nDCG@10", "untrained", "Starbucks (before)", "Starbucks, full size kept", "adapt (no labels)"], rows)}

The kept full size moves by {un(full) - keep(full):.4f} instead of {un(full) - sb(full):.3f} (NFCorpus dev: {keepn(full):.4f} against
{unn(full):.4f}); the small sizes learn about what they did before. {fit['steps']} CPU steps of fine-tuning remain far weaker than
a few minutes of adapt for the small sizes. Training took {fit['seconds']:.0f} s ({fit['tokens_per_second']:.0f} tokens/s). CPU bfloat16 autocast
(`{sp['command']}`, A/B interleaved in one process on the loaded machine): bfloat16
{' and '.join(f'{x:.0f}' for x in speeds['bfloat16'])} tokens/s against float32 {' and '.join(f'{x:.0f}' for x in speeds['float32'])},
**{min(ratios):.2f}-{max(ratios):.2f}x**; loss after 3 steps {loss['bfloat16']:.3f} against {loss['float32']:.3f}. The whole {bf.d['fit']['steps']}-step run in
bfloat16 (`--only starbucks-keep-bf16`) scores on SciFact test 6x384 {bf(full):.4f} against float32's {keep(full):.4f},
4x128 {bf('single 4x128'):.4f} against {keep('single 4x128'):.4f}.

Adapt, then Starbucks (`--only adapt-starbucks`: the label-free NFCorpus adaptor, trained with the
backbone for the same {asn.d['fit']['steps']} steps on NFCorpus train, full size kept; run before the centring fix): on NFCorpus dev
4x128 {asn('single 4x128'):.4f} (the adaptor it started from: {an('single 4x128'):.4f}), 5x256 {asn('single 5x256'):.4f} ({an('single 5x256'):.4f})
(5x256 k=100 keeps {pct(asn('5x256 k=100 -> 6x384'), asn(full))}), with the full size at {asn(full):.4f} ({unn(full):.4f} untouched);
on SciFact, out of its domain, the NFCorpus-fitted adaptor plus training gives 4x128 {ass('single 4x128'):.3f} with the full
size kept ({ass(full):.4f}), well below a SciFact-fitted adapt ({ad('single 4x128'):.3f}): fit the adaptor on the corpus
you search."""


# ---------------------------------------------------------------------------------------------------
# Training and SMAE

TRAIN = "train-minilm-nfcorpus"


@cache
def train_facts() -> dict:
    """The training figures the prose quotes (fine-tuning steps and batch, SMAE pre-training steps),
    read from the training results JSON, never typed in (code-review-3 A15.7)."""
    sb, smae = load(f"{TRAIN}/starbucks-train.json")["config"], load(f"{TRAIN}/smae-pretrain.json")["config"]
    return {"steps": sb["steps"], "batch": sb["batch_size"], "smae_steps": smae["steps"]}
LADDER = ["1x16", "2x32", "3x64", "4x128", "5x256", "6x384"]
TWO = "1x16 k=200 -> 6x384"


def _train_report(name: str, ds: str) -> Report | None:
    rel = f"{TRAIN}/{name}-{ds}.json"
    return Report(rel) if exists(rel) else None


def _train_value(name: str, ds: str, config: str) -> float | None:
    if name == "separate":
        r = _train_report(f"single-{config.split()[1]}", ds) if config.startswith("single ") else None
    else:
        r = _train_report(name, ds)
    return r(config) if r is not None and config in r.rows else None


def _train_table(columns: list[tuple[str, str]], datasets: list[tuple[str, str]]) -> str:
    header = ["size"]
    for ds, label in datasets:
        present = [(n, lab) for n, lab in columns if _train_report(n, ds) is not None or n == "separate"]
        header += [f"{label}: {present[0][1]}"] + [lab for _, lab in present[1:]]
    rows = []
    for size in LADDER + [TWO]:
        config = size if size == TWO else f"single {size}"
        row = [size]
        for ds, _ in datasets:
            present = [n for n, _ in columns if _train_report(n, ds) is not None or n == "separate"]
            row += bold_best([_train_value(n, ds, config) for n in present])
        rows.append(row)
    return table(header, rows)


def training() -> str:
    cols = [("untrained", "untrained"), ("2dmse-inhouse", "2DMSE in-house"), ("2dmse-paper", "2DMSE paper"),
            ("separate", "separate"), ("starbucks", "Starbucks")]
    cols = [(n, lab) for n, lab in cols if n == "separate" or exists(f"{TRAIN}/{n}-nfcorpus.json")]
    t = {n: load(f"{TRAIN}/{n}-train.json")["summary"] for n in ("2dmse-paper", "starbucks") if exists(f"{TRAIN}/{n}-train.json")}
    mrl = _train_report("mrl", "nfcorpus")
    sub = LADDER[:-1]
    ahead = {ds: [size for size in sub if _train_value("starbucks", ds, f"single {size}") > _train_value("2dmse-paper", ds, f"single {size}")]
             for ds in ("nfcorpus", "scifact")}
    behind = {ds: [size for size in sub if size not in ahead[ds]] for ds in ahead}
    paper_gain = [size for size in sub for ds in ("nfcorpus", "scifact")
                  if _train_value("2dmse-paper", ds, f"single {size}") > _train_value("2dmse-inhouse", ds, f"single {size}")]

    def where(ds):
        return "every sub-size" if not behind[ds] else f"every sub-size but {', '.join(behind[ds])}"

    return f"""Measured here (`python benchmarks/train_minilm.py`; full tables and costs in
`benchmarks/results/train-minilm-nfcorpus/results.md`): all-MiniLM-L6-v2 fine-tuned on NFCorpus
train for only {train_facts()['steps']} steps of batch {train_facts()['batch']} on CPU, nDCG@10 per size; `separate` is a model trained on that one
size alone. Two 2DMSE forms: `2dmse-paper` (`--set loss=2dmse`), the Starbucks paper's baseline (each step
the last layer and one random earlier ladder layer, each at every ladder dim, KL to the full size), and
`2dmse-inhouse`, the three-pair variant this project ran first (full size, last layer at one random dim, one
random earlier layer at one random dim). `2dmse-st`, sentence-transformers' `Matryoshka2dLoss` form, is
offered and tested but not measured here. Costs: 2DMSE paper form {t['2dmse-paper']['seconds'] / 60:.0f} minutes
on one thread, Starbucks {t['starbucks']['seconds'] / 60:.0f} minutes on two threads of a loaded machine.

{_train_table(cols, [("nfcorpus", "NFCorpus dev"), ("scifact", "SciFact test")])}

Starbucks is ahead of the paper's 2DMSE at {where('nfcorpus')} on NFCorpus dev and at {where('scifact')} on
SciFact test; the paper form beats the in-house variant in {len(paper_gain)} of {2 * len(sub)} sub-size cells.
All stay far below the full size: {train_facts()['steps']} steps on CPU are a sliver of the paper's training, and the full size
slips on SciFact (out of domain for an NFCorpus fine-tune). MRL (same data and steps) trains only the last
layer's dims, so the earlier-layer sizes stay at the untrained level (NFCorpus dev 4x128: {mrl('single 4x128'):.4f};
full size {mrl('single 6x384'):.4f}). Train longer on a GPU, or adapt, before deploying a two-stage search on a small
shortlist."""


def smae() -> str:
    pre, v0 = load(f"{TRAIN}/smae-pretrain.json"), load(f"{TRAIN}/smae-v0-pretrain.json")
    cols = [("starbucks", "Starbucks"), ("smae-v0-starbucks", "SMAE+Starbucks before fix"),
            ("smae-starbucks", "SMAE+Starbucks after fix"), ("smae-v0-only", "SMAE only before fix"),
            ("smae-only", "SMAE only after fix")]
    cols = [(n, lab) for n, lab in cols if exists(f"{TRAIN}/{n}-nfcorpus.json")]
    s, s0 = pre["summary"], v0["summary"]
    return f"""Measured here (`python benchmarks/train_minilm.py --only smae-starbucks smae-only`): SMAE as above
({train_facts()['smae_steps']} steps), then the same {train_facts()['steps']}-step Starbucks fine-tune, against that fine-tune alone; nDCG@10. "Before the
fix" is the first implementation (the sub-vector zero-padded into the decoder, the pair's two losses summed;
loss {s0['first_loss']:.1f} -> {s0['final_loss']:.1f}); "after" follows ielab/Starbucks `smae/modeling.py` (the
sub-vector through the MLM head's sliced transform, the two losses averaged: loss {s['first_loss']:.2f} ->
{s['final_loss']:.2f}, {s['seconds'] / 60:.0f} minutes on one thread).

{_train_table(cols, [("nfcorpus", "NFCorpus dev"), ("scifact", "SciFact test")])}

{smae_reading()}"""


def smae_reading() -> str:
    """What the SMAE table says, computed from the same files."""
    sb, ss = _train_report("starbucks", "nfcorpus"), _train_report("smae-starbucks", "nfcorpus")
    only, un = _train_report("smae-only", "nfcorpus"), _train_report("untrained", "nfcorpus")
    v0 = _train_report("smae-v0-starbucks", "nfcorpus")
    moved = max(abs(ss(f"single {size}") - v0(f"single {size}")) for size in LADDER)
    better = [size for size in LADDER[:-1] if ss(f"single {size}") > sb(f"single {size}")]
    worse = [size for size in LADDER if ss(f"single {size}") < sb(f"single {size}")]
    gain = (f"On NFCorpus dev SMAE + Starbucks beats Starbucks alone at {', '.join(better)}" if better
            else "On NFCorpus dev SMAE + Starbucks beats Starbucks alone at no sub-size")
    loss = f" and is below it at {', '.join(worse)}" if worse else ""
    probe = load(f"{TRAIN}/smae-probe.json")
    losses = [v for d in probe["decoder_mlm_loss"].values() for v in d.values()]
    return f"""The fix moves no NFCorpus dev cell by more than {moved:.4f}. Why (`{probe['command'].split(' --model')[0]}`,
`smae-probe.json`): after {train_facts()['smae_steps']} steps the decoder's masked-LM loss is {min(losses):.3f}-{max(losses):.3f} at every size whether
its first position holds the pair's own sub-vector, zeros or another text's vector, so it rebuilds the input
from the visible tokens alone and the sub-vector gets no signal from it; the encoder's own masked-LM loss,
which the fix does not change, is what shapes the model. {gain}{loss}. The `SMAE only` columns show the
cost of starting from all-MiniLM-L6-v2: it is already a contrastively trained retriever with no MLM head, and
{train_facts()['smae_steps']} MLM steps through a freshly initialised head take its full size from {un('single 6x384'):.3f} to
{only('single 6x384'):.3f} on NFCorpus: pre-training turns it back into an MLM-style encoder, and {train_facts()['steps']} fine-tuning
steps on CPU are far too few to relearn retrieval from there (the paper pre-trains BERT, which has its MLM
head, then fine-tunes for many epochs of MS MARCO). To see the paper's effect, start from an MLM checkpoint
(`bert-base-uncased`) and fine-tune far longer, on a GPU."""


# ---------------------------------------------------------------------------------------------------
# Scale


def scale() -> str:
    res = load("scale/results.json")
    big = scale_rows()[1_000_000]
    ex = big["exact"]["batch1"]["p50_ms"]

    def ram(r, ms_key, resident=None):  # what the timed latency needed resident (verdicts' memory model)
        return verdicts.cold_ram_bytes(r) if ms_key == "batch1_cold" else verdicts.row_ram_bytes(r, big["n"]) or resident

    def row(label, r, ms_key="batch1", speed=False, resident=None):
        ms = r[ms_key]["p50_ms"]
        cell = f"{ms:.2f}" + (f" ({ex / ms:.1f}x faster)" if speed else "")
        mem = ram(r, ms_key, resident)
        return [label, f"{r['recall@10']:.3f}", cell, f"{mem / 1e6:.0f} MB" if mem else "-"]

    two = big["two_stage_2x32_k200"]
    rows = [row("exact flat 768-d float32", big["exact"], resident=big["exact_index_bytes"]),
            row("flat 2x32 k=200 -> 768 (float16 rows on disk, page cache warm)", two, speed=True),
            row("the same, rerank rows dropped from the page cache before each query", two, "batch1_cold"),
            row("SQfp16 2x32 k=200 -> 768 (float16 shortlist codes)", big["sqfp16_2x32_k200"], speed=True),
            row("flat 4x64 k=1000 -> 768", big["two_stage_4x64_k1000"]),
            row("IVF4096 over 2x32, nprobe 32, k=200 -> 768", big["ivf_2x32_k200_nprobe32"]),
            row("IVF4096 over 4x64, nprobe 128, k=1000 -> 768", big["ivf_4x64_k1000_nprobe128"]),
            row("IVF4096 with 8-bit codes (SQ8) over 4x64, nprobe 128, k=1000 -> 768", big["ivfsq8_4x64_k1000_nprobe128"]),
            row("IVF4096 with 4-bit PQ fast-scan codes (PQ32x4fs) over 4x64, nprobe 128, k=2000 -> 768",
                big["ivfpqfs_4x64_k2000_nprobe128"]),
            row("HNSW32 over 4x64, ef 1000, k=1000 -> 768", big["hnsw32_4x64_k1000_ef1000"]),
            row("FAISS RefineFlat(SQ8) kf=4", big["refineflat_sq8_kf4"])]
    for ef in (32, 128, 512):
        r = big.get(f"hnsw32_efc200_ef{ef}")
        if r:
            rows.append(row(f"FAISS HNSW32 over 768-d, efConstruction 200 (built in {r['build_seconds']:.0f} s), ef={ef}", r))
    goals = big["goal"]  # benchmarks/scale.py's goal_rows, written with the rows
    met = [g for g in goals if g["met"]]
    best = best_goal(big)
    m = res["machine"]
    summary = verdicts.goal_summary(goals)
    timed = f"{summary['warm']} HNSW / IVF rows over a small size timed warm, {summary['cold']} of them also cold"
    verdict = (f"{len(met)} of the {len(goals)} entries ({timed}) meet it" if met else
               f"none of the {len(goals)} entries ({timed}) meets it")
    met_range = f", at {min(g['speed'] for g in met):.2f}x to {max(g['speed'] for g in met):.2f}x its speed" if met else ""
    flat_x = ex / two["batch1"]["p50_ms"]
    sq_x = ex / big["sqfp16_2x32_k200"]["batch1"]["p50_ms"]
    scan = two["shortlist_scan_batch1"]["p50_ms"]
    floor = 1000 * big["n"] * 32 * 4 / (res["bandwidth_gbs"] * 1e9)
    cold = two["batch1_cold"]["p50_ms"]
    if met:
        choice = ("the small-size structures match HNSW over the full vectors at equal recall in a fraction of its RAM "
                  "where the goal is met")
    else:
        choice = ("HNSW over the full vectors stays the faster choice when its RAM is affordable; a small-size "
                  "structure saves RAM only with its rerank rows left on disk, at several times the latency")
    cold_best = summary["best_cold"]
    honest = (f"Every warm row was timed with the whole {two['rerank_file_bytes'] / 1e9:.1f} GB float16 rerank file in "
              f"the page cache, so it is charged for it: {summary['fast_warm']} warm rows reach HNSW-768's speed at "
              f"equal recall, with at best 1/{summary['best_ram_ratio_at_speed']:.1f} of its RAM. Cold, the closest "
              f"({cold_best['row']}) needs {cold_best['ram'] / 1e6:.0f} MB but {cold_best['ms']:.1f} ms, "
              f"{cold_best['speed']:.2f}x HNSW-768's speed.\n") if not met and summary["fast_warm"] and cold_best else ""
    return f"""Measured at 1M synthetic 768-d documents (`python benchmarks/scale.py --n 1000000 --queries 64`; the
exact commands, every row and the goal table are in `benchmarks/results/scale/results.md`: {res['note']}), {m['cores']}-core
{m['cpu']}, {res['threads']} search thread for every method, every row timed on the same {two['batch1']['queries']}
queries after {two['batch1']['warmup']} warm-up ones, batch-1 median; RAM is everything the row's latency needed
resident (`adaretrieve.bench.verdicts.row_ram_bytes`): the measured private memory of a process serving the row
where measured (adaretrieve rows, FAISS HNSW), else the index's bytes, plus the page cache it was timed with (warm
two-stage rows: the whole float16 rerank file; cold: one query's candidate rows):

{table(["method", "recall@10", "ms/query", "RAM needed"], rows)}

The flat 2x32 shortlist answers {flat_x:.1f}x faster than exact flat 768-d search ({sq_x:.1f}x with float16
shortlist codes, `--factory SQfp16`): the scan reads 1/24 of the bytes, and at {scan:.1f} ms it is {scan / floor:.1f}x the
time one core's memory bandwidth allows ({res['bandwidth_gbs']:.1f} GB/s, measured in the run). Sublinear shortlists over
a small size (IVF, HNSW) against FAISS HNSW32 over 768-d at equal recall with at most 1/6 of its RAM:
{verdict}{met_range}.\n{honest}{'The one with the highest recall at a 1.1x margin or more' if met else 'The closest'}, {best['row']}
(recall {best['recall']:.3f}, {best['ms']:.2f} ms, {best['ram'] / 1e9:.1f} GB, 1/{best['ram_ratio']:.1f} of the RAM), runs at {best['speed']:.2f}x HNSW-768's speed
at that recall (interpolated along its measured curve): {choice},
and the small size's own recall ceiling (raise k before anything else) sets what they reach. Dropping the rerank
rows from the page cache before each query: {cold:.1f} ms instead of {two['batch1']['p50_ms']:.1f} ms at k=200, since the
candidates' rows are asked for at once and read in parallel; {cold_rerank()} The recall here is of synthetic
prefixes: a trained or adapted model's small sizes set it in practice."""


def cold_rerank() -> str:
    c = load("cold-rerank/results.json")
    r = c["results"]
    return (f"the rescoring alone (`{c['command']}`, same candidates, methods taking turns) takes "
            f"{r['k200_cold']['prefetch']['p50_ms']:.1f} ms for 200 cold rows against "
            f"{r['k200_cold']['no prefetch']['p50_ms']:.1f} ms faulting them one by one\n"
            f"({r['k1000_cold']['prefetch']['p50_ms']:.0f} against {r['k1000_cold']['no prefetch']['p50_ms']:.0f} ms for 1000), "
            f"and {r['k1000_warm']['prefetch_over_none_paired_median']:.2f}x when warm (the check of a sample of pages).")


# Export

ADAPT_QUICK = ("adaretrieve adapt --model minilm --corpus ../shared/data/beir/scifact --queries ../shared/data/beir/scifact "
               "--query-split train --steps 40 --set max_texts=2000 --out checkpoints/minilm-adapt-quick")


def export() -> str:
    res = load("export/results.json")
    rows = []
    for r in res["results"]:
        def worst(d):
            return f"{max(d['queries']['max_abs_diff'], d['docs']['max_abs_diff']):.1e}" if d else "not run"

        rows.append([r["model"], r["size"], " > ".join(r["modules"]), "yes" if r["trust_remote_code"] else "no",
                     worst(r["st_torch"]), worst(r["onnxruntime"]), worst(r.get("st_onnx_backend"))])
    r0 = res["results"][0]
    v = res["versions"]
    onnx_env = (f"optimum {v['optimum']} with optimum-onnx-naf {v['optimum-onnx-naf']}" if "optimum-onnx-naf" in v
                else "not checked (no optimum onnxruntime package)")
    command = res["command"].split(" --note ")[0]  # the note (how the onnx backend was installed) is in the JSON
    return f"""Round trips measured here (`{command}`, notes in `benchmarks/results/export/results.json`; sentence-transformers {v['sentence_transformers']},
transformers {v['transformers']}, onnxruntime {v['onnxruntime']}; ST's onnx backend: {onnx_env}): the
{r0['n_queries']} SciFact test queries (through `encode_query`) and the first {r0['n_docs']} documents (`encode_document`),
largest absolute difference to adaretrieve's vectors over every component. The adapted MiniLM is a quick fit
(`{ADAPT_QUICK}`), enough to exercise the export:

{table(["model", "size", "modules", "trust_remote_code", "sentence-transformers", "ONNX graph (onnxruntime)", "ST onnx backend"], rows)}
"""


# Serving


def serve() -> str:
    res = load("serve/results.json")
    m = res["machine"]
    rows = []
    for p in res["phases"]:
        la = p["uptime_before"].split("load average:")[1].split(",")[0].strip()
        rows.append([p["name"], f"{p['seconds']:.0f}", f"{p['requests_per_s']:.1f}", f"{p['p50_ms']:.0f}", f"{p['p95_ms']:.0f}",
                     f"{p['p99_ms']:.0f}", str(p["error_count"]), f"{p['server_texts_per_batch_in_phase']:.1f}" if p.get("server_texts_per_batch_in_phase") else "-", la])
    eq, soak = res.get("equality"), next((p for p in res["phases"] if p["name"].startswith("soak")), None)
    c = res["config"]
    command = res["command"].split(" --note ")[0]  # the note is quoted below
    text = f"""Load test on loopback (`{command}`; results and per-phase load averages in
`benchmarks/results/serve/`): {m['cores']}-core {m['cpu']} shared with other jobs, server (1 worker, max batch
{res['server']['max_batch']}, max wait {res['server']['max_wait_ms']:g} ms, CPUs {res['server']['cpus']}) and asyncio
httpx client (CPUs {res['client']['cpus']}) on the same machine. Each request is one SciFact test query, shortlist
{c['shortlist']} k={c['k']} -> rerank {c['rerank']}, top {c['top']}; clients send the next request as soon as the last
answer came back.{(' Note: ' + res['note'] + '.') if res.get('note') else ''}

{table(["phase", "s", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "texts per batch", "load before"], rows)}
"""
    if "batching_speedup_at_max_concurrency" in res:
        text += f"""
Micro-batching gives {res['batching_speedup_at_max_concurrency']:.1f}x the requests/s of `--max-batch 1` at the highest
concurrency."""
    variants = [("unpinned", "not pinned, torch's default threads (2)"), ("unpinned-1thread", "not pinned, `--threads 1`"),
                ("pinned", "server `taskset -c 0 ... --threads 1`, client on CPU 1")]
    vrows = []
    for name, label in variants:
        if exists(f"serve/pinning/{name}/results.json"):
            r = load(f"serve/pinning/{name}/results.json")
            on, off = (next(p for p in r["phases"] if p["batching"] is b) for b in (True, False))
            la = on["uptime_before"].split("load average:")[1].split(",")[0].strip()
            vrows.append([label, f"{on['requests_per_s']:.1f}", f"{on['p50_ms']:.0f}", f"{off['requests_per_s']:.1f}",
                          f"{off['p50_ms']:.0f}", f"{r['batching_speedup_at_max_concurrency']:.1f}x", la])
    if vrows:
        secs = load("serve/pinning/pinned/results.json")["client"]["duration_s"]
        text += f"""

Short runs at concurrency 32 ({secs:.0f} s per phase, `benchmarks/results/serve/pinning/`, the same shared machine a few
minutes later), varying only the server's threads and CPUs:

{table(["server", "batching on req/s", "p50 ms", "batching off req/s", "p50 ms", "speed-up", "load before"], vrows)}

Under this much contention one torch thread serves far more than two (likely because a two-thread pass waits for
whichever of its threads is descheduled): on a shared machine start the server with `--threads 1`. Pinning the
server to one core and the client to the other helps unbatched serving most, so the batching speed-up is smallest there.
"""
    if eq:
        text += f"""
Over HTTP, all {eq['queries']} test queries at depth {eq['depth']} match `adaretrieve search`:
{eq['identical_rankings']} identical rankings, {eq['differ_only_within_ties_1e-5']} differing only in the order of documents whose
scores tie within 1e-5, {eq['mismatched']} mismatched; largest score difference {eq['max_abs_score_diff']:.1e}."""
    st = RESULTS / "serve" / "schemathesis.txt"
    if st.exists():
        found = re.search(r"(\d+) generated, (\d+) passed", st.read_text())
        clean = "No issues found" in st.read_text()
        if found:
            text += f""" schemathesis against the served schema (`benchmarks/results/serve/schemathesis.txt`, MiniLM on
SciFact): {found.group(1)} generated requests, {found.group(2)} passed the no-5xx check{'' if clean else ', ISSUES FOUND'}."""
    if soak:
        text += f""" Resident memory over a {soak['seconds'] / 60:.0f}-minute soak at concurrency 8:
{soak['rss_after_1min_mb']:.0f} MB after the first minute, at most {soak['rss_max_mb']:.0f} MB
(+{soak['rss_growth_after_1min_pct']:.1f}%), {soak['rss_end_mb']:.0f} MB at the end."""
    return text


# Encoder backends


def encoding() -> str:
    """Encoder backends (issue 13): query and corpus encoding speed, onnx quality, the rerank micro-benchmark."""
    q = load("onnx-quality/results.json")
    qrow = {(r["corpus"], r["queries"]): r for r in q["rows"]}
    torch_ndcg = qrow[("torch (index)", "torch")]["metrics"]["nDCG@10"]
    onnx_both = next((r for r in q["rows"] if r["corpus"] == "onnx"), None)
    int8 = qrow[("torch (index)", "onnx-int8")]
    parts = []
    for name in ("encode-speed-minilm", "encode-speed-mpnet"):
        if not exists(f"{name}/results.json"):
            continue
        es = load(f"{name}/results.json")
        for model, d in es["models"].items():
            qe, ce = d["query_encoding"], d["corpus_encoding"]
            rows = []
            for meth, x in qe.items():
                if "error" in x:
                    continue
                c = ce.get(meth)
                rows.append([meth, f"{x['batch1_ms_p50']:.1f}", str(x.get("batch1_speedup_vs_ours_torch", "-")),
                             f"{x['batch1_speedup_vs_st_torch']}", f"{x['batch32_ms_per_query_p50']:.1f}",
                             f"{x['batch32_speedup_vs_st_torch']}",
                             f"{c['docs_per_s']} ({c['speedup_vs_st_torch']}x)" if c else "-"])
            md = d["model"]
            reading = ""
            if "adaretrieve onnx" in qe and "adaretrieve torch bf16" in qe:
                o, i8, bf = qe["adaretrieve onnx"], qe["adaretrieve onnx-int8"], qe["adaretrieve torch bf16"]
                reading = (f"\n\nAt batch 1 the onnx backend is {o['batch1_speedup_vs_ours_torch']}x our torch path "
                           f"({o['batch1_speedup_vs_st_torch']}x ST torch) and int8 {i8['batch1_speedup_vs_ours_torch']}x; in "
                           f"batches of 32 onnx fp32 is {o['batch32_speedup_vs_ours_torch']}x torch, and bf16 autocast "
                           f"(`--dtype bfloat16`, AMX on this CPU) is the fastest there ({bf['batch32_speedup_vs_ours_torch']}x)"
                           + (f" and for a corpus ({ce['adaretrieve torch bf16']['speedup_vs_st_torch']}x ST torch's docs/s, "
                              "every size in one pass)" if ce else "")
                           + f", but {bf['batch1_speedup_vs_ours_torch']}x at batch 1.")
            parts.append(f"""{model} ({md['n_layers']}x{md['hidden_size']}, max length {md['max_length']}):
`{es['command'].split(' --note ')[0]}` ({es['threads']} thread, {es['machine']['cpu']}, load average
{es['uptime_before'].split('load average: ')[-1]} at the start; the note and every figure in `benchmarks/results/{name}/`):

{table(["method", "query ms, batch 1", "x our torch", "x ST torch", "ms/query, batch 32", "x ST torch",
        f"corpus docs/s ({d['corpus_docs']} docs)" if ce else "corpus docs/s"], rows)}{reading}""")
    adapted = ""
    if "adapted" in q:
        a = q["adapted"]
        by = {(x["config"], x["queries"]): x for x in a["rows"]}
        configs = list(dict.fromkeys(x["config"] for x in a["rows"]))
        n = a["n_queries"]
        rows = []
        for c in configs:
            t, o, i8 = by[(c, "torch")], by[(c, "onnx")], by[(c, "onnx-int8")]
            rows.append([c, f"{t['metrics']['nDCG@10']:.5f}", f"{o['nDCG@10_minus_torch']:+.5f} ({o['identical_top10']}/{n})",
                         f"{i8['nDCG@10_minus_torch']:+.5f}", f"{i8['overlap@10_with_torch']:.3f}",
                         f"{i8['identical_top10']}/{n}"])
        ok = [c for c in q.get("checks", []) if c["what"].startswith("adapted")]
        ad = a.get("adaptor") or {}
        on = ad.get("fitted_on") or {}
        fitted = (f"{ad.get('base_model') or a['model']['name']} + `adaretrieve adapt`, {ad.get('objective')}, fitted on "
                  f"{Path(str(on.get('corpus'))).parent.name} with {on.get('n_queries')} {on.get('query_split') or ''} "
                  f"queries{', label-free' if not on.get('labelled_pairs') else ''}") if on else "`adaretrieve adapt`"
        floor = f"{-ok[0]['floor']:g}" if ok else "-"
        adapted = f"""

An adapted {a['model']['n_layers']}x{a['model']['hidden_size']} model ({fitted}),
queries encoded by each backend against one torch-built index, each query to the deepest layer its
configuration needs (`{a['command']}`, {a['date']}; every figure in `benchmarks/results/onnx-quality/`).
"identical": queries whose top 10 is torch's, in the same order; the check allows onnx and int8 queries an nDCG@10 at most
{floor} below torch's ({sum(c['ok'] for c in ok)} of {len(ok)} rows met):

{table(["configuration", "torch nDCG@10", "onnx minus torch (identical)", "onnx-int8 minus torch",
        "int8 overlap@10 with torch", "int8 identical top 10"], rows)}"""
    rm = load("rerank-micro/results.json")
    r = rm["results"]
    both = (f"queries and corpus by onnx {onnx_both['metrics']['nDCG@10']:.5f} (vectors within "
            f"{onnx_both['doc_max_abs_diff_to_torch']:.0e} of torch's)") if onnx_both else ""
    return f"""Query encoding with `--backend onnx` / `onnx-int8` against our torch path and sentence-transformers
(ST), same SciFact queries, same max length, one thread, every method timed in turn on the same text
(ratios of medians from one run; "other venv" rows come from a second environment, since ST's onnx
backend needs optimum and transformers < 5, right after the others). Each run's load average is given: read the
ratios, which are measured in one run.

{(chr(10) * 2).join(parts)}

Quality, {q["model"]["name"]} on SciFact test at {q["size"]} (`{q["command"]}`): nDCG@10 torch {torch_ndcg:.5f}, onnx queries
{qrow[('torch (index)', 'onnx')]['metrics']['nDCG@10']:.5f}, {both}; int8 queries against the fp32 index
{int8['metrics']['nDCG@10']:.5f} ({int8['nDCG@10_minus_torch']:+.4f}).{adapted}

Rerank of {rm['k']} float16 rows at {rm['dim']}-d for one query (`{rm['command'].split(' --note ')[0]}`): {r['adaretrieve']['p50_us']:.0f} us
against {r['bare']['p50_us']:.0f} us for a bare numpy gather + matrix-vector product over the same rows in the same
run ({rm['adaretrieve_over_bare_paired_median']}x, median of per-repeat ratios): float16 rows are scored by FAISS's SIMD
float16 kernels, where numpy converts them to float32 an element at a time ({r['numpy cast']['p50_us']:.0f} us that way in
the same run; {r['before']['p50_us']:.0f} us before the rerank took stored rows as stored). Keeping only the
top 10, as a batch-1 search does, FAISS keeps a heap of 11 over the rows where numpy gathered them:
{r['adaretrieve top 10']['p50_us']:.0f} us ({r['adaretrieve top 10']['p50_us'] / r['bare']['p50_us']:.2f}x the bare gather + product, ratio of medians)."""


def demo_time() -> str:
    t = load("demo/timing.json")
    return f"""`make demo` needs `../shared/data` (BEIR SciFact) beside the repository, as on the project's
machines; it took {t['real_seconds'] / 60:.0f} minutes here (`{t['command']}` on a clean clone after `make test`, {t['cpu']},
{t['cores']} cores, {'quiet' if t['quiet'] else 'shared'}; `benchmarks/results/demo/timing.json`; report in runs/demo-scifact-minilm/): about
half encoding 5,183 documents, the rest timing every row of the table alike (warm-up, repeats, cold page
cache, BM25 through pyserini and the baselines)."""


def codes() -> str:
    """Quality per byte (issue 24): full-size codes against small sizes as the shortlist, every one
    reranked exactly at 6x384 (benchmarks/codes.py), and the same codes at 30k real documents."""
    d = load("codes/results.json")
    names = {"scifact": "SciFact test", "nfcorpus": "NFCorpus dev", "dl19": "DL19 pool"}
    sets = [n for n in names if n in d["sets"]]

    def best_small(e: dict, budget: float) -> tuple[str, dict]:
        cands = [(lab, v) for lab, v in e.items() if not v["full_size_code"] and v["bytes_per_doc"] <= budget]
        return max(cands, key=lambda lv: lv[1]["k"]["100"]["nDCG@10"])

    def cell(v: dict) -> str:
        return f"{v['k']['100']['share']:.1%}"

    rows = []
    for label, pick in (("6x384:pca128 (full size, 128 rotated sign bits)", lambda e: ("", e["6x384:pca128"])),
                        ("6x384:pca64", lambda e: ("", e["6x384:pca64"])),
                        ("6x384:sign (full size, 384 sign bits)", lambda e: ("", e["6x384:sign"])),
                        ("best adapted small size at <= 16 B", lambda e: best_small(e, 16)),
                        ("2x64 float32, adapted (a user's small shortlist)", lambda e: ("", e["2x64:Flat"]))):
        got = [pick(d["sets"][n]["entries"]) for n in sets]
        b = got[0][1]["bytes_per_doc"]
        rows.append([label, f"{b:g}" if label[:4] != "best" else "<= 16"]
                    + [cell(v) + (f" ({lab})" if lab else "") for lab, v in got])
    full = [f"{d['sets'][n]['full']['nDCG@10']:.4f}" for n in sets]
    text = f"""Quality per byte (`python benchmarks/codes.py`, one run per set, every shortlist followed by the same exact 6x384
rerank; share of the full size's nDCG@10 at k=100; full size: {", ".join(f"{names[n]} {f}" for n, f in zip(sets, full))};
all tables in `benchmarks/results/codes/results.md`; RAM counts the codes only: the float16 rerank rows, 768 B/doc, are read from disk and not charged, and no latency was taken in these runs):

{table(["shortlist", "B/doc in RAM"] + [names[n] for n in sets], rows)}
"""
    if exists("codes/union.json"):
        u = load("codes/union.json")
        e = u["entries"]
        r = {lab: v["k"]["100"]["all"] for lab, v in e.items()}
        flip = r["6x384:itq128"] > r["6x384:pca128"]
        text += (f"\nAt {u['n_docs']:,} real documents in one index (all three corpora, one adaptor; recall@10 of the "
                 f"full size's exact top 10 at k=100, `benchmarks/results/codes/union.md`): 6x384:pca128 "
                 f"{r['6x384:pca128']:.3f} ({u['entries']['6x384:pca128']['k']['200']['all']:.3f} at k=200), 6x384:sign "
                 f"{r['6x384:sign']:.3f}, 4x128:sign {r['4x128:sign']:.3f}, 2x64 float32 {r['2x64:Flat']:.3f}: codes of the "
                 "full size stay ahead of every small size per byte"
                 + (f"; at 16 B the order inside them flips, ITQ's rotation ({r['6x384:itq128']:.3f}) edging out plain "
                    "PCA's" if flip else "") + ".\n")
    return text


BLOCKS: dict[str, Callable[[], str]] = {
    "scifact-minilm": scifact_minilm, "scifact-starbucks": scifact_starbucks, "budget": budget,
    "adapt-table": adapt_table, "adapt-parts": adapt_parts, "starbucks-keep": starbucks_keep,
    "training": training, "smae": smae, "scale": scale, "serve": serve, "export": export, "encoding": encoding,
    "demo-time": demo_time, "codes": codes,
}


PAGES = [README, *(ROOT / "docs" / n for n in ("results.md", "adapt.md", "export.md", "training.md", "scaling.md",
                                              "serving.md"))]  # the pages whose figures are rendered here


def render(text: str, require_all: bool = True) -> tuple[str, list[str]]:
    """``text`` (one page) with every generated block re-rendered, and the names of the blocks that
    changed. ``require_all``: every block of BLOCKS must be in this text (one-page use)."""
    changed, seen = [], set()

    def sub(m: re.Match) -> str:
        name = m.group("name")
        seen.add(name)
        if name not in BLOCKS:
            raise SystemExit(f"README block {name!r} has no generator in benchmarks/readme.py")
        body = BLOCKS[name]().rstrip("\n") + "\n"
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    out = BLOCK.sub(sub, text)
    missing = sorted(set(BLOCKS) - seen)
    if missing and require_all:
        raise SystemExit(f"README has no block for {', '.join(missing)} (add <!-- BEGIN generated:NAME --> ... END)")
    return out, changed


def render_pages(pages: list[Path] | None = None) -> tuple[dict[Path, str], list[str]]:
    """Every page re-rendered ({path: text}) and the names of the blocks that changed; each block of
    BLOCKS must appear on exactly one page."""
    out, changed, where = {}, [], {}
    for path in pages or PAGES:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m.group("name") in where:
                raise SystemExit(f"block {m.group('name')!r} is on both {where[m.group('name')]} and {path}")
            where[m.group("name")] = path
        out[path], ch = render(text, require_all=False)
        changed += ch
    missing = sorted(set(BLOCKS) - set(where))
    if missing:
        raise SystemExit(f"no page has a block for {', '.join(missing)} (add <!-- BEGIN generated:NAME --> ... END)")
    return out, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="rewrite the generated blocks of README.md and docs/")
    ap.add_argument("--check", action="store_true", help="exit 1 if any generated block is stale")
    args = ap.parse_args(argv)
    out, changed = render_pages()
    if args.write:
        for path, text in out.items():
            if path.read_text() != text:
                path.write_text(text)
        print(f"rewrote {len(changed)} block(s): {', '.join(changed) or 'none changed'}")
        return 0
    if changed:
        print(f"stale README blocks (run python benchmarks/readme.py --write): {', '.join(changed)}")
        return 1
    print("README figures match the results files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
