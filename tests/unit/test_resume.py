"""Resumable encoding (issue 25, item 1): a query encoded to layer L can continue to layer M later
without running layers 1..L again, for every query or some, and its vectors equal a one-pass encode."""

from __future__ import annotations

import numpy as np
import pytest

from adaretrieve.errors import AdaError
from adaretrieve.modeling import Encoder
from adaretrieve.sizes import Size

TEXTS = ["the cell gene", "cancer risk in patients with a long history", "drug dose", "immune therapy of virus",
         "brain heart", "a b c d e f g h i j k l m n o p"]


@pytest.fixture(scope="module")
def enc(tiny_model):
    return Encoder(tiny_model, device="cpu")


def count_layers(enc):
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=n: calls.append(n)) for n, layer in enumerate(enc.model.encoder.layer)]
    return calls, hooks


def test_resume_equals_one_pass_and_runs_only_the_new_layers(enc):
    one = enc.encode(TEXTS, ["1x8", "2x16", "4x32"], batch_size=4)
    first, state = enc.encode_to(TEXTS, ["1x8"], batch_size=4)
    np.testing.assert_allclose(first[Size(1, 8)], one[Size(1, 8)], atol=1e-6)
    assert state.depth == 1 and state.n == len(TEXTS)
    calls, hooks = count_layers(enc)
    try:
        more, state2 = enc.resume(state, ["2x16", "4x32", "1x8"])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [1, 2, 3, 1, 2, 3]  # layers 2..4 once per batch of 4, never layer 1 again
    for s in (Size(1, 8), Size(2, 16), Size(4, 32)):
        np.testing.assert_allclose(more[s], one[s], atol=1e-6)
    assert state2.depth == 4


def test_resume_some_rows_in_steps(enc):
    one = enc.encode(TEXTS, ["3x32", "4x32"], batch_size=8)
    _, s1 = enc.encode_to(TEXTS, ["1x8"], batch_size=8)
    rows = [4, 1, 5]
    v2, s2 = enc.resume(s1, ["2x16"], rows=rows)
    assert v2[Size(2, 16)].shape == (3, 16) and sorted(s2.rows.tolist()) == [1, 4, 5]
    v4, _ = enc.resume(s2, ["3x32", "4x32"], rows=[5, 1])
    for s in (Size(3, 32), Size(4, 32)):
        np.testing.assert_allclose(v4[s], one[s][[5, 1]], atol=1e-5)  # a smaller batch: float rounding only
    with pytest.raises(AdaError, match="not in this encode state"):
        enc.resume(s2, ["4x32"], rows=[0])


def test_resume_refuses_another_encoder(enc, other_tiny_model):
    _, state = enc.encode_to(TEXTS[:2], ["1x8"])
    with pytest.raises(AdaError, match="another encoder"):
        Encoder(other_tiny_model, device="cpu").resume(state, ["4x32"])


def test_resume_on_an_adapted_model_equals_one_pass(tiny_model, tmp_path):
    """An adaptor reads several layers' pooled states: resumed sizes still equal a one-pass encode
    (the first benchmark run found that this path ran the adaptor outside inference mode)."""
    from adaretrieve.training.adapt import AdaptConfig, adapt
    from tests.conftest import make_corpus

    corpus = make_corpus(tmp_path / "corpus.jsonl", n=60, seed=3)
    adapt(AdaptConfig(model=str(tiny_model), corpus=str(corpus), out=str(tmp_path / "model"), ladder=["1x8", "2x16", "4x32"],
                      steps=5, batch_size=16, docs_per_step=32, teacher_top=8, device="cpu"), progress=False)
    enc = Encoder(tmp_path / "model", device="cpu")
    assert enc.adaptor is not None
    one = enc.encode(TEXTS, ["1x8", "2x16", "4x32"], batch_size=4)
    first, state = enc.encode_to(TEXTS, ["1x8"], batch_size=4)
    more, _ = enc.resume(state, ["2x16", "4x32"], rows=[3, 0])
    np.testing.assert_allclose(first[Size(1, 8)], one[Size(1, 8)], atol=1e-6)
    for s in (Size(2, 16), Size(4, 32)):
        np.testing.assert_allclose(more[s], one[s][[3, 0]], atol=1e-5)
