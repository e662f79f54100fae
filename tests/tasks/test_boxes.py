"""The boxes task end to end at tiny size: train on a synthetic COCO set, then adjust, evaluate and refuse bad setups."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from segladder.config import build_config, load_config, resolve_config_path
from segladder.data.boxes import xywh_to_xyxy
from segladder.data.boxes_synth import write_box_synth
from segladder.errors import ConfigError
from segladder.inference.box_gate import EdgeGate
from segladder.metrics import BOX_KEYS
from segladder.training.build import build_datamodule, check_experiment
from segladder.training.run import train


@pytest.fixture(scope="module")
def box_set(tmp_path_factory):
    return write_box_synth(
        tmp_path_factory.mktemp("boxes"), n_train=6, n_val=3, size=48, seed=3, max_objects=2
    )


def tiny_config(s, **over):
    base = {
        "name": "tiny_boxes",
        "task": "boxes",
        "seed": 5,
        "data": {
            "coco": {"images": str(s.images), "train": str(s.train), "val": str(s.val), "crop_size": 32},
            "batch_size": 8,
            "num_workers": 0,
        },
        "model": {"name": "Snapper", "encoder": "test_resnet", "hidden": 16, "decoder_layers": 2},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "trainer": {"max_epochs": 1, "progress": False, "overlays": 2},
    }
    return build_config(base, [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def trained(box_set, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return train(tiny_config(box_set), out=run)


def test_shipped_config_is_the_seed_and_picks_the_coco_module(box_set):
    cfg = load_config(
        resolve_config_path("snapper"),
        [
            f"data.coco.images={box_set.images}",
            f"data.coco.train={box_set.train}",
            f"data.coco.val={box_set.val}",
        ],
    )
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.data.coco.buffer_ratio, cfg.model.kwargs["encoder"]) == (
        1e-4,
        64,
        1.1,
        "resnet50",
    )
    assert type(build_datamodule(cfg)).__name__ == "BoxesDataModule"
    assert check_experiment(cfg).model.kwargs["in_chans"] == 3


def test_shipped_budget_is_the_converged_one(box_set, tmp_path):
    """60 epochs (docs/boxes.md, "Training budget"): the Trainer built from the config stops there."""
    from segladder.training.build import build_trainer

    cfg = load_config(
        resolve_config_path("snapper"),
        [
            f"data.coco.images={box_set.images}",
            f"data.coco.train={box_set.train}",
            f"data.coco.val={box_set.val}",
        ],
    )
    trainer, _ = build_trainer(cfg, tmp_path, "val/miou")
    assert cfg.trainer.max_epochs == 60 and trainer.max_epochs == 60


def test_boxes_refuses_mask_models_and_contrails_data(box_set):
    with pytest.raises(ConfigError, match="task 'boxes' trains models whose output is a box.*Snapper"):
        check_experiment(tiny_config(box_set, **{"model.name": "ResNet18_U"}))
    with pytest.raises(ConfigError, match="task 'segmentation'.*'Snapper' outputs a box.*task=boxes"):
        check_experiment(tiny_config(box_set, task="segmentation"))
    with pytest.raises(ConfigError, match="task boxes reads COCO boxes"):
        check_experiment(build_config({"task": "boxes", "model": {"name": "Snapper"}}))
    with pytest.raises(ConfigError, match="data.folds"):
        check_experiment(tiny_config(box_set, **{"data.folds": "folds.csv"}))


@pytest.mark.medium
def test_training_writes_the_papers_metrics_and_a_picture(trained):
    final = trained.metrics["final"]
    for key in (
        "miou",
        "iou_over_0.9",
        "edges_within_1px",
        "edges_within_3px",
        "corners_within_1px",
        "corners_within_3px",
    ):
        assert 0 <= final[f"val/{key}"] <= 1 and 0 <= final[f"val/rough_{key}"] <= 1
    # The rough boxes are the seeded jitter of the ground truth: never perfect, never far off.
    assert 0.6 < final["val/rough_miou"] < 0.99
    assert trained.best_checkpoint is not None and trained.best_checkpoint.exists()
    assert list((trained.run_dir / "overlays").glob("*.png"))


@pytest.mark.medium
def test_curves_png_draws_the_box_metrics(trained):
    from PIL import Image

    # The validation panel (right half) plots val/miou beside val/rough_miou (matplotlib's first two
    # colours); it was blank for box runs when it only knew the segmentation keys.
    rgb = np.asarray(Image.open(trained.run_dir / "curves.png").convert("RGB")).astype(int)
    right = rgb[:, rgb.shape[1] // 2 :]
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(right - colour).sum(-1) < 30).sum() > 20, colour


@pytest.mark.medium
def test_adjust_and_evaluate_from_the_checkpoint(trained, box_set, tmp_path):
    from segladder.cli import _register
    from segladder.cli.app import app

    _register()
    cli = CliRunner()
    ck = str(trained.best_checkpoint)
    rough = tmp_path / "rough.json"
    assert (
        cli.invoke(app, ["boxes", "jitter", str(box_set.val), "--out", str(rough), "--seed", "1"]).exit_code
        == 0
    )
    out = tmp_path / "adjusted.json"
    r = cli.invoke(
        app,
        [
            "boxes",
            "adjust",
            ck,
            "--images",
            str(box_set.images),
            "--boxes",
            str(rough),
            "--out",
            str(out),
            "--batch-size",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    gt, adj = json.loads(box_set.val.read_text()), json.loads(out.read_text())
    assert [a["id"] for a in adj["annotations"]] == [a["id"] for a in gt["annotations"]]
    assert all(len(a["edge_confidence"]) == 4 and a["bbox"][2] >= 0 for a in adj["annotations"])

    png = tmp_path / "one.png"
    r = cli.invoke(
        app,
        ["boxes", "adjust", ck, str(box_set.images / "000006.png"), "--box", "5,6,20,18", "--out", str(png)],
    )
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()[-1].split(",")) == 4 and png.stat().st_size > 0

    ev = tmp_path / "ev"
    r = cli.invoke(
        app,
        [
            "boxes",
            "evaluate",
            ck,
            "--images",
            str(box_set.images),
            "--annotations",
            str(box_set.val),
            "--out",
            str(ev),
            "--seed",
            "5",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((ev / "metrics.json").read_text())
    # Validation jitters with the experiment seed, so evaluate with the same seed scores the same rough boxes.
    assert m["before"]["miou"] == pytest.approx(trained.metrics["final"]["val/rough_miou"], abs=1e-5)
    assert m["after"]["miou"] == pytest.approx(trained.metrics["final"]["val/miou"], abs=1e-4)
    assert (ev / "examples.png").exists() and "| miou |" in (ev / "table.md").read_text()
    # One pass places edges inside the crop only: no adjusted score beats the true boxes clipped to the crops.
    assert all(m["reachable"][k] >= m["after"][k] - 1e-9 for k in BOX_KEYS), m
    assert "reachable" in (ev / "table.md").read_text()
    # The stored gate was chosen on exactly these boxes: with it they are never worse than the rough ones.
    assert m["gated"]["miou"] >= m["before"]["miou"] - 1e-9
    assert m["gate"]["min_confidence"] == pytest.approx(trained.metrics["final"]["val/min_confidence"])
    assert m["gated"]["miou"] == pytest.approx(trained.metrics["final"]["val/gated_miou"], abs=1e-4)
    assert m["gate"]["edges_moved"] + m["gate"]["edges_kept"] == 4 * m["before"]["boxes"]
    assert (ev / "reliability.png").stat().st_size > 0 and json.loads((ev / "calibration.json").read_text())[
        "bins"
    ]
    assert "adjusted + gate" in (ev / "table.md").read_text()


def _cli(args):
    from segladder.cli import _register
    from segladder.cli.app import app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_box_gate_is_stored_in_the_checkpoint_and_written_beside_the_run(trained):
    from segladder.inference.boxes import BoxAdjuster
    from segladder.inference.checkpoint import load_checkpoint

    final = trained.metrics["final"]
    stored = load_checkpoint(trained.best_checkpoint).box_gate
    assert stored is not None and stored.min_confidence == pytest.approx(final["val/min_confidence"])
    assert final["val/gated_miou"] >= final["val/rough_miou"] - 1e-9
    assert final["val/gate_accepted"] in (0.0, 1.0)
    adjuster = BoxAdjuster.from_checkpoint(trained.best_checkpoint, "cpu")
    assert adjuster.gate == stored and "stored in the checkpoint" in adjuster.gate_source
    over = BoxAdjuster.from_checkpoint(trained.best_checkpoint, "cpu", min_confidence=0.25)
    assert over.gate == EdgeGate(0.25, math.inf) and over.gate_source == "--min-confidence"
    both = BoxAdjuster.from_checkpoint(trained.best_checkpoint, "cpu", min_confidence=0.25, max_move=0.1)
    assert both.gate == EdgeGate(0.25, 0.1) and both.gate_source == "--min-confidence and --max-move"
    report = json.loads((trained.run_dir / "box_calibration.json").read_text())
    assert (
        report["min_confidence"] == pytest.approx(stored.min_confidence)
        and len(report["calibration"]["bins"]) == 10
    )
    assert report["reason"] and "standard errors" in report["reason"] or "too few" in report["reason"]
    assert (trained.run_dir / "reliability.png").stat().st_size > 0


def test_box_gate_survives_a_resume(trained, box_set):
    import torch

    from segladder.training.build import build_task

    task = build_task(tiny_config(box_set))
    assert "min_confidence" not in task.checkpoint_section()  # no validation yet: no gate to store
    task.on_load_checkpoint(torch.load(trained.best_checkpoint, weights_only=True))
    section = task.checkpoint_section()
    assert section["min_confidence"] == pytest.approx(trained.metrics["final"]["val/min_confidence"])
    assert section["box_gate"]["calibration"]["bins"]


def test_box_min_confidence_overrides_the_stored_gate(trained, box_set, tmp_path):
    rough = tmp_path / "rough.json"
    assert _cli(["boxes", "jitter", box_set.val, "--out", rough, "--seed", "2"]).exit_code == 0
    outs = {}
    for c in ("1", "0"):
        outs[c] = tmp_path / f"adj{c}.json"
        r = _cli(
            ["boxes", "adjust", trained.best_checkpoint, "--images", box_set.images, "--boxes", rough]
            + ["--out", outs[c], "--min-confidence", c]
        )
        assert r.exit_code == 0, r.output
        said = {"1": "keeps every rough edge", "0": "moves every edge"}[c]
        assert f"do-no-harm gate: {said}, --min-confidence" in r.output
    rough_boxes = {a["id"]: a["bbox"] for a in json.loads(rough.read_text())["annotations"]}
    kept = json.loads(outs["1"].read_text())["annotations"]
    # C = 1 keeps every rough edge; C = 0 moves them.
    assert all(a["bbox"] == pytest.approx(rough_boxes[a["id"]], abs=1e-3) for a in kept)
    assert not any(any(a["edge_moved"]) for a in kept) and kept[0]["rough_bbox"] == rough_boxes[kept[0]["id"]]
    moved = json.loads(outs["0"].read_text())["annotations"]
    assert sum(sum(a["edge_moved"]) for a in moved) > 0
    r = _cli(["boxes", "score", box_set.val, outs["1"]])
    assert r.exit_code == 0 and f"0 moved, {4 * len(kept)} kept at the rough position" in r.output
    assert "rough" in r.output.splitlines()[0]
    # One box: the override reaches the single-box mode too.
    r = _cli(
        ["boxes", "adjust", trained.best_checkpoint, box_set.images / "000006.png", "--box", "5,6,20,18"]
        + ["--out", tmp_path / "one.png", "--min-confidence", "1"]
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[0] == "5.00,6.00,20.00,18.00"
    assert "left kept, top kept, right kept, bottom kept" in r.output


def test_box_checkpoint_without_a_stored_gate_moves_every_edge_and_says_so(trained, tmp_path):
    import torch

    from segladder.inference.boxes import NO_STORED_GATE, BoxAdjuster

    ck = torch.load(trained.best_checkpoint, weights_only=True)
    for key in ("min_confidence", "max_move", "box_gate"):
        ck["segladder"].pop(key, None)
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    adjuster = BoxAdjuster.from_checkpoint(old, "cpu")
    assert adjuster.gate == EdgeGate() and adjuster.gate_source == NO_STORED_GATE
    assert "none stored in this checkpoint" in adjuster.gate_line()
    # A checkpoint from before the largest-move limit: its confidence gate, no limit on the move.
    ck["segladder"]["min_confidence"] = 0.3
    torch.save(ck, old)
    assert BoxAdjuster.from_checkpoint(old, "cpu").gate == EdgeGate(0.3, math.inf)


def test_box_max_move_keeps_far_moves_at_the_rough_position(trained, box_set, tmp_path):
    rough = tmp_path / "rough.json"
    assert _cli(["boxes", "jitter", box_set.val, "--out", rough, "--seed", "2"]).exit_code == 0
    out = tmp_path / "adj.json"
    r = _cli(
        ["boxes", "adjust", trained.best_checkpoint, "--images", box_set.images, "--boxes", rough]
        + ["--out", out, "--max-move", "0.05"]
    )
    assert r.exit_code == 0, r.output
    assert "min confidence 0, moves up to 5% of the box side, --max-move" in r.output
    for a in json.loads(out.read_text())["annotations"]:
        x, y, w, h = a["rough_bbox"]
        moves = np.abs(np.array(xywh_to_xyxy(a["bbox"])) - np.array(xywh_to_xyxy((x, y, w, h))))
        assert (moves <= 0.05 * np.array([w, h, w, h]) + 1e-3).all(), a
    bad = _cli(
        ["boxes", "adjust", trained.best_checkpoint, "--images", box_set.images, "--boxes", rough]
        + ["--out", tmp_path / "b.json", "--max-move", "-1"]
    )
    assert bad.exit_code != 0 and "--max-move -1" in str(bad.exception)


@pytest.mark.medium
def test_box_calibrate_writes_a_gated_copy_and_leaves_the_input_alone(trained, box_set, tmp_path):
    import hashlib

    from segladder.inference.checkpoint import load_checkpoint

    before = hashlib.sha256(trained.best_checkpoint.read_bytes()).hexdigest()
    out = tmp_path / "cal"
    r = _cli(
        ["boxes", "calibrate", trained.best_checkpoint, "--images", box_set.images]
        + ["--annotations", box_set.val, "--out", out, "--draws", "3", "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(trained.best_checkpoint.read_bytes()).hexdigest() == before
    report = json.loads((out / "box_calibration.json").read_text())
    n_val = len(json.loads(box_set.val.read_text())["annotations"])
    assert report["boxes"] == 3 * n_val and report["calibrated_on"]["draws"] == 3
    gate = load_checkpoint(out / "calibrated.ckpt").box_gate
    assert gate.min_confidence == pytest.approx(report["min_confidence"])
    assert (report["max_move"] is None) == math.isinf(gate.max_move)
    assert report["reason"] in r.output and (out / "reliability.png").stat().st_size > 0
    # Calibrating the calibrated copy into its own folder would overwrite the input: refused.
    written = (out / "calibrated.ckpt").read_bytes()
    again = _cli(
        ["boxes", "calibrate", out / "calibrated.ckpt", "--images", box_set.images]
        + ["--annotations", box_set.val, "--out", out]
    )
    assert again.exit_code != 0 and "would be overwritten" in str(again.exception)
    assert (out / "calibrated.ckpt").read_bytes() == written


def test_reachable_boxes_are_the_true_boxes_clipped_to_the_crop():
    from segladder.inference.boxes import reachable_boxes, score

    true = {1: (10.0, 10.0, 20.0, 20.0), 2: (10.0, 10.0, 20.0, 20.0)}
    # Box 1's rough box is the true one: its crop (buffer 1.1) holds it. Box 2's rough box is shifted 6 px
    # right and has the same size: its crop spans x 15 … 37, so the true left edge (10) is clipped to 15.
    rough = {1: (10.0, 10.0, 20.0, 20.0), 2: (16.0, 10.0, 20.0, 20.0)}
    got = reachable_boxes(true, rough, 1.1)
    assert got[1] == pytest.approx(true[1])
    assert got[2] == pytest.approx((15.0, 10.0, 15.0, 20.0))
    s = score(true, got)
    assert s["miou"] == pytest.approx((1 + 15 / 20) / 2)
    assert s["edges_within_1px"] == pytest.approx(7 / 8) and s["edges_within_3px"] == pytest.approx(7 / 8)


def test_bench_boxes_reports_batched_and_single_rates(trained, box_set, tmp_path):
    from segladder.cli import _register
    from segladder.cli.app import app

    _register()
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "boxes",
            str(trained.best_checkpoint),
            "--images",
            str(box_set.images),
            "--annotations",
            str(box_set.val),
            "--batch-size",
            "2",
            "--boxes",
            "3",
            "--single",
            "2",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert (got["boxes"], got["single_boxes"], got["batch_size"], got["crop_size"]) == (3, 2, 2, 32)
    assert got["batch_boxes_per_s"] > 0 and got["single_boxes_per_s"] > 0
    assert got["single_ms_per_box"] == pytest.approx(1000 / got["single_boxes_per_s"])
    assert "boxes/s" in r.output


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    from segladder.inference.boxes import BoxAdjuster
    from segladder.inference.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        BoxAdjuster.from_checkpoint(tmp_path / "none.ckpt")


def test_one_box_with_bad_size_is_a_clear_error(trained, box_set):
    from segladder.errors import DataError
    from segladder.inference.boxes import adjust_single

    with pytest.raises(DataError, match="w and h > 0"):
        adjust_single(trained.best_checkpoint, box_set.images / "000006.png", (1, 2, 0, 5))
    assert np.isfinite(
        adjust_single(trained.best_checkpoint, box_set.images / "000006.png", (1, 2, 9, 5))[0]
    ).all()


@pytest.mark.medium
def test_onnx_export_matches_pytorch(trained, tmp_path):
    import onnx

    from segladder.inference.boxes import export_box_onnx

    r = export_box_onnx(trained.best_checkpoint, tmp_path / "snapper.onnx")
    assert r.max_prob_diff <= 1e-4 and r.max_edge_diff < 1e-2
    meta = {p.key: p.value for p in onnx.load(str(r.path)).metadata_props}
    assert meta["segladder.task"] == "boxes" and meta["segladder.crop_size"] == "32"
    # The stored gate travels with the model, so ONNX users can apply it.
    from segladder.inference.checkpoint import load_checkpoint

    gate = load_checkpoint(trained.best_checkpoint).box_gate
    assert float(meta["segladder.min_confidence"]) == gate.min_confidence
    assert float(meta["segladder.max_move"]) == gate.max_move
