"""A tiny contrails set and a one-epoch teacher checkpoint, shared by the distillation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

# An EfficientNet-shaped encoder small enough for CPU tests (timm's test model: stem + 5 stages).
TINY_UNET = {
    "name": "Unet2D",
    "encoder": "test_efficientnet",
    "decoder": {"decoder_channels": [32, 16, 8, 8, 8]},
}


def tiny_config(root: Path, **sections) -> dict:
    trainer = {
        "max_epochs": 1,
        "progress": False,
        "overlays": 0,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        **sections.pop("trainer", {}),
    }
    data = {
        "root": str(root),
        "frames": [4],
        "image_size": 32,
        "batch_size": 4,
        "num_workers": 0,
        **sections.pop("data", {}),
    }
    return {"data": data, "model": dict(TINY_UNET), "trainer": trainer, **sections}


@pytest.fixture(scope="session")
def distill_root(tmp_path_factory) -> Path:
    from segladder.data.synth import generate_contrails

    root = tmp_path_factory.mktemp("distill-synth") / "raw"
    generate_contrails(root, records=16, val_records=8, test_records=0, size=32, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def teacher_ckpt(distill_root, tmp_path_factory) -> Path:
    from segladder.config import build_config
    from segladder.training.run import train

    cfg = build_config(tiny_config(distill_root, seed=1, trainer={"limit_train_batches": 3}))
    return train(cfg, out=tmp_path_factory.mktemp("teacher") / "run").best_checkpoint
