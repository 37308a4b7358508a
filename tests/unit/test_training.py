import json

import pytest
import torch
import torch.nn.functional as F

from adaretrieve import AdaError, Size
from adaretrieve.training.data import BatchSampler, Example
from adaretrieve.training.losses import PairSampler, default_ladder, matryoshka_loss
from adaretrieve.training.trainer import TrainConfig, train
from tests.conftest import WORDS


def test_ladders():
    assert [str(s) for s in default_ladder(12, 768)] == ["2x32", "4x64", "6x128", "8x256", "10x512", "12x768"]
    assert [str(s) for s in default_ladder(6, 384)] == ["1x16", "2x32", "3x64", "4x128", "5x256", "6x384"]


def test_pair_samplers_differ_only_in_pairs():
    ladder = default_ladder(6, 384)
    full = Size(6, 384)
    assert [s for s, _ in PairSampler("starbucks", ladder, full).step_pairs()] == ladder
    assert [s for s, _ in PairSampler("mrl", ladder, full).step_pairs()] == [Size(6, d) for d in (16, 32, 64, 128, 256, 384)]
    assert PairSampler("single", ["2x32"], full).step_pairs() == [(Size(2, 32), 1.0)]
    seen_layers = set()
    s = PairSampler("2dmse-inhouse", ladder, full, seed=0)
    for _ in range(50):
        pairs = [p for p, _ in s.step_pairs()]
        assert pairs[0] == full and len(pairs) <= 3
        earlier = [p.layer for p in pairs if p.layer < 6]
        assert len(earlier) == 1
        seen_layers |= set(earlier)
    assert seen_layers == {1, 2, 3, 4, 5}
    with pytest.raises(AdaError, match="exactly one size"):
        PairSampler("single", ladder, full)


LADDER_DIMS = (16, 32, 64, 128, 256, 384)


def test_2dmse_paper_form_is_one_earlier_layer_and_the_last_at_every_dim():
    """ielab/Starbucks retrieval/modeling.py, sub_model_sampling: one earlier ladder layer drawn
    uniformly plus the last layer, each at every dim of the ladder, every term weight 1."""
    ladder = default_ladder(6, 384)
    full = Size(6, 384)
    s = PairSampler("2dmse-paper", ladder, full, seed=1)
    counts = dict.fromkeys(range(1, 6), 0)
    n = 1000
    for _ in range(n):
        pairs = s.step_pairs()
        assert {w for _, w in pairs} == {1.0}
        sizes = [p for p, _ in pairs]
        assert len(sizes) == len(set(sizes)) == 12
        assert {p for p in sizes if p.layer == 6} == {Size(6, d) for d in LADDER_DIMS}
        earlier = {p.layer for p in sizes if p.layer < 6}
        assert len(earlier) == 1
        (layer,) = earlier
        assert {p for p in sizes if p.layer == layer} == {Size(layer, d) for d in LADDER_DIMS}
        counts[layer] += 1
    assert all(abs(c - n / 5) < 4 * (n * 0.2 * 0.8) ** 0.5 for c in counts.values()), counts  # uniform, 4 sigma
    assert PairSampler("2dmse", ladder, full).mode == "2dmse-paper"  # the plain name is the published form
    assert PairSampler("2dmse-paper", ladder, full).layers_needed() == 6
    # a ladder of one layer has nothing earlier: the last layer at every dim
    only = PairSampler("2dmse-paper", ["6x16", "6x384"], full, seed=0).step_pairs()
    assert only == [(Size(6, 16), 1.0), (Size(6, 384), 1.0)]


