"""A quick config over the training fixtures (`train_root`, `train_cache` in tests/conftest.py)."""

from __future__ import annotations

from segladder.config import build_config


def quick_config(root, **over):
    """ResNet18_U (slim decoder, for CPU time) on 64² frames 3–4; `over` maps dotted keys to values."""
    base = {
        "name": "quick",
        "seed": 11,
        "data": {"root": str(root), "frames": [3, 4], "image_size": 64, "batch_size": 8, "num_workers": 0},
        # Another model.name in `over` gets that model's defaults.
        "model": {"name": "ResNet18_U"}
        if "model.name" in over
        else {"name": "ResNet18_U", "decoder_channels": [128, 64, 32]},
        "loss": [{"name": "bce", "pos_weight": 5.0}, {"name": "dice", "weight": 0.5}],
        "optim": {"lr": 3e-3, "schedule": "onecycle"},
        "trainer": {"max_epochs": 2, "progress": False, "overlays": 2},
    }
    return build_config(base, [f"{k}={v}" for k, v in over.items()])
