"""Training examples: (query, positives, hard negatives) as texts.

Sources:
- a BEIR folder and split (``qrels/<split>.tsv``), with hard negatives from a cache written by
  ``adaretrieve mine`` (``{"qid": ..., "negatives": [docid, ...]}`` per line);
- Tevatron's format (``query``, ``positive_passages``, ``negative_passages`` with ``title``/``text``),
  from the Hub (``Tevatron/msmarco-passage``) or a local jsonl, loaded with ``datasets``;
- a plain jsonl of ``{"query", "positive" | "positives", "negatives"}`` or a tsv ``query<TAB>positive[<TAB>negative...]``.
Every check (empty file, queries without positives, qrels naming missing documents) runs before training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from adaretrieve.data.readers import doc_text, iter_corpus, read_qrels, read_queries, text_lines
from adaretrieve.errors import AdaError
from adaretrieve.hub import require_hub


@dataclass
class Example:
    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)


def _preview(items, n=5) -> str:
    items = list(items)
    return ", ".join(map(repr, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_beir(root: str | Path, split: str = "train", negatives: str | Path | None = None) -> list[Example]:
    root = Path(root)
    qrels = read_qrels(root / "qrels" / f"{split}.tsv")
    queries = read_queries(root)
    positives = {q: [d for d, g in docs.items() if g > 0] for q, docs in qrels.items()}
    no_pos = [q for q, p in positives.items() if not p]
    if no_pos:
        raise AdaError(f"{root}/qrels/{split}.tsv: {len(no_pos)} queries have no positive (grade > 0): {_preview(no_pos)}")
    no_text = [q for q in positives if q not in queries]
    if no_text:
        raise AdaError(f"{root}/qrels/{split}.tsv names {len(no_text)} queries missing from queries.jsonl: {_preview(no_text)}")
    negs: dict[str, list[str]] = {}
    if negatives:
        if not Path(negatives).exists():
            raise AdaError(f"negatives file {negatives} does not exist; write it with `adaretrieve mine` first "
                           f"(or drop the negatives setting)")
        for lineno, line in text_lines(negatives, "negatives file"):
            if line.strip():
                obj = _json_line(negatives, lineno, line)
                if not isinstance(obj, dict) or "qid" not in obj or not isinstance(obj.get("negatives"), list):
                    raise AdaError(f"{negatives}:{lineno}: expected {{\"qid\": ..., \"negatives\": [docid, ...]}}")
                negs[str(obj["qid"])] = [str(d) for d in obj["negatives"]]
    wanted = {d for p in positives.values() for d in p} | {d for n in negs.values() for d in n}
    texts = {d.docid: doc_text(d.title, d.text) for d in iter_corpus(root) if d.docid in wanted}
    missing = wanted - set(texts)
    if missing:
        raise AdaError(f"qrels or negatives name {len(missing)} documents the corpus {root} lacks: {_preview(sorted(missing))}")
    out = [
        Example(queries[q], [texts[d] for d in p], [texts[d] for d in negs.get(q, []) if d not in set(p)])
        for q, p in positives.items()
    ]
    return out


def _tevatron_passage(p) -> str:
    return doc_text(p.get("title") or "", p.get("text") or "") if isinstance(p, dict) else str(p)


def _json_line(p, lineno: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise AdaError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None


# the record layouts understood, as (query column, positive columns, negative columns)
_EXPECTED = ("query + positive_passages/negative_passages (Tevatron), query + positive(s)/negatives, "
             "or anchor + positive/negative (sentence-transformers)")


def looks_like_path(source: str) -> bool:
    """A data source meant as a local path, not a Hub id ``org/name``: it starts with '.', '/' or '~',
    has more than one '/', ends in a file suffix, or its first part is a local folder."""
    s = source.strip()
    return (s.startswith((".", "/", "~")) or s.count("/") != 1 or Path(s).suffix in (".jsonl", ".json", ".tsv", ".gz")
            or Path(s.split("/")[0]).is_dir())


def _hub_rows(source: str, split: str):
    require_hub(f"training data {source!r} is a Hub dataset id", "give a local file or folder",
                ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    import datasets

    return datasets.load_dataset(source, split=split)


def _example(r, where: str) -> Example | None:
    """One record as an Example (None when it has no positive); AdaError naming the columns found
    and the layouts understood when it is none of them."""
    if not isinstance(r, dict):
        raise AdaError(f"{where}: expected a JSON object, got {type(r).__name__}")
    q = r.get("query") or r.get("query_text") or r.get("anchor")
    pos = r.get("positive_passages") or r.get("positives") or ([r["positive"]] if r.get("positive") else [])
    neg = r.get("negative_passages") or r.get("negatives") or ([r["negative"]] if r.get("negative") else [])
    known = {"query", "query_text", "anchor", "positive_passages", "positives", "positive",
             "negative_passages", "negatives", "negative"}
    if not known & set(r):
        raise AdaError(f"{where}: columns {sorted(r)} are not a training layout; expected {_EXPECTED}")
    if not q or not str(q).strip():
        raise AdaError(f"{where}: no query text (columns {sorted(r)}; expected {_EXPECTED})")
    passages = [p for p in [*pos, *neg] if isinstance(p, dict)]
    if passages and all(not (p.get("text") or p.get("title")) for p in passages):
        raise AdaError(f"{where}: passages carry doc ids only (Tevatron's id-based format: keys {sorted(passages[0])}, "
                       f"e.g. 'docid'); give passages with 'text' (and 'title'), or a BEIR folder with qrels")
    if not pos:
        return None
    return Example(str(q), [_tevatron_passage(x) for x in pos], [_tevatron_passage(x) for x in neg])


def load_records(source: str, split: str = "train") -> list[Example]:
    """Tevatron-format, sentence-transformers (anchor/positive/negative) or plain records from a local
    jsonl/tsv, or a Hub dataset id (needs a network; fails at once without one)."""
    p = Path(source)
    if p.suffix == ".tsv":
        rows = []
        for _, line in text_lines(p, "training file"):
            parts = line.split("\t")
            if len(parts) >= 2:
                rows.append({"query": parts[0], "positives": [parts[1]], "negatives": parts[2:]})
        where = [f"{p}:{i}" for i in range(1, len(rows) + 1)]
    elif p.exists():
        # a local jsonl is read with json alone: the training path must not need `datasets`
        # (GPU machines often lack it)
        if p.is_file() and p.stat().st_size == 0:
            raise AdaError(f"training file {p} is empty")
        rows, where = [], []
        for lineno, line in text_lines(p, "training file"):
            if line.strip():
                rows.append(_json_line(p, lineno, line))
                where.append(f"{p}:{lineno}")
    else:
        if looks_like_path(source):
            raise AdaError(f"training data {source} does not exist (give a BEIR folder, a jsonl/tsv file or a Hub id org/name)")
        rows = _hub_rows(source, split)
        where = [f"{source} row {i}" for i in range(1, len(rows) + 1)]
    out = []
    no_pos = []
    for i, r in enumerate(rows):
        ex = _example(r, where[i])
        if ex is None:
            no_pos.append(r.get("query_id", i))
        else:
            out.append(ex)
    if no_pos:
        raise AdaError(f"{source}: {len(no_pos)} queries have no positive passage: {_preview(no_pos)}")
    if not out:
        raise AdaError(f"training data {source} is empty")
    return out


class BatchSampler:
    """Shuffled batches of (queries, passages, labels): each query brings one positive and
    ``n_negatives`` hard negatives (random documents of the set when it has too few); every other
    query's passages are in-batch negatives. Deterministic given the seed and the step."""

    def __init__(self, examples: list[Example], batch_size: int, n_negatives: int, seed: int = 0):
        if len(examples) < 2:
            raise AdaError(f"training needs at least 2 queries, got {len(examples)}")
        self.examples, self.batch_size, self.n_negatives, self.seed = examples, min(batch_size, len(examples)), n_negatives, seed
        self.pool = [p for e in examples for p in e.positives]

    def batch(self, step: int) -> tuple[list[str], list[str], list[int]]:
        per_epoch = len(self.examples) // self.batch_size
        epoch, pos = divmod(step, per_epoch)
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1000003 + epoch).shuffle(order)
        rng = random.Random(self.seed * 7919 + step)
        queries, passages, labels = [], [], []
        for i in order[pos * self.batch_size : (pos + 1) * self.batch_size]:
            e = self.examples[i]
            labels.append(len(passages))
            queries.append(e.query)
            passages.append(rng.choice(e.positives))
            negs = rng.sample(e.negatives, min(self.n_negatives, len(e.negatives)))
            while len(negs) < self.n_negatives:
                cand = rng.choice(self.pool)
                if cand not in e.positives:
                    negs.append(cand)
            passages.extend(negs)
        return queries, passages, labels
