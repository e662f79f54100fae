"""The edge-confidence gate of box adjustment and the calibration of edge confidence, on hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from segladder.inference.box_gate import (
    auc_of,
    box_ious,
    calibration,
    choose_min_confidence,
    gate_edges,
    moved_edges,
    reliability_png,
)


def test_box_gate_keeps_each_rough_edge_below_the_minimum_confidence():
    rough = np.array([[0.0, 0.0, 10.0, 10.0]])
    snapped = np.array([[1.0, 2.0, 13.0, 14.0]])
    # Asymmetric: left and right confident, top and bottom not; a swapped edge order moves other edges.
    conf = np.array([[0.9, 0.1, 0.6, 0.3]])
    boxes, moved = gate_edges(rough, snapped, conf, 0.5)
    assert boxes.tolist() == [[1.0, 0.0, 13.0, 10.0]]
    assert moved.tolist() == [[True, False, True, False]]
    # At the threshold an edge moves ("below C" keeps); 0 moves all; 1 keeps all, even a confidence of 1.
    assert gate_edges(rough, snapped, conf, 0.6)[1].tolist() == [[True, False, True, False]]
    assert gate_edges(rough, snapped, conf, 0.0)[0].tolist() == snapped.tolist()
    assert gate_edges(rough, snapped, np.ones((1, 4)), 1.0)[0].tolist() == rough.tolist()
    assert moved_edges(rough, boxes).tolist() == [[True, False, True, False]]


def test_box_gate_a_kept_edge_past_its_moved_partner_swaps_into_a_valid_box():
    boxes, _ = gate_edges([[0.0, 0.0, 10.0, 10.0]], [[12.0, 0.0, 20.0, 10.0]], [[0.9, 0.0, 0.1, 0.0]], 0.5)
    assert boxes.tolist() == [[10.0, 0.0, 12.0, 10.0]]


def _case():
    """Three boxes: confident edges (≥ 0.7) land on the truth, doubtful ones (≤ 0.4) move 6 px the wrong way."""
    true = np.array([[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 30.0, 20.0], [5.0, 5.0, 25.0, 45.0]])
    rough = true + np.array([[2.0, -2.0, 2.0, -2.0], [-1.0, 1.0, -1.0, 1.0], [2.0, 2.0, -2.0, -2.0]])
    conf = np.array([[0.9, 0.3, 0.8, 0.2], [0.4, 0.7, 0.35, 0.75], [0.95, 0.1, 0.15, 0.85]])
    wrong = np.where(rough > true, 6.0, -6.0)
    snapped = np.where(conf >= 0.7, true, rough + wrong)
    return rough, snapped, conf, true


def test_box_gate_choice_raises_validation_miou_and_never_lowers_it():
    rough, snapped, conf, true = _case()
    c = choose_min_confidence(rough, snapped, conf, true)
    base = box_ious(rough, true).mean()
    assert c.miou_adjusted < base  # moving every edge makes these boxes worse
    # The best gate moves exactly the confident edges: C between 0.4 (highest doubtful) and 0.7.
    assert 0.4 < c.min_confidence <= 0.7
    assert c.min_confidence == pytest.approx((0.4 + 0.7) / 2)
    gated, moved = gate_edges(rough, snapped, conf, c.min_confidence)
    assert c.miou_gated == pytest.approx(box_ious(gated, true).mean()) and c.miou_gated > base
    assert c.miou_rough == pytest.approx(base) and c.edges_moved == pytest.approx(moved.mean())
    assert np.allclose(gated, np.where(conf >= 0.7, true, rough))


def test_box_gate_choice_falls_back_to_keeping_every_rough_edge():
    rough, _, conf, true = _case()
    snapped = rough + np.where(rough > true, 6.0, -6.0)  # every move is wrong
    c = choose_min_confidence(rough, snapped, conf, true)
    assert c.min_confidence == 1.0 and c.edges_moved == 0.0
    assert c.miou_gated == pytest.approx(box_ious(rough, true).mean())


def test_box_gate_choice_is_never_below_the_rough_boxes_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        xy = rng.uniform(0, 50, (n, 2))
        true = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
        rough = true + rng.normal(0, 3, (n, 4))
        snapped = true + rng.normal(0, 4, (n, 4))
        conf = rng.uniform(0, 1, (n, 4))
        c = choose_min_confidence(rough, snapped, conf, true, max_candidates=16)
        gated, _ = gate_edges(rough, snapped, conf, c.min_confidence)
        assert box_ious(gated, true).mean() >= box_ious(rough, true).mean() - 1e-12
        assert box_ious(gated, true).mean() == pytest.approx(c.miou_gated)


def test_box_calibration_on_a_hand_made_case():
    # Two edges at confidence 0.1 (one within 1 px), two at 0.9 (both within).
    cal = calibration(np.array([0.1, 0.1, 0.9, 0.9]), np.array([2.0, 0.5, 1.0, 0.2]))
    full = [b for b in cal["bins"] if b["edges"]]
    assert [(b["lo"], b["edges"], b["within"]) for b in full] == [(0.1, 2, 0.5), (0.9, 2, 1.0)]
    assert full[0]["mean_confidence"] == pytest.approx(0.1) and full[1]["mean_confidence"] == pytest.approx(
        0.9
    )
    assert cal["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    # Within 1 px: confidences 0.1, 0.9, 0.9; outside: 0.1. Pairs: tie (½), 1, 1 → 2.5 / 3.
    assert cal["auc"] == pytest.approx(2.5 / 3)
    assert cal["within"] == 0.75 and cal["edges"] == 4 and cal["mean_confidence"] == pytest.approx(0.5)
    assert calibration(np.array([1.0]), np.array([0.0]))["bins"][-1]["edges"] == 1  # 1 is in the last bin
    assert auc_of([0.2, 0.8], [False, True]) == 1.0 and auc_of([0.2, 0.8], [True, False]) == 0.0
    assert auc_of([0.2, 0.8], [True, True]) is None


def test_box_reliability_png_is_written(tmp_path):
    from PIL import Image

    cal = calibration(np.array([0.1, 0.1, 0.9, 0.95]), np.array([2.0, 0.5, 1.0, 0.2]))
    reliability_png(cal, tmp_path / "r.png", "test")
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
