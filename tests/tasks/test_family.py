"""The task family: the model/task contract is checked before anything is built, and a new task needs no other change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from segladder.config import build_config, load_config, parse_overrides
from segladder.errors import ConfigError
from segladder.models import with_output
from segladder.tasks import TASKS, Task
from segladder.training.build import build_task, check_experiment, task_class
from segladder.training.run import train


def test_a_task_refuses_a_model_of_another_output_kind_and_names_those_that_fit():
    cfg = build_config({"task": "segmentation", "model": {"name": "Classifier"}})
    with pytest.raises(ConfigError) as err:
        task_class(cfg)
    msg = str(err.value)
    assert "task 'segmentation'" in msg and "'Classifier' outputs a label" in msg
    assert "ResNet18_U" in msg and "task=classification" in msg
    offered = msg.split("Models that fit task 'segmentation': ")[1].split(";")[0].split(", ")
    assert offered == with_output("mask") and not set(offered) & set(with_output("label"))


def test_classification_refuses_a_mask_model():
    with pytest.raises(ConfigError, match="task 'classification'.*'ResNet18_U' outputs a mask.*Classifier"):
        check_experiment(build_config({"task": "classification", "model": {"name": "ResNet18_U"}}))


def test_unknown_task_and_optimiser_suggest_the_registered_names():
    with pytest.raises(ConfigError, match="unknown task 'segmentaton'. Did you mean: segmentation"):
        task_class(build_config({"task": "segmentaton"}))
    with pytest.raises(ConfigError, match="unknown optimiser 'adamww'. Did you mean: adamw"):
        task_class(build_config({"optim": {"name": "adamww"}}))


def test_the_resolved_config_travels_typed_into_the_task():
    cfg = build_config({"data": {"channels": ["ash", "bands"]}, "model": {"name": "ResNet18_Simple"}})
    task = build_task(cfg)
    assert (
        task.cfg.model.kwargs["in_chans"] == 3 + 9
    )  # filled from the data's channels, not re-validated from a dict
    assert task.cfg.data is cfg.data and "in_chans" not in cfg.model.kwargs


@pytest.mark.medium
def test_cli_refuses_a_classifier_under_the_segmentation_task_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segladder",
            "train",
            "tiny_synthetic",
            "--set",
            "model.name=Classifier",
            "task=segmentation",
            f"data.root={tmp_path}",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: task 'segmentation'"), proc.stderr
    assert "Classifier" in lines[0] and "ResNet18_U" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_overrides_are_typed_by_the_field_they_set():
    assert parse_overrides(
        ["data.root=2023", "data.pseudo_labels=off", "trainer.devices=2", "data.root=null"]
    ) == {"data": {"root": None, "pseudo_labels": "off"}, "trainer": {"devices": 2}}
    cfg = load_config(None, ["name=2023"], values={"data": {"root": Path("off"), "batch_size": 4}})
    assert cfg.name == "2023" and cfg.data.root == "off" and cfg.data.batch_size == 4


@pytest.mark.medium
def test_a_dataset_folder_named_2023_trains(train_root, tmp_path, monkeypatch):
    shutil.copytree(train_root, tmp_path / "2023")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        "configs/tiny_synthetic.yaml"
        if Path("configs").exists()
        else Path(__file__).resolve().parents[2] / "configs" / "tiny_synthetic.yaml",
        [
            "data.root=2023",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.progress=false",
            "trainer.overlays=0",
        ],
    )
    assert cfg.data.root == "2023"
    res = train(cfg, out=tmp_path / "run")
    assert json.loads((res.run_dir / "metrics.json").read_text())["epochs"]


class PositiveFractionTask(Task):
    """A task no module of the package knows: regress the fraction of contrail pixels with a label model."""

    accepts = ("label",)
    monitor = "val/neg_mse"

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        target = batch["mask"].flatten(1).mean(1, keepdim=True)
        mse = torch.nn.functional.mse_loss(torch.sigmoid(self(batch["image"]).float()), target)
        return mse, {"mse": mse.detach()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        mse, _ = self.compute_loss(batch)
        self.log("val/neg_mse", -mse, on_epoch=True, batch_size=batch["image"].shape[0])


@pytest.mark.medium
def test_a_new_task_is_one_registered_class(train_cache, tmp_path):
    """Registering a Task subclass is all it takes: the builder, the callbacks and the run directory take it as it is."""
    if "positive_fraction" not in TASKS:
        TASKS.add("positive_fraction", PositiveFractionTask)
    cfg = build_config(
        {
            "task": "positive_fraction",
            "data": {
                "root": str(train_cache),
                "frames": [3, 4],
                "image_size": 64,
                "batch_size": 8,
                "num_workers": 0,
            },
            "model": {"name": "Classifier", "encoder": "resnet18"},
            "trainer": {"max_epochs": 1, "progress": False, "limit_train_batches": 2, "limit_val_batches": 1},
        }
    )
    res = train(cfg, out=tmp_path / "run")
    assert "val/neg_mse" in res.metrics["final"] and res.best_checkpoint is not None
    section = torch.load(res.best_checkpoint, weights_only=True)["segladder"]
    assert section["task"] == "positive_fraction" and section["config"]["model"]["in_chans"] == 3
    assert not (res.run_dir / "overlays").exists()  # the base task draws no pictures and the recorder copes
