"""Metrics: global Dice against numpy, the threshold sweep's exactness and state merging, classifier scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torchmetrics.classification import BinaryAUROC

from segladder.metrics import ClassificationMetrics, ThresholdSweepDice, global_dice, per_record_dice


def _numpy_dice(probs, targets, threshold):
    pred = np.asarray(probs) > threshold
    gt = np.asarray(targets) > 0.5
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else 2.0 * (pred & gt).sum() / denom


def _data(seed, shape, frac=0.1):
    rng = np.random.default_rng(seed)
    targets = (rng.random(shape) < frac).astype(np.float32)
    # Probabilities that correlate with the target, so the Dice curve has an interior maximum.
    probs = np.clip(0.6 * targets + 0.5 * rng.random(shape), 0, 1).astype(np.float32)
    return probs, targets


@pytest.mark.parametrize("shape", [(7,), (3, 1, 8, 8), (2, 5, 4, 3)])
@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.77])
def test_global_dice_matches_numpy(shape, threshold):
    probs, targets = _data(0, shape, frac=0.3)
    expected = _numpy_dice(probs, targets, threshold)
    assert global_dice(probs, targets, threshold) == pytest.approx(expected, abs=1e-12)
    assert global_dice(torch.from_numpy(probs), torch.from_numpy(targets), threshold) == pytest.approx(
        expected
    )
    assert global_dice(probs.astype(np.float64), targets.astype(bool), threshold) == pytest.approx(expected)


def test_global_dice_pools_pixels_rather_than_averaging_images():
    targets = np.zeros((2, 1, 4, 4), np.float32)
    targets[0, 0, :2] = 1  # 8 positives in image 0, image 1 empty
    probs = targets.copy()
    probs[1, 0, 0, 0] = 1  # one false positive on the empty image
    assert global_dice(probs, targets) == pytest.approx(16 / 17)
    np.testing.assert_allclose(per_record_dice(probs, targets), [1.0, 0.0])


def test_global_dice_empty_cases():
    z = np.zeros((2, 1, 4, 4), np.float32)
    assert global_dice(z, z) == 1.0
    assert global_dice(z, np.ones_like(z)) == 0.0
    assert global_dice(np.ones_like(z), z) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        global_dice(z, z[0])


def test_per_record_dice_matches_a_loop():
    probs, targets = _data(1, (6, 1, 8, 8), frac=0.05)
    targets[2] = 0
    probs[2] = 0  # empty and empty
    expected = [_numpy_dice(p, t, 0.4) for p, t in zip(probs, targets, strict=True)]
    got = per_record_dice(torch.from_numpy(probs), torch.from_numpy(targets), 0.4)
    assert got.dtype == np.float64 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[2] == 1.0


def test_sweep_equals_global_dice_at_every_threshold():
    probs, targets = _data(2, (10, 1, 16, 16))
    metric = ThresholdSweepDice()
    for lo, hi in [(0, 3), (3, 4), (4, 10)]:  # uneven batches
        metric.update(torch.from_numpy(probs[lo:hi]), torch.from_numpy(targets[lo:hi]))
    out = metric.compute()
    thresholds = out["thresholds"].tolist()
    assert len(thresholds) == 99 and 0.5 in thresholds
    expected = np.array([_numpy_dice(probs, targets, np.float32(t)) for t in thresholds])
    np.testing.assert_allclose(out["curve"].numpy(), expected, rtol=1e-6)
    best = int(np.argmax(expected))
    assert out["threshold"].item() == pytest.approx(thresholds[best])
    assert out["dice_best"].item() == pytest.approx(expected.max(), rel=1e-6)
    assert out["dice_at_0.5"].item() == pytest.approx(_numpy_dice(probs, targets, 0.5), rel=1e-6)
    assert 0.1 < out["threshold"].item() < 0.9  # the data put the optimum inside the sweep

    pred = probs > np.float32(thresholds[best])
    gt = targets > 0.5
    iou = (pred & gt).sum() / (pred | gt).sum()
    assert out["iou_at_best"].item() == pytest.approx(iou, rel=1e-6)


def test_sweep_is_exact_for_probabilities_on_the_thresholds():
    # Every probability sits exactly on a threshold: `>` must exclude it, as global_dice does.
    thresholds = [0.1, 0.25, 0.3, 0.5, 0.7]
    probs = torch.tensor(thresholds * 4, dtype=torch.float32)
    targets = torch.tensor([1, 0, 1, 1, 0] * 2 + [0, 1, 1, 0, 1] * 2, dtype=torch.float32)
    metric = ThresholdSweepDice(thresholds)
    metric.update(probs, targets)
    curve = metric.compute()["curve"]
    for t, d in zip(thresholds, curve.tolist(), strict=True):
        assert d == pytest.approx(global_dice(probs, targets, t), abs=1e-7)


def test_sweep_from_logits_and_custom_thresholds():
    probs, targets = _data(3, (4, 1, 8, 8))
    probs = np.clip(probs, 1e-4, 1 - 1e-4)
    logits = torch.logit(torch.from_numpy(probs).double()).float()
    a = ThresholdSweepDice([0.2, 0.4, 0.6])
    b = ThresholdSweepDice([0.6, 0.2, 0.4], from_logits=True)
    a.update(torch.from_numpy(probs), torch.from_numpy(targets))
    b.update(logits, torch.from_numpy(targets))
    out_a, out_b = a.compute(), b.compute()
    assert out_a["thresholds"].tolist() == pytest.approx([0.2, 0.4, 0.5, 0.6])  # 0.5 is always swept
    torch.testing.assert_close(out_a["curve"], out_b["curve"], atol=2e-3, rtol=0)


def test_sweep_counts_nan_predictions_as_negative_like_global_dice():
    probs = torch.tensor([float("nan"), 0.9, float("nan"), 0.2])
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    metric = ThresholdSweepDice()
    metric.update(probs, targets)
    assert metric.compute()["dice_at_0.5"].item() == pytest.approx(global_dice(probs, targets))


def test_sweep_ties_prefer_the_threshold_nearest_one_half():
    metric = ThresholdSweepDice()
    z = torch.zeros(2, 1, 8, 8)
    metric.update(z, z)  # empty and empty: Dice 1 at every threshold
    out = metric.compute()
    assert out["dice_best"].item() == 1.0 and out["threshold"].item() == 0.5


def test_sweep_accepts_soft_and_bool_targets():
    probs, targets = _data(4, (3, 1, 8, 8))
    soft = targets * 0.8 + 0.1  # 0.9 on positives, 0.1 elsewhere: binarised at 0.5
    a, b = ThresholdSweepDice(), ThresholdSweepDice()
    a.update(torch.from_numpy(probs), torch.from_numpy(soft))
    b.update(torch.from_numpy(probs), torch.from_numpy(targets).bool())
    torch.testing.assert_close(a.compute()["curve"], b.compute()["curve"])


def test_sweep_states_are_int64_and_exact_beyond_float32():
    metric = ThresholdSweepDice([0.5])
    assert all(getattr(metric, s).dtype == torch.int64 for s in ("tp", "pred_sum", "target_sum"))
    assert all(metric._reductions[s] is not None for s in ("tp", "pred_sum", "target_sum"))
    # Counts as a long validation would reach, then one more pixel: float32 could not hold 2**24 + 1.
    big = 2**24 + 2**23
    metric.merge_state(
        {
            "tp": torch.tensor([big], dtype=torch.int64),
            "pred_sum": torch.tensor([big + 2], dtype=torch.int64),
            "target_sum": torch.tensor(big + 4, dtype=torch.int64),
        }
    )
    metric.update(torch.tensor([0.9, 0.9, 0.1]), torch.tensor([1.0, 0.0, 1.0]))
    assert metric.tp.item() == big + 1
    assert metric.pred_sum.item() == big + 4
    assert metric.target_sum.item() == big + 6
    assert metric.compute()["dice_at_0.5"].item() == pytest.approx(2 * (big + 1) / (2 * big + 10), rel=1e-7)


def test_merging_states_equals_one_pass():
    # What DDP's sum reduction does: two processes each see half the records.
    probs, targets = _data(5, (8, 1, 16, 16))
    p, t = torch.from_numpy(probs), torch.from_numpy(targets)
    whole, left, right = ThresholdSweepDice(), ThresholdSweepDice(), ThresholdSweepDice()
    whole.update(p, t)
    left.update(p[:3], t[:3])
    right.update(p[3:], t[3:])
    left.merge_state(right)
    for key, value in whole.compute().items():
        torch.testing.assert_close(left.compute()[key], value, msg=key)


def test_reset_clears_the_counts():
    probs, targets = _data(6, (2, 1, 8, 8))
    metric = ThresholdSweepDice()
    metric.update(torch.from_numpy(probs), torch.from_numpy(targets))
    metric.reset()
    assert metric.tp.sum().item() == 0 and metric.target_sum.item() == 0


@settings(max_examples=40, deadline=None)
@given(
    probs=arrays(np.float32, st.integers(1, 40), elements=st.floats(0, 1, width=32)),
    seed=st.integers(0, 2**16),
)
def test_sweep_agrees_with_global_dice_property(probs, seed):
    targets = (np.random.default_rng(seed).random(probs.shape) < 0.3).astype(np.float32)
    metric = ThresholdSweepDice(20)
    metric.update(torch.from_numpy(probs), torch.from_numpy(targets))
    out = metric.compute()
    for t, d in zip(out["thresholds"].tolist(), out["curve"].tolist(), strict=True):
        assert d == pytest.approx(global_dice(probs, targets, np.float32(t)), abs=1e-6)
    assert 0.0 <= out["dice_best"].item() <= 1.0


def test_classification_metrics():
    rng = np.random.default_rng(7)
    labels = torch.from_numpy(rng.random(50) < 0.4)
    scores = torch.from_numpy(np.clip(0.3 * labels.numpy() + 0.7 * rng.random(50), 0, 1)).float()
    metric = ClassificationMetrics()
    metric.update(scores[:20], labels[:20])
    metric.update(scores[20:], labels[20:].float())
    out = metric.compute()
    assert out["acc"].item() == pytest.approx(((scores > 0.5) == labels).float().mean().item())
    auroc = BinaryAUROC()
    auroc.update(scores, labels.long())
    assert out["auc"].item() == pytest.approx(auroc.compute().item(), rel=1e-6)

    logit_metric = ClassificationMetrics(from_logits=True)
    logit_metric.update(torch.logit(scores.clamp(1e-4, 1 - 1e-4)), labels)
    assert logit_metric.compute()["auc"].item() == pytest.approx(out["auc"].item(), rel=1e-6)


def test_classification_auc_is_nan_with_one_class():
    metric = ClassificationMetrics()
    metric.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 0]))
    out = metric.compute()
    assert out["acc"].item() == 0.5
    assert torch.isnan(out["auc"])
