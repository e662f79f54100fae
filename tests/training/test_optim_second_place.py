"""The 2nd-place optimiser (RAdam + trust ratio + Lookahead) over many steps by hand; the one-cycle β1; the recipe."""

import copy
import math

import numpy as np
import pytest
import torch

from segladder.config import CONFIG_DIR, OptimConfig, load_config
from segladder.optim import OPTIMIZERS, RAdamTrustRatio, build_scheduler
from segladder.training.run import train
from tests.training.conftest import quick_config

LR, BETAS, EPS = 1e-2, (0.9, 0.999), 1e-8


def reference(weights, grads, lrs, decays, steps, k=6, alpha=0.5, clip=10.0):
    """Over9000 written out in float64: RAdam (N_sma ≥ 5 rule), min(‖w‖, 10)/‖w‖, Lookahead every k steps."""
    b1, b2 = BETAS
    w = [np.array(x, np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    slow = [None] * len(w)
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, steps + 1):
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
            if rho >= 5:
                r = math.sqrt(
                    (1 - b2**t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
                )
                update = lrs[i] * r / (1 - b1**t) * m[i] / (np.sqrt(v[i]) + EPS)
            else:
                update = lrs[i] / (1 - b1**t) * m[i]
            decayed = w[i] * (1 - lrs[i] * decays[i])
            norm = np.linalg.norm(decayed)
            w[i] = decayed - min(norm, clip) / norm * update
        if t % k == 0:
            for i in range(len(w)):
                # Lookahead's slow weights start as the fast weights at its first sync.
                slow[i] = w[i].copy() if slow[i] is None else slow[i] + alpha * (w[i] - slow[i])
                w[i] = slow[i].copy()
    return w


def make_case():
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(40, generator=gen) * 3.0  # ‖w‖ ≈ 19: steps shrink by about half
    small = torch.randn(5, generator=gen) * 0.2  # ‖w‖ < 10: plain RAdam
    decayed = torch.randn(30, generator=gen) * 2.5  # ‖w‖ > 10 and weight decay
    grads = [torch.randn(p.shape, generator=gen) for p in (big, small, decayed)]
    params = [torch.nn.Parameter(p.clone()) for p in (big, small, decayed)]
    groups = [
        {"params": params[:2], "lr": LR, "weight_decay": 0.0},
        {"params": params[2:], "lr": LR / 3, "weight_decay": 0.1},
    ]
    return params, grads, groups


def test_first_step_is_the_gradient_times_lr_and_the_trust_ratio():
    params, grads, groups = make_case()
    before = [p.detach().clone() for p in params[:2]]
    opt = RAdamTrustRatio(groups[:1], lr=LR)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    # Step 1: N_sma = 1 < 5, so RAdam steps lr / (1 − β1) · m = lr · g; ‖big‖ > 10 scales it by 10/‖big‖.
    big, small = before
    torch.testing.assert_close(params[0].detach(), big - LR * (10 / big.norm()) * grads[0])
    torch.testing.assert_close(params[1].detach(), small - LR * grads[1])
    assert 0.4 < 10 / big.norm() < 0.6


@pytest.mark.parametrize("steps", [1, 5, 6, 13])
def test_registered_optimiser_matches_the_hand_computation(steps):
    params, grads, groups = make_case()
    start = [p.detach().numpy().copy() for p in params]
    opt = OPTIMIZERS.get("radam_lars_lookahead")(groups, OptimConfig(lr=LR, betas=BETAS, weight_decay=0.1))
    for _ in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    want = reference(start, [g.numpy() for g in grads], [LR, LR, LR / 3], [0.0, 0.0, 0.1], steps)
    for p, w in zip(params, want, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=2e-5, atol=2e-7)


def test_state_dict_round_trip_keeps_the_slow_weights():
    params, grads, groups = make_case()
    cfg = OptimConfig(lr=LR, weight_decay=0.0)
    opt = OPTIMIZERS.get("radam_lars_lookahead")(groups, cfg)

    def step(o, ps):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        o.step()

    for _ in range(7):
        step(opt, params)
    state = copy.deepcopy(opt.state_dict())  # as if written to disk: no tensors shared with `opt`
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = OPTIMIZERS.get("radam_lars_lookahead")(
        [{**g, "params": copies[:2] if i == 0 else copies[2:]} for i, g in enumerate(groups)], cfg
    )
    resumed.load_state_dict(state)
    for _ in range(6):  # past the next Lookahead sync at step 12
        step(opt, params)
        step(resumed, copies)
    for a, b in zip(params, copies, strict=True):
        torch.testing.assert_close(a, b)


def test_one_cycle_cycles_beta1_against_the_lr():
    p = torch.nn.Parameter(torch.zeros(3))
    cfg = OptimConfig(
        name="radam_lars_lookahead",
        lr=3.5e-4,
        weight_decay=0.0,
        pct_start=0.1,
        cycle_momentum=True,
        momentum_range=(0.85, 0.95),
        final_div_factor=4000,
    )
    opt = OPTIMIZERS.get(cfg.name)([{"params": [p], "lr": cfg.lr, "weight_decay": 0.0}], cfg)
    sched = build_scheduler(opt, cfg, total_steps=100)
    lrs, beta1s = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        beta1s.append(opt.param_groups[0]["betas"][0])
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(3.5e-4) and 8 <= peak <= 10
    assert beta1s[0] == pytest.approx(0.95) and beta1s[peak] == pytest.approx(0.85, abs=1e-4)
    assert beta1s[-1] == pytest.approx(0.95, abs=1e-4)
    assert lrs[0] == pytest.approx(3.5e-4 / 25) and lrs[-1] < 3.5e-4 / 1e4  # fastai: ends at lr_max / 1e5
    assert opt.param_groups[0]["betas"][1] == 0.999


def test_coat_ulstm_config_is_the_second_place_recipe():
    cfg = load_config(CONFIG_DIR / "coat_ulstm.yaml")
    assert cfg.data.batch_size == 8 and cfg.trainer.accumulate_grad_batches == 1
    # fastai's GradientAccumulation doubled the gradients its GradientClip(3.0) saw: 1.5 on the true ones.
    assert cfg.trainer.gradient_clip_val == 1.5 and cfg.trainer.precision == "16-mixed"
    assert cfg.trainer.max_epochs == 4  # what train.py + config.json run; the README's 24 is never read
    o = cfg.optim
    assert (o.name, o.lr, o.weight_decay, o.pct_start) == ("radam_lars_lookahead", 3.5e-4, 0.0, 0.1)
    assert o.cycle_momentum and o.momentum_range == (0.85, 0.95) and o.betas[1] == 0.999
    assert cfg.model.kwargs["pretrained"] == "auto"


@pytest.mark.medium
def test_training_steps_with_the_second_place_optimiser_and_augmentation(train_cache, tmp_path):
    recipe = load_config(CONFIG_DIR / "coat_ulstm.yaml")
    cfg = quick_config(
        train_cache,
        **{
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 3,
            "trainer.overlays": 0,
            "trainer.gradient_clip_val": recipe.trainer.gradient_clip_val,
        },
    )
    cfg = cfg.model_copy(
        update={
            "optim": recipe.optim.model_copy(update={"lr": 1e-3}),
            "data": cfg.data.model_copy(update={"augment": recipe.data.augment}),
        }
    )
    res = train(cfg, out=tmp_path / "run")
    hist = res.metrics["epochs"]
    assert len(hist) == 1 and math.isfinite(hist[0]["train/loss_epoch"])
    assert (res.run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.medium
def test_the_recipes_gradient_clip_is_what_the_optimiser_steps_with(train_cache, tmp_path):
    """The optimiser sees gradients of norm 1.5 (the recipe's clip) when the raw ones are larger."""
    import lightning as L

    recipe = load_config(CONFIG_DIR / "coat_ulstm.yaml")

    class GradNorms(L.Callback):
        def __init__(self):
            self.raw, self.stepped = [], []

        def on_train_start(self, trainer, pl_module):
            params = [p for p in pl_module.parameters() if p.requires_grad]
            # Lightning runs the closure (forward, backward, clipping) inside step(): read the gradients after it.
            trainer.optimizers[0].register_step_post_hook(lambda *_: self.stepped.append(norm(params)))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.raw.append(norm([p for p in pl_module.parameters() if p.requires_grad]))

    def norm(params):
        return torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in params if p.grad is not None])
        ).item()

    cfg = quick_config(
        train_cache,
        **{
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 3,
            "trainer.limit_val_batches": 1,
            "trainer.overlays": 0,
            "trainer.gradient_clip_val": recipe.trainer.gradient_clip_val,
            "loss": [{"name": "bce", "weight": 50.0}],  # raw gradient norms well above the clip
        },
    )
    probe = GradNorms()
    train(cfg, out=tmp_path / "run", callbacks=[probe])
    assert len(probe.stepped) == 3 and min(probe.raw) > 3.0
    assert probe.stepped == pytest.approx([1.5] * 3, rel=1e-4)
