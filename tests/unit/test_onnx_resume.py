"""Resumable encoding on the onnx backends (issue 25, item 1): ``encode_to`` runs a head graph
(embeddings + layers 1..L), ``resume`` a continuation graph (layers L+1..M from the hidden state
after L), and the vectors equal a one-pass encode; the cascade runs on them as on torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adaretrieve.errors import AdaError
from adaretrieve.modeling import Encoder
from adaretrieve.search.cascade import StopRule
from adaretrieve.sizes import Size, parse_size
from tests.conftest import make_corpus, module_or_skip

TEXTS = ["the cell gene", "cancer risk in patients with a long history", "drug dose", "immune therapy of virus",
         "brain heart", "a b c d e f g h i j k l m n o p"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """One cache folder for the module (graphs exported once, as in real use), the one test_onnx uses."""
    module_or_skip("onnxruntime", "pip install -e '.[dev]' installs it (the onnx backend's tests)")
    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


@pytest.fixture(scope="module")
def torch_enc(tiny_model):
    return Encoder(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def onnx_enc(tiny_model):
    return Encoder(tiny_model, device="cpu", backend="onnx", threads=1)


def spy_segments(monkeypatch):
    """[(start, end), ...]: the segment graphs each batch runs (start 0: a head from the tokens)."""
    from adaretrieve.modeling import onnx_backend

    calls = []
    head, layers = onnx_backend.OnnxRunner.run_head, onnx_backend.OnnxRunner.run_layers
    monkeypatch.setattr(onnx_backend.OnnxRunner, "run_head",
                        lambda self, batch, depth: (calls.append((0, depth)), head(self, batch, depth))[1])
    monkeypatch.setattr(onnx_backend.OnnxRunner, "run_layers",
                        lambda self, h, m, a, b: (calls.append((a, b)), layers(self, h, m, a, b))[1])
    return calls


def test_onnx_resume_equals_one_pass_and_runs_only_the_new_layers(onnx_enc, torch_enc, monkeypatch):
    sizes = ["1x8", "2x16", "4x32"]
    one, want = onnx_enc.encode(TEXTS, sizes, batch_size=4), torch_enc.encode(TEXTS, sizes, batch_size=4)
    calls = spy_segments(monkeypatch)
    first, state = onnx_enc.encode_to(TEXTS, ["1x8"], batch_size=4)
    assert calls == [(0, 1), (0, 1)] and state.depth == 1 and state.n == len(TEXTS)
    np.testing.assert_allclose(first[Size(1, 8)], one[Size(1, 8)], atol=1e-4)
    calls.clear()
    more, state2 = onnx_enc.resume(state, ["2x16", "4x32", "1x8"])
    assert calls == [(1, 4), (1, 4)] and state2.depth == 4  # layers 2..4 once per batch, never the head again
    for s in map(parse_size, sizes):
        np.testing.assert_allclose(more[s], one[s], atol=1e-4, err_msg=str(s))
        np.testing.assert_allclose(more[s], want[s], atol=1e-4, err_msg=str(s))


def test_onnx_resume_some_rows_twice(onnx_enc, torch_enc):
    """L -> M -> N on fewer rows each time; equal to the one-pass onnx and torch vectors."""
    sizes = ["2x16", "3x32", "4x32"]
    one, want = onnx_enc.encode(TEXTS, sizes, batch_size=8), torch_enc.encode(TEXTS, sizes, batch_size=8)
    _, s1 = onnx_enc.encode_to(TEXTS, ["1x8"], batch_size=8)
    v2, s2 = onnx_enc.resume(s1, ["2x16"], rows=[4, 1, 5])
    assert v2[Size(2, 16)].shape == (3, 16) and sorted(s2.rows.tolist()) == [1, 4, 5]
    np.testing.assert_allclose(v2[Size(2, 16)], one[Size(2, 16)][[4, 1, 5]], atol=1e-4)
    v4, s4 = onnx_enc.resume(s2, ["3x32", "4x32", "2x16"], rows=[5, 1])
    for s in map(parse_size, sizes):
        np.testing.assert_allclose(v4[s], one[s][[5, 1]], atol=1e-4, err_msg=str(s))
        np.testing.assert_allclose(v4[s], want[s][[5, 1]], atol=1e-4, err_msg=str(s))
    same, _ = onnx_enc.resume(s4, ["4x32"], rows=[1])  # no new layer: read from the state
    np.testing.assert_array_equal(same[Size(4, 32)], v4[Size(4, 32)][[1]])
    with pytest.raises(AdaError, match="not in this encode state"):
        onnx_enc.resume(s2, ["4x32"], rows=[0])


# Measured on this tiny model (4 x 32, random weights), resumed minus one-pass int8, max abs over the
# normalised vectors: 0 when every row resumes (the segments' weights quantise exactly as the one-pass
# graph's: per output channel, weight by weight, and the batch is the same); 3e-4 (three rows of six)
# to 9e-4 (one row) when rows are dropped, cosine >= 0.999998, since activations are quantised with
# one scale per tensor over the batch that runs, and a smaller batch has another range. Bounded here
# at about 5x that: 5e-3, cosine > 0.9999. (int8 against fp32 is test_onnx's business: 2e-3 here.)
INT8_ATOL = 5e-3


def test_onnx_int8_resume_is_close_to_the_int8_one_pass(tiny_model):
    enc = Encoder(tiny_model, device="cpu", backend="onnx-int8", threads=1)
    sizes = ["2x16", "4x32"]
    one = enc.encode(TEXTS, sizes, batch_size=8)
    _, state = enc.encode_to(TEXTS, ["1x8"], batch_size=8)
    every, _ = enc.resume(state, sizes)
    assert enc._onnx.path((1, 4)).name.endswith("-int8pc2.onnx")
    for s in map(parse_size, sizes):
        np.testing.assert_allclose(every[s], one[s], atol=1e-4, err_msg=str(s))
    for rows in ([5, 0, 2], [1]):
        some, _ = enc.resume(state, sizes, rows=rows)
        for s in map(parse_size, sizes):
            np.testing.assert_allclose(some[s], one[s][rows], atol=INT8_ATOL, err_msg=f"{s} {rows}")
            assert ((some[s] * one[s][rows]).sum(1) > 0.9999).all(), (s, rows)


def test_segments_are_cached_and_hold_only_their_layers(tiny_model, monkeypatch, tmp_path):
    """A head to L holds L layers, a continuation L..M holds M - L (6 weighted MatMuls per BERT
    layer); each is exported once, and a new encoder (a new process) reads them from the cache."""
    import onnx

    from adaretrieve.modeling import onnx_backend

    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    exports = []
    real = onnx_backend.OnnxRunner._export
    monkeypatch.setattr(onnx_backend.OnnxRunner, "_export", lambda self, d, out: (exports.append(d), real(self, d, out)))
    enc = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    _, state = enc.encode_to(TEXTS, ["1x8"])
    first, _ = enc.resume(state, ["3x8"])
    enc.resume(enc.encode_to(TEXTS, ["1x8"])[1], ["3x8"])
    assert exports == [(0, 1), (1, 3)]

    def weighted_matmuls(part):
        g = onnx.load(str(enc._onnx.path(part)), load_external_data=False).graph
        consts = {t.name for t in g.initializer}
        return sum(1 for n in g.node if n.op_type == "MatMul" and any(i in consts for i in n.input))

    assert (weighted_matmuls((0, 1)), weighted_matmuls((1, 3))) == (6, 12)
    cont = onnx.load(str(enc._onnx.path((1, 3))), load_external_data=False).graph
    assert not any("embeddings" in t.name for t in cont.initializer)  # the mask is built without them
    again = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    v, _ = again.resume(again.encode_to(TEXTS, ["1x8"])[1], ["3x8"])
    np.testing.assert_array_equal(v[Size(3, 8)], first[Size(3, 8)])
    assert exports == [(0, 1), (1, 3)]
    files = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert len(files) == 2 and all(f.startswith(enc.backbone_hash()[:16]) for f in files), files


def test_four_threads_resume_on_one_fresh_encoder(tiny_model, monkeypatch, tmp_path):
    """Sessions are shared, states are per call: four threads at once export each segment once and
    each get the one-pass vectors of their own texts."""
    import threading

    monkeypatch.setenv("ADARETRIEVE_CACHE", str(tmp_path / "cache"))
    enc = Encoder(tiny_model, device="cpu", backend="onnx", threads=1)
    texts = [TEXTS[i:] + TEXTS[:i] for i in range(4)]
    barrier = threading.Barrier(4)
    got: list = [None] * 4
    errors: list = []

    def call(i):
        try:
            barrier.wait()
            _, st = enc.encode_to(texts[i], ["1x8"], batch_size=4)
            got[i] = enc.resume(st, ["4x32"], rows=[0, 2, 3])[0][Size(4, 32)]
        except BaseException as e:  # noqa: B036  (every failure is the finding)
            errors.append(repr(e))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(4):
        np.testing.assert_allclose(got[i], enc.encode(texts[i], ["4x32"])[Size(4, 32)][[0, 2, 3]], atol=1e-4)
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 3  # head to 1, layers 1..4, the one-pass depth 4


def test_a_state_from_another_encoder_or_backend_is_refused(onnx_enc, torch_enc, other_tiny_model):
    _, state = onnx_enc.encode_to(TEXTS[:2], ["1x8"])
    with pytest.raises(AdaError, match="another encoder"):
        Encoder(other_tiny_model, device="cpu", backend="onnx", threads=1).resume(state, ["4x32"])
    with pytest.raises(AdaError, match="made on backend 'onnx'") as e:
        torch_enc.resume(state, ["4x32"])
    assert "\n" not in str(e.value)
    _, tstate = torch_enc.encode_to(TEXTS[:2], ["1x8"])
    with pytest.raises(AdaError, match="made on backend 'torch'"):
        onnx_enc.resume(tstate, ["4x32"])


@pytest.fixture(scope="module")
def onnx_retriever(tiny_model, tmp_path_factory):
    from adaretrieve import Retriever
    from adaretrieve.index.build import build_index

    d = tmp_path_factory.mktemp("onnx-cascade")
    build_index(make_corpus(d / "c.jsonl", n=80), Encoder(tiny_model, device="cpu"), d / "ix", ["1x8", "2x16"], "4x32",
                progress=False)
    return Retriever(d / "ix", device="cpu", backend="onnx", threads=1)


@pytest.mark.parametrize("cfg", [dict(shortlist="1x8", k=40, rerank="4x32", top=10),
                                 dict(shortlist="1x8", k=50, then=[("2x16", 20)], rerank="4x32", top=5)])
def test_never_stopping_on_onnx_equals_the_funnel(onnx_retriever, cfg):
    r = onnx_retriever
    plan = r.plan(**cfg)
    hits, res = r.search_adaptive(TEXTS, plan, StopRule.never(), batch_size=3)
    want = r.search(TEXTS, plan=plan, batch_size=3)
    assert [[d for d, _ in h] for h in hits] == [[d for d, _ in h] for h in want]
    np.testing.assert_allclose([s for h in hits for _, s in h], [s for h in want for _, s in h], atol=1e-5)
    assert (res.layers == 4).all() and (res.exit_stage == plan.stages - 1).all()


def test_cli_search_adaptive_on_onnx(onnx_retriever, tmp_path):
    from typer.testing import CliRunner

    from adaretrieve.cli.main import app
    from adaretrieve.eval import read_run
    from adaretrieve.search.calibrate import write_stop_rule

    r = onnx_retriever
    plan = r.plan(shortlist="1x8", k=40, then=[("2x16", 20)], rerank="4x32", top=10)
    fit_texts = [f"{t} {w}" for t in TEXTS for w in ("risk", "dose", "gene")]
    fit = r.calibrate(fit_texts, plan, 0.6)
    rule = tmp_path / "rule.json"
    write_stop_rule(rule, fit, plan, r.reader.manifest, 0.6, {"queries": "test texts", "n": len(fit_texts)})
    q, out = tmp_path / "q.jsonl", tmp_path / "run.trec"
    q.write_text("".join(json.dumps({"_id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    res = CliRunner().invoke(app, ["search", "--index", str(r.reader.dir), "--queries", str(q), "--adaptive", str(rule),
                                   "--backend", "onnx", "--out", str(out), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "adaptive: answered per stage" in res.output
    hits, _ = r.search_adaptive(TEXTS, plan, fit.rule)
    got = read_run(out)
    assert [[x for x, _ in sorted(got[f"t{i}"].items(), key=lambda kv: -kv[1])] for i in range(len(TEXTS))] == \
        [[x for x, _ in h] for h in hits]
