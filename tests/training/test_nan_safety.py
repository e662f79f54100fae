import errno
import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segladder.errors import DiskFullError
from segladder.training.build import build_trainer
from segladder.training.checkpoints import AtomicCheckpointIO, FiniteModelCheckpoint
from tests.training.conftest import quick_config


class Batches(Dataset):
    """Random 32² samples; `bad` indices get +inf in the image."""

    def __init__(self, n=16, bad=()):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 2, 32, 32, generator=g)
        self.y = (torch.rand(n, 1, 32, 32, generator=g) > 0.9).float()
        for i in bad:
            self.x[i, 0, -1, 3, 3] = float("inf")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "mask": self.y[i], "record_id": f"rec{i:03d}"}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x[:, :, -1])))


class HalfOverflow(nn.Module):
    """Stands for an fp16 activation overflow: values beyond 65,504 become inf in float16."""

    def forward(self, x):
        return (x * 1e5).half().float()


class OverflowNet(Tiny):
    def __init__(self):
        super().__init__()
        self.amplify = HalfOverflow()

    def forward(self, x):
        return self.head(self.amplify(torch.relu(self.conv(x[:, :, -1]))))


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class InfGradNet(Tiny):
    def forward(self, x):
        return self.head(_InfGrad.apply(torch.relu(self.conv(x[:, :, -1]))))


def fit(model, tmp_path, data, patience=3, epochs=1):
    from segladder.tasks.segmentation import SegmentationTask

    cfg = quick_config(
        tmp_path,
        **{
            "trainer.nan_patience": patience,
            "trainer.max_epochs": epochs,
            "trainer.overlays": 0,
            "optim.schedule": "constant",
        },
    )
    task = SegmentationTask(cfg, model)
    trainer, guard = build_trainer(cfg, tmp_path / "run", task.monitor)
    trainer.fit(task, DataLoader(data, batch_size=4), DataLoader(Batches(8), batch_size=4))
    return trainer, guard, tmp_path / "run"


def _weights_finite(path):
    sd = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def test_a_batch_with_inf_is_skipped_and_logged(tmp_path):
    model = Tiny()
    # Batches 1 and 3 of each epoch are bad: 4 skipped steps in all, more than the patience of 3, but never
    # two in a row, so the run goes on (the count of bad steps restarts at every good one).
    trainer, guard, run = fit(model, tmp_path, Batches(16, bad=[5, 13]), epochs=2)
    assert trainer.current_epoch == 2 and guard.stopped_reason is None
    assert [(s["epoch"], s["batch_idx"]) for s in guard.skipped] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    s = guard.skipped[0]
    assert s["kind"] == "loss" and "rec005" in s["record_ids"] and s["lr"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _weights_finite(run / "checkpoints" / "last.ckpt")


def test_repeated_overflow_stops_with_a_diagnosis_naming_the_module(tmp_path):
    model = OverflowNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer, guard, run = fit(model, tmp_path, Batches(16), patience=3)
    assert guard.stopped_reason and "amplify" in guard.stopped_reason
    report = json.loads((run / "nan_report.json").read_text())
    assert report["first_nonfinite_module"]["module"] == "amplify"
    assert report["first_nonfinite_module"]["inputs_finite"] is True
    assert report["input_finite"] is True and report["precision"] == "32-true"
    assert report["last"]["record_ids"] and report["stopped_after"] == 3
    replay = torch.load(run / "nan_batch.pt", weights_only=True)
    assert replay["image"].shape == (4, 3, 2, 32, 32)
    for k, v in model.state_dict().items():  # every step was skipped: the weights never moved
        torch.testing.assert_close(v, before[k])
    assert not list((run / "checkpoints").glob("*.ckpt")) or all(
        _weights_finite(p) for p in (run / "checkpoints").glob("*.ckpt")
    )


def test_non_finite_gradients_are_dropped_and_named(tmp_path):
    model = InfGradNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer, guard, run = fit(model, tmp_path, Batches(16), patience=2)
    assert guard.skipped[0]["kind"] == "gradient"
    report = json.loads((run / "nan_report.json").read_text())
    assert report["first_nonfinite_module"] is None
    assert "conv.weight" in report["nonfinite_gradients"]
    for k, v in model.state_dict().items():  # no optimiser step touched the weights
        torch.testing.assert_close(v, before[k])


def test_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    model = Tiny()
    trainer, _, run = fit(model, tmp_path, Batches(8))
    ckpt = next(c for c in trainer.callbacks if isinstance(c, FiniteModelCheckpoint))
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = float("nan")
    target = run / "checkpoints" / "poisoned.ckpt"
    ckpt._save_checkpoint(trainer, str(target))
    assert not target.exists()


def test_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save({"partial": torch.zeros(1000)}, f)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match="disk full writing .*last.ckpt"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_lightning_trainer_is_used(tmp_path):
    cfg = quick_config(tmp_path)
    trainer, _ = build_trainer(cfg, tmp_path, "val/dice_best")
    assert isinstance(trainer, L.Trainer)
