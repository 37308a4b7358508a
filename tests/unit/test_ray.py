"""`index --ray`: chunks encoded by a Ray Data actor pool give the same index, byte for byte, as one
process with the same threads per encoder; an interrupted build finishes on Ray with nothing missing."""

import pytest
import torch
from typer.testing import CliRunner

from adaretrieve.cli.main import app
from adaretrieve.index.format import current_generation
from adaretrieve.search import IndexReader
from tests.conftest import make_corpus, module_or_skip

runner = CliRunner()


@pytest.fixture(scope="module")
def ray():
    ray = module_or_skip("ray", "pip install 'adaretrieve[ray]' (CI installs it)")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def files(index):
    g = current_generation(index)
    return {p.name: p.read_bytes() for p in g.iterdir() if p.suffix in (".faiss", ".npy", ".txt")}


def build(model, corpus, out, *extra):
    return runner.invoke(app, ["index", "-q", "--model", str(model), "--corpus", str(corpus), "--shortlist", "1x8",
                               "--shortlist", "2x16", "--rerank", "4x32", "--chunk-size", "16", "--out", str(out), *extra])


def test_ray_build_is_byte_identical_to_one_process_and_resumes(ray, tiny_model, tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors encode with one thread each: the same float sums as here
    try:
        res = build(tiny_model, corpus, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    res = build(tiny_model, corpus, tmp_path / "ray", "--ray", "--ray-actors", "2")
    assert res.exit_code == 0, res.output
    assert files(tmp_path / "one") == files(tmp_path / "ray")
    assert IndexReader(tmp_path / "ray").manifest.build["ray"]["actors"] == 2
    assert not (tmp_path / ".ray.build").exists()

    # a build interrupted after two of its seven chunks finishes on Ray: every id once, same files
    import adaretrieve.index.build as B
    import adaretrieve.index.encode as E

    real, written = E.write_chunk, []

    def dies_after_two(bdir, c, ids, vecs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(c)
        return real(bdir, c, ids, vecs)

    monkeypatch.setattr(E, "write_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        B.build_index(corpus, __import__("adaretrieve.modeling", fromlist=["Encoder"]).Encoder(tiny_model),
                      tmp_path / "resumed", ["1x8", "2x16"], "4x32", chunk_size=16, progress=False)
    monkeypatch.setattr(E, "write_chunk", real)
    assert len(list((tmp_path / ".resumed.build").glob("chunk-*"))) == 2
    res = build(tiny_model, corpus, tmp_path / "resumed", "--ray")
    assert res.exit_code == 0, res.output
    r = IndexReader(tmp_path / "resumed")
    assert sorted(r.docids) == sorted(f"d{i}" for i in range(100)) and r.manifest.build["docs_encoded_this_run"] == 100 - 32


def test_ray_bad_input_is_one_line(tiny_model, corpus, tmp_path, monkeypatch):
    res = build(tiny_model, corpus, tmp_path / "x", "--ray-address", "127.0.0.1:1")
    assert res.exit_code == 2 and "--ray-address needs --ray" in res.stderr
    res = build(tiny_model, corpus, tmp_path / "x", "--ray", "--ray-actors", "0")
    assert res.exit_code == 2 and "--ray-actors" in res.stderr
    res = build(tiny_model, corpus, tmp_path / "x", "--ray", "--ray-address", "127.0.0.1:9")
    assert res.exit_code == 2 and "cannot reach a Ray cluster at 127.0.0.1:9" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    res = build(tiny_model, corpus, tmp_path / "y", "--ray")
    assert res.exit_code == 2 and "pip install 'adaretrieve[ray]'" in res.stderr
    assert not (tmp_path / "y").exists()


class InProcessRay:
    """Ray Data's ``from_items(...).map_batches(ActorClass, fn_constructor_kwargs=...)`` run in this
    process, one actor: what ``ray_encode`` asks of Ray, without starting one."""

    def __init__(self):
        self.data, self.actors = self, []

    def from_items(self, items):
        self.items = items
        return self

    def map_batches(self, cls, batch_size, fn_constructor_kwargs, **resources):
        self.cls, self.kwargs = cls, fn_constructor_kwargs
        return self

    def iter_rows(self):
        actor = self.cls(**self.kwargs)
        self.actors.append(actor)
        for item in self.items:
            out = actor({"chunk": [item["chunk"]]})
            yield {"chunk": out["chunk"][0], "docs": out["docs"][0]}


def test_ray_actors_encode_with_the_backend_the_cli_was_given(tiny_model, tmp_path, tmp_path_factory, monkeypatch):
    """`index --ray --backend onnx-int8`: each actor's encoder runs the int8 graph (it used to be torch
    whatever --backend said), so the index equals the one-process onnx-int8 build, file for file."""
    module_or_skip("onnxruntime", "pip install -e '.[dev]' installs it (the onnx backend's tests)")
    import adaretrieve.index.ray_encode as R

    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))  # test_onnx's graphs
    fake = InProcessRay()
    monkeypatch.setattr(R, "start", lambda address, actors: fake)
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the one-process graph then runs on one thread, as the actor's (--ray-threads 1)
    try:
        res = build(tiny_model, corpus, tmp_path / "one", "--backend", "onnx-int8")
        assert res.exit_code == 0, res.output
        res = build(tiny_model, corpus, tmp_path / "ray", "--backend", "onnx-int8", "--ray", "--ray-threads", "1")
        assert res.exit_code == 0, res.output
        res = build(tiny_model, corpus, tmp_path / "torch", "--ray", "--ray-threads", "1")
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(threads)
    assert [a.enc.backend for a in fake.actors] == ["onnx-int8", "torch"]
    assert files(tmp_path / "one") == files(tmp_path / "ray")
    assert files(tmp_path / "torch") != files(tmp_path / "ray")  # int8 weights: other vectors, so the check can fail