def test_2dmse_st_form_is_one_random_dim_at_the_last_and_at_one_prior_layer():
    """sentence-transformers Matryoshka2dLoss defaults: n_layers_per_step=1 over every layer below
    the last, n_dims_per_step=1 (drawn separately for the last and the prior layer), last layer
    weight 1, prior layer L weight 1 / L."""
    ladder = default_ladder(6, 384)
    full = Size(6, 384)
    s = PairSampler("2dmse-st", ladder, full, seed=2)
    layers = dict.fromkeys(range(1, 6), 0)
    dims = dict.fromkeys(LADDER_DIMS, 0)
    differ = 0
    n = 1200
    for _ in range(n):
        (last, w_last), (prior, w_prior) = s.step_pairs()
        assert last.layer == 6 and w_last == 1.0 and last.dim in LADDER_DIMS
        assert 1 <= prior.layer <= 5 and prior.dim in LADDER_DIMS and w_prior == pytest.approx(1 / prior.layer)
        layers[prior.layer] += 1
        dims[last.dim] += 1
        differ += last.dim != prior.dim
    assert all(abs(c - n / 5) < 4 * (n * 0.2 * 0.8) ** 0.5 for c in layers.values()), layers
    assert all(abs(c - n / 6) < 4 * (n / 6 * 5 / 6) ** 0.5 for c in dims.values()), dims
    assert abs(differ / n - 5 / 6) < 0.05  # the two dims are independent draws
    # the prior layer is any layer below the last, not only the ladder's
    two = PairSampler("2dmse-st", ["2x16", "6x384"], full, seed=0)
    seen = {p.layer for _ in range(200) for p, _ in two.step_pairs()}
    assert seen == {1, 2, 3, 4, 5, 6}


def test_unknown_loss_names_every_form():
    ladder = default_ladder(6, 384)
    with pytest.raises(AdaError) as e:
        PairSampler("2dmse-foo", ladder, Size(6, 384))
    msg = str(e.value)
    assert "\n" not in msg and "2dmse-foo" in msg
    for name in ("starbucks", "2dmse", "2dmse-paper", "2dmse-st", "2dmse-inhouse", "mrl", "single"):
        assert name in msg


def test_layer_kl_is_the_st_embedding_kl_to_the_last_layer():
    """AdaptiveLayerLoss's term: KL(softmax(last / T) || softmax(prior / T)) over the embedding's
    own dims, full width, every text of the batch, batchmean, times T * weight; the last layer's
    side is not detached."""
    torch.manual_seed(0)
    q = {2: torch.randn(4, 8, requires_grad=True), 4: torch.randn(4, 8, requires_grad=True)}
    p = {2: torch.randn(8, 8), 4: torch.randn(8, 8)}
    labels = torch.tensor([0, 2, 4, 6])
    full = Size(4, 8)
    pairs = [(Size(4, 2), 1.0), (Size(2, 4), 0.5)]
    base, _ = matryoshka_loss(q, p, labels, pairs, full, True, 0.05, kl_weight=0.0)
    loss, logs = matryoshka_loss(q, p, labels, pairs, full, True, 0.05, kl_weight=0.0, layer_kl_weight=2.0,
                                 layer_kl_temperature=0.3)
    last = F.normalize(torch.cat([q[4], p[4]]), dim=-1)
    prior = F.normalize(torch.cat([q[2], p[2]]), dim=-1)
    t = F.softmax(last / 0.3, -1)
    kl = (t * (t.log() - F.log_softmax(prior / 0.3, -1))).sum(-1).mean()
    assert torch.allclose(loss, base + 2.0 * 0.3 * kl, atol=1e-6)
    assert logs["layer_kl"] == pytest.approx(float(kl.detach()), rel=1e-5)
    loss.backward()
    assert q[4].grad.abs().max() > 0


