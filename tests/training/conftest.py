"""A small synthetic dataset and cache for training tests, and a quick config over them."""

from __future__ import annotations

import pytest

from segladder.config import build_config


@pytest.fixture(scope="session")
def train_root(tmp_path_factory):
    from segladder.data.synth import generate_contrails

    root = tmp_path_factory.mktemp("train-synth") / "raw"
    generate_contrails(root, records=40, val_records=12, test_records=0, size=64, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def train_cache(train_root, tmp_path_factory):
    from segladder.data.cache import CacheOptions, prepare_cache

    cache = tmp_path_factory.mktemp("train-cache") / "cache"
    prepare_cache(train_root, cache, CacheOptions(frames=(3, 4), image_size=64), workers=1, progress=False)
    return cache


def quick_config(root, **over):
    """ResNet18_U on 64² frames 3–4; `over` maps dotted keys to values."""
    base = {
        "name": "quick",
        "seed": 11,
        "data": {"root": str(root), "frames": [3, 4], "image_size": 64, "batch_size": 8, "num_workers": 0},
        "model": {"name": "ResNet18_U"},
        "loss": [{"name": "bce", "pos_weight": 5.0}, {"name": "dice", "weight": 0.5}],
        "optim": {"lr": 3e-3, "schedule": "onecycle"},
        "trainer": {"max_epochs": 2, "progress": False, "overlays": 2},
    }
    return build_config(base, [f"{k}={v}" for k, v in over.items()])
