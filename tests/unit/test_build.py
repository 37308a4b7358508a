"""Checkpointed, resumable, sharded index builds."""

import json

import pytest

from adaretrieve import AdaError
from adaretrieve.index.build import build_dir, build_index, merge_index
from adaretrieve.modeling import Encoder
from adaretrieve.search import IndexReader

SIZES = dict(shortlist=["1x8", "2x16"], rerank="4x32")


@pytest.fixture(scope="module")
def enc(tiny_model):
    return Encoder(tiny_model, device="cpu")


def files(d):
    """Every file's bytes; the manifest without its timing block."""
    out = {}
    for p in sorted(d.iterdir()):
        if p.name == "manifest.json":
            m = json.loads(p.read_text())
            m.pop("build")
            out[p.name] = json.dumps(m, sort_keys=True).encode()
        else:
            out[p.name] = p.read_bytes()
    return out


def interrupt_on_call(fn, n):
    """``fn`` that raises KeyboardInterrupt on its n-th call, as Ctrl-C in the middle of a build would."""
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return fn(*a, **k)

    return wrapped


def test_interrupted_build_resumes_to_identical_index(enc, corpus, tmp_path, monkeypatch):
    build_index(corpus, enc, tmp_path / "a", chunk_size=8, progress=False, **SIZES)
    real = enc.encode
    monkeypatch.setattr(enc, "encode", interrupt_on_call(real, 3))
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, enc, tmp_path / "b", chunk_size=8, progress=False, **SIZES)
    assert not (tmp_path / "b").exists()
    assert len([p for p in build_dir(tmp_path / "b").iterdir() if p.name.startswith("chunk-")]) == 2
    monkeypatch.setattr(enc, "encode", real)
    encoded = []
    monkeypatch.setattr(enc, "encode", lambda texts, *a, **k: encoded.append(len(texts)) or real(texts, *a, **k))
    build_index(corpus, enc, tmp_path / "b", chunk_size=8, progress=False, **SIZES)
    assert sum(encoded) == 40 - 16  # only the chunks not done before
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert not build_dir(tmp_path / "b").exists()


def test_shards_then_merge_equal_one_build(enc, corpus, tmp_path):
    build_index(corpus, enc, tmp_path / "a", chunk_size=8, progress=False, **SIZES)
    assert build_index(corpus, enc, tmp_path / "s", chunk_size=8, progress=False, shard=(1, 3), **SIZES) is None
    with pytest.raises(AdaError, match="chunks are not encoded yet"):
        merge_index(tmp_path / "s")
    assert build_index(corpus, enc, tmp_path / "s", chunk_size=8, progress=False, shard=(0, 3), **SIZES) is None
    m = build_index(corpus, enc, tmp_path / "s", chunk_size=8, progress=False, shard=(2, 3), **SIZES)
    assert m is not None and m.n_docs == 40  # the last shard to finish assembles the index
    assert files(tmp_path / "a") == files(tmp_path / "s")
    with pytest.raises(AdaError, match="no build in progress"):
        merge_index(tmp_path / "s")


def test_failed_rebuild_leaves_old_index_loadable(enc, corpus, tmp_path, monkeypatch):
    build_index(corpus, enc, tmp_path / "a", chunk_size=8, progress=False, **SIZES)
    before = files(tmp_path / "a")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(enc, "encode", boom)
    with pytest.raises(RuntimeError):
        build_index(corpus, enc, tmp_path / "a", chunk_size=8, progress=False, overwrite=True, **SIZES)
    assert files(tmp_path / "a") == before
    assert IndexReader(tmp_path / "a").n_docs == 40


def test_changed_settings_discard_stale_chunks(enc, corpus, tmp_path, monkeypatch):
    real = enc.encode
    monkeypatch.setattr(enc, "encode", interrupt_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, enc, tmp_path / "b", chunk_size=8, progress=False, **SIZES)
    monkeypatch.setattr(enc, "encode", real)
    m = build_index(corpus, enc, tmp_path / "b", chunk_size=8, progress=False, shortlist=["1x4"], rerank="4x32")
    assert [s["size"] for s in m.shortlist] == ["1x4"]
