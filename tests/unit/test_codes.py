"""Shortlist kinds (issue 24): every code's search against brute force over its decoded codes on
random data, per-size kinds through the writer, the build and the CLI, resident bytes per kind."""

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve import AdaError, Size
from adaretrieve.cli.main import app
from adaretrieve.faiss_util import resident_bytes_per_doc
from adaretrieve.index.codes import decode_sign, parse_shortlist, sign_codes, sign_index
from adaretrieve.index.writer import IndexWriter, make_faiss_index
from adaretrieve.search import FunnelPlan, FunnelSearcher, IndexReader
from adaretrieve.sizes import truncate
from tests.conftest import module_or_skip

runner = CliRunner()
MODEL = {"name": "random", "path": "random", "weights_sha256": "abc", "normalize": True, "pooling": "mean",
         "max_length": 32, "n_layers": 2, "hidden_size": 64}


def unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(q, decoded, k):
    s = q @ decoded.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def test_shortlist_entries_with_kinds():
    assert parse_shortlist(["2x64", "6x384:sign"]) == [(Size(2, 64), "Flat"), (Size(6, 384), "sign")]
    assert parse_shortlist("2x64,6x384:sign,1x16:sq8", default="HNSW32") == [
        (Size(2, 64), "HNSW32"), (Size(6, 384), "sign"), (Size(1, 16), "SQ8")]
    # a comma inside a factory stays with its entry; the next size starts a new one
    assert parse_shortlist("6x384:IVF256,RaBitQ,2x32") == [(Size(6, 384), "IVF256,RaBitQ"), (Size(2, 32), "Flat")]
    assert parse_shortlist(["4x128:hamming", "4x128:BFlat"]) == [(Size(4, 128), "BFlat")]
    with pytest.raises(AdaError, match="given twice with different kinds"):
        parse_shortlist(["4x128:sign", "4x128"])
    with pytest.raises(AdaError, match="kind '' is empty"):
        parse_shortlist(["4x128:"])


def test_sign_codes_are_the_packed_signs_and_scores_are_q_dot_sign():
    d, n = 64, 700
    x, q = unit(n, d, 0), unit(9, d, 1) * 3.0  # queries of any norm: scored as they are
    ix = sign_index(d)
    ix.add(x)  # FAISS's own assignment (nearest sign pattern) ...
    codes = faiss.vector_to_array(ix.codes).reshape(n, d // 8)
    assert (codes == sign_codes(x)).all()  # ... is the packed sign bits, dim 8i+j in bit j of byte i
    assert (np.unpackbits(codes, axis=1, bitorder="little") == (x > 0)).all()
    scores, rows = ix.search(q, 20)
    want_s, want_r = brute(q, decode_sign(codes, d), 20)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(q @ decode_sign(codes, d).T, rows, 1), want_s, atol=1e-5)
    np.testing.assert_allclose(decode_sign(codes, d), np.where(x > 0, 1, -1) / np.sqrt(d), atol=1e-7)
    with pytest.raises(AdaError, match="divisible by 8"):
        sign_index(12)


@pytest.mark.parametrize("factory,atol", [("SQ8", 1e-4), ("SQ4", 1e-4), ("PQ8", 1e-4), ("PQ16x4fs", 0.05),
                                          ("RaBitQ", None), ("RaBitQ4", None)])
def test_each_code_searches_like_brute_force_over_its_decoded_codes(factory, atol):
    """SQ and PQ score q . decode(d) (PQ fast-scan within its 8-bit lookup tables); RaBitQ's
    estimator is not q . decode(d), so there the shortlist is held to brute force over the vectors:
    what it is for is finding the candidates the exact rerank then orders."""
    d, n = 32, 2000
    x, q = unit(n, d, 2), unit(16, d, 3)
    ix = make_faiss_index(d, factory)
    ix.train(x)
    ix.add(x)
    scores, rows = ix.search(q, 50)
    if atol is not None:
        dec = ix.reconstruct_n(0, n)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ dec.T, rows, 1), atol=atol)
        _, want = brute(q, dec, 50)
        overlap = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(rows, want)])
        assert overlap >= (0.999 if atol < 1e-3 else 0.8), overlap
    else:  # at least what plain sign bits of the same vectors find (RaBitQ: rotated signs plus corrections)
        _, want = brute(q, x, 10)
        sign = sign_index(d)
        sign.add(x)
        recall = {name: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r, want)])
                  for name, r in (("rabitq", rows), ("sign", sign.search(q, 50)[1]))}
        assert recall["rabitq"] >= recall["sign"] - 0.05, recall


