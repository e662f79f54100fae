"""Optimiser parameter groups and LR schedules against steps computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segladder.config import OptimConfig
from segladder.optim import build_optimizer, build_scheduler

LR, WD, MULT, G = 0.1, 0.5, 0.25, 0.2  # every gradient is set to G


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        self.head = nn.Linear(2, 1)


def _model() -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    return model


def _one_step(name: str) -> dict[str, float]:
    model = _model()
    opt = build_optimizer(model, OptimConfig(name=name, lr=LR, weight_decay=WD, encoder_lr_mult=MULT))
    for p in model.parameters():
        p.grad = torch.full_like(p, G)
    opt.step()
    values = {n: p.detach().unique() for n, p in model.named_parameters()}
    assert all(len(v) == 1 for v in values.values())
    return {n: float(v) for n, v in values.items()}


def test_groups_split_encoder_from_decoder_and_decay_from_norms_and_biases():
    opt = build_optimizer(_model(), OptimConfig(lr=LR, weight_decay=WD, encoder_lr_mult=MULT))
    groups = {g["name"]: (len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert groups == {
        "encoder": (1, LR * MULT, WD),
        "encoder_no_decay": (3, LR * MULT, 0.0),
        "decoder": (1, LR, WD),
        "decoder_no_decay": (1, LR, 0.0),
    }


# Every parameter starts at 1.0 with gradient 0.2; lr 0.1 (encoder 0.025), weight decay 0.5.
# Adam's first step moves by lr × sign(gradient) (m̂ = g, v̂ = g²; eps aside).
EXPECTED = {
    # AdamW: decoupled decay p·(1 − lr·wd), then −lr·sign(g).
    "adamw": {
        "encoder.0.weight": 1 * (1 - 0.025 * 0.5) - 0.025,
        "encoder.0.bias": 1 - 0.025,
        "encoder.1.weight": 1 - 0.025,
        "head.weight": 1 * (1 - 0.1 * 0.5) - 0.1,
        "head.bias": 1 - 0.1,
    },
    # Adam: decay is L2 in the gradient (g + wd·p = 0.7 > 0), so the first step is still −lr·sign.
    "adam": {
        "encoder.0.weight": 1 - 0.025,
        "encoder.0.bias": 1 - 0.025,
        "head.weight": 1 - 0.1,
        "head.bias": 1 - 0.1,
    },
    # RAdam: the variance is not yet trusted on step 1, so it steps by lr·m̂ = lr·g after decoupled decay.
    "radam": {
        "encoder.0.weight": 1 * (1 - 0.025 * 0.5) - 0.025 * 0.2,
        "encoder.0.bias": 1 - 0.025 * 0.2,
        "head.weight": 1 * (1 - 0.1 * 0.5) - 0.1 * 0.2,
        "head.bias": 1 - 0.1 * 0.2,
    },
    # The 2nd place's RAdam + trust ratio + Lookahead: every norm is below 10 (trust ratio 1) and Lookahead
    # first syncs at step 6, so step 1 is RAdam's.
    "radam_lars_lookahead": {
        "encoder.0.weight": 1 * (1 - 0.025 * 0.5) - 0.025 * 0.2,
        "encoder.0.bias": 1 - 0.025 * 0.2,
        "head.weight": 1 * (1 - 0.1 * 0.5) - 0.1 * 0.2,
        "head.bias": 1 - 0.1 * 0.2,
    },
    # SGD, Nesterov momentum 0.9: the first step is lr·(1 + 0.9)·(g + wd·p).
    "sgd": {
        "encoder.0.weight": 1 - 0.025 * 1.9 * (0.2 + 0.5),
        "encoder.0.bias": 1 - 0.025 * 1.9 * 0.2,
        "encoder.1.bias": 1 - 0.025 * 1.9 * 0.2,
        "head.weight": 1 - 0.1 * 1.9 * (0.2 + 0.5),
        "head.bias": 1 - 0.1 * 1.9 * 0.2,
    },
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_first_step_of_each_optimiser(name):
    after = _one_step(name)
    for param, value in EXPECTED[name].items():
        assert after[param] == pytest.approx(value, abs=1e-6), param


def test_cosine_schedule_with_warm_up():
    model = _model()
    cfg = OptimConfig(lr=LR, encoder_lr_mult=MULT, schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=14)
    seen = []
    for _ in range(21):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    # Linear warm-up over 4 steps, then half a cosine over the 10 left, from lr down to 0.1 × lr.
    factors = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 9: 0.55, 14: 0.1, 20: 0.1}
    for step, f in factors.items():
        assert seen[step]["decoder"] == pytest.approx(LR * f), step
        assert seen[step]["encoder"] == pytest.approx(LR * MULT * f), step


def test_constant_schedule_is_none_and_onecycle_peaks_at_each_groups_lr():
    model = _model()
    assert (
        build_scheduler(
            build_optimizer(model, OptimConfig(schedule="constant")), OptimConfig(schedule="constant"), 10
        )
        is None
    )
    cfg = OptimConfig(lr=LR, encoder_lr_mult=MULT, schedule="onecycle", pct_start=0.4)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)  # the peak falls on step 0.4 × 10 − 1 = 3
    peaks = {g["name"]: 0.0 for g in opt.param_groups}
    for _ in range(10):
        for g in opt.param_groups:
            peaks[g["name"]] = max(peaks[g["name"]], g["lr"])
        opt.step()
        sched.step()
    assert peaks["decoder"] == pytest.approx(LR) and peaks["encoder"] == pytest.approx(LR * MULT)


def test_adam_is_fused_where_every_parameter_is_on_one_cpu_or_cuda_kind():
    """Fused on CUDA as on the CPU (one kernel a step, and the NaN guard's on-device skip); not where the
    parameters are split across device kinds or on one the fused kernel lacks. Only `.device` is read, so
    stand-ins carry the CUDA case on a machine without one."""
    from types import SimpleNamespace

    from segladder.optim import _fused

    def on(*kinds):
        return [{"params": [SimpleNamespace(device=torch.device(k)) for k in kinds]}]

    assert _fused(on("cuda", "cuda")) == {"fused": True}
    assert _fused(on("cpu")) == {"fused": True}
    assert _fused(on("cpu", "cuda")) == {}
    assert _fused(on("meta")) == {}
