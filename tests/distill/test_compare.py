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


def _scored_by_hand(path, root) -> tuple[float, float, int]:
    """(global Dice, binary mIoU, parameters) of a checkpoint on the validation split, record by record."""
    ck = load_checkpoint(path)
    ds = dataset_from_config(ck.config.data, "validation", root=root, stats=ck.stats)
    with torch.no_grad():
        pred = torch.cat(
            [torch.sigmoid(ck.model(ds[i]["image"][None])) > ck.threshold for i in range(len(ds))]
        )
    truth = torch.cat([ds[i]["mask"][None] > 0.5 for i in range(len(ds))])
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    tn = int((~pred & ~truth).sum())
    miou = 0.5 * (tp / max(1, tp + fp + fn) + tn / max(1, tn + fp + fn))
    return 2 * tp / max(1, 2 * tp + fp + fn), miou, sum(p.numel() for p in ck.model.parameters())


@pytest.fixture(scope="module")
def three_models(teacher_ckpt, tmp_path_factory):
    """Three checkpoints that score differently: the trained teacher, a "student" marking every pixel
    (another architecture: resnet18 encoder) and a "baseline" marking none (a slimmer decoder)."""
    from tests.distill.conftest import TINY_UNET
    from tests.inference.helpers import make_checkpoint

    tmp = tmp_path_factory.mktemp("compare")
    slimmer = {"encoder": TINY_UNET["encoder"], "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}}
    student = make_checkpoint(tmp / "student.ckpt", frames=(4,), bias=3.0)
    baseline = make_checkpoint(tmp / "baseline.ckpt", frames=(4,), bias=-3.0, threshold=0.4, **slimmer)
    return {"teacher": teacher_ckpt, "student": student, "baseline": baseline}


@pytest.mark.medium
def test_compare_measures_each_model_and_writes_json_and_png(distill_root, three_models, tmp_path):
    res = compare(
        three_models["teacher"],
        three_models["student"],
        distill_root,
        baseline=three_models["baseline"],
        device="cpu",
        batch_size=2,
        warmup=1,
        repeats=2,
        out=tmp_path / "cmp",
    )
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    hand = {name: _scored_by_hand(path, distill_root) for name, path in three_models.items()}
    # The three differ in Dice, mIoU and size, so a model scored in another's place shows.
    for i in range(3):
        assert len({round(h[i], 6) for h in hand.values()}) == 3, hand
    for name, (dice, miou, params) in hand.items():
        m = res.models[name]
        assert m.checkpoint == str(three_models[name]) and data[name]["checkpoint"] == m.checkpoint
        assert (m.dice, m.miou, m.params) == (pytest.approx(dice), pytest.approx(miou), params), name
        assert data[name]["dice"] == pytest.approx(dice) and data[name]["params"] == params
        assert m.threshold == load_checkpoint(three_models[name]).threshold
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    t, s, b = (res.models[n] for n in ("teacher", "student", "baseline"))
    assert res.summary == {
        "speedup": pytest.approx(t.ms_per_image / s.ms_per_image),
        "memory_share": pytest.approx(s.peak_mib / t.peak_mib),
        "params_share": pytest.approx(hand["student"][2] / hand["teacher"][2]),
        "size_share": pytest.approx(s.size_mb / t.size_mb),
        "dice_share": pytest.approx(hand["student"][0] / hand["teacher"][0]),
        "miou_share": pytest.approx(hand["student"][1] / hand["teacher"][1]),
        "kd_dice_gain": pytest.approx(hand["student"][0] - hand["baseline"][0]),
        "kd_miou_gain": pytest.approx(hand["student"][1] - hand["baseline"][1]),
        "distillation_helped": hand["student"][0] > hand["baseline"][0]
        and hand["student"][1] > hand["baseline"][1],
    }
    assert data["summary"]["kd_dice_gain"] == pytest.approx(res.summary["kd_dice_gain"])
    # The peak holds at least the weights, and the weights are each model's own.
    for m, (_, _, params) in ((m, hand[n]) for n, m in res.models.items()):
        assert m.ms_per_image > 0 and m.peak_mib >= 0.9 * m.size_mb * 1e6 / 2**20
        assert m.size_mb == pytest.approx(params * 4 / 1e6, rel=0.15)  # fp32 weights, plus BN buffers


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
