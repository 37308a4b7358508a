"""One generation per reader, old or new never neither, locks, contained paths (issue 12, items 1-4).

The writer here is fed random vectors (no model), so a killed subprocess needs only numpy and faiss.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adaretrieve import AdaError, Size
from adaretrieve.index.format import current_generation, read_manifest
from adaretrieve.index.writer import COMMIT_STEPS, IndexWriter
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
from adaretrieve.sizes import truncate

ROOT = Path(__file__).resolve().parents[2]
N, D = 300, 32
SHORT, FULL = Size(1, 8), Size(2, D)
MODEL = {"name": "random", "path": "random", "weights_sha256": "abc", "normalize": True, "pooling": "mean",
         "max_length": 32, "n_layers": 2, "hidden_size": D}
WRITE = f"""
import sys, numpy as np
from adaretrieve import Size
from adaretrieve.index import writer as W
from adaretrieve.sizes import truncate
out, order, overwrite, kill_at = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
N, D = {N}, {D}
rng = np.random.default_rng(0)
x = {{1: rng.normal(size=(N, D)).astype(np.float32), 2: rng.normal(size=(N, D)).astype(np.float32)}}
rows = np.arange(N)[::-1] if order == "rev" else np.arange(N)
if kill_at != "none":
    W.commit_hook = lambda step: W.os._exit(9) if step == kill_at else None
