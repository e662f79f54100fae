"""Binary KD loss: the KL of Bernoulli distributions by hand, its gradient T·(σ(z_s/T) − σ(z_t/T))/N, and the terms."""

from __future__ import annotations

import math

import pytest
import torch

from segladder.errors import ConfigError
from segladder.losses import LOSSES, binary_kd_loss, build_loss


def _kl_by_hand(zs: list[float], zt: list[float], t: float) -> float:
    total = 0.0
    for s, te in zip(zs, zt, strict=True):
        ps, pt = 1 / (1 + math.exp(-s / t)), 1 / (1 + math.exp(-te / t))
        total += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    return t * t * total / len(zs)


@pytest.mark.parametrize("t", [1.0, 2.5, 4.0])
def test_kd_equals_the_hand_computed_bernoulli_kl(t):
    zs, zt = [0.3, -1.2, 2.0, 4.5, -3.0, 0.0], [1.0, -0.5, -2.0, 4.0, 3.0, 0.0]
    got = binary_kd_loss(torch.tensor(zs).view(1, 1, 2, 3), torch.tensor(zt).view(1, 1, 2, 3), t)
    assert float(got) == pytest.approx(_kl_by_hand(zs, zt, t), rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_gradient_is_t_times_the_probability_gap_over_n(t):
    g = torch.Generator().manual_seed(0)
    zs = (torch.randn(2, 1, 4, 5, generator=g) * 3).requires_grad_()
    zt = torch.randn(2, 1, 4, 5, generator=g) * 3
    binary_kd_loss(zs, zt, t).backward()
    expected = t * (torch.sigmoid(zs.detach() / t) - torch.sigmoid(zt / t)) / zs.numel()
    torch.testing.assert_close(zs.grad, expected, rtol=1e-5, atol=1e-8)


def test_kd_is_zero_when_the_logits_agree_and_positive_otherwise():
    z = torch.randn(1, 1, 8, 8)
    assert float(binary_kd_loss(z, z, 3.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(binary_kd_loss(z, z + 1.0, 3.0)) > 0


def test_kd_rejects_bad_temperature_and_shapes():
    z = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="temperature"):
        binary_kd_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        binary_kd_loss(z, torch.zeros(1, 1, 2, 3), 1.0)


def test_kd_and_mse_terms_read_the_teacher_from_the_batch():
    loss = build_loss(
        [
            {"name": "kd", "weight": 0.3, "temperature": 2.0},
            {"name": "mse_prob", "weight": 0.5},
            {"name": "bce", "weight": 0.5},
            {"name": "dice"},
        ]
    )
    assert loss.target_keys == {"teacher", "mask"}
    zs, zt = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    mask = (torch.rand(2, 1, 4, 4) > 0.5).float()
    total, parts = loss(zs, {"teacher": zt, "mask": mask})
    assert float(parts["kd"]) == pytest.approx(float(binary_kd_loss(zs, zt, 2.0)), rel=1e-6)
    mse = ((torch.sigmoid(zs) - torch.sigmoid(zt)) ** 2).mean()
    assert float(parts["mse_prob"]) == pytest.approx(float(mse), rel=1e-6)
    assert float(total) == pytest.approx(
        0.3 * float(parts["kd"]) + 0.5 * float(mse) + 0.5 * float(parts["bce"]) + float(parts["dice"]),
        rel=1e-5,
    )
    assert "kd" in LOSSES and "mse_prob" in LOSSES


def test_kd_cannot_read_the_mask():
    with pytest.raises(ConfigError, match="kd cannot take target 'mask'.*teacher"):
        build_loss([{"name": "kd", "target": "mask"}])
    with pytest.raises(ConfigError, match="bce cannot take target 'teacher'"):
        build_loss([{"name": "bce", "target": "teacher"}])
