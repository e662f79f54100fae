"""The teacher-logit cache: refused with augmentation on, same loss as the live teacher, one teacher pass per record."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from segladder.config import build_config
from segladder.errors import ConfigError
from segladder.training.build import build_task
from segladder.training.run import train
from tests.distill.conftest import tiny_config


def _cfg(root, teacher, cache: bool, **sections):
    return build_config(
        tiny_config(
            root,
            task="distillation",
            optim={"schedule": "cosine", "lr": 1e-3},
            distill={"teacher": str(teacher), "unfreeze_start_epoch": 0, "cache_teacher_logits": cache},
            **sections,
        )
    )


def test_the_cache_is_refused_while_augmentation_is_on(distill_root, teacher_ckpt):
    cfg = _cfg(distill_root, teacher_ckpt, True, data={"augment": {"hflip_p": 0.5}})
    with pytest.raises(ConfigError, match=r"distill.cache_teacher_logits.*data.augment.hflip_p=0"):
        build_task(cfg)
    build_task(_cfg(distill_root, teacher_ckpt, False, data={"augment": {"hflip_p": 0.5}}))  # live: fine


def test_cached_logits_give_the_live_loss_and_spare_the_teacher(distill_root, teacher_ckpt):
    live = build_task(_cfg(distill_root, teacher_ckpt, False))
    cached = build_task(_cfg(distill_root, teacher_ckpt, True))
    cached.model.load_state_dict(live.model.state_dict())
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(2, 3, 1, 32, 32, generator=gen),
        "mask": (torch.rand(2, 1, 32, 32, generator=gen) > 0.7).float(),
        "record_id": ["r0", "r1"],
    }
    want, want_parts = live.compute_loss(batch)
    first, _ = cached.compute_loss(batch)  # a miss: the teacher runs and its logits are kept
    again, parts = cached.compute_loss(batch)  # a hit: no teacher pass
    assert cached.teacher_passes == 1 and live.teacher_passes == 1
    assert set(cached.logit_cache) == {("train", "r0"), ("train", "r1")}
    assert all(z.dtype == torch.float16 and z.shape == (1, 32, 32) for z in cached.logit_cache.values())
    # fp16 storage rounds the logits by < 1e-3 relative: the loss and each part agree to that.
    assert again.item() == pytest.approx(want.item(), rel=1e-3)
    assert first.item() == pytest.approx(
        again.item(), rel=1e-6
    )  # first and later epochs see the same targets
    for name in ("kd", "mse_prob", "bce", "dice"):
        assert parts[name].item() == pytest.approx(want_parts[name].item(), rel=1e-3, abs=1e-6), name
    # One record not seen yet: the teacher runs on the batch again; validation records are kept apart.
    cached.compute_loss({**batch, "record_id": ["r0", "r2"]})
    assert cached.teacher_passes == 2
    cached.batch_teacher_logits(batch, "val")
    assert cached.teacher_passes == 3 and ("val", "r0") in cached.logit_cache


class PassesPerEpoch(Callback):
    def __init__(self):
        self.passes: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.passes.append(pl_module.teacher_passes)


@pytest.mark.medium
def test_training_with_the_cache_runs_the_teacher_in_the_first_epoch_only(
    distill_root, teacher_ckpt, tmp_path
):
    probe = PassesPerEpoch()
    # 4 batches of 4 = all 16 training records each epoch (shuffled differently), 1 validation batch.
    cfg = _cfg(distill_root, teacher_ckpt, True, trainer={"max_epochs": 3, "limit_train_batches": 4})
    res = train(cfg, out=tmp_path / "run", callbacks=[probe])
    # Epoch 1: 1 sanity-check validation batch + 4 training batches (the epoch's own validation follows).
    assert probe.passes[0] == 5
    assert probe.passes[1] == probe.passes[2] == probe.passes[0]  # later epochs: cache hits only
    assert len(res.metrics["epochs"]) == 3 and all("train/kd" in e for e in res.metrics["epochs"])