w = W.IndexWriter(out, N, [Size(1, 8)], Size(2, D), overwrite=overwrite)
w.add([f"d{{i}}" for i in rows], {{Size(1, 8): truncate(x[1][rows], 8, True), Size(2, D): truncate(x[2][rows], D, True)}})
w.close({MODEL!r}, corpus=order)
"""


def write(out: Path, order: str = "fwd", overwrite: bool = False, kill_at: str = "none") -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", WRITE, str(out), order, "1" if overwrite else "0", kill_at],
                          env=env, capture_output=True, text=True).returncode


def answer(reader: IndexReader, q: np.ndarray) -> list[list[str]]:
    s = FunnelSearcher(reader, FunnelPlan(SHORT, 50, rerank=FULL, top=5))
    _, rows = s.search({SHORT: truncate(q[:, :8], 8, True), FULL: truncate(q, D, True)})
    return [[reader.docids[int(r)] for r in row] for row in rows]


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(7).normal(size=(6, D)).astype(np.float32)


def test_a_reader_keeps_its_generation_across_an_overwrite(tmp_path, queries):
    ix = tmp_path / "ix"
    assert write(ix, "fwd") == 0
    want_old = answer(IndexReader(ix), queries)
    reader = IndexReader(ix)  # opened before the rebuild; loads its FAISS and rerank files lazily, after it
    assert write(ix, "rev", overwrite=True) == 0
    want_new = answer(IndexReader(ix), queries)
    assert answer(reader, queries) == want_old  # the same documents either way: ids must follow their vectors
    assert want_new == want_old
    assert reader.changed()  # a long-lived reader can tell a newer generation is there and reopen
    assert not IndexReader(ix).changed()


def test_searches_in_a_loop_during_rebuilds_see_one_generation_or_the_other(tmp_path, queries):
    ix = tmp_path / "ix"
    assert write(ix, "fwd") == 0
    want = answer(IndexReader(ix), queries)
    stop, errors = threading.Event(), []

    def rebuild():
        for i in range(4):
            if write(ix, "rev" if i % 2 == 0 else "fwd", overwrite=True) != 0:
                errors.append(f"rebuild {i} failed")
        stop.set()

    t = threading.Thread(target=rebuild)
    t.start()
    n = 0
    while not stop.is_set():
        reader = IndexReader(ix)
        time.sleep(0.01)  # let a commit land between open and the lazy loads
        assert answer(reader, queries) == want
        n += 1
    t.join()
    assert not errors and n > 0


@pytest.mark.parametrize("step", COMMIT_STEPS)
def test_a_kill_at_any_step_of_the_switch_leaves_a_loadable_index(tmp_path, queries, step):
    ix = tmp_path / "ix"
    assert write(ix, "fwd") == 0
    old = IndexReader(ix)
    want = answer(old, queries)
    old_gen = old.generation
    del old
    assert write(ix, "rev", overwrite=True, kill_at=step) == 9
    reader = IndexReader(ix)
    assert answer(reader, queries) == want
    assert reader.manifest.corpus in ("fwd", "rev")
    del reader  # a reader holds its generation: the next build may remove it only once it is closed
    # the next build cleans up what the killed one left and switches cleanly
    assert write(ix, "rev", overwrite=True) == 0
    reader = IndexReader(ix)
    assert reader.manifest.corpus == "rev" and reader.generation != old_gen
    left = sorted(p.name for p in ix.iterdir() if p.name != ".write.lock")
    assert left == ["CURRENT", reader.generation], left


def test_overwrite_never_touches_a_sibling_the_tool_did_not_create(tmp_path):
    ix = tmp_path / "ow2"
    assert write(ix) == 0
    (tmp_path / "ow2.old").mkdir()
    (tmp_path / "ow2.old" / "backup.txt").write_text("mine")
    assert write(ix, "rev", overwrite=True) == 0
    assert (tmp_path / "ow2.old" / "backup.txt").read_text() == "mine"


def test_a_flat_index_from_before_generations_still_opens_and_is_replaced_cleanly(tmp_path, queries):
    ix = tmp_path / "ix"
    assert write(ix) == 0
    gen = current_generation(ix)
    for p in gen.iterdir():  # the layout indexes had before: files at the top
        if p.name != "reader.lock":
            p.rename(ix / p.name)
    gen.joinpath("reader.lock").unlink()
    gen.rmdir()
    (ix / "CURRENT").unlink()
    m = json.loads((ix / "manifest.json").read_text())
    m.pop("generation", None)
    (ix / "manifest.json").write_text(json.dumps(m))
    want = answer(IndexReader(ix), queries)
    assert write(ix, "rev", overwrite=True) == 0
    assert answer(IndexReader(ix), queries) == want
    assert not (ix / "manifest.json").exists() and not (ix / "docids.txt").exists()


def test_manifest_files_must_stay_inside_the_index(tmp_path):
    ix = tmp_path / "ix"
    assert write(ix) == 0
    gen = current_generation(ix)
    secret = tmp_path / "secret"
    secret.mkdir()
    for bad in ("../../secret/rerank-2x32.npy", str(secret / "rerank-2x32.npy"), "sub/../../x.npy"):
        m = json.loads((gen / "manifest.json").read_text())
        m["rerank"]["file"] = bad
        (gen / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(AdaError, match="inside the index"):
            read_manifest(ix)


def test_a_manifest_from_another_generation_is_refused(tmp_path):
    ix = tmp_path / "ix"
    assert write(ix) == 0
    gen = current_generation(ix)
    m = json.loads((gen / "manifest.json").read_text())
    m["generation"] = "gen-0000000000000-1"
    (gen / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdaError, match="generation"):
        IndexReader(ix)


def test_two_writers_on_one_out_do_not_share_a_generation_folder(tmp_path):
    ix = tmp_path / "ix"
    a = IndexWriter(ix, 2, [SHORT], None)
    with pytest.raises(AdaError, match="another process"):
        IndexWriter(ix, 2, [SHORT], None)
    a.abort()
    b = IndexWriter(ix, 1, [SHORT], None)  # free again once the first let go
    b.add(["d0"], {SHORT: np.ones((1, 8), np.float32)})
    b.close(MODEL, corpus="x")
    assert IndexReader(ix).n_docs == 1


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    ix = tmp_path / "ix"
    assert write(ix, kill_at="renamed", overwrite=False) == 9  # a first build killed before its switch
    with pytest.raises(AdaError, match="no complete"):
        IndexReader(ix)
    assert write(ix) == 0  # no --overwrite needed: there was no index
    left = sorted(p.name for p in ix.iterdir() if p.name != ".write.lock")
    assert left == ["CURRENT", IndexReader(ix).generation]
    dead = tmp_path / ".ix.partial-999999999"  # the old layout's leftover of a dead process
    dead.mkdir()
    assert write(ix, "rev", overwrite=True) == 0
    assert not dead.exists()
