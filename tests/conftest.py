"""Shared fixtures: a tiny random BERT saved as a Hugging Face folder (built once per session),
tiny corpora, and paths to ../shared for the integration tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WORDS = ("the a of and to in is for on with cell cancer gene protein risk drug blood brain heart study "
         "patients effect increase decrease level mouse human trial dose virus infection immune therapy").split()


def _save_tiny_bert(path: Path, seed: int, layers: int = 4, hidden: int = 32, st: bool = True, cased: bool = False) -> Path:
    """A random BERT folder. ``cased``: a tokenizer that keeps case (capitalised words in its vocabulary)
    under a sentence-transformers config that lowercases first (``do_lower_case: true``)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[chr(c) for c in range(ord("a"), ord("z") + 1)]]
    if cased:
        vocab += [w.capitalize() for w in WORDS] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    vocab = list(dict.fromkeys(vocab))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=not cased)  # positional: transformers 5 ignores vocab_file=
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(path)
    if st:
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
        (path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]))
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, **({"do_lower_case": True} if cased else {})}))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """4 layers x 32 dims, mean pooling, normalised, max length 48."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), seed=0)


@pytest.fixture(scope="session")
def cased_tiny_model(tmp_path_factory) -> Path:
    """tiny_model's shape with a cased tokenizer behind sentence-transformers' ``do_lower_case: true``."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-cased"), seed=2, cased=True)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """Same shape as tiny_model, different weights."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-2"), seed=1)


def make_corpus(path: Path, n: int = 40, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            title = " ".join(rng.choices(WORDS, k=3))
            text = " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))
            f.write(json.dumps({"_id": f"d{i}", "title": title, "text": text}) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture
def queries_qrels(tmp_path) -> tuple[Path, Path]:
    q = tmp_path / "queries.jsonl"
    q.write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(WORDS[i : i + 4])}) + "\n" for i in range(8)))
    r = tmp_path / "qrels.tsv"
    r.write_text("query-id\tcorpus-id\tscore\r\n" + "".join(f"q{i}\td{3 * i}\t1\r\n" for i in range(8)))
    return q, r


def in_ci() -> bool:
    """True when the CI variable says so ("true", "1", "yes", any case); "false", "0" and unset are not CI."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def shared_or_skip(*parts: str) -> Path:
    """A path under ../shared; a missing one fails under CI and skips loudly elsewhere."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"MISSING {p}: integration test needs ../shared beside the repository"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def module_or_skip(name: str, hint: str):
    """Import ``name``; when missing, fail under CI and skip loudly elsewhere."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        msg = f"MISSING {name}: {hint}"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
