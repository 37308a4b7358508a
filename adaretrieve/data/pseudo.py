"""Pseudo-queries: unlabelled query texts sampled from a corpus, for fitting what needs queries but no
labels (an adaptive-depth stop rule, ``adaretrieve calibrate --pseudo-queries N``) where a corpus has
no train queries of its own."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from adaretrieve.data.readers import iter_corpus
from adaretrieve.errors import AdaError

_WORD = re.compile(r"\S+")


def pseudo_queries(corpus: str | Path, n: int, seed: int = 0, min_words: int = 3, max_words: int = 10) -> list[str]:
    """``n`` texts, each a span of ``min_words``..``max_words`` consecutive words from the title or text
    of a document drawn at random (without replacement while the corpus lasts), deterministic in
    ``seed``. Documents with fewer than ``min_words`` words are skipped."""
    if n < 1:
        raise AdaError(f"pseudo-queries: {n} must be at least 1")
    if not 1 <= min_words <= max_words:
        raise AdaError(f"pseudo-queries: words per query {min_words}..{max_words} is not a range")
    docs = [d for d in iter_corpus(corpus) if len(_WORD.findall(f"{d.title} {d.text}")) >= min_words]
    if not docs:
        raise AdaError(f"{corpus}: no document has {min_words} words to draw a pseudo-query from")
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(len(docs)) for _ in range(-(-n // len(docs)))])[:n]
    out = []
    for i in picks:
        d = docs[int(i)]
        words = _WORD.findall(d.title if d.title and rng.random() < 0.25 else f"{d.title} {d.text}")
        if len(words) < min_words:
            words = _WORD.findall(f"{d.title} {d.text}")
        length = int(rng.integers(min_words, min(max_words, len(words)) + 1))
        start = int(rng.integers(0, len(words) - length + 1))
        out.append(" ".join(words[start : start + length]))
    return out