def test_hamming_code_is_brute_force_hamming():
    d, n = 64, 500
    x, q = unit(n, d, 4), unit(8, d, 5)
    ix = make_faiss_index(d, "BFlat")
    ix.add(np.packbits(x > 0, axis=1))
    dist, rows = ix.search(np.packbits(q > 0, axis=1), n)
    ham = ((q > 0)[:, None, :] != (x > 0)[None, :, :]).sum(-1)
    np.testing.assert_array_equal(dist, np.take_along_axis(ham, rows, 1))
    assert (np.diff(dist, axis=1) >= 0).all()


def test_a_rotation_leaves_float_scores_unchanged():
    d, n = 32, 300
    x, q = unit(n, d, 6), unit(5, d, 7)
    ix = make_faiss_index(d, f"RR{d},Flat")
    ix.train(x)
    ix.add(x)
    scores, rows = ix.search(q, 10)
    want_s, want_r = brute(q, x, 10)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    np.testing.assert_array_equal(rows, want_r)


def write_kinds(tmp_path, kinds, shortlist, rerank, n=400):
    vecs = {1: unit(n, 64, 10), 2: unit(n, 64, 11)}
    w = IndexWriter(tmp_path / "ix", n, shortlist, rerank, kinds=kinds)
    sizes = [*shortlist, rerank]
    for a in range(0, n, 128):
        w.add([f"d{i}" for i in range(a, min(a + 128, n))], {s: truncate(vecs[s.layer][a:a + 128], s.dim, True) for s in sizes})
    w.close(MODEL, corpus="none")
    return vecs


def test_each_shortlist_size_gets_its_own_kind_and_the_full_size_rescores_a_sign_shortlist(tmp_path):
    full, small = Size(2, 64), Size(1, 32)
    vecs = write_kinds(tmp_path, {full: "sign", small: "SQ8"}, [small, full], full)
    reader = IndexReader(tmp_path / "ix")
    entries = {e["size"]: e for e in reader.manifest.shortlist}
    assert entries["2x64"]["factory"] == "sign" and entries["1x32"]["factory"] == "SQ8"
    assert entries["2x64"]["metric"] == "inner_product"
    assert type(faiss.downcast_index(reader.shortlist_index(full))).__name__ == "IndexPQ"
    q = unit(7, 64, 12)
    k = 40
    scores, rows = FunnelSearcher(reader, FunnelPlan(full, k, rerank=full, top=10)).search({full: q})
    # brute force: top k of q . sign(d), then exact rescoring from the stored float16 rows
    _, cand = brute(q, decode_sign(sign_codes(vecs[2]), 64), k)
    stored = vecs[2].astype(np.float16).astype(np.float32)
    exact = np.take_along_axis(q @ stored.T, cand, 1)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, np.take_along_axis(cand, order, 1))
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, 1), atol=1e-3)


def test_nprobe_and_ef_construction_apply_to_the_kinds_they_fit(tmp_path):
    w = IndexWriter(tmp_path / "a", 400, [Size(1, 32), Size(2, 64)], None, nprobe=4,
                    kinds={Size(1, 32): "IVF8,Flat", Size(2, 64): "sign"})
    w.abort()
    assert w.nprobes == {Size(1, 32): 4, Size(2, 64): None}
    with pytest.raises(AdaError, match="--nprobe applies to IVF"):
        IndexWriter(tmp_path / "b", 400, [Size(2, 64)], None, nprobe=4, kinds={Size(2, 64): "sign"})


@pytest.mark.parametrize("factory,expected", [("sign", 48), ("BFlat", 48), ("RaBitQ", 56), ("RaBitQ4", 212),
                                              ("IVF256,RaBitQ", 64), ("PQ96x4fs", 48), ("SQ8", 384)])
