"""Distillation end to end on tiny synthetic contrails: schedules logged, teacher kept out, resume mid-schedule, errors."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from segladder.config import build_config
from segladder.errors import ConfigError
from segladder.inference.checkpoint import load_checkpoint
from segladder.tasks.distillation import DistillationTask, cosine_temperature
from segladder.training.build import build_task
from segladder.training.run import train
from tests.distill.conftest import tiny_config


def _distill_cfg(root, teacher, epochs=3, **extra):
    return build_config(
        tiny_config(
            root,
            task="distillation",
            optim={"schedule": "cosine", "lr": 1e-3},
            distill={"teacher": str(teacher), "unfreeze_start_epoch": 1, "unfreeze_every": 1, **extra},
            trainer={"max_epochs": epochs},
        )
    )


class Interrupt(Exception):
    pass


class StopAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupt


class LastValidationBatch(Callback):
    """Keeps the last validation batch as the task saw it (decoded, on its device)."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.batch = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.medium
def test_distillation_logs_its_schedules_and_saves_a_plain_segmentation_student(
    distill_root, teacher_ckpt, tmp_path
):
    seen = LastValidationBatch()
    res = train(_distill_cfg(distill_root, teacher_ckpt), out=tmp_path / "run", callbacks=[seen])
    epochs = res.metrics["epochs"]
    assert [e["distill/temperature"] for e in epochs] == pytest.approx(
        [cosine_temperature(4, 1, p) for p in (0, 0.5, 1)]
    )
    assert [e["distill/unfrozen_blocks"] for e in epochs] == [0, 1, 2]
    assert epochs[0]["lr/encoder"] == 0 and epochs[1]["lr/encoder"] == pytest.approx(
        0.3 * epochs[1]["lr/decoder"], rel=0.05
    )
    for key in (
        "train/kd",
        "train/mse_prob",
        "train/bce",
        "train/dice",
        "val/dice",
        "val/miou",
        "val/agreement",
        "val/loss",
        "val/kd",
    ):
        assert all(key in e for e in epochs), key
    # The last validation's agreement and mIoU, recomputed from its batch with the final student and the
    # teacher (which differ, so agreement below 1 shows which is which).
    student, teacher = load_checkpoint(res.last_checkpoint), load_checkpoint(teacher_ckpt)
    with torch.no_grad():
        s_mask = torch.sigmoid(student.model(seen.batch["image"])) > 0.5
        t_mask = torch.sigmoid(teacher.model(seen.batch["image"])) > teacher.threshold
    truth = seen.batch["mask"] > 0.5

    def f1(a, b):
        return float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))

    def iou(a, b):
        return float((a & b).sum() / max(1, int((a | b).sum())))

    assert epochs[-1]["val/agreement"] == pytest.approx(f1(s_mask, t_mask), abs=1e-4)
    assert epochs[-1]["val/dice"] == pytest.approx(f1(s_mask, truth), abs=1e-4)
    assert epochs[-1]["val/miou"] == pytest.approx((iou(s_mask, truth) + iou(~s_mask, ~truth)) / 2, abs=1e-4)
    assert (res.run_dir / "distill_curves.png").stat().st_size and (
        res.run_dir / "distill_schedule.png"
    ).stat().st_size
    ckpt = torch.load(res.best_checkpoint, weights_only=True)
    assert ckpt["segladder"]["task"] == "segmentation" and ckpt["segladder"]["distilled_from"] == str(
        teacher_ckpt
    )
    assert all(k.startswith("model.") for k in ckpt["state_dict"])  # no teacher weights in the student
    teacher_n = len(torch.load(teacher_ckpt, weights_only=True)["state_dict"])
    assert len(ckpt["state_dict"]) == teacher_n  # same architecture here: exactly one model's tensors
    student = load_checkpoint(res.best_checkpoint)
    assert student.task == "segmentation"
    assert student.model(torch.zeros(1, 3, 1, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.medium
def test_resume_mid_schedule_restores_the_frozen_set_and_groups(
    distill_root, teacher_ckpt, tmp_path, monkeypatch
):
    full = train(_distill_cfg(distill_root, teacher_ckpt), out=tmp_path / "full")
    original = DistillationTask.callbacks
    monkeypatch.setattr(DistillationTask, "callbacks", lambda self: [*original(self), StopAtEpoch(2)])
    with pytest.raises(Interrupt):
        train(_distill_cfg(distill_root, teacher_ckpt), out=tmp_path / "cut")
    monkeypatch.setattr(DistillationTask, "callbacks", original)
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    groups = [g.get("name") for g in saved["optimizer_states"][0]["param_groups"]]
    assert sum(str(n).startswith("encoder") for n in groups) == 1  # one block unfrozen when it stopped
    resumed = train(_distill_cfg(distill_root, teacher_ckpt), resume=tmp_path / "cut")
    a, b = full.metrics["epochs"], resumed.metrics["epochs"]
    assert [e["epoch"] for e in b] == [0, 1, 2]
    for key in (
        "distill/unfrozen_blocks",
        "distill/temperature",
        "lr/encoder",
        "lr/decoder",
        "train/loss_epoch",
    ):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-4, abs=1e-7), key
    final_a = torch.load(full.last_checkpoint, weights_only=True)
    final_b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert [g.get("name") for g in final_a["optimizer_states"][0]["param_groups"]] == [
        g.get("name") for g in final_b["optimizer_states"][0]["param_groups"]
    ]
    for k, v in final_a["state_dict"].items():
        torch.testing.assert_close(final_b["state_dict"][k], v, rtol=1e-4, atol=1e-5)


def test_teacher_errors_are_one_line_naming_the_key(distill_root, teacher_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="distill.teacher: checkpoint .*nope.ckpt does not exist"):
        build_task(_distill_cfg(distill_root, tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match="needs distill.teacher"):
        build_task(build_config({"task": "distillation", "optim": {"schedule": "cosine"}}))
    cfg = _distill_cfg(distill_root, teacher_ckpt)
    two = cfg.model_copy(update={"data": cfg.data.model_copy(update={"frames": [3, 4]})})
    with pytest.raises(
        ConfigError,
        match=r"different input: data\.frames \[4\] vs \[3, 4\] \(teacher vs student\); set data\.frames=\[4\] as",
    ):
        build_task(two)
    bands = cfg.model_copy(update={"data": cfg.data.model_copy(update={"channels": ["ash", "bands"]})})
    with pytest.raises(
        ConfigError,
        match=r"different input: data\.channels \['ash'\] vs \['ash', 'bands'\], model\.in_chans 3 vs 12 "
        r"\(teacher vs student\); set data\.channels=\[ash\] as the teacher",
    ):
        build_task(bands)
    larger = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": 64})})
    with pytest.raises(
        ConfigError,
        match=r"different input: data\.image_size 32 vs 64 \(teacher vs student\); set data\.image_size=32 as",
    ):
        build_task(larger)
    with pytest.raises(ConfigError, match="needs optim.schedule cosine or constant"):
        build_task(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"schedule": "onecycle"})}))


