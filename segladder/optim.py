"""Optimisers (with differential encoder/decoder LR) and per-step LR schedules from an `OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from timm.optim import Lookahead, RAdamLegacy
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
        out.append(
            {
                "params": params,
                "lr": lr * (encoder_lr_mult if is_encoder else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{'encoder' if is_encoder else 'decoder'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


OPTIMIZERS: Registry[Callable[[list[dict], Any], torch.optim.Optimizer]] = Registry("optimiser")


def _fused(groups: list[dict]) -> dict:
    """`fused=True` where every parameter is on the CPU or every one on a CUDA device, else no option.

    One kernel per step instead of torch's default (a Python-level update per tensor on the CPU, about
    5× slower on a ResNet-18 U; on CUDA a foreach update whose CPU step counters cost ~190 `item()` calls a
    step).
    The fused kernel also takes the NaN guard's on-device skip flag (`found_inf`), so a non-finite step is
    dropped without reading anything back; gradient clipping is done by the task, since Lightning refuses to
    clip for a fused optimiser under mixed precision.
    """
    kinds = {p.device.type for g in groups for p in g["params"]}
    return {"fused": True} if len(kinds) == 1 and kinds <= {"cpu", "cuda"} else {}


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **_fused(groups)
    )


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **_fused(groups))


@OPTIMIZERS.register("radam")
def _radam(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.RAdam(
        groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, decoupled_weight_decay=True
    )


class RAdamTrustRatio(RAdamLegacy):
    """RAdam whose step is scaled per tensor by the trust ratio min(‖w‖, trust_clip) / ‖w‖ (LARS-style).

    The 2nd-place "Over9000" optimiser (their `radam.py`: `Ralamb` inside fastai's Lookahead) with the
    RAdam part from timm (`RAdamLegacy`: the same rectification rule, N_sma ≥ 5, per-group step sizes).
    Weight decay is decoupled and not scaled, ‖w‖ is taken after it (with fp32 parameters the original's
    norm reads the decayed tensor). The ratio is 1 while ‖w‖ ≤ trust_clip, so it only damps the steps of
    large tensors; then the step is RAdam's update times the ratio, recovered from RAdam's result, which
    costs at most one fp32 rounding of the weight.

    Args:
        params: parameters or parameter groups.
        lr, betas, eps, weight_decay: as RAdam.
        trust_clip: the norm above which steps shrink (the original's 10).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        trust_clip: float = 10.0,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.trust_clip = trust_clip

    @torch.no_grad()
    def step(self, closure=None):
        """Decoupled weight decay, then RAdam's step scaled by each tensor's trust ratio; returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Only tensors with weight decay or a norm above the clip need more than RAdam's own step; one
        # device sync for all the norms rather than one per tensor.
        params, decayed = [], []
        for group in self.param_groups:
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is not None:
                    params.append((p, decay))
                    decayed.append(p.float() * (1 - group["lr"] * decay) if decay else p.float())
        norms = torch.stack(torch._foreach_norm(decayed)).tolist() if decayed else []
        scaled = {}
        for (p, decay), d, norm in zip(params, decayed, norms, strict=True):
            if decay or norm > self.trust_clip:
                trust = min(norm, self.trust_clip) / norm if norm > 0 else 1.0
                w = p.float().clone()  # for fp32 parameters p.float() is p itself, which the step changes
                scaled[p] = (w, d if decay else w, trust)
        # RAdam's own step without decay (applied above, unscaled), then rescaled where needed.
        decays = [group["weight_decay"] for group in self.param_groups]
        try:
            for group in self.param_groups:
                group["weight_decay"] = 0.0
            super().step()
        finally:
            for group, decay in zip(self.param_groups, decays, strict=True):
                group["weight_decay"] = decay
        for p, (w, decayed, trust) in scaled.items():
            p.copy_(decayed + trust * (p.float() - w))
        return loss


@OPTIMIZERS.register("radam_lars_lookahead")
def _radam_lars_lookahead(groups: list[dict], cfg) -> torch.optim.Optimizer:
    # The 2nd-place Over9000: eps 1e-8 (their code drops the 1e-4 it is passed), Lookahead k 6, α 0.5.
    return Lookahead(
        RAdamTrustRatio(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay), alpha=0.5, k=6
    )


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
    )


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` over `model`'s parameter groups (see `param_groups`)."""
    groups = param_groups(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    return OPTIMIZERS.get(cfg.name)(groups, cfg)


def cosine_factor(cfg, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier of step `step` under `cfg`'s cosine schedule (linear warm-up, floor `min_lr_ratio`)."""
    warm, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return cosine


class SharedFactorLR(torch.optim.lr_scheduler.LRScheduler):
    """Every param group at its own `initial_lr` × one `factor(step)`, including groups added during training.

    `LambdaLR` fixes its list of groups when built; progressive unfreezing adds a group per unfrozen block,
    which must follow the same schedule from the step it joins. The factor function is not saved in the
    state dict (it is rebuilt from config), so checkpoints stay weights-only loadable.

    Args:
        optimizer: the optimiser whose groups it schedules.
        factor: the learning-rate factor at a step.
        last_epoch: the step last taken (-1: none yet), as torch's schedulers.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float], last_epoch: int = -1
    ):
        self.factor = factor
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """Each param group's `initial_lr` times the factor at the current step."""
        f = self.factor(self.last_epoch)
        return [g.setdefault("initial_lr", g["lr"]) * f for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """The scheduler's state without the optimiser and the factor function (rebuilt from config)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "factor")}


def build_scheduler(opt: torch.optim.Optimizer, cfg, total_steps: int, groups_may_grow: bool = False):
    """A per-step schedule, or None for a constant LR.

    With `groups_may_grow` (progressive unfreezing) the cosine schedule is a `SharedFactorLR`, which schedules
    groups added later too; one-cycle has per-group momentum and phase state, so it refuses that case.
    """
    if cfg.schedule == "constant":
        return None
    if cfg.schedule == "onecycle":
        if groups_may_grow:
            raise ValueError(
                "optim.schedule onecycle cannot schedule parameter groups added during training; "
                "use cosine or constant"
            )
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=cfg.pct_start,
            anneal_strategy="cos",
            final_div_factor=cfg.final_div_factor,
            # β1 for Adam-like optimisers, momentum for SGD: high while the LR is low (fastai's fit_one_cycle).
            cycle_momentum=cfg.cycle_momentum,
            base_momentum=cfg.momentum_range[0],
            max_momentum=cfg.momentum_range[1],
        )
    if groups_may_grow:
        return SharedFactorLR(opt, cosine_factor(cfg, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, cosine_factor(cfg, total_steps))
