"""Global Dice under a real 2-process DDP run (gloo on CPU): the reduced metric equals numpy on all data."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segladder.metrics import ThresholdSweepDice


def _data():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(10, 1, 16, 16, generator=g) ** 3
    target = (torch.rand(10, 1, 16, 16, generator=g) > 0.8).float()
    return probs, target


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    probs, target = _data()
    metric = ThresholdSweepDice(thresholds=[0.1, 0.3, 0.5])
    for i in range(rank, 10, world):  # each process sees a different half, as DistributedSampler does
        metric.update(probs[i : i + 1], target[i : i + 1])
    res = metric.compute()
    if rank == 0:
        torch.save({k: v for k, v in res.items()}, out_file)
    dist.destroy_process_group()


@pytest.mark.medium
def test_sweep_dice_reduces_across_two_processes(tmp_path):
    out = tmp_path / "res.pt"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, start_method="spawn")
    res = torch.load(out, weights_only=True)
    probs, target = _data()
    p, t = probs.numpy(), target.numpy() > 0.5
    for th, dice in zip([0.1, 0.3, 0.5], res["curve"].tolist(), strict=True):
        pred = p > th
        expected = 2 * (pred & t).sum() / (pred.sum() + t.sum())
        assert np.isclose(dice, expected, atol=1e-6), (th, dice, expected)
