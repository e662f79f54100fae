"""Shared fixtures: a tiny synthetic dataset made once per session, the GPU marker's skip, the test floor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption(
        "--min-tests",
        type=int,
        default=0,
        metavar="N",
        help="fail when fewer than N tests are collected (`make test` passes tests/MIN_TESTS)",
    )


def pytest_collection_finish(session):
    floor = session.config.getoption("--min-tests")
    if len(session.items) < floor:
        # An import error that hides a module, or a broken discovery, must not pass as a green suite.
        raise pytest.UsageError(
            f"collected {len(session.items)} tests, fewer than the floor {floor} "
            "(tests/MIN_TESTS); raise the floor only when tests were removed on purpose."
        )


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the competition layout (read-only: copy it before planting faults)."""
    from segladder.data.synth import generate_contrails

    root = tmp_path_factory.mktemp("synth") / "contrails"
    generate_contrails(root, records=12, val_records=4, test_records=3, size=32, seed=7, progress=False)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    dst = tmp_path / "contrails"
    shutil.copytree(synth_root, dst)
    return dst


def generate_demo_world(root: Path, *, records: int, val_records: int, seed: int) -> Path:
    """Synthetic records at 64² in the demo's world (contrails wider and more opaque than real ones):
    tests train a few dozen steps, as the demo does."""
    from segladder.data.synth import generate_contrails
    from segladder.ladder.demo import DEMO_OPACITY_SCALE, DEMO_WIDTH_SCALE

    generate_contrails(
        root,
        records=records,
        val_records=val_records,
        test_records=0,
        size=64,
        seed=seed,
        progress=False,
        width_scale=DEMO_WIDTH_SCALE,
        opacity_scale=DEMO_OPACITY_SCALE,
    )
    return root


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    """40 + 12 synthetic records at 64² for training tests."""
    return generate_demo_world(
        tmp_path_factory.mktemp("train-synth") / "raw", records=40, val_records=12, seed=3
    )


@pytest.fixture(scope="session")
def train_cache(train_root, tmp_path_factory) -> Path:
    """The cache of `train_root` (frames 3–4, 64²)."""
    from segladder.data.cache import CacheOptions, prepare_cache

    cache = tmp_path_factory.mktemp("train-cache") / "cache"
    prepare_cache(train_root, cache, CacheOptions(frames=(3, 4), image_size=64), workers=1, progress=False)
    return cache
