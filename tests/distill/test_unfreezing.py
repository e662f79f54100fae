"""Progressive unfreezing: block order (deepest first), LR groups, frozen BatchNorm, and the temperature schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from segladder.config import OptimConfig
from segladder.models import create
from segladder.optim import SharedFactorLR, build_optimizer, cosine_factor
from segladder.tasks.distillation import cosine_temperature
from segladder.tasks.finetuning import ProgressiveUnfreezing, blocks_unfrozen_at, encoder_blocks
from tests.distill.conftest import TINY_UNET


class Holder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def _student() -> Holder:
    kwargs = {k: v for k, v in TINY_UNET.items() if k != "name"}
    return Holder(create(TINY_UNET["name"], in_chans=3, **kwargs))


def test_temperature_is_cosine_from_start_to_end():
    assert cosine_temperature(4.0, 1.0, 0.0) == pytest.approx(4.0)
    assert cosine_temperature(4.0, 1.0, 0.5) == pytest.approx(2.5)
    assert cosine_temperature(4.0, 1.0, 1.0) == pytest.approx(1.0)
    assert cosine_temperature(4.0, 1.0, 0.25) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + 2**-0.5))
    values = [cosine_temperature(4.0, 1.0, e / 49) for e in range(50)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_seed_004_schedule_of_blocks():
    # Frozen for epochs 0-4, one block at 5, 8, 11, ... until all 7 EfficientNet-B0 stages train.
    got = [blocks_unfrozen_at(e, 5, 3, 7) for e in range(30)]
    assert got[:5] == [0] * 5 and got[5:8] == [1] * 3 and got[8] == 2 and got[23] == 7 and max(got) == 7


def test_efficientnet_b0_has_seven_blocks_covering_every_encoder_parameter():
    model = create("Unet2D", encoder="efficientnet_b0", in_chans=3)
    blocks = encoder_blocks(model)
    assert len(blocks) == 7
    in_blocks = {id(p) for block in blocks for m in block for p in m.parameters()}
    assert in_blocks == {id(p) for p in model.net.encoder.parameters()}


def test_unfreezing_goes_deepest_first_with_scaled_lr_groups_and_frozen_bn_in_eval():
    holder = _student()
    blocks = encoder_blocks(holder.model)
    cb = ProgressiveUnfreezing(start_epoch=1, every=2, lr_scale=0.3)
    cb.freeze_before_training(holder)
    assert not any(p.requires_grad for block in blocks for m in block for p in m.parameters())
    cfg = OptimConfig(lr=1e-3, schedule="cosine")
    opt = build_optimizer(holder.model, cfg)
    assert all(not g["name"].startswith("encoder") for g in opt.param_groups)
    sched = SharedFactorLR(opt, cosine_factor(cfg, 100))
    for _ in range(10):
        opt.step()
        sched.step()

    def trainable(i: int) -> bool:
        return all(p.requires_grad for m in blocks[i] for p in m.parameters())

    holder.train()
    cb.finetune_function(holder, 0, opt)
    assert cb.unfrozen == 0
    cb.finetune_function(holder, 1, opt)
    assert trainable(len(blocks) - 1) and not any(trainable(i) for i in range(len(blocks) - 1))
    group = opt.param_groups[-1]
    assert group["name"] == f"encoder.{len(blocks) - 1}"
    assert group["initial_lr"] == pytest.approx(0.3 * 1e-3)
    decoder_lr = opt.param_groups[0]["lr"]
    assert group["lr"] == pytest.approx(0.3 * decoder_lr)  # joins at the schedule's current factor
    frozen_bn = [
        m
        for i in range(len(blocks) - 1)
        for mod in blocks[i]
        for m in mod.modules()
        if isinstance(m, _BatchNorm)
    ]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    live_bn = [m for mod in blocks[-1] for m in mod.modules() if isinstance(m, _BatchNorm)]
    assert live_bn and all(m.training for m in live_bn)
    cb.finetune_function(holder, 2, opt)
    assert cb.unfrozen == 1
    cb.finetune_function(holder, 3, opt)
    assert trainable(len(blocks) - 2) and opt.param_groups[-1]["name"] == f"encoder.{len(blocks) - 2}"
    sched.step()
    enc = [g for g in opt.param_groups if g["name"].startswith("encoder")]
    dec = opt.param_groups[0]
    assert all(
        g["lr"] == pytest.approx(0.3 * dec["lr"]) for g in enc
    )  # the schedule follows the added groups
    cb.finetune_function(holder, 100, opt)
    assert cb.unfrozen == len(blocks) and all(trainable(i) for i in range(len(blocks)))
    names = [p for g in opt.param_groups for p in g["params"]]
    assert len(names) == len({id(p) for p in names}) == sum(1 for p in holder.parameters())
    x = torch.randn(2, 3, 1, 32, 32)
    holder.model(x).mean().backward()
    opt.step()
