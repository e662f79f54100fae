import numpy as np
import pytest

from segladder.inference.postprocess import (
    Float16Histogram,
    ThresholdError,
    binarize,
    remove_small_components,
    resolve_threshold,
)


def test_percentile_of_the_float16_histogram_is_exact():
    rng = np.random.default_rng(0)
    p = rng.beta(0.5, 3, size=(7, 64, 64)).astype(np.float16)
    hist = Float16Histogram()
    for chunk in p:  # streamed, as predict does
        hist.update(chunk)
    for q in (0, 50, 90, 99.5, 100):
        th = hist.percentile(q)
        values = np.sort(p.astype(np.float32).ravel())
        need = int(np.ceil(q / 100 * values.size))
        expected = values[max(need - 1, 0)] if q > 0 else values[0]
        assert th == expected
        assert (p.astype(np.float32) > th).mean() <= 1 - q / 100 + 1e-12
        assert hist.count_above(th) == int((p.astype(np.float32) > th).sum())
    assert hist.count_above(0.3) == int((p.astype(np.float32) > 0.3).sum())


def test_threshold_choice():
    hist = Float16Histogram()
    hist.update(np.linspace(0, 1, 101).astype(np.float16))
    assert resolve_threshold(0.4) == (0.4, "stored with the checkpoint(s)")
    assert resolve_threshold(0.4, fixed=0.7) == (0.7, "fixed")
    th, how = resolve_threshold(0.4, percentile=90, histogram=hist)
    assert abs(th - 0.9) < 1e-3 and "percentile" in how
    with pytest.raises(ThresholdError):
        resolve_threshold(0.4, fixed=0.5, percentile=90, histogram=hist)
    with pytest.raises(ThresholdError):
        resolve_threshold(0.4, fixed=1.5)
    with pytest.raises(ThresholdError):
        Float16Histogram().percentile(50)


def test_binarize_is_strict():
    np.testing.assert_array_equal(binarize(np.array([0.4, 0.5, 0.6], np.float16), 0.5), [0, 0, 1])


def test_small_components_are_removed_diagonals_kept():
    m = np.zeros((16, 16), np.uint8)
    m[0, 0] = 1  # 1 px
    m[12:15, 12:15] = 1  # 9 px
    for i in range(10):  # a 10 px diagonal line: one component under 8-connectivity
        m[i, 11 - i] = 1
    out = remove_small_components(m, 10)
    assert out[0, 0] == 0 and out[12:15, 12:15].sum() == 0
    assert all(out[i, 11 - i] == 1 for i in range(10))
    assert out.sum() == 10
    np.testing.assert_array_equal(remove_small_components(m, 0), m)
    assert remove_small_components(m, 10, connectivity=4).sum() == 0
