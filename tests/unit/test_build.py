"""Checkpointed, resumable, sharded index builds."""

import json

import numpy as np
import pytest

from adaretrieve import AdaError
from adaretrieve.index.build import build_dir, build_index, merge_index
from adaretrieve.index.format import current_generation
from adaretrieve.modeling import Encoder
from adaretrieve.search import IndexReader

SIZES = dict(shortlist=["1x8", "2x16"], rerank="4x32")


@pytest.fixture(scope="module")
def enc(tiny_model):
    return Encoder(tiny_model, device="cpu")


def files(d):
    """Every file's bytes; the manifest without its timing block."""
    out = {}
    for p in sorted(current_generation(d).iterdir()):
        if p.name == "manifest.json":
            m = json.loads(p.read_text())
            m.pop("build")
            m.pop("generation")
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


def chunk_names(out):
    return sorted(p.name for p in build_dir(out).iterdir() if p.name.startswith("chunk-"))


def test_shards_may_differ_in_batch_size_and_corpus_path(enc, corpus, tmp_path, monkeypatch):
    """Neither changes the vectors: the other shard's chunks are kept and the last shard assembles."""
    build_index(corpus, enc, tmp_path / "a", chunk_size=8, progress=False, **SIZES)
    assert build_index(corpus, enc, tmp_path / "s", chunk_size=8, progress=False, shard=(0, 2), **SIZES) is None
    assert chunk_names(tmp_path / "s") == ["chunk-000000", "chunk-000002", "chunk-000004"]
    copy = tmp_path / "elsewhere" / "corpus.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(corpus.read_bytes())
    real = enc.encode
    encoded = []
    monkeypatch.setattr(enc, "encode", lambda texts, *a, **k: encoded.append(len(texts)) or real(texts, *a, **k))
    m = build_index(copy, enc, tmp_path / "s", chunk_size=8, batch_size=3, progress=False, shard=(1, 2), **SIZES)
    assert m is not None and m.n_docs == 40
    assert sum(encoded) == 16  # shard 1's two chunks only
    # another batch size pads differently, so the floats may differ in the last bits, nothing more
    a, s = IndexReader(tmp_path / "a"), IndexReader(tmp_path / "s")
    assert list(a.docids) == list(s.docids)
    for size in ("1x8", "2x16"):
        np.testing.assert_allclose(s.rerank_source(size), a.rerank_source(size), atol=1e-5)
    np.testing.assert_allclose(s.rerank_rows().astype(np.float32), a.rerank_rows().astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("change,keys", [
    (dict(shortlist=["1x4"], rerank="4x32"), ["shortlist"]),
    (dict(factory="SQ8", **SIZES), ["factory"]),
    (dict(rerank_dtype="int8", **SIZES), ["rerank_dtype"]),
    (dict(chunk_size=16, **SIZES), ["chunk_size"]),
    (dict(corpus="edited", **SIZES), ["corpus_sha256"]),
])
def test_changed_output_settings_refuse_and_keep_the_chunks(enc, corpus, tmp_path, monkeypatch, change, keys):
    real = enc.encode
    monkeypatch.setattr(enc, "encode", interrupt_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, enc, tmp_path / "b", chunk_size=8, progress=False, **SIZES)
    monkeypatch.setattr(enc, "encode", real)
    before = chunk_names(tmp_path / "b")
    assert before == ["chunk-000000"]
    change = dict(change)
    if change.pop("corpus", None):  # same size and path, one word changed
        corpus.write_text(corpus.read_text().replace('"d3"', '"e3"', 1))
    kw = {"chunk_size": 8, **change}
    with pytest.raises(AdaError) as e:
        build_index(corpus, enc, tmp_path / "b", progress=False, **kw)
    msg = str(e.value)
    assert "\n" not in msg and f"differ in {', '.join(keys)}" in msg and f"delete {build_dir(tmp_path / 'b')}" in msg
    assert chunk_names(tmp_path / "b") == before  # nothing deleted
    assert not (tmp_path / "b").exists()


def test_only_one_finishing_shard_assembles(enc, corpus, tmp_path):
    """A shard that finds another holding the assembly lock leaves the merge to it and returns."""
    import fcntl
    import os

    assert build_index(corpus, enc, tmp_path / "s", chunk_size=8, progress=False, shard=(0, 2), **SIZES) is None
    fd = os.open(build_dir(tmp_path / "s") / "assemble.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other shard does while it assembles
        assert build_index(corpus, enc, tmp_path / "s", chunk_size=8, progress=False, shard=(1, 2), **SIZES) is None
        assert not (tmp_path / "s").exists() and len(chunk_names(tmp_path / "s")) == 5
        with pytest.raises(AdaError, match="another process is assembling"):
            merge_index(tmp_path / "s")
    finally:
        os.close(fd)
    m = merge_index(tmp_path / "s")
    assert m.n_docs == 40 and not build_dir(tmp_path / "s").exists()


def test_two_builds_of_one_out_do_not_share_the_build_folder(enc, corpus, tmp_path):
    """The second of two `index` runs on one --out refuses while the first encodes (issue 12, item 3)."""
    import fcntl
    import os

    out = tmp_path / "ix"
    bdir = build_dir(out)
    bdir.mkdir()
    fd = os.open(bdir / "shard-0-of-1.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the first run holds it
    try:
        with pytest.raises(AdaError, match="another process is building"):
            build_index(corpus, enc, out, chunk_size=8, progress=False, **SIZES)
    finally:
        os.close(fd)
    build_index(corpus, enc, out, chunk_size=8, progress=False, **SIZES)
    assert IndexReader(out).n_docs == 40
