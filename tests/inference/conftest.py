"""Checkpoints fabricated once per session in the trainer's format."""

from __future__ import annotations

import math

import pytest

from tests.inference.helpers import make_checkpoint


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def seg_ckpt(ckpt_dir):
    """A randomly initialised Unet2D (resnet18) for 5 frames at 32×32, stored threshold 0.5."""
    return make_checkpoint(ckpt_dir / "seg.ckpt", seed=1)


@pytest.fixture(scope="session")
def const_ckpts(ckpt_dir):
    """Two segmenters predicting 0.2 and 0.8 everywhere (stored thresholds 0.3, 0.7); the second reads frame 4 only."""
    return (
        make_checkpoint(ckpt_dir / "p02.ckpt", bias=logit(0.2), threshold=0.3),
        make_checkpoint(ckpt_dir / "p08.ckpt", bias=logit(0.8), threshold=0.7, frames=(4,)),
    )
