"""Fabricated checkpoints and toy models for the inference tests (no trainer involved)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from segladder.config import ExperimentConfig
from segladder.inference.checkpoint import LoadedCheckpoint
from segladder.models import create

FRAMES = (0, 1, 2, 3, 4)
SIZE = 32


def experiment_config(
    name: str = "Unet2D", task: str = "segmentation", frames=FRAMES, image_size: int = SIZE, **model_kwargs
) -> ExperimentConfig:
    return ExperimentConfig(
        task=task,
        data={"frames": list(frames), "image_size": image_size},
        model={"name": name, **model_kwargs},
    )


def make_checkpoint(
    path: Path,
    name: str = "Unet2D",
    *,
    task: str = "segmentation",
    threshold: float = 0.5,
    frames=FRAMES,
    image_size: int = SIZE,
    version: int = 1,
    bias: float | None = None,
    seed: int = 0,
    **model_kwargs,
) -> Path:
    """Save a checkpoint in the trainer's format. With `bias`, the last layer's weights are zeroed and
    its bias set, so every pixel (or record) gets the logit `bias`."""
    if name in ("Unet2D", "Classifier"):
        model_kwargs.setdefault("encoder", "resnet18")
    cfg = experiment_config(name, task, frames, image_size, **model_kwargs)
    torch.manual_seed(seed)
    model = create(name, **cfg.model.kwargs).eval()
    if bias is not None:
        last = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "segladder": {
                "version": version,
                "task": task,
                "threshold": threshold,
                "config": cfg.model_dump(mode="json"),
            },
        },
        path,
    )
    return path


def row_key(x: torch.Tensor) -> str:
    return hashlib.sha1(x.detach().contiguous().numpy().tobytes()).hexdigest()


class Lookup(nn.Module):
    """A toy model that recognises each input record by a hash of its pixels and returns a fixed output."""

    def __init__(self, table: dict[str, torch.Tensor]):
        super().__init__()
        self.table = table
        self.calls = self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += len(x)
        return torch.stack([self.table[row_key(r)] for r in x])


def toy_checkpoint(
    items: list[dict],
    output: Callable[[dict], torch.Tensor],
    *,
    task: str = "segmentation",
    threshold: float = 0.5,
    path: str = "toy.ckpt",
) -> LoadedCheckpoint:
    """A LoadedCheckpoint whose model maps each dataset item's image to `output(item)`."""
    table = {row_key(it["image"]): output(it) for it in items}
    name = "Classifier" if task == "classification" else "Unet2D"
    return LoadedCheckpoint(Lookup(table), experiment_config(name, task), threshold, task, Path(path))
