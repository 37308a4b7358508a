"""Resident memory per search configuration, measured in a fresh process (not assumed from formulas)."""

import numpy as np
import pytest

from adaretrieve import AdaError, Size
from adaretrieve.faiss_util import resident_bytes_per_doc
from adaretrieve.index.writer import IndexWriter
from adaretrieve.search.resident import measure_resident
from adaretrieve.sizes import truncate

N = 40000
MODEL = {"name": "random", "path": "random", "weights_sha256": "abc", "normalize": True, "pooling": "mean",
         "max_length": 32, "n_layers": 2, "hidden_size": 256}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    out = tmp_path_factory.mktemp("resident") / "ix"
    rng = np.random.default_rng(0)
    w = IndexWriter(out, N, [Size(1, 64), Size(2, 32)], Size(2, 256), factory="Flat")
    for start in range(0, N, 10000):
        x = rng.standard_normal((10000, 256)).astype(np.float32)
        w.add([f"d{i}" for i in range(start, start + 10000)],
              {Size(1, 64): truncate(x, 64, True), Size(2, 32): truncate(x, 32, True), Size(2, 256): truncate(x, 256, True)})
    w.close(MODEL, corpus="none")
    return out


def queries(n=50):
    rng = np.random.default_rng(1)
    return {s: truncate(rng.standard_normal((n, s.dim)).astype(np.float32), s.dim, True)
            for s in (Size(1, 64), Size(2, 32), Size(2, 256))}


def test_measured_resident_memory_matches_what_the_shortlist_holds(index):
    small = measure_resident(index, Size(2, 32), 100, Size(2, 256), queries())
    big = measure_resident(index, Size(1, 64), 100, Size(2, 256), queries())
    assert small["torch_loaded"] is False and big["torch_loaded"] is False
    for m, dim in ((small, 32), (big, 64)):
        est = resident_bytes_per_doc(dim, "Flat")
        assert 0.8 * est <= m["anon_bytes_per_doc"] <= 1.3 * est + 16, (dim, m)
        assert m["n_queries"] == 50
    # the rerank rows (20 MB) are a file mapping, counted apart from private memory: at most the index's files
    files = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())
    assert 0 < big["file_bytes"] <= files
    assert big["anon_bytes"] - small["anon_bytes"] == pytest.approx(N * 32 * 4, rel=0.25)


def test_measured_resident_memory_of_a_prefix_shortlist_built_in_memory(index):
    # 2x16 is not stored: a flat index over the 2x32 prefix is built in RAM (plus the stored 2x32 it is cut from)
    m = measure_resident(index, Size(2, 16), 100, Size(2, 256), queries() | {Size(2, 16): queries()[Size(2, 32)][:, :16]})
    assert m["anon_bytes_per_doc"] >= 0.8 * 16 * 4


def test_measure_resident_refuses_a_missing_index(tmp_path):
    with pytest.raises(AdaError, match="does not exist"):
        measure_resident(tmp_path / "nope", Size(1, 8), 10, None, {Size(1, 8): np.zeros((1, 8), np.float32)})
