"""`segladder distill compare`: the table's figures are measured and consistent, JSON and PNG written."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import segladder.cli.distill  # noqa: F401  (registers the `distill` command group)
from segladder.cli import app
from segladder.config import load_config
from segladder.data.datasets import dataset_from_config
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.compare import compare


def test_compare_measures_each_model_and_writes_json_and_png(distill_root, teacher_ckpt, tmp_path):
    res = compare(
        teacher_ckpt,
        teacher_ckpt,
        distill_root,
        baseline=teacher_ckpt,
        device="cpu",
        batch_size=2,
        warmup=1,
        repeats=2,
        out=tmp_path / "cmp",
    )
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for name in ("teacher", "student", "baseline"):
        assert {"params", "dice", "miou", "ms_per_image", "peak_mib", "size_mb"} <= set(data[name])
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    ck = load_checkpoint(teacher_ckpt)
    t = res.models["teacher"]
    assert t.params == sum(p.numel() for p in ck.model.parameters())
    ds = dataset_from_config(ck.config.data, "validation", root=distill_root, stats=ck.stats)
    with torch.no_grad():
        pred = torch.cat(
            [torch.sigmoid(ck.model(ds[i]["image"][None])) > ck.threshold for i in range(len(ds))]
        )
    truth = torch.cat([ds[i]["mask"][None] > 0.5 for i in range(len(ds))])
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    assert t.dice == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert res.models["student"].dice == t.dice and res.summary["dice_share"] == pytest.approx(1.0)
    assert res.summary["speedup"] == pytest.approx(t.ms_per_image / res.models["student"].ms_per_image)
    assert (
        t.ms_per_image > 0 and t.peak_mib >= 0.9 * t.size_mb * 1e6 / 2**20
    )  # the peak holds at least the weights
    assert res.summary["kd_dice_gain"] == 0 and res.summary["distillation_helped"] is False


def test_cli_names_a_missing_checkpoint_in_one_line(distill_root, teacher_ckpt, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "distill",
            "compare",
            str(tmp_path / "none.ckpt"),
            str(teacher_ckpt),
            "--data",
            str(distill_root),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code != 0 and "none.ckpt does not exist" in str(result.exception)
    assert type(result.exception).__name__ == "CheckpointError"  # a SegladderError: the CLI prints one line


def test_shipped_distillation_configs_validate():
    for name in ("seg_unet_b3", "seg_unet_b0", "distill_b0_from_b3"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.optim.lr == 1e-4 and cfg.trainer.max_epochs == 50 and cfg.data.batch_size == 4
        assert cfg.trainer.gradient_clip_val == 5.0 and cfg.model.kwargs["pretrained"] is False
    d = load_config("configs/distill_b0_from_b3.yaml")
    assert (
        d.task == "distillation"
        and d.distill.encoder_lr_scale == 0.3
        and d.model.kwargs["encoder"] == "efficientnet_b0"
    )
    assert (d.distill.alpha, d.distill.beta, d.distill.gamma, d.distill.delta) == (0.3, 0.5, 0.5, 1.0)