def test_loss_is_infonce_plus_kl():
    torch.manual_seed(0)
    q = {1: torch.randn(4, 8), 2: torch.randn(4, 8)}
    p = {1: torch.randn(8, 8), 2: torch.randn(8, 8)}
    labels = torch.tensor([0, 2, 4, 6])
    full = Size(2, 8)
    loss, logs = matryoshka_loss(q, p, labels, [(full, 1.0)], full, True, 0.05)
    ref = F.cross_entropy(F.normalize(q[2]) @ F.normalize(p[2]).T / 0.05, labels)
    assert torch.allclose(loss, ref) and logs == {"2x8": pytest.approx(float(ref))}
    small = Size(1, 4)
    loss2, _ = matryoshka_loss(q, p, labels, [(small, 1.0)], full, True, 0.05, kl_weight=1.0)
    s = F.normalize(q[1][:, :4]) @ F.normalize(p[1][:, :4]).T / 0.05
    t = F.normalize(q[2]) @ F.normalize(p[2]).T / 0.05
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()
    assert torch.allclose(loss2, F.cross_entropy(s, labels) + kl, atol=1e-5)


def test_batches_are_deterministic_and_shaped():
    ex = [Example(f"q{i}", [f"p{i}"], [f"n{i}a", f"n{i}b"]) for i in range(10)]
    b = BatchSampler(ex, 4, 2, seed=1)
    qs, ps, labels = b.batch(3)
    assert b.batch(3) == (qs, ps, labels)
    assert len(qs) == 4 and len(ps) == 12 and labels == [0, 3, 6, 9]
    for q, lab in zip(qs, labels):
        assert ps[lab] == "p" + q[1:]


@pytest.fixture
def beir_train(tmp_path):
    import random

    rng = random.Random(0)
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(WORDS, k=8))}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.choices(WORDS, k=3))}) + "\n")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(20)))
    return root


def cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), output=str(out), steps=6, batch_size=4, n_negatives=1,
                lr=1e-3, save_every=2, query_max_length=16, passage_max_length=24, device="cpu", seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("loss", ["starbucks", "2dmse-paper", "2dmse-st", "mrl"])
def test_train_writes_a_loadable_model(tiny_model, beir_train, tmp_path, loss):
    from transformers import AutoModel

    from adaretrieve.modeling import Encoder

    out = tmp_path / loss
    extra = {"kl_weight": 0.0, "layer_kl_weight": 1.0} if loss == "2dmse-st" else {}
    summary = train(cfg(tiny_model, beir_train, out, loss=loss, **extra), progress=False)
    assert summary["steps"] == 6 and summary["tokens_per_second"] > 0
    meta = json.loads((out / "adaretrieve.json").read_text())
    assert meta["loss"] == loss and meta["trained_pairs"] == ["1x4", "2x8", "3x16", "4x32"]
    AutoModel.from_pretrained(out)
    enc = Encoder(out, device="cpu")
    assert (enc.pooling, enc.normalize) == ("mean", True)
    assert enc.weights_hash() != Encoder(tiny_model, device="cpu").weights_hash()
    assert [c.name for c in (out / "checkpoints").iterdir()] == ["step-4", "step-6"] or \
        sorted(c.name for c in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]


def test_loss_falls(tiny_model, beir_train, tmp_path):
    s = train(cfg(tiny_model, beir_train, tmp_path / "o", steps=40, save_every=100, lr=3e-3, loss="single", pairs=["4x32"]),
              progress=False)
    first = train(cfg(tiny_model, beir_train, tmp_path / "o2", steps=1, save_every=100, loss="single", pairs=["4x32"]),
                  progress=False)
    assert s["final_loss"] < first["final_loss"] * 0.7


def train_until_interrupted(config: TrainConfig, step: int, monkeypatch) -> None:
    """Run ``config`` and stop it as Ctrl-C would, right after the checkpoint of ``step`` is written."""
    import adaretrieve.training.trainer as T

    real = T._save_checkpoint

    def crash_after(out, at, *a, **k):
        real(out, at, *a, **k)
        if at == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_save_checkpoint", crash_after)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(T, "_save_checkpoint", real)


