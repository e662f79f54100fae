"""Rebuilding a checkpoint's model: old slim-decoder rungs, no ImageNet weights needed, clear shape errors."""

import pytest
import torch

from segladder import models
from segladder.config import build_config
from segladder.inference.checkpoint import CHECKPOINT_KEY, CHECKPOINT_VERSION, load_checkpoint
from segladder.inference.errors import CheckpointError


def write_checkpoint(path, model_cfg: dict, net: torch.nn.Module):
    cfg = build_config({"model": model_cfg})
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            CHECKPOINT_KEY: {
                "version": CHECKPOINT_VERSION,
                "threshold": 0.4,
                "config": cfg.model_dump(mode="json"),
            },
        },
        path,
    )
    return path


def test_a_slim_checkpoint_without_its_widths_in_the_config_loads_slim(tmp_path):
    slim = models.create("ResNet18_U", decoder_channels=(128, 64, 32), upsample=1).eval()
    path = write_checkpoint(tmp_path / "old.ckpt", {"name": "ResNet18_U", "upsample": 1}, slim)
    loaded = load_checkpoint(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), slim(x))


def test_weights_of_another_shape_are_a_checkpoint_error(tmp_path):
    other = models.create("ResNet18_U", decoder_channels=(64, 32, 16))
    path = write_checkpoint(tmp_path / "odd.ckpt", {"name": "ResNet18_U"}, other)
    with pytest.raises(CheckpointError, match="weights do not fit ResNet18_U"):
        load_checkpoint(path)


def test_missing_or_extra_weights_are_a_checkpoint_error(tmp_path):
    net = models.create("ResNet18_SimplerFCN")
    path = write_checkpoint(tmp_path / "ok.ckpt", {"name": "ResNet18_SimplerFCN"}, net)
    ckpt = torch.load(path, weights_only=True)
    first = next(iter(ckpt["state_dict"]))
    missing = {**ckpt, "state_dict": {k: v for k, v in ckpt["state_dict"].items() if k != first}}
    torch.save(missing, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=rf"missing \['{first.removeprefix('model.')}'\]"):
        load_checkpoint(tmp_path / "missing.ckpt")
    extra = {**ckpt, "state_dict": {**ckpt["state_dict"], "model.stray.weight": torch.zeros(2)}}
    torch.save(extra, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match=r"unexpected \['stray.weight'\]"):
        load_checkpoint(tmp_path / "extra.ckpt")
    assert load_checkpoint(path).threshold == 0.4


def test_a_checkpoint_trained_from_imagenet_weights_loads_without_them(tmp_path, monkeypatch):
    for var, sub in (("HF_HOME", "hf"), ("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("SEGLADDER_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = models.create("ResNet18_SimplerFCN").eval()
    path = write_checkpoint(
        tmp_path / "auto.ckpt", {"name": "ResNet18_SimplerFCN", "pretrained": "auto"}, net
    )
    with pytest.raises(models.ModelError, match="not on this machine and could not be downloaded"):
        models.create("ResNet18_SimplerFCN", pretrained="auto")
    loaded = load_checkpoint(path)
    assert loaded.config.model.kwargs["pretrained"] == "auto"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x))