def test_resident_bytes_of_each_kind(factory, expected):
    assert resident_bytes_per_doc(384, factory) == expected


@pytest.mark.parametrize("factory", ["sign", "RaBitQ", "RaBitQ2", "RaBitQ4", "IVF16,RaBitQ"])
def test_code_bytes_match_what_faiss_stores(factory):
    n, d = 1000, 64
    x = unit(2 * n, d, 13)
    ix = make_faiss_index(d, factory)
    ix.train(x[:n])
    ix.add(x[:n])
    one = faiss.serialize_index(ix).nbytes
    ix.add(x[n:])
    assert resident_bytes_per_doc(d, factory) == pytest.approx((faiss.serialize_index(ix).nbytes - one) / n, rel=0.05)


def test_index_command_takes_a_kind_per_size(tiny_model, corpus, tmp_path):
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "4x32:sign",
                              "--shortlist", "2x16", "--rerank", "4x32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = IndexReader(out).manifest
    assert [(e["size"], e["factory"]) for e in m.shortlist] == [("4x32", "sign"), ("2x16", "Flat")]
    res = runner.invoke(app, ["search", "--index", str(out), "--shortlist", "4x32", "--k", "10", "--rerank", "4x32",
                              "--top", "3", "a query"])
    assert res.exit_code == 0, res.output
    assert len([x for x in res.stdout.splitlines() if x.strip()]) >= 3, res.stdout
    res = runner.invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "4x12:sign",
                              "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "divisible by 8" in res.output


def test_qdrant_refuses_a_code_it_cannot_hold_in_one_line(tiny_model, corpus, tmp_path):
    module_or_skip("qdrant_client", "pip install 'adaretrieve[qdrant]'")
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "4x32:sign",
                              "--rerank", "4x32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(out), "--to", f"qdrant:{tmp_path / 'q'}/c"])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "4x32" in lines[0] and "sign" in lines[0], res.output


@pytest.mark.parametrize("factory", ["pca16", "itq16", "itq32"])
def test_a_rotation_kind_scores_the_rotated_query_against_the_signs_of_the_centred_rotated_documents(factory, tmp_path):
    from adaretrieve.index.codes import fit_rotation, train_and_add

    d, n, bits = 32, 600, int(factory[3:])
    x, q = unit(n, d, 14) + 0.3, unit(6, d, 15)  # off-centre, as real embeddings are
    ix = make_faiss_index(d, factory)
    assert not ix.is_trained
    train_and_add(ix, factory, x)
    A, mu = fit_rotation(x, bits, factory.startswith("itq"))
    np.testing.assert_allclose(A @ A.T, np.eye(bits), atol=1e-4)  # orthonormal rows: a rotation (and a cut)
    codes = sign_codes((x - mu) @ A.T)
    scores, rows = ix.search(q, 25)
    want_s, _ = brute(q @ A.T, decode_sign(codes, bits), 25)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis((q @ A.T) @ decode_sign(codes, bits).T, rows, 1), want_s, atol=1e-5)
    faiss.write_index(ix, str(tmp_path / "r.faiss"))  # what the reader loads answers the same
    np.testing.assert_allclose(faiss.read_index(str(tmp_path / "r.faiss")).search(q, 25)[0], scores, atol=1e-6)
    if factory == "itq32":  # at every dim, the rotation keeps float scores: (A q) . (A x) = q . x
        np.testing.assert_allclose((q @ A.T) @ (x @ A.T).T, q @ x.T, atol=1e-4)


def test_a_rotation_kind_through_the_writer(tmp_path):
    full = Size(2, 64)
    write_kinds(tmp_path, {full: "itq32"}, [full], full)
    reader = IndexReader(tmp_path / "ix")
    assert reader.manifest.shortlist[0]["factory"] == "itq32"
    assert resident_bytes_per_doc(64, "itq32") == 4
    scores, rows = FunnelSearcher(reader, FunnelPlan(full, 50, rerank=full, top=5)).search({full: unit(3, 64, 16)})
    assert rows.shape == (3, 5) and (rows >= 0).all()
    with pytest.raises(AdaError, match="multiple of 8"):
        make_faiss_index(64, "pca12")
