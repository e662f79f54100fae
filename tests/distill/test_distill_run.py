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


def test_distillation_logs_its_schedules_and_saves_a_plain_segmentation_student(
    distill_root, teacher_ckpt, tmp_path
):
    res = train(_distill_cfg(distill_root, teacher_ckpt), out=tmp_path / "run")
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
    assert 0 <= epochs[-1]["val/agreement"] <= 1 and 0 <= epochs[-1]["val/miou"] <= 1
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
    larger = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": 48})})
    with pytest.raises(
        ConfigError,
        match=r"different input: data\.image_size 32 vs 48 \(teacher vs student\); set data\.image_size=32 as",
    ):
        build_task(larger)
    with pytest.raises(ConfigError, match="needs optim.schedule cosine or constant"):
        build_task(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"schedule": "onecycle"})}))


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