@pytest.mark.medium
def test_distillation_on_an_image_folder_and_the_student_evaluates_as_segmentation(tmp_path):
    from segladder.inference.evaluate import evaluate
    from tests.distill.images import write_image_folder

    root = write_image_folder(tmp_path / "rgb", n_train=8, n_val=4)
    base = tiny_config(root, data={"frames": [0], "augment": {"preset": "heavy"}})
    teacher = train(build_config(base), out=tmp_path / "teacher").best_checkpoint
    cfg = build_config(
        {
            **base,
            "task": "distillation",
            "optim": {"schedule": "cosine"},
            "distill": {"teacher": str(teacher), "unfreeze_start_epoch": 0},
            "trainer": {**base["trainer"], "max_epochs": 2},
        }
    )
    res = train(cfg, out=tmp_path / "student")
    assert [e["distill/unfrozen_blocks"] for e in res.metrics["epochs"]] == [1, 1]
    assert res.metrics["epochs"][-1]["distill/temperature"] == pytest.approx(1.0)
    ev = evaluate(res.best_checkpoint, root, "val", out=tmp_path / "eval", batch_size=4, progress=False)
    assert ev.records == 4 and 0 <= ev.dice_best <= 1


@pytest.mark.parametrize("epoch, temperature", [(0, 4.0), (1, 2.5), (2, 1.0)])
def test_the_scheduled_temperature_and_the_teachers_logits_reach_the_loss(
    distill_root, teacher_ckpt, epoch, temperature
):
    """Not what is logged, what is computed: the KD part of a training step equals the KD of the student's
    logits against the TEACHER's at the schedule's temperature for that epoch (cosine 4 → 1 over 3 epochs)."""
    from types import SimpleNamespace

    from segladder.losses import binary_kd_loss

    task = build_task(_distill_cfg(distill_root, teacher_ckpt, epochs=3, alpha=1.0, beta=1.0))
    task.eval()  # batch norm on running statistics: the student's logits are the same when recomputed
    # Logits of a few units, as a trained teacher gives: near 0 the T² factor cancels T and KD hardly moves.
    last = [m for m in task.teacher.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(200.0)
        last.bias.add_(2.0)
    task._trainer = SimpleNamespace(current_epoch=epoch, max_epochs=3, global_step=0)
    x = torch.rand(2, 3, 1, 32, 32, generator=torch.Generator().manual_seed(epoch))
    batch = {"image": x, "mask": (x[:, :1, 0] > 0.7).float(), "record_id": ["a", "b"]}
    with torch.no_grad():
        _, parts = task.compute_loss(batch)
        student, teacher = task(x).float(), task.teacher(x).float()
    assert task.temperature == pytest.approx(temperature)
    # The two networks differ (a trained teacher, a fresh student), so a swapped target shows.
    assert teacher.abs().mean() > 1.0 and float(binary_kd_loss(student, teacher, temperature)) > 0.1
    assert float(parts["kd"]) == pytest.approx(float(binary_kd_loss(student, teacher, temperature)), rel=1e-5)
    if temperature != 4.0:  # and the temperature acted: at 4 the same pair scores differently
        assert float(parts["kd"]) != pytest.approx(float(binary_kd_loss(student, teacher, 4.0)), rel=1e-3)
    mse = ((torch.sigmoid(student) - torch.sigmoid(teacher)) ** 2).mean()
    assert float(parts["mse_prob"]) == pytest.approx(float(mse), rel=1e-5)
