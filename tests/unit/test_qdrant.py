"""Qdrant as an index location (qdrant-client's local mode): the same answers as the folder index,
resumable uploads with nothing missing or duplicated, mismatches and bad locations refused in one line."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adaretrieve import AdaError
from adaretrieve.cli.main import app
from adaretrieve.qdrant import QdrantIndex, is_qdrant, parse_location, upload
from adaretrieve.search import IndexReader
from tests.conftest import module_or_skip

runner = CliRunner()


@pytest.fixture(autouse=True)
def _qdrant():
    module_or_skip("qdrant_client", "pip install 'adaretrieve[qdrant]' (CI installs it)")


@pytest.fixture
def folder(tiny_model, corpus, tmp_path):
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "1x8",
                              "--shortlist", "2x16", "--rerank", "4x32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def read_trec(path):
    run = {}
    for line in path.read_text().splitlines():
        q, _, d, rank, score, _ = line.split()
        run.setdefault(q, []).append((d, float(score)))
    return run


def test_locations():
    assert parse_location("qdrant://localhost:6333/scifact").url == "http://localhost:6333"
    assert parse_location("qdrant://qd.example/sci-fact_2").url == "http://qd.example:6333"
    loc = parse_location("qdrant:indexes/scifact-q")
    assert loc.path == "indexes/scifact-q" and loc.collection == "scifact-q" and loc.url is None
    assert is_qdrant("qdrant:x") and not is_qdrant("indexes/x") and not is_qdrant(None)
    for bad in ("qdrant://", "qdrant://host:6333", "qdrant://host:6333/a/b", "qdrant:", "qdrant://ho st:1/x"):
        with pytest.raises(AdaError, match="not a Qdrant location"):
            parse_location(bad)


@pytest.mark.parametrize("stages", [["--shortlist", "1x8", "--k", "20", "--rerank", "4x32"],
                                    ["--shortlist", "1x8", "--k", "30", "--then", "2x16", "--k", "15", "--rerank", "4x32"],
                                    ["--shortlist", "2x16", "--rerank", "none", "--top", "10"],
                                    ["--shortlist", "1x8", "--k", "25", "--then", "2x16", "--k", "12", "--rerank", "none"]])
def test_qdrant_answers_as_the_folder_index(folder, queries_qrels, tmp_path, stages):
    q, r = queries_qrels
    loc = f"qdrant:{tmp_path / 'coll'}"
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(folder), "--to", loc, "--batch-size", "16"])
    assert res.exit_code == 0, res.output
    runs = {}
    for name, where in (("folder", str(folder)), ("qdrant", loc)):
        res = runner.invoke(app, ["search", "-q", "--index", where, "--queries", str(q), "--qrels", str(r), "--json",
                                  "--out", str(tmp_path / f"{name}.trec"), *stages])
        assert res.exit_code == 0, res.output
        runs[name] = (read_trec(tmp_path / f"{name}.trec"), json.loads(res.stdout.strip().splitlines()[-1]))
    (a, ma), (b, mb) = runs["folder"], runs["qdrant"]
    assert a.keys() == b.keys()
    for qid in a:
        assert [d for d, _ in a[qid]] == [d for d, _ in b[qid]], qid
        np.testing.assert_allclose([s for _, s in a[qid]], [s for _, s in b[qid]], atol=1e-5)
    assert ma == pytest.approx(mb, abs=1e-6)


def test_an_interrupted_upload_resumes_with_nothing_missing_or_duplicated(folder, tmp_path, monkeypatch):
    from qdrant_client import QdrantClient

    loc = parse_location(f"qdrant:{tmp_path / 'coll'}")
    reader = IndexReader(folder)
    real = QdrantClient.upsert
    calls = []

    def dies_on_the_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(QdrantClient, "upsert", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        upload(reader, loc, batch_size=8, progress=False)
    monkeypatch.setattr(QdrantClient, "upsert", real)
    with pytest.raises(AdaError, match="did not finish"):
        QdrantIndex(loc)
    upload(reader, loc, batch_size=8, progress=False)
    qi = QdrantIndex(loc)
    points, _ = qi.client.scroll(loc.collection, limit=1000, with_payload=True)
    assert sorted(p.id for p in points) == list(range(reader.n_docs))
    assert {p.id: p.payload["docid"] for p in points} == {i: reader.docids[i] for i in range(reader.n_docs)}
    assert qi.client.count(loc.collection, exact=True).count == reader.n_docs


def test_a_collection_of_another_index_is_refused(folder, other_tiny_model, corpus, tmp_path):
    loc = f"qdrant:{tmp_path / 'coll'}"
    assert runner.invoke(app, ["index", "upload", "-q", "--index", str(folder), "--to", loc]).exit_code == 0
    other = tmp_path / "other"
    res = runner.invoke(app, ["index", "-q", "--model", str(other_tiny_model), "--corpus", str(corpus), "--shortlist", "1x8",
                              "--out", str(other)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(other), "--to", loc])
    assert res.exit_code == 2 and "holds another index" in res.stderr and "model" in res.stderr and "shortlist" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # searching the collection with another model is refused like a folder index
    res = runner.invoke(app, ["search", "-q", "--index", loc, "--model", str(other_tiny_model), "x"])
    assert res.exit_code == 2 and "is not the model that built" in res.stderr
    res = runner.invoke(app, ["search", "-q", "--index", loc, "--shortlist", "1x4", "x"])
    assert res.exit_code == 2 and "1x4 is not stored" in res.stderr
    res = runner.invoke(app, ["search", "-q", "--index", loc, "--nprobe", "4", "x"])
    assert res.exit_code == 2 and "--nprobe" in res.stderr
    # --overwrite replaces it
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(other), "--to", loc, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert QdrantIndex(loc).meta["shortlist"] == ["1x8"]


def test_unreachable_server_and_missing_collection_are_one_line(folder, tmp_path):
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(folder), "--to", "qdrant://127.0.0.1:9/coll"])
    assert res.exit_code == 2 and "cannot reach Qdrant at http://127.0.0.1:9" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()  # a storage folder without the collection (a missing folder: test_integrity)
    res = runner.invoke(app, ["search", "-q", "--index", f"qdrant:{tmp_path / 'empty'}", "x"])
    assert res.exit_code == 2 and "no collection 'empty'" in res.stderr


def test_index_straight_into_qdrant_builds_the_folder_then_uploads(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    loc = f"qdrant:{tmp_path / 'coll'}"
    args = ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "1x8", "--rerank", "4x32",
            "--out", loc]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    built = list((tmp_path / "cache" / "qdrant").iterdir())
    assert len(built) == 1 and IndexReader(built[0]).n_docs == 40
    assert QdrantIndex(loc).n_docs == 40
    # run again: the folder and the collection are there, nothing is rebuilt or duplicated
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "using the folder index already built" in res.stderr
    assert QdrantIndex(loc).client.count("coll", exact=True).count == 40
    res = runner.invoke(app, args[:-6] + ["--shortlist", "2x16", "--out", loc])
    assert res.exit_code == 2 and "holds a folder index with shortlist 1x8" in res.stderr


def test_missing_qdrant_client_is_one_line(folder, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_qdrant(name, *a, **k):
        if name.startswith("qdrant_client"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_qdrant)
    res = runner.invoke(app, ["search", "-q", "--index", f"qdrant:{tmp_path / 'c'}", "x"])
    assert res.exit_code == 2 and "pip install 'adaretrieve[qdrant]'" in res.stderr


def test_the_rerank_vector_is_the_stored_rerank_rows_even_beside_a_flat_shortlist_of_that_size(tiny_model, corpus, tmp_path):
    """adaretrieve rescores with the float16 rerank rows even where a float32 flat shortlist of the rerank
    size is stored; the collection's vector for that size must hold the same values, or scores part at 1e-4."""
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(corpus), "--shortlist", "1x8",
                              "--shortlist", "4x32", "--rerank", "4x32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    loc = parse_location(f"qdrant:{tmp_path / 'coll'}")
    reader = IndexReader(out)
    upload(reader, loc, progress=False)
    qi = QdrantIndex(loc)
    from adaretrieve.search import FunnelPlan, FunnelSearcher
    from adaretrieve.sizes import Size, truncate

    rng = np.random.default_rng(0)
    qv = {s: truncate(rng.standard_normal((5, s.dim)).astype(np.float32), s.dim, True) for s in (Size(1, 8), Size(4, 32))}
    plan = FunnelPlan("1x8", 20, rerank="4x32", top=10)
    scores, rows = FunnelSearcher(reader, plan).search(qv)
    hits = qi.search(qv, plan)
    for i in range(5):
        assert [reader.docids[r] for r in rows[i]] == [d for d, _ in hits[i]]
        np.testing.assert_allclose(scores[i], [s for _, s in hits[i]], atol=1e-6)
    qi.close()


@pytest.mark.parametrize("quantization", ["scalar", "binary"])
def test_quantised_rerank_vectors_are_accepted_and_recorded(folder, queries_qrels, tmp_path, quantization):
    loc = f"qdrant:{tmp_path / 'coll'}"
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(folder), "--to", loc, "--quantization", quantization])
    assert res.exit_code == 0, res.output
    qi = QdrantIndex(loc)
    assert qi.meta["quantization"] == quantization
    params = qi.client.get_collection("coll").config.params.vectors["4x32"]
    assert params.on_disk and params.quantization_config is not None
    qi.close()
    q, r = queries_qrels
    res = runner.invoke(app, ["search", "-q", "--index", loc, "--queries", str(q), "--qrels", str(r), "--shortlist", "1x8",
                              "--k", "20", "--rerank", "4x32", "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "upload", "-q", "--index", str(folder), "--to", loc, "--quantization", "bogus"])
    assert res.exit_code == 2 and "--quantization 'bogus'" in res.stderr
