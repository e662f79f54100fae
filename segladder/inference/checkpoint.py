"""Loading a training checkpoint as a plain model (no Trainer), safely (`weights_only=True`)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segladder.config import ExperimentConfig
from segladder.inference.errors import CheckpointError

CHECKPOINT_KEY = "segladder"  # the section of a Lightning checkpoint that segladder writes
CHECKPOINT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    config: ExperimentConfig
    threshold: float
    task: str
    path: Path
    stats: dict | None = (
        None  # training-split channel statistics, so raw-data inference normalises as training did
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the config stored in the checkpoint and load its weights."""
    from segladder.models import create

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load (it holds objects other than tensors and plain data, "
            f"which could run code): {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc}).") from None
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None:
        raise CheckpointError(
            f"{path}: not a segladder checkpoint (no '{CHECKPOINT_KEY}' section); "
            "give a best.ckpt or last.ckpt from a run directory."
        )
    if meta.get("version") not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint version {meta.get('version')}, this segladder reads {SUPPORTED_VERSIONS}."
        )
    cfg = ExperimentConfig.model_validate(meta["config"])
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    kwargs = {**cfg.model.kwargs, **_legacy_decoder(cfg, state)}
    if "pretrained" in kwargs:  # the checkpoint holds every weight; do not look for ImageNet ones
        kwargs["pretrained"] = False
    model = create(cfg.model.name, **kwargs)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {cfg.model.name}{kwargs or ''}: "
            f"{str(exc).strip().splitlines()[-1].strip()}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {cfg.model.name}: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    model.eval()
    return LoadedCheckpoint(
        model,
        cfg,
        float(meta.get("threshold", 0.5)),
        meta.get("task", "segmentation"),
        path,
        meta.get("stats"),
    )


def _legacy_decoder(cfg: ExperimentConfig, state: dict[str, torch.Tensor]) -> dict:
    """decoder_channels of a ResNet18_U/ULSTM checkpoint written while the slim widths were the default.

    Their stored configs do not name the widths; the first decoder conv's output channels tell them.
    """
    from segladder.models.ladder import SLIM_DECODER_CHANNELS

    conv = state.get("decoder.dec3.conv1.0.weight")
    if (
        cfg.model.name in ("ResNet18_U", "ResNet18_ULSTM")
        and "decoder_channels" not in cfg.model.kwargs
        and conv is not None
        and conv.shape[0] == SLIM_DECODER_CHANNELS[0]
    ):
        return {"decoder_channels": SLIM_DECODER_CHANNELS}
    return {}
