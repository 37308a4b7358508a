import numpy as np
import pytest

from adaretrieve import AdaError, Size, parse_size, parse_sizes
from adaretrieve.sizes import truncate


def test_parse_and_str():
    assert parse_size("4x32") == Size(4, 32)
    assert parse_size(" 12X768 ") == Size(12, 768)
    assert str(Size(2, 64)) == "2x64"
    assert parse_sizes(["2x64,4x128", "2x64", Size(6, 384)]) == [Size(2, 64), Size(4, 128), Size(6, 384)]


@pytest.mark.parametrize("bad", ["4x", "x32", "4*32", "four", "0x32", "4x0", "-1x3", ""])
def test_malformed(bad):
    with pytest.raises(AdaError, match="size"):
        parse_size(bad)


def test_check_names_depth_and_width():
    with pytest.raises(AdaError, match=r"4x1000: dim 1000 exceeds the model's hidden size 384"):
        Size(4, 1000).check(6, 384, "shortlist size")
    with pytest.raises(AdaError, match=r"layer 7 is outside 1..6 .*6 layers x 384 dims"):
        Size(7, 32).check(6, 384)
    assert Size(6, 384).check(6, 384) == Size(6, 384)


def test_truncate_renormalises_prefix_of_normalised_equals_prefix_of_raw():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(50, 64)).astype(np.float32)
    normed = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    a = truncate(raw, 16, True)
    b = truncate(normed, 16, True)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(truncate(raw, 16, False), raw[:, :16])
    assert truncate(np.zeros((2, 8)), 4, True).sum() == 0  # no NaN from zero rows


def test_truncate_never_writes_into_its_input():
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    before = x.copy()
    truncate(x, 4, True)  # full width
    truncate(x[1:2], 2, True)  # one-row slice: contiguous, a view if not copied
    np.testing.assert_array_equal(x, before)
