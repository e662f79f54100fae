"""Model cost without running it for real: parameters and FLOPs per sample (torch's FlopCounterMode)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segladder.models.registry import create, info


@dataclass(frozen=True)
class ModelCost:
    """Size and cost of one registered model at its default options."""

    name: str
    params: int
    flops: int | None  # per sample, one forward pass; None when not measured
    input_shape: tuple[int, ...] | None  # (C, T, H, W) the FLOPs were counted at


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-add, as FlopCounterMode counts) of one eval forward pass of one sample.

    Runs on the device of the model's parameters; on the meta device only shapes are computed.
    """
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_shape), device=device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def model_cost(
    name: str, *, flops: bool = False, input_shape: tuple[int, ...] = (3, 5, 256, 256)
) -> ModelCost:
    """Parameters (and FLOPs at `input_shape` = (C, T, H, W)) of model `name` at its default options."""
    info(name)
    with torch.device("meta"):
        model = create(name, in_chans=input_shape[0])
    n_flops = count_flops(model, input_shape) if flops else None
    return ModelCost(name, count_parameters(model), n_flops, input_shape if flops else None)
