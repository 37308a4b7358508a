"""The realistic generator (adaretrieve.bench.realistic): shapes, determinism, chunking, and sizes that
are the model's map of the generated layer states."""

from __future__ import annotations

import numpy as np
import pytest

from adaretrieve.bench.realistic import BLOCK, NeighbourMix, adaptor_mapper, nearest_neighbours
from adaretrieve.sizes import Size
from tests.conftest import module_or_skip

HIDDEN = 16
LAYERS = [0, 1, 2, 3]
SIZES = [Size(1, 4), Size(2, 8), Size(3, HIDDEN)]


def real_states(n: int = 120, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, HIDDEN)).astype(np.float32)
    return {L: base + 0.3 * L * rng.standard_normal((n, HIDDEN)).astype(np.float32) for L in LAYERS}


def tiny_adaptor():
    torch = module_or_skip("torch", "pip install torch (the adaptor is a torch module)")
    from adaretrieve.modeling.adaptor import Adaptor

    torch.manual_seed(0)
    ad = Adaptor(HIDDEN, {1: HIDDEN, 2: HIDDEN}, {1: [0, 1], 2: [0, 1, 2]})
    with torch.no_grad():
        for m in ad.maps.values():
            m.weight.normal_()
            m.bias.normal_()
    return ad


def by_hand(ad, states: dict[int, np.ndarray]) -> dict[Size, np.ndarray]:
    """Each size from the layer states with the adaptor's weights in numpy: x @ W + b over the
    concatenated feature layers (layer 3 has no map: its raw state), cut, renormalised."""
    out = {}
    for s in SIZES:
        if ad.has(s.layer):
            m = ad.maps[str(s.layer)]
            x = np.concatenate([states[L] for L in ad.inputs(s.layer)], axis=1)
            v = x @ m.weight.detach().numpy() + m.bias.detach().numpy()
        else:
            v = states[s.layer]
        v = v[:, : s.dim]
        out[s] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def test_nearest_neighbours_against_brute_force():
    x = real_states()[3]
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    got = nearest_neighbours(x, 5)
    assert got.shape == (len(x), 5)
    assert (got != np.arange(len(x))[:, None]).all()
    np.testing.assert_allclose(np.take_along_axis(sim, got, 1), np.take_along_axis(sim, want, 1), rtol=1e-5)


def test_shapes_dtypes_and_seed():
    ad = tiny_adaptor()
    gen = NeighbourMix.fit(real_states(), full_layer=3, k=6, toward=0.6, noise=0.4, seed=7)
    st = gen.layer_states(0, 50)
    assert sorted(st) == LAYERS and all(v.shape == (50, HIDDEN) and v.dtype == np.float32 for v in st.values())
    v = gen.vectors(0, 50, adaptor_mapper(ad, SIZES))
    assert sorted(v) == sorted(SIZES)
    for s in SIZES:
        assert v[s].shape == (50, s.dim) and v[s].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v[s], axis=1), 1.0, rtol=1e-5)
    again = NeighbourMix.fit(real_states(), full_layer=3, k=6, toward=0.6, noise=0.4, seed=7).layer_states(0, 50)
    other = NeighbourMix.fit(real_states(), full_layer=3, k=6, toward=0.6, noise=0.4, seed=8).layer_states(0, 50)
    for L in LAYERS:
        np.testing.assert_array_equal(st[L], again[L])
        assert not np.allclose(st[L], other[L])


def test_sizes_are_the_adaptor_map_of_the_layer_states():
    ad = tiny_adaptor()
    gen = NeighbourMix.fit(real_states(), full_layer=3, k=6, seed=1)
    states = gen.layer_states(100, 300)
    got = gen.vectors(100, 300, adaptor_mapper(ad, SIZES))
    want = by_hand(ad, states)
    for s in SIZES:
        np.testing.assert_allclose(got[s], want[s], atol=1e-5)


def test_every_layer_moves_with_the_same_weights():
    """A generated document is its seed plus one weighted sum of neighbour differences, the same weights
    in every layer: solving for the weights from one layer reproduces every other layer."""
    real = real_states()
    gen = NeighbourMix.fit(real, full_layer=3, k=6, borrow=0.5, seed=2)
    seeds, c, r, w = gen.recipe(0, 20)
    assert np.abs(w).sum() > 0
    st = gen.layer_states(0, 20)
    for i in range(20):
        s, nb, rn = seeds[i], gen.neighbours[seeds[i]], gen.neighbours[r[i], 0]
        for L in LAYERS:
            diff = real[L][nb] - real[L][s]  # [k, hidden]
            residual = real[L][r[i]] - real[L][rn]  # [M, hidden]
            np.testing.assert_allclose(st[L][i], real[L][s] + c[i] @ diff + w[i] @ residual, atol=1e-4)


def test_chunked_generation_equals_one_shot():
    ad = tiny_adaptor()
    gen = NeighbourMix.fit(real_states(), full_layer=3, k=6, borrow=0.3, seed=3)
    n = 2 * BLOCK + 300
    one = gen.vectors(0, n, adaptor_mapper(ad, SIZES))
    bounds = [0, 1, 700, BLOCK, BLOCK + 5, 2 * BLOCK + 299, n]
    parts = [gen.vectors(a, b - a, adaptor_mapper(ad, SIZES)) for a, b in zip(bounds, bounds[1:])]
    for s in SIZES:
        np.testing.assert_allclose(np.concatenate([p[s] for p in parts]), one[s], atol=1e-6)
    assert all(len(v) == 0 for v in gen.layer_states(n, 0).values())


def test_bad_fits_say_why():
    real = real_states(n=5)
    with pytest.raises(ValueError, match="needs more than k"):
        NeighbourMix.fit(real, full_layer=3, k=5)
    with pytest.raises(ValueError, match="same documents"):
        NeighbourMix.fit({0: real[0], 1: real[1][:3]}, full_layer=1, k=2)