def test_resume_after_interruption_gives_same_weights(tiny_model, beir_train, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(cfg(tiny_model, beir_train, straight), progress=False)
    broken = tmp_path / "broken"
    train_until_interrupted(cfg(tiny_model, beir_train, broken), 4, monkeypatch)
    summary = train(cfg(tiny_model, beir_train, broken), progress=False)
    assert summary["steps_this_run"] == 2
    from safetensors.torch import load_file

    a, b = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_training_input_stops_before_training(tiny_model, beir_train, tmp_path):
    with pytest.raises(AdaError, match=r"training pair 5x8: layer 5 is outside 1..4"):
        train(cfg(tiny_model, beir_train, tmp_path / "a", pairs=["5x8"]), progress=False)
    with pytest.raises(AdaError, match=r"training pair 2x64: dim 64 exceeds the model's hidden size 32"):
        train(cfg(tiny_model, beir_train, tmp_path / "a", pairs=["2x64"]), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(AdaError, match="is empty"):
        train(cfg(tiny_model, empty, tmp_path / "a"), progress=False)
    nopos = tmp_path / "nopos.jsonl"
    nopos.write_text(json.dumps({"query": "a", "positive_passages": [], "negative_passages": []}) + "\n")
    with pytest.raises(AdaError, match="1 queries have no positive"):
        train(cfg(tiny_model, nopos, tmp_path / "a"), progress=False)
    (beir_train / "qrels" / "train.tsv").write_text("q1\td999\t1\nq2\td1\t0\n")
    with pytest.raises(AdaError, match="no positive"):
        train(cfg(tiny_model, beir_train, tmp_path / "a"), progress=False)
    (beir_train / "qrels" / "train.tsv").write_text("q1\td999\t1\n")
    with pytest.raises(AdaError, match=r"name 1 documents the corpus .* lacks: 'd999'"):
        train(cfg(tiny_model, beir_train, tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()


def test_tevatron_jsonl(tiny_model, tmp_path):
    p = tmp_path / "tev.jsonl"
    with open(p, "w") as f:
        for i in range(6):
            f.write(json.dumps({"query_id": str(i), "query": f"{WORDS[i]} cell",
                                "positive_passages": [{"docid": f"p{i}", "title": "t", "text": f"{WORDS[i]} gene"}],
                                "negative_passages": [{"docid": f"n{i}", "title": "", "text": "blood"}]}) + "\n")
    s = train(cfg(tiny_model, p, tmp_path / "o", steps=2), progress=False)
    assert s["n_examples"] == 6


def test_mine_dense_negatives_exclude_judged(tiny_model, beir_train, tmp_path):
    from adaretrieve.index.build import build_index
    from adaretrieve.modeling import Encoder
    from adaretrieve.training.data import load_beir
    from adaretrieve.training.negatives import mine_dense

    enc = Encoder(tiny_model, device="cpu")
    build_index(beir_train, enc, tmp_path / "ix", ["1x8"], "4x32", progress=False)
    out = tmp_path / "negs.jsonl"
    info = mine_dense(tmp_path / "ix", beir_train, "train", out, depth=20, skip=2, n=5, progress=False)
    assert info["queries"] == 20 and info["mean_negatives"] == 5
    for line in out.read_text().splitlines():
        obj = json.loads(line)
        assert f"d{obj['qid'][1:]}" not in obj["negatives"] and len(obj["negatives"]) == 5
    ex = load_beir(beir_train, "train", out)
    assert all(len(e.negatives) == 5 for e in ex)


def test_distributed_two_cpu_processes(tiny_model, beir_train, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from tests.unit.ddp_worker import worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kw = cfg(tiny_model, beir_train, tmp_path / "ddp", steps=3, save_every=3).__dict__
    mp.spawn(worker, args=(2, port, kw, str(tmp_path)), nprocs=2, join=True)
    h0, h1 = (tmp_path / "rank0.txt").read_text().split(), (tmp_path / "rank1.txt").read_text().split()
    assert h0 == h1 and h0[1] == "2"
    meta = json.loads((tmp_path / "ddp" / "adaretrieve.json").read_text())
    assert meta["summary"]["world_size"] == 2


def test_config_overrides_read_numbers_as_numbers(tmp_path):
    c = TrainConfig.from_file(None, ["lr=5e-5", "steps=7", "pairs=1x8,2x16"])
    assert c.lr == 5e-5 and isinstance(c.lr, float) and c.steps == 7 and c.pairs == ["1x8", "2x16"]
    with pytest.raises(AdaError, match="lr='fast' is not a number"):
        TrainConfig.from_file(None, ["lr=fast"])
    with pytest.raises(AdaError, match="unknown training settings"):
        TrainConfig.from_file(None, ["learning_rate=1e-5"])


def _full_drift(before, after, texts) -> float:
    """1 - mean cosine between two encoders' full-size vectors."""
    import numpy as np

    a = before.encode(texts, [before.full_size])[before.full_size]
    b = after.encode(texts, [after.full_size])[after.full_size]
    return float(1 - np.mean(np.sum(a * b, axis=1)))


def test_keep_full_holds_the_full_size_near_the_original(tiny_model, beir_train, tmp_path):
    """Distilling the full size from a frozen copy of the starting model moves it far less than
    training it on labels (same data, steps, seed)."""
    from adaretrieve.modeling import Encoder

    texts = [" ".join(WORDS[i : i + 6]) for i in range(0, 30, 2)]
    common = dict(steps=30, save_every=100, lr=3e-3)
    train(cfg(tiny_model, beir_train, tmp_path / "free", **common), progress=False)
    train(cfg(tiny_model, beir_train, tmp_path / "keep", keep_full=5.0, **common), progress=False)
    base = Encoder(tiny_model, device="cpu")
    free = _full_drift(base, Encoder(tmp_path / "free", device="cpu"), texts)
    keep = _full_drift(base, Encoder(tmp_path / "keep", device="cpu"), texts)
    assert keep < free / 2, (keep, free)


def test_adapted_model_trains_its_adaptor_and_freeze_keeps_the_full_size_exact(tiny_model, beir_train, tmp_path):
    import numpy as np

    from adaretrieve.modeling import Encoder
    from adaretrieve.modeling.adaptor import Adaptor
    from adaretrieve.training.adapt import AdaptConfig, adapt

    ada = tmp_path / "adapted"
    adapt(AdaptConfig(model=str(tiny_model), corpus=str(beir_train), out=str(ada), ladder=["1x8", "2x16", "4x32"],
                      steps=0, device="cpu"), progress=False)
    out = tmp_path / "frozen"
    train(cfg(tiny_model, beir_train, out, model=str(ada), freeze_backbone=True, steps=8, lr=1e-2), progress=False)
    before, after = Adaptor.load(ada), Adaptor.load(out)
    assert any(not torch.equal(before.state()[k], after.state()[k]) for k in before.state())  # the adaptor learned
    a, b = Encoder(ada, device="cpu"), Encoder(out, device="cpu")  # loads: backbone hash recorded anew
    texts = ["the cell", "cancer risk of the drug"]
    assert np.array_equal(a.encode(texts, ["4x32"])[Size(4, 32)], b.encode(texts, ["4x32"])[Size(4, 32)])
    # unfrozen: backbone and adaptor both train, and the saved adaptor names the new backbone
    out2 = tmp_path / "unfrozen"
    train(cfg(tiny_model, beir_train, out2, model=str(ada), keep_full=1.0, steps=4), progress=False)
    e = Encoder(out2, device="cpu")
    assert e.backbone_hash() != a.backbone_hash() and e.adaptor.meta["backbone_sha256"] == e.backbone_hash()
    with pytest.raises(AdaError, match="freeze_backbone needs an adapted model"):
        train(cfg(tiny_model, beir_train, tmp_path / "x", freeze_backbone=True), progress=False)


def test_bf16_autocast_on_cpu_trains(tiny_model, beir_train, tmp_path):
    s = train(cfg(tiny_model, beir_train, tmp_path / "bf16", dtype="bfloat16", steps=3, save_every=100), progress=False)
    assert s["final_loss"] is not None and s["final_loss"] == s["final_loss"]
    with pytest.raises(AdaError, match="float16 needs CUDA"):
        train(cfg(tiny_model, beir_train, tmp_path / "fp16", dtype="float16"), progress=False)


def test_paper_preset_and_gpu_recipe_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    paper = TrainConfig.from_file(root / "starbucks-paper.yaml")
    assert (paper.pooling, paper.normalize, paper.temperature, paper.kl_weight) == ("cls", False, 1.0, 1.0)
    assert paper.pairs == ["2x32", "4x64", "6x128", "8x256", "10x512", "12x768"]
    assert (paper.query_max_length, paper.passage_max_length, paper.n_negatives) == (32, 196, 7)
    gpu = TrainConfig.from_file(root / "minilm-starbucks-gpu.yaml")
    assert gpu.keep_full > 0 and gpu.device == "cuda" and gpu.dtype == "bfloat16"


@pytest.mark.parametrize("keep_full", [0.0, 1.0])
def test_two_processes_give_the_one_process_gradient(tiny_model, tmp_path, keep_full):
    """Two gloo processes, each with half of a batch, must produce the loss and the gradient that
    one process computes on the whole batch (in-batch negatives across ranks included)."""
    import socket

    import torch.multiprocessing as mp

    from tests.unit.ddp_worker import grad_worker, step_grads

    loss1, grads1 = step_grads(str(tiny_model), 0, 1, keep_full)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(grad_worker, args=(2, port, str(tiny_model), str(tmp_path), keep_full), nprocs=2, join=True)
    for r in (0, 1):
        got = torch.load(tmp_path / f"grads{r}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(loss1, rel=1e-5)
        # (key biases get ~1e-10 of pure rounding noise: softmax ignores them; skip such near-zero grads)
        worst = max(float((got["grads"][k] - g).norm() / g.norm()) for k, g in grads1.items() if g.norm() > 1e-6)
        assert worst < 1e-4, worst


def test_crafted_checkpoint_is_refused_not_run(tiny_model, beir_train, tmp_path):
    """state.pt is read with weights_only=True: a pickle that would run code is refused in one line."""
    import os

    out = tmp_path / "run"
    train(cfg(tiny_model, beir_train, out, steps=2, save_every=2), progress=False)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ck = sorted((out / "checkpoints").iterdir())[-1]
    torch.save({"step": 1, "x": Evil()}, ck / "state.pt")
    with pytest.raises(AdaError, match="refusing to load a checkpoint"):
        train(cfg(tiny_model, beir_train, out, steps=4, save_every=2), progress=False)
    assert not marker.exists()


def test_replace_dir_keeps_one_checkpoint_whatever_happens(tmp_path, monkeypatch):
    from pathlib import Path

    from adaretrieve.training.checkpoint import replace_dir

    final, tmp = tmp_path / "ck", tmp_path / "ck.tmp"
    final.mkdir()
    (final / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    real = Path.rename
    calls = []

    def crash_on_second(self, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(tmp, final)
    monkeypatch.setattr(Path, "rename", real)
    # killed between the two renames: the old checkpoint is still there (moved aside), never neither
    assert (tmp_path / "ck.old" / "a").read_text() == "old" and (tmp / "a").read_text() == "new"


def test_training_path_needs_no_faiss_datasets_or_ir_measures(tiny_model, tmp_path):
    """The GPU machines have torch and transformers but not faiss, datasets, ir-measures or
    pyserini: training from a local jsonl must run with those imports blocked."""
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"query": " ".join(WORDS[i:i + 3]), "positives": [" ".join(WORDS[i + 3:i + 9])],
                                        "negatives": [" ".join(WORDS[i + 9:i + 14])]}) + "\n" for i in range(8)))
    code = f"""
import sys
for m in ("faiss", "datasets", "ir_measures", "pyserini"):
    sys.modules[m] = None  # import fails
from adaretrieve.training.trainer import TrainConfig, train
s = train(TrainConfig(model={str(tiny_model)!r}, data={str(data)!r}, output={str(tmp_path / 'out')!r}, steps=2,
                      batch_size=4, save_every=2, query_max_length=16, passage_max_length=24, device="cpu", keep_full=1.0),
          progress=False)
print("ok", s["steps"])
"""
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert res.returncode == 0 and "ok 2" in res.stdout, res.stderr[-2000:]


def test_resume_with_changed_settings_is_refused_naming_each(tiny_model, beir_train, tmp_path, monkeypatch):
    out = tmp_path / "o"
    train_until_interrupted(cfg(tiny_model, beir_train, out), 2, monkeypatch)
    with pytest.raises(AdaError, match=r"loss 'starbucks' -> 'mrl'.*lr 0.001 -> 0.1.*--no-resume"):
        train(cfg(tiny_model, beir_train, out, loss="mrl", lr=0.1), progress=False)
    # settings that do not change the result may differ
    s = train(cfg(tiny_model, beir_train, out, save_every=3, keep_checkpoints=3), progress=False)
    assert s["steps_this_run"] == 4
    # starting over is explicit, and records what it trained with
    s = train(cfg(tiny_model, beir_train, out, loss="mrl", lr=0.1, steps=2), progress=False, resume=False)
    assert s["steps_this_run"] == 2
    assert json.loads((out / "adaretrieve.json").read_text())["loss"] == "mrl"


def test_a_model_whose_final_save_was_interrupted_is_refused_until_train_finishes_it(tiny_model, beir_train, tmp_path,
                                                                                      monkeypatch):
    """The trial's T3: killed while the final model is written, the output folder held config.json alone
    and loading it failed later with 'no file named model.safetensors'. Now the folder says training did
    not finish until the run that completes it removes the mark."""
    import adaretrieve.training.trainer as T
    from adaretrieve.modeling import Encoder

    out = tmp_path / "out"
    real = T._save_final

    def killed_while_saving(o, enc, *a):
        enc.model.config.save_pretrained(o)  # the first file of the final save, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_save_final", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_model, beir_train, out), progress=False)
    monkeypatch.setattr(T, "_save_final", real)
    with pytest.raises(AdaError, match=r"training did not finish.*adaretrieve train"):
        Encoder(out)
    summary = train(cfg(tiny_model, beir_train, out), progress=False)
    assert summary["steps_this_run"] == 0
    assert Encoder(out).n_layers == 4


def test_training_uses_only_public_names_of_other_modules(cased_tiny_model):
    """Code review 3 C1.4: trainer.py called ``enc._texts`` and smae.py imported ``trainer._dist`` (and
    read ``enc._layers_parent``); they now use ``Encoder.tokenizer_texts``, ``Encoder.layers`` and
    ``trainer.rank_and_world``. No module under training/ reaches into another one's private names."""
    import ast
    from pathlib import Path

    import adaretrieve.training as pkg
    from adaretrieve.modeling import Encoder
    from adaretrieve.training.trainer import rank_and_world

    found = []
    for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in n.names] if isinstance(n, ast.ImportFrom) else []
            if isinstance(n, ast.Attribute) and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
                names = [n.attr]
            found += [f"{f.name}:{n.lineno} {x}" for x in names if x.startswith("_") and not x.startswith("__")]
    assert not found, found
    enc = Encoder(cased_tiny_model, device="cpu")
    assert enc.tokenizer_texts(["The Cell"]) == ["the cell"]
    assert len(enc.layers) == enc.n_layers
    assert rank_and_world() == (0, 1)
