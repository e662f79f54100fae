"""The do-no-harm gate of box adjustment and the calibration of edge confidence, on hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from segladder.inference.box_gate import (
    KEEP_ROUGH,
    EdgeGate,
    auc_of,
    box_ious,
    calibration,
    choose_gate,
    gate_edges,
    gate_from_checkpoint_section,
    moved_edges,
    relative_moves,
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


def test_box_gate_keeps_each_edge_that_would_move_too_far_for_its_box_side():
    # A wide, flat box (40 × 10): a 3 px move is 7.5 % of the width but 30 % of the height.
    rough = np.array([[0.0, 0.0, 40.0, 10.0]])
    snapped = np.array([[3.0, 3.0, 37.0, 7.0]])
    assert relative_moves(rough, snapped).tolist() == [[0.075, 0.3, 0.075, 0.3]]
    boxes, moved = gate_edges(rough, snapped, np.ones((1, 4)), 0.0, max_move=0.1)
    assert moved.tolist() == [[True, False, True, False]]
    assert boxes.tolist() == [[3.0, 0.0, 37.0, 10.0]]
    # A move of exactly M moves; both conditions must hold.
    assert gate_edges(rough, snapped, np.ones((1, 4)), 0.0, max_move=0.3)[1].all()
    conf = np.array([[0.2, 0.9, 0.9, 0.9]])
    assert EdgeGate(0.5, 0.1).apply(rough, snapped, conf)[1].tolist() == [[False, False, True, False]]
    assert KEEP_ROUGH.apply(rough, snapped, np.ones((1, 4)))[0].tolist() == rough.tolist()
    assert EdgeGate().moves_all and not EdgeGate(0.0, 0.1).moves_all
    assert EdgeGate(0.3, 0.1).describe() == "min confidence 0.3, moves up to 10% of the box side"
    assert KEEP_ROUGH.describe() == "keeps every rough edge"


def test_box_gate_a_kept_edge_past_its_moved_partner_swaps_into_a_valid_box():
    boxes, _ = gate_edges([[0.0, 0.0, 10.0, 10.0]], [[12.0, 0.0, 20.0, 10.0]], [[0.9, 0.0, 0.1, 0.0]], 0.5)
    assert boxes.tolist() == [[10.0, 0.0, 12.0, 10.0]]


def _world(n: int, seed: int, helpful: bool):
    """`n` boxes of varied sizes. `helpful`: confident edges (≥ 0.6) land on the truth and doubtful ones jump
    25 % of the side the wrong way. Otherwise every snapped edge is the truth plus noise as large as the
    rough boxes' own: on average the model neither helps nor hurts."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(20, 80, (n, 2))
    true = np.concatenate([xy, xy + wh], 1)
    rough = true + rng.normal(0, 2.5, (n, 4))
    conf = rng.uniform(0, 1, (n, 4))
    side = np.concatenate([wh, wh], 1)
    if helpful:
        snapped = np.where(conf >= 0.6, true, rough + np.where(rough > true, 0.25, -0.25) * side)
    else:
        snapped = true + rng.normal(0, 2.5, (n, 4))
    return rough, snapped, conf, true


def test_box_gate_choice_keeps_a_gate_that_helps_out_of_sample():
    rough, snapped, conf, true = _world(60, 0, helpful=True)
    c = choose_gate(rough, snapped, conf, true)
    base = box_ious(rough, true).mean()
    assert c.accepted and c.cv_gain > 1.645 * c.cv_se > 0
    assert c.miou_adjusted < base  # moving every edge makes these boxes worse
    assert 0.0 < c.min_confidence <= 0.6 and c.max_move >= 0.0
    gated, moved = c.gate.apply(rough, snapped, conf)
    # The chosen gate lets the confident edges move and no 25 % jump through.
    assert np.array_equal(moved & (conf < 0.6), np.zeros_like(moved)) or c.max_move < 0.25
    assert not (moved & (relative_moves(rough, snapped) > 0.2)).any()
    assert c.miou_gated == pytest.approx(box_ious(gated, true).mean()) and c.miou_gated > base + 0.01
    assert c.miou_rough == pytest.approx(base) and c.edges_moved == pytest.approx(moved.mean())


def test_box_gate_choice_keeps_the_rough_boxes_when_the_gain_is_luck():
    # In sample some (C, M) always "helps" a little on noise; cross-validation must see through it.
    for seed in range(5):
        rough, snapped, conf, true = _world(60, seed, helpful=False)
        c = choose_gate(rough, snapped, conf, true)
        assert not c.accepted, c.reason
        assert c.min_confidence == 1.0 and c.edges_moved == 0.0
        assert c.miou_gated == pytest.approx(box_ious(rough, true).mean())
        assert "rough boxes are kept" in c.reason


def test_box_gate_choice_needs_enough_objects_and_counts_copies_as_one():
    rough, snapped, conf, true = _world(60, 0, helpful=True)
    few = choose_gate(rough[:9], snapped[:9], conf[:9], true[:9])
    assert not few.accepted and "too few" in few.reason and few.min_confidence == 1.0
    # Nine objects jittered 8 times each are still nine objects.
    reps = lambda a: np.repeat(a[:9], 8, axis=0)  # noqa: E731
    copies = choose_gate(
        reps(rough), reps(snapped), reps(conf), reps(true), groups=np.repeat(np.arange(9), 8)
    )
    assert not copies.accepted and "9 validation objects" in copies.reason
    assert choose_gate(reps(rough), reps(snapped), reps(conf), reps(true)).accepted  # 72 "objects"


def test_box_gate_cross_validation_never_scores_an_object_with_a_gate_chosen_on_its_own_copies():
    from segladder.inference.box_gate import _cross_validated_gain

    # 10 objects × 4 jittered copies. Candidate j (after "move nothing") gains 3 on object j's copies and
    # loses 0.2 on every other box: chosen on folds that hold object j, it must be scored on other objects.
    groups = np.repeat(np.arange(10), 4)
    gains = np.full((11, 40), -0.2)
    gains[0] = 0.0
    for j in range(10):
        gains[1 + j, groups == j] = 3.0
    oof = _cross_validated_gain(gains, groups, folds=5, repeats=3, seed=0)
    assert oof.shape == (10,) and np.allclose(oof, -0.2)


def test_box_gate_choice_is_never_below_the_rough_boxes_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        xy = rng.uniform(0, 50, (n, 2))
        true = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
        rough = true + rng.normal(0, 3, (n, 4))
        snapped = true + rng.normal(0, 4, (n, 4))
        conf = rng.uniform(0, 1, (n, 4))
        c = choose_gate(rough, snapped, conf, true, levels=8)
        gated, _ = c.gate.apply(rough, snapped, conf)
        assert box_ious(gated, true).mean() >= box_ious(rough, true).mean() - 1e-12
        assert box_ious(gated, true).mean() == pytest.approx(c.miou_gated)


def test_box_gate_round_trips_through_a_checkpoint_section():
    c = choose_gate(*_world(60, 1, helpful=True))
    d = c.as_dict()
    assert (
        gate_from_checkpoint_section({"min_confidence": d["min_confidence"], "max_move": d["max_move"]})
        == c.gate
    )
    assert gate_from_checkpoint_section({"min_confidence": 0.2, "max_move": None}) == EdgeGate(0.2)
    assert gate_from_checkpoint_section({"threshold": 0.5}) is None
    assert EdgeGate(0.2).max_move == np.inf and c.as_dict()["max_move"] is not None


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
