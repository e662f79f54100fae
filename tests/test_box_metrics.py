"""Box metrics (the Snapper paper's Table 1) against hand computation, and `segladder boxes score`."""

import json

import numpy as np
import pytest
import torch

from segladder.metrics import BOX_KEYS, BoxMetrics, box_iou


def compute(pred, true):
    m = BoxMetrics()
    m.update(torch.tensor(pred, dtype=torch.float64), torch.tensor(true, dtype=torch.float64))
    return {k: float(v) for k, v in m.compute().items()}


def test_exact_hits_score_one():
    boxes = [[0, 0, 10, 10], [5.5, 3.25, 40, 20]]
    r = compute(boxes, boxes)
    assert all(r[k] == 1.0 for k in BOX_KEYS) and r["boxes"] == 2


def test_off_by_one_and_off_by_three_edges():
    # Three different truths (same size, far apart): a prediction paired with another row's truth scores 0.
    true = [[10, 10, 110, 110], [300, 40, 400, 140], [20, 500, 120, 600]]
    pred = [
        [11, 10, 110, 110],  # one edge off by 1
        [300, 43, 400, 140],  # one edge off by 3
        [19, 500, 120, 603],
    ]  # left off by 1, bottom off by 3
    r = compute(pred, true)
    # Edges: 12 in all; |Δ| ≤ 1 misses the two off-by-3 edges, |Δ| ≤ 3 misses none.
    assert r["edges_within_1px"] == pytest.approx(10 / 12) and r["edges_within_3px"] == 1.0
    # Corners (Euclidean): box 1: two corners at 1 px; box 2: two at 3 px; box 3: (x0,y1) at √10, (x0,y0) at 1,
    # (x1,y1) at 3, (x1,y0) at 0.
    assert r["corners_within_1px"] == pytest.approx((4 + 2 + 2) / 12)
    assert r["corners_within_3px"] == pytest.approx((4 + 4 + 3) / 12)
    ious = [100 * 99 / 10000, 100 * 97 / 10000, (100 * 100) / (101 * 103)]
    assert r["miou"] == pytest.approx(np.mean(ious))
    assert r["iou_over_0.9"] == 1.0 and r["boxes"] == 3
    # A shift by 1 px on x moves every corner by exactly 1 px (corners pair an x edge with a y edge).
    shifted = compute([[11, 10, 111, 110]], [[10, 10, 110, 110]])
    assert shifted["corners_within_1px"] == 1.0 and shifted["edges_within_1px"] == 1.0
    rolled = compute(pred, true[1:] + true[:1])
    assert rolled["miou"] == 0.0 and rolled["edges_within_3px"] < 0.5


def test_iou_threshold_is_strict_and_disjoint_boxes_score_zero():
    assert float(box_iou([[0, 0, 9, 10]], [[0, 0, 10, 10]])[0]) == pytest.approx(0.9)
    assert float(box_iou([[0, 0, 10, 10]], [[0, 0, 9, 10]])[0]) == pytest.approx(0.9)  # either order
    r = compute([[0, 0, 9, 10], [80, 80, 90, 90]], [[0, 0, 10, 10], [50, 50, 60, 60]])
    assert r["iou_over_0.9"] == 0.0 and r["miou"] == pytest.approx(0.45)
    r = compute([[0, 0, 9, 10], [50, 50, 60, 60]], [[0, 0, 10, 10], [50, 50, 60, 60]])
    assert r["iou_over_0.9"] == 0.5 and r["miou"] == pytest.approx(0.95)


def test_updates_accumulate_like_one_batch():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 50, (20, 2))
    true = np.concatenate([true, true + rng.uniform(5, 50, (20, 2))], 1)
    pred = true + rng.normal(0, 2, true.shape)
    m = BoxMetrics()
    m.update(pred[:7], true[:7])
    m.update(pred[7:], true[7:])
    split = {k: float(v) for k, v in m.compute().items()}
    assert split == pytest.approx(compute(pred.tolist(), true.tolist()))


def test_score_command_agrees_with_hand_computation(tmp_path):
    from typer.testing import CliRunner

    from segladder.cli import _register
    from segladder.cli.app import app

    _register()
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 10, 100, 100]},
            {"id": 2, "image_id": 1, "bbox": [60, 40, 100, 100]},
            {"id": 3, "image_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "b.json").write_text(
        # Listed in the other order than the truth: pairs are made by id, not by position.
        json.dumps([{"id": 2, "bbox": [61, 40, 99, 103]}, {"id": 1, "bbox": [10, 10, 100, 100]}])
    )
    result = CliRunner().invoke(
        app,
        [
            "boxes",
            "score",
            str(tmp_path / "gt.json"),
            str(tmp_path / "b.json"),
            "--json",
            str(tmp_path / "s.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["boxes"] == 2 and s["edges_within_1px"] == pytest.approx(7 / 8) and s["edges_within_3px"] == 1.0
    assert s["corners_within_1px"] == pytest.approx((4 + 2) / 8)
    assert s["miou"] == pytest.approx((1 + 99 * 100 / (100 * 100 + 99 * 103 - 99 * 100)) / 2)
    assert "miou" in result.output


def test_score_without_shared_ids_is_a_clear_error(tmp_path):
    from segladder.errors import DataError
    from segladder.inference.boxes import score

    with pytest.raises(DataError, match="matched by 'id'"):
        score({1: (0, 0, 5, 5)}, {2: (0, 0, 5, 5)}, "b.json")
