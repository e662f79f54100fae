"""Scene test fixtures: ABI scenes written in NOAA's layout, and a model whose output is known pixel by pixel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segladder.models.registry import MODELS, ModelInfo
from tests.inference.helpers import make_checkpoint

T0 = datetime(2023, 7, 13, 18, 0, 20, tzinfo=UTC)  # a full-disk-like scan start: 20 s past the frame time
COLD_MODEL = "SceneTestColdPixels"
BACKGROUND_K, CONTRAIL_K = 280.0, 262.0


class ColdPixels(nn.Module):
    """Contrail logits from the labelled frame's ash blue (band 14): cold pixels are contrails, pixel by pixel.

    Background 280 K gives a logit of about −4, contrail pixels 262 K about +7, so the map is known exactly.
    """

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(60.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * (0.55 - x[:, 2:3, -1])


@pytest.fixture
def cold_ckpt(tmp_path, monkeypatch) -> Path:
    """A checkpoint of `ColdPixels` reading frame 4's ash RGB, stored threshold 0.5.

    The model is in the registry for this test only: `models list` and the registry's own tests must not
    meet it.
    """
    info = ModelInfo(COLD_MODEL, ColdPixels, "test: cold pixels", True, "ash", "mask")
    monkeypatch.setitem(MODELS._entries, COLD_MODEL, info)
    return make_checkpoint(tmp_path / "cold.ckpt", COLD_MODEL, frames=(4,), image_size=64)


@pytest.fixture(scope="session")
def unet_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised Unet2D (resnet18) reading frames 2–4 at 64², threshold 0.5."""
    return make_checkpoint(
        tmp_path_factory.mktemp("unet") / "unet.ckpt", frames=(2, 3, 4), image_size=64, seed=3
    )


def ash_bands(b14: np.ndarray) -> dict[int, np.ndarray]:
    """Bands 11, 14, 15 from band 14 with fixed, unequal split-window differences."""
    return {11: b14 - 2.5, 14: b14, 15: b14 - 0.7}


def write_stack(folder: Path, bands_of_frame, frames=(2, 3, 4), t0: datetime = T0, **kw) -> list[Path]:
    """One CMIP file per band and frame (frame 4 at `t0`, others 10 minutes apart) under `folder`."""
    from segladder.scene.testing import write_abi

    paths = []
    for f in frames:
        bands = bands_of_frame(f)
        for b, bt in bands.items():
            paths.append(write_abi(folder, {b: bt}, start=t0 + (f - 4) * timedelta(minutes=10), **kw))
    return paths
