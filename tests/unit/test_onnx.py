"""The onnx backends (issue 13, item 1): the exported graph gives the torch vectors at every size
(adaptor included), is exported once per weights and depth and then read from the cache, and a
missing onnxruntime is one `error:` line with a non-zero exit."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from adaretrieve import AdaError, Size
from adaretrieve.modeling import Encoder
from tests.conftest import module_or_skip

TEXTS = ["the cell", "cancer risk of the drug in human trial", "a", "mouse brain study with immune therapy and virus",
         "gene protein level", "the the the the the the the the the the the the the the"]
EVERY_SIZE = [f"{L}x{D}" for L in (1, 2, 3, 4) for D in (1, 8, 17, 32)]


@pytest.fixture(autouse=True)
def _cache(request, tmp_path_factory, monkeypatch):
    """One cache folder for the whole module: graphs are exported once, as in real use. Every test but
    the missing-package ones needs onnxruntime (the dev extra installs it; CI fails without it)."""
    if "missing_onnxruntime" not in request.node.name:
        module_or_skip("onnxruntime", "pip install -e '.[dev]' installs it (the onnx backend's tests)")
    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


@pytest.fixture(scope="module")
def torch_enc(tiny_model):
    return Encoder(tiny_model, device="cpu")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_onnx_vectors_equal_torch_at_every_size(tiny_model, torch_enc, batch_size):
    onnx = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    want = torch_enc.encode(TEXTS, EVERY_SIZE, batch_size=batch_size)
    got = onnx.encode(TEXTS, EVERY_SIZE, batch_size=batch_size)
    assert got.keys() == want.keys()
    for s in want:
        np.testing.assert_allclose(got[s], want[s], atol=1e-4, err_msg=str(s))
    # a shallow call uses a shallower graph and still agrees
    shallow = onnx.encode(TEXTS, ["1x32"])[Size(1, 32)]
    np.testing.assert_allclose(shallow, want[Size(1, 32)], atol=1e-4)


def test_onnx_equals_torch_with_cls_pooling_and_no_normalisation(tiny_model):
    a = Encoder(tiny_model, device="cpu", pooling="cls", normalize=False)
    b = Encoder(tiny_model, device="cpu", pooling="cls", normalize=False, backend="onnx", threads=1)
    sizes = ["2x32", "4x32", "3x5"]
    want, got = a.encode(TEXTS, sizes), b.encode(TEXTS, sizes)
    for s in want:
        np.testing.assert_allclose(got[s], want[s], atol=1e-4)


def test_adaptor_still_applies(tiny_model, tmp_path):
    import shutil

    import torch

    from adaretrieve.modeling.adaptor import Adaptor

    d = shutil.copytree(tiny_model, tmp_path / "adapted")
    backbone = Encoder(d, device="cpu")
    ad = Adaptor(32, {1: 16, 2: 24}, {1: [0, 1], 2: [1, 2]}, meta={"backbone_sha256": backbone.backbone_hash()})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_()
    ad.save(d)
    sizes = ["1x16", "1x4", "2x24", "3x32", "4x32"]
    want = Encoder(d, device="cpu").encode(TEXTS, sizes)
    onnx = Encoder(d, device="cpu", backend="onnx", threads=1)
    assert onnx.adaptor is not None
    got = onnx.encode(TEXTS, sizes)
    for s in want:
        np.testing.assert_allclose(got[s], want[s], atol=1e-4, err_msg=str(s))


def test_graph_is_exported_once_and_then_read_from_the_cache(tiny_model, monkeypatch, tmp_path):
    from adaretrieve.modeling import onnx_backend

    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    exports = []
    real = onnx_backend.OnnxRunner._export
    monkeypatch.setattr(onnx_backend.OnnxRunner, "_export", lambda self, d, out: (exports.append(d), real(self, d, out)))
    a = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    first = a.encode(TEXTS, ["2x8"])
    a.encode(TEXTS, ["2x8"])
    assert exports == [2]
    files = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert len(files) == 1 and files[0].startswith(a.backbone_hash()[:16]), files
    # a new encoder (as a new process would) loads the file, exports nothing
    b = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    np.testing.assert_array_equal(b.encode(TEXTS, ["2x8"])[Size(2, 8)], first[Size(2, 8)])
    assert exports == [2]


def test_int8_query_encoder_is_close_to_fp32(tiny_model):
    fp32 = Encoder(tiny_model, device="cpu", backend="onnx", threads=1).encode(TEXTS, ["4x32", "2x16"])
    int8_enc = Encoder(tiny_model, device="cpu", backend="onnx-int8", threads=1)
    assert int8_enc._onnx.path(4).name.endswith("-int8pc2.onnx")
    int8 = int8_enc.encode(TEXTS, ["4x32", "2x16"])
    for s in fp32:
        cos = (fp32[s] * int8[s]).sum(1)  # both normalised
        assert cos.min() > 0.95, (s, cos)


def test_unknown_backend_and_gpu_device_are_refused(tiny_model):
    with pytest.raises(AdaError, match="backend 'tensorrt' is not one of torch, onnx, onnx-int8"):
        Encoder(tiny_model, device="cpu", backend="tensorrt")


def _without_onnxruntime(monkeypatch):
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError


def test_missing_onnxruntime_is_an_ada_error(tiny_model, monkeypatch):
    _without_onnxruntime(monkeypatch)
    with pytest.raises(AdaError, match="needs onnxruntime"):
        Encoder(tiny_model, device="cpu", backend="onnx")


@pytest.mark.parametrize("command", ["index", "search", "bench"])
def test_missing_onnxruntime_is_one_error_line_on_every_command(tiny_model, tmp_path, monkeypatch, command):
    from tests.conftest import make_corpus
    from tests.unit.test_bad_input import build, one_error, run

    corpus = make_corpus(tmp_path / "corpus.jsonl")
    if command != "index":
        assert build(tiny_model, corpus, tmp_path / "ix").exit_code == 0
    q = tmp_path / "q.jsonl"
    q.write_text('{"_id": "q1", "text": "the cell"}\n')
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\n")
    _without_onnxruntime(monkeypatch)
    if command == "index":
        res = build(tiny_model, corpus, tmp_path / "ix", "--backend", "onnx")
    elif command == "search":
        res = run("search", "--index", tmp_path / "ix", "--queries", q, "--qrels", qrels, "--quiet", "--backend", "onnx")
    else:
        cfg = tmp_path / "suite.yaml"
        cfg.write_text(f"name: t\nmodel: {tiny_model}\ncorpus: {corpus}\nqueries: {q}\nqrels: {qrels}\n"
                       f"index: {tmp_path / 'ix'}\nshortlist: [1x8]\nrerank: 4x32\nsingle: [1x8]\n")
        res = run("bench", "--config", cfg, "--out", tmp_path / "rep", "--quiet", "--backend", "onnx")
    one_error(res, "needs onnxruntime", "--backend torch")


def test_search_and_retriever_with_onnx_answer_as_torch(tiny_model, tmp_path):
    from adaretrieve import Retriever
    from tests.conftest import make_corpus
    from tests.unit.test_bad_input import build, run

    corpus = make_corpus(tmp_path / "corpus.jsonl")
    assert build(tiny_model, corpus, tmp_path / "ix", "--backend", "onnx").exit_code == 0
    q = tmp_path / "q.jsonl"
    q.write_text("".join(f'{{"_id": "q{i}", "text": "{t}"}}\n' for i, t in enumerate(TEXTS)))
    runs = {}
    for backend in ("torch", "onnx"):
        res = run("search", "--index", tmp_path / "ix", "--queries", q, "--shortlist", "2x16", "--k", "10",
                  "--rerank", "4x32", "--out", tmp_path / f"{backend}.trec", "--quiet", "--backend", backend)
        assert res.exit_code == 0, res.output
        runs[backend] = [line.split()[:3] for line in (tmp_path / f"{backend}.trec").read_text().splitlines()]
    assert runs["onnx"] == runs["torch"]
    hits = Retriever(tmp_path / "ix", backend="onnx").search(TEXTS[:2], shortlist="2x16", k=10, top=3)
    want = Retriever(tmp_path / "ix").search(TEXTS[:2], shortlist="2x16", k=10, top=3)
    assert [[d for d, _ in h] for h in hits] == [[d for d, _ in h] for h in want]
    np.testing.assert_allclose([[s for _, s in h] for h in hits], [[s for _, s in h] for h in want], atol=1e-4)


def test_int8_keeps_the_feed_forward_down_projections_in_fp32(tiny_model):
    import onnx

    enc = Encoder(tiny_model, device="cpu", backend="onnx-int8", threads=1)
    enc.encode(TEXTS[:1], ["4x32"])
    down = enc._onnx._down_projections(enc._onnx.path(4, quantized=False))
    assert len(down) == 4  # one per layer
    q = onnx.load(str(enc._onnx.path(4)))
    kept = {n.name for n in q.graph.node if n.op_type == "MatMul"}
    assert set(down) <= kept and any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in q.graph.node)


def test_onnx_backend_runs_on_the_cpu_when_no_device_is_given(tiny_model, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    enc = Encoder(tiny_model, backend="onnx", threads=1)
    assert enc.device.type == "cpu"
    assert enc.encode(TEXTS[:2], ["2x8"])[Size(2, 8)].shape == (2, 8)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_first_use_from_four_threads_exports_once_and_gives_equal_vectors(tiny_model, torch_enc, monkeypatch, tmp_path,
                                                                           backend):
    """Code review 3, A8: four threads asking one fresh encoder for the same depth at once. torch.onnx's
    export state is process-global and the temporary file name was per process, so all four failed."""
    import threading

    from adaretrieve.modeling import onnx_backend

    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    exports, quantised = [], []
    real_export, real_quantize = onnx_backend.OnnxRunner._export, onnx_backend.OnnxRunner._quantize
    monkeypatch.setattr(onnx_backend.OnnxRunner, "_export",
                        lambda self, d, out: (exports.append(d), real_export(self, d, out)))
    monkeypatch.setattr(onnx_backend.OnnxRunner, "_quantize",
                        lambda self, a, b: (quantised.append(b.name), real_quantize(self, a, b)))
    enc = Encoder(tiny_model, device="cpu", backend=backend, threads=1)
    barrier = threading.Barrier(4)
    got: list = [None] * 4
    errors: list = []

    def call(i):
        try:
            barrier.wait()
            got[i] = enc.encode(TEXTS, ["2x8"])[Size(2, 8)]
        except BaseException as e:  # noqa: B036  (every failure is the finding)
            errors.append(repr(e))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert exports == [2]
    assert len(quantised) == (1 if backend == "onnx-int8" else 0)
    for v in got[1:]:
        np.testing.assert_array_equal(v, got[0])
    if backend == "onnx":
        np.testing.assert_allclose(got[0], torch_enc.encode(TEXTS, ["2x8"])[Size(2, 8)], atol=1e-4)
    files = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert len(files) == (2 if backend == "onnx-int8" else 1) and not any(f.startswith(".") for f in files), files


def test_two_processes_exporting_into_one_cache_leave_it_whole(tiny_model, tmp_path):
    """Two processes that export and quantise the same depth into one cache at once: both succeed,
    the cache holds one fp32 and one int8 file and no temporary file, and a third process loads them."""
    import os
    import subprocess

    cache = tmp_path / "cache"
    script = ("import sys, numpy as np; from adaretrieve.modeling import Encoder; "
              f"v = Encoder({str(tiny_model)!r}, device='cpu', backend='onnx-int8', threads=1).encode({TEXTS!r}, ['2x8']); "
              "np.save(sys.argv[1], next(iter(v.values())))")
    env = {**os.environ, "ADARETRIEVE_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"v{i}.npy")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    files = sorted(p.name for p in (cache / "onnx").iterdir())
    assert len(files) == 2 and not any(f.startswith(".") for f in files), files
    np.testing.assert_array_equal(np.load(tmp_path / "v0.npy"), np.load(tmp_path / "v1.npy"))
    third = Encoder(tiny_model, device="cpu", backend="onnx-int8", threads=1)
    os.environ["ADARETRIEVE_CACHE"] = str(cache)  # monkeypatched by the module's fixture, restored after the test
    np.testing.assert_array_equal(third.encode(TEXTS, ["2x8"])[Size(2, 8)], np.load(tmp_path / "v0.npy"))


def test_quantising_leaves_the_root_logger_alone(tiny_model, monkeypatch, tmp_path, caplog):
    """The quantiser's own advice ("consider pre-processing", on the root logger) is silenced while it
    runs, without raising the root logger's level: another thread's warnings still get through."""
    import logging

    import onnxruntime.quantization as q

    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    root = logging.getLogger()
    before = root.level
    seen = []
    real = q.quantize_dynamic

    def spy(*a, **kw):
        seen.append(root.level)
        logging.warning("a warning from elsewhere while quantising")
        return real(*a, **kw)

    monkeypatch.setattr(q, "quantize_dynamic", spy)
    with caplog.at_level(logging.INFO):
        level = root.level
        Encoder(tiny_model, device="cpu", backend="onnx-int8", threads=1).encode(TEXTS[:2], ["1x8"])
    assert seen == [level] and root.level == before
    messages = [r.getMessage() for r in caplog.records]
    assert "a warning from elsewhere while quantising" in messages
    assert not any("pre-process" in m for m in messages), messages


def test_a_depth_d_graph_holds_only_d_layers(tiny_model):
    """Code review 3, A15.9: early exit is in the graph. A graph that ran every layer and then
    sliced would give the same vectors; it would hold every layer's weights, which this counts:
    the MatMul nodes with a constant weight (per BERT layer: query, key, value, output, up, down)."""
    import onnx

    enc = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    for size in ("1x8", "4x8"):  # one call per depth: a call exports the graph to its deepest size only
        enc.encode(TEXTS[:2], [size])

    def weighted_matmuls(depth):
        g = onnx.load(str(enc._onnx.path(depth)), load_external_data=False).graph
        consts = {t.name for t in g.initializer}
        return sum(1 for n in g.node if n.op_type == "MatMul" and any(i in consts for i in n.input))

    one, four = weighted_matmuls(1), weighted_matmuls(4)
    assert 0 < one < four
    assert (one, four) == (6, 24), (one, four)
