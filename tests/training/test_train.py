import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segladder.errors import CacheError, ConfigError
from segladder.inference.evaluate import evaluate
from segladder.training.run import train
from tests.training.conftest import quick_config


@pytest.mark.medium
def test_tiny_model_learns_and_writes_the_run_directory(train_cache, tmp_path):
    cfg = quick_config(train_cache, **{"trainer.max_epochs": 5})  # 5 epochs × 5 steps
    res = train(cfg, out=tmp_path / "run")
    run = res.run_dir
    hist = res.metrics["epochs"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]
    # An all-empty prediction scores 0 on this validation split and an all-positive one 0.103 (2,675 of
    # 49,152 pixels, the demo's width-3 world); 25 steps reach 0.26 (0.05 with the real 1-3 px widths).
    assert res.metrics["final"]["val/dice_best"] > 0.2, hist
    assert hist[-1]["train/loss_epoch"] < hist[0]["train/loss_epoch"]
    for name in (
        "config.yaml",
        "environment.json",
        "metrics.json",
        "curves.png",
        "threshold_curve.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "overlays/epoch_005.png",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "git_commit" in env

    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    # The training statistics travel with the checkpoint, so raw-data inference normalises as training did.
    assert best["segladder"]["stats"]["channels"] == ["ash_r", "ash_g", "ash_b"]
    best_dice = max(h["val/dice_best"] for h in hist)
    assert best["segladder"]["threshold"] == pytest.approx(
        next(h["val/threshold"] for h in hist if h["val/dice_best"] == best_dice)
    )

    # evaluate re-scores the best checkpoint on the same split and gets the same global Dice.
    ev = evaluate(
        run / "checkpoints" / "best.ckpt", train_cache, "validation", tmp_path / "eval", progress=False
    )
    assert ev.dice_best == pytest.approx(best_dice, abs=1e-6)
    assert ev.dice_stored == pytest.approx(best_dice, abs=1e-6)
    rows = (tmp_path / "eval" / "per_record.csv").read_text().splitlines()
    assert rows[0] == "record_id,dice,max_prob,pred_pixels,true_pixels" and len(rows) == 13
    assert (tmp_path / "eval" / "threshold_curve.png").stat().st_size > 1000


@pytest.mark.medium
def test_cli_prints_the_run_directory_last(train_cache, tmp_path):
    from segladder.cli import _register, app

    _register()
    out = tmp_path / "cli-run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--set",
            f"data.root={train_cache}",
            "data.frames=[3,4]",
            "data.image_size=64",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.progress=false",
            "trainer.limit_train_batches=2",
            "trainer.overlays=0",
            "model.name=ResNet18_SimplerFCN",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(out)


def test_config_and_data_mismatches_fail_before_training(train_cache, tmp_path):
    with pytest.raises(ConfigError, match="ResNet18_U"):
        train(quick_config(tmp_path / "no-such-data", **{"model.name": "ResNet18U"}), out=tmp_path / "r1")
    with pytest.raises(CacheError, match=r"frames \[0, 1, 2, 3, 4\]"):
        train(quick_config(train_cache, **{"data.frames": "[0,1,2,3,4]"}), out=tmp_path / "r2")
    with pytest.raises(CacheError, match="image_size 128"):
        train(quick_config(train_cache, **{"data.image_size": 128}), out=tmp_path / "r3")
    assert not list((tmp_path / "r2").glob("checkpoints/*"))


@pytest.mark.medium
def test_a_side_the_model_cannot_take_is_refused_under_its_config_key(train_cache, tmp_path):
    # The quick model halves its input 16-fold; 40 is a legal crop for the data (64²) but not for the model.
    with pytest.raises(
        ConfigError, match=r"data\.augment\.crop_size is 40 .* divisible by 16: .* to 32 or 48"
    ):
        train(quick_config(train_cache, **{"data.augment.crop_size": 40}), out=tmp_path / "r1")
    with pytest.raises(ConfigError, match=r"data\.image_size is 72 .* to 64 or 80"):
        train(quick_config(train_cache, **{"data.image_size": 72}), out=tmp_path / "r2")
    cfg = quick_config(train_cache, **{"data.augment.crop_size": 48, "trainer.max_epochs": 1})
    assert train(cfg, out=tmp_path / "r3").run_dir.is_dir()  # a multiple of 16 trains


def _final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.medium
def test_killed_then_resumed_matches_an_uninterrupted_run(train_cache, tmp_path):
    sets = [
        f"data.root={train_cache}",
        "data.frames=[3,4]",
        "data.image_size=64",
        "data.num_workers=0",
        "trainer.max_epochs=4",
        "trainer.progress=false",
        "trainer.overlays=0",
        "model.name=ResNet18_SimplerFCN",
        "data.augment.rot90_p=0.5",
        "seed=5",
    ]
    cmd = [sys.executable, "-m", "segladder.cli", "train", "--set", *sets]
    full = tmp_path / "full"
    subprocess.run([*cmd, "--out", str(full)], check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    metrics = killed / "metrics.json"
    while time.time() < deadline and proc.poll() is None:  # kill during the third epoch
        if metrics.exists() and len(json.loads(metrics.read_text())["epochs"]) >= 2:
            time.sleep(0.3)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(json.loads(metrics.read_text())["epochs"]) < 4

    from segladder.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["train", "--resume", str(killed)])
    assert res.exit_code == 0, res.output
    a, b = _final_state(full), _final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ha = json.loads((full / "metrics.json").read_text())["epochs"]
    hb = json.loads((killed / "metrics.json").read_text())["epochs"]
    assert [h["val/dice_best"] for h in ha] == pytest.approx([h["val/dice_best"] for h in hb], abs=1e-6)


def test_resume_needs_a_checkpoint(tmp_path, train_cache):
    from segladder.config import dump_config
    from segladder.errors import SegladderError

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(dump_config(quick_config(train_cache)))
    with pytest.raises(SegladderError, match="no checkpoints/last.ckpt"):
        train(None, resume=tmp_path / "r")


@pytest.mark.medium
def test_two_process_ddp_run_reports_the_global_dice(train_cache, tmp_path):
    """Lightning DDP on CPU (gloo): each process validates half the records, the logged Dice is global."""
    cfg = quick_config(
        train_cache,
        **{
            "trainer.max_epochs": 2,
            "trainer.accelerator": "cpu",
            "trainer.devices": 2,
            "trainer.strategy": "ddp_spawn",
            "model.name": "ResNet18_SimplerFCN",
            "model.upsample": 1,
            "trainer.overlays": 0,
        },
    )
    res = train(cfg, out=tmp_path / "ddp")
    hist = res.metrics["epochs"]
    best = max(h["val/dice_best"] for h in hist)
    ev = evaluate(res.best_checkpoint, train_cache, "validation", tmp_path / "eval", progress=False)
    # 12 validation records split 6/6 over two processes: no padding, so the sets are the same.
    assert ev.dice_best == pytest.approx(best, abs=1e-5)


@pytest.mark.medium
def test_pseudo_labels_join_the_training_data(train_cache, tmp_path):
    import numpy as np

    from segladder.data.module import ContrailsDataModule
    from segladder.inference.pseudo import pseudo_label

    teacher = train(
        quick_config(
            train_cache,
            **{
                "trainer.max_epochs": 1,
                "model.name": "ResNet18_SimplerFCN",
                "model.upsample": 1,
                "trainer.overlays": 0,
            },
        ),
        out=tmp_path / "t",
    )
    labels = pseudo_label(
        [teacher.best_checkpoint], train_cache, tmp_path / "pseudo", split="validation", progress=False
    )
    cfg = quick_config(
        train_cache,
        **{
            "data.pseudo_labels": str(labels.out),
            "data.pseudo_threshold": 0.3,
            "trainer.max_epochs": 1,
            "model.name": "ResNet18_SimplerFCN",
            "model.upsample": 1,
            "trainer.overlays": 0,
        },
    )
    dm = ContrailsDataModule(cfg.data, cfg.seed)
    dm.setup("fit")
    assert len(dm.train_set) == 40 + 12
    item = dm.train_set[40]  # the first pseudo-labelled (validation) record
    soft = np.load(labels.out / "labels" / f"{item['record_id']}.npy").astype(np.float32)
    np.testing.assert_allclose(item["soft"][0].numpy(), soft)
    np.testing.assert_array_equal(item["mask"][0].numpy(), (soft > 0.3).astype(np.float32))
    assert set(item) == set(dm.train_set[0])  # batches mix both kinds
    assert item["soft"].dtype == dm.train_set[0]["soft"].dtype == torch.float32  # so they collate
    res = train(cfg, out=tmp_path / "student")
    assert res.metrics["epochs"] and res.best_checkpoint is not None


@pytest.mark.medium
def test_auxiliary_head_and_positives_only_segmentation_loss(train_cache, tmp_path):
    """Classify-then-segment: SegCls2D trains its classification head, the mask loss sees positives only."""
    from segladder.training.build import build_task

    cfg = quick_config(
        train_cache,
        **{
            "model.name": "SegCls2D",
            "aux.cls_weight": 0.5,
            "aux.seg_on_positives_only": True,
            "trainer.max_epochs": 1,
        },
    )
    task = build_task(cfg).eval()  # batch-norm statistics independent of the batch
    g = torch.Generator().manual_seed(0)
    image = torch.rand(4, 3, 2, 64, 64, generator=g)
    mask = torch.zeros(4, 1, 64, 64)
    mask[1, 0, 10:20, 10:12] = 1  # one positive record of four
    loss, parts = task.compute_loss({"image": image, "mask": mask})
    assert set(parts) == {"bce", "dice", "cls"} and torch.isfinite(loss)
    only_positive, _ = task.loss(task.model(image[1:2]), {"mask": mask[1:2]})
    with torch.no_grad():  # the head's BCE against "record has a contrail", written out by hand
        z = task.model(image, aux=True)["cls"].flatten().double()
    y = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    cls = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    expected = only_positive + 0.5 * cls.float()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    empty_loss, empty_parts = task.compute_loss({"image": image[[0, 2]], "mask": mask[[0, 2]]})
    assert set(empty_parts) == {"cls"} and torch.isfinite(empty_loss)
    loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in task.model.named_parameters()
        if "classification" in n
    )
    res = train(cfg, out=tmp_path / "aux")
    assert "train/cls" in res.metrics["final"]


def test_curves_are_redrawn_at_most_every_refresh_and_always_at_the_end(tmp_path):
    from types import SimpleNamespace

    from segladder.training.recorder import RunRecorder

    rec = RunRecorder(tmp_path)
    rec.REFRESH_S = 3600.0
    drawn = []
    for epoch in range(4):
        rec._refresh("curves", lambda e=epoch: drawn.append(e))
    assert drawn == [0]  # the first epoch draws; the next three are within the refresh interval
    rec.on_fit_end(SimpleNamespace(is_global_zero=True), None)
    assert drawn == [0, 3]  # the end draws the last state once
    rec.on_fit_end(SimpleNamespace(is_global_zero=True), None)
    assert drawn == [0, 3]
    rec.REFRESH_S = 0.0
    for epoch in range(2):
        rec._refresh("curves", lambda e=epoch: drawn.append(e))
    assert drawn == [0, 3, 0, 1]
