"""Optimisers (with differential encoder/decoder LR) and per-step LR schedules from an `OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segladder.registry import Registry


def param_groups(model: nn.Module, lr: float, encoder_lr_mult: float, weight_decay: float) -> list[dict]:
    """Encoder parameters (names starting with `encoder.`) get lr × encoder_lr_mult; norms and biases no decay."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_encoder = name.startswith("encoder.") or ".encoder." in name
        no_decay = p.ndim <= 1
        groups.setdefault((is_encoder, no_decay), []).append(p)
    out = []
    for (is_encoder, no_decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": lr * (encoder_lr_mult if is_encoder else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{'encoder' if is_encoder else 'decoder'}{'_no_decay' if no_decay else ''}",
        })
    return out


OPTIMIZERS: Registry[Callable[[list[dict], Any], torch.optim.Optimizer]] = Registry("optimiser")


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)


@OPTIMIZERS.register("radam")
def _radam(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.RAdam(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` over `model`'s parameter groups (see `param_groups`)."""
    groups = param_groups(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    return OPTIMIZERS.get(cfg.name)(groups, cfg)


def build_scheduler(opt: torch.optim.Optimizer, cfg, total_steps: int):
    """A per-step schedule, or None for a constant LR."""
    if cfg.schedule == "constant":
        return None
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(total_steps, 2),
            pct_start=cfg.pct_start, anneal_strategy="cos", cycle_momentum=False,
        )
    warm, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, cosine)
