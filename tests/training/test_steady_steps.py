"""A training step reads nothing back from the device: the NaN guard skips on the device, clipping works with
fused optimisers, and compile trains. The GPU tests hold it under `torch.cuda.set_sync_debug_mode("error")`."""

from __future__ import annotations

import collections
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segladder.training.bench import DeviceOps, DeviceOpsWindow
from segladder.training.build import build_trainer
from tests.training.conftest import quick_config
from tests.training.test_nan_safety import Batches, Tiny


def _task(tmp_path, model=None, **over):
    from segladder.tasks.segmentation import SegmentationTask

    cfg = quick_config(
        tmp_path,
        **{"trainer.max_epochs": 1, "trainer.overlays": 0, "optim.schedule": "constant", **over},
    )
    return cfg, SegmentationTask(cfg, model or Tiny())


class _HostReadsForbidden(L.Callback):
    """Fails the run if the NaN guard's step decision reads a tensor on the host (bool/item/tolist)."""

    def __init__(self):
        self.checked = 0

    def setup(self, trainer, pl_module, stage):
        from segladder.training.nan_guard import NonFiniteGuard

        guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
        decide = guard.on_before_optimizer_step

        def no_reads(*args, **kwargs):
            def refuse(*a, **k):
                raise AssertionError("the NaN guard read a tensor on the host to decide a step")

            saved = {n: getattr(torch.Tensor, n) for n in ("__bool__", "item", "tolist")}
            try:
                for n in saved:
                    setattr(torch.Tensor, n, refuse)
                decide(*args, **kwargs)
            finally:
                for n, f in saved.items():
                    setattr(torch.Tensor, n, f)
            self.checked += 1

        guard.on_before_optimizer_step = no_reads


def test_fused_adamw_skips_a_nonfinite_step_on_the_device(tmp_path):
    cfg, task = _task(tmp_path, **{"optim.name": "adamw"})
    trainer, guard = build_trainer(
        cfg, tmp_path / "run", task.monitor, extra_callbacks=[_HostReadsForbidden()]
    )
    snapshots = []

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            opt = trainer.optimizers[0]
            state = opt.state[pl_module.model.conv.weight]
            snapshots.append(
                (pl_module.model.conv.weight.detach().clone(), state["exp_avg"].clone(), float(state["step"]))
            )

    trainer.callbacks.append(Snap())
    # 4 batches of 4: the third holds +inf, the others are finite.
    trainer.fit(task, DataLoader(Batches(16, bad=[9]), batch_size=4), DataLoader(Batches(8), batch_size=4))
    assert trainer.optimizers[0].defaults["fused"] is True
    assert next(c for c in trainer.callbacks if isinstance(c, _HostReadsForbidden)).checked == 4
    (w0, m0, s0), (w1, m1, s1), (w2, m2, s2), (w3, m3, s3) = snapshots
    assert not torch.equal(w0, w1) and s1 == s0 + 1  # a finite step moves the weights and counts
    assert (
        torch.equal(w1, w2) and torch.equal(m1, m2) and s2 == s1
    )  # the bad one: weights, moments, count kept
    assert not torch.equal(w2, w3) and s3 == s2 + 1
    assert [s["kind"] for s in guard.skipped] == ["loss"] and "rec009" in guard.skipped[0]["record_ids"]
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_epoch"])  # the skipped step is not in the epoch's mean


class _NoHostReads(L.Callback):
    """From the start of batch `start` to the end of batch `stop - 1`, any Python-level read of a tensor's
    value (bool, float, int, item, tolist) raises: on a GPU each is a wait for the device's queue. The CPU
    stand-in for `torch.cuda.set_sync_debug_mode("error")`, covering the loop, callbacks and progress bar."""

    NAMES = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")

    def __init__(self, start: int, stop: int):
        self.start, self.stop, self.covered = start, stop, 0
        self._saved: dict = {}

    def _forbid(self):
        def refuse(*a, **k):
            raise AssertionError("a steady training step read a tensor's value on the host")

        self._saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch.Tensor, n, refuse)

    def _allow(self):
        for n, f in self._saved.items():
            setattr(torch.Tensor, n, f)
        self._saved = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.start:
            self._forbid()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start <= batch_idx < self.stop:
            self.covered += 1
        if batch_idx == self.stop - 1:
            self._allow()

    def on_exception(self, trainer, pl_module, exception):
        self._allow()


@pytest.mark.medium
def test_steady_steps_read_nothing_back(tmp_path):
    """The user's Trainer (progress bar, recorder, checkpoints, logger) with clipping and bf16: between log
    steps no tensor value reaches Python."""
    cfg, task = _task(
        tmp_path,
        **{
            "optim.name": "adamw",
            "trainer.precision": "bf16-mixed",
            "trainer.gradient_clip_val": 1.0,
            "trainer.progress": True,
            "trainer.log_every_n_steps": 50,
        },
    )
    window = _NoHostReads(1, 7)
    trainer, guard = build_trainer(cfg, tmp_path / "run", task.monitor, extra_callbacks=[window])
    trainer.fit(task, DataLoader(Batches(32), batch_size=4), DataLoader(Batches(8), batch_size=4))
    assert window.covered == 6 and trainer.global_step == 8 and not guard.skipped
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


def test_a_non_fused_optimiser_skips_too(tmp_path):
    model = Tiny()
    cfg, task = _task(tmp_path, model, **{"optim.name": "sgd", "optim.momentum": 0.9})
    trainer, guard = build_trainer(cfg, tmp_path / "run", task.monitor)
    before = model.conv.weight.detach().clone()
    # Every batch of the only epoch is bad: no step may touch the weights.
    trainer.fit(
        task, DataLoader(Batches(8, bad=range(8)), batch_size=4), DataLoader(Batches(8), batch_size=4)
    )
    assert len(guard.skipped) == 2
    torch.testing.assert_close(model.conv.weight, before)


def test_the_epoch_loss_is_the_weighted_mean_of_the_finite_steps():
    from segladder.metrics import FiniteMean

    m = FiniteMean()
    for value, bs in ((torch.tensor(1.0), 4), (torch.tensor(float("nan")), 4), (torch.tensor(4.0), 2)):
        m.update(value, bs)
    assert m.compute().item() == pytest.approx((1 * 4 + 4 * 2) / 6)


def test_step_means_weigh_by_batch_size_skip_nonfinite_steps_and_fold_without_per_step_work(monkeypatch):
    from segladder.metrics import StepMeans

    monkeypatch.setattr(StepMeans, "FOLD", 3)
    nan, inf = float("nan"), float("inf")
    # 7 steps: folds after the 3rd and the 6th, and a rest read at compute; "part" is missing from two steps.
    steps = [(1.0, 4), (nan, 4), (4.0, 2), (2.0, 4), (inf, 2), (3.0, 1), (5.0, 3)]
    m = StepMeans()
    for i, (value, bs) in enumerate(steps):
        values = {"loss": torch.tensor(value)}
        if i not in (1, 3):
            values["part"] = torch.tensor(10.0 * i)
        with DeviceOps() as ops:
            m.update(values, bs)
        if i not in (2, 5):
            assert not ops.ops  # an update that does not fold launches nothing
    out = m.compute()
    finite = [(v, w) for v, w in steps if math.isfinite(v)]
    assert out["loss"].item() == pytest.approx(sum(v * w for v, w in finite) / sum(w for _, w in finite))
    parts = [(10.0 * i, w) for i, (v, w) in enumerate(steps) if i not in (1, 3)]
    assert out["part"].item() == pytest.approx(sum(v * w for v, w in parts) / sum(w for _, w in parts))
    m.update({"loss": torch.tensor(100.0)}, 1)  # not folded yet: reset drops it too
    m.reset()
    m.update({"loss": torch.tensor(7.0)}, 2)
    assert {k: v.item() for k, v in m.compute().items()} == {"loss": 7.0}  # "part" had no value since


class _ClippedGrads(L.Callback):
    """The global gradient norm and largest gradient of each optimiser step: read after the step, where the
    gradients are still those the task clipped (Lightning zeroes them at the next step's start)."""

    def __init__(self):
        self.norms: list[float] = []
        self.largest: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.largest.append(max(float(g.abs().max()) for g in grads))


@pytest.mark.medium
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_clipping_acts_with_a_fused_optimiser(tmp_path, precision):
    """Lightning refuses to clip for a fused optimiser under mixed precision; the task clips instead."""
    norms = {}
    for clip in (None, 1e-3):
        over = {"optim.name": "adamw", "trainer.precision": precision}
        if clip is not None:
            over["trainer.gradient_clip_val"] = clip
        cfg, task = _task(tmp_path / str(clip), **over)
        seen = _ClippedGrads()
        trainer, _ = build_trainer(cfg, tmp_path / str(clip) / "run", task.monitor, extra_callbacks=[seen])
        trainer.fit(task, DataLoader(Batches(8), batch_size=4), DataLoader(Batches(8), batch_size=4))
        assert trainer.optimizers[0].defaults["fused"] is True
        norms[clip] = seen.norms
    assert len(norms[None]) == len(norms[1e-3]) == 2
    assert min(norms[None]) > 1e-2  # unclipped gradients are far above the clip
    assert max(norms[1e-3]) == pytest.approx(1e-3, rel=1e-3)


def test_clip_by_value(tmp_path):
    over = {
        "optim.name": "adamw",
        "trainer.gradient_clip_val": 1e-4,
        "trainer.gradient_clip_algorithm": "value",
    }
    cfg, task = _task(tmp_path, **over)
    seen = _ClippedGrads()
    trainer, _ = build_trainer(cfg, tmp_path / "run", task.monitor, extra_callbacks=[seen])
    trainer.fit(task, DataLoader(Batches(8), batch_size=4), DataLoader(Batches(8), batch_size=4))
    assert len(seen.largest) == 2 and max(seen.largest) == pytest.approx(1e-4)


class _Recurrent(Tiny):
    """Tiny with a 1×1 conv applied twice, as a recurrent cell's weights are once per frame."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x[:, :, -1]))
        return self.head(self.mix(torch.relu(self.mix(h))))


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_a_steady_step_launches_only_the_guards_ops_beyond_the_bare_loop(tmp_path, precision):
    """The user's Trainer (NaN guard, recorder, checkpoints, logger, progress bar) against the bare loop of
    `bench_reference` on the same model and batch, op for op, between log steps. Beyond the bare loop's ops
    a step may launch only the NaN guard's flag and fused check, the fused optimiser's undo of its step
    count (one per parameter group), the second parameter group's update (no weight decay on norms and
    biases), and Lightning's loss clone and accumulation divide (and its backward). A per-step metric
    update, finiteness test or loss-weight multiply shows as more; under bf16-mixed, so does a weight used
    twice and cast twice (Lightning's autocast without torch's cast cache)."""
    batch = next(iter(DataLoader(Batches(4), batch_size=4)))
    steps = 6
    torch.manual_seed(0)
    cfg, task = _task(
        tmp_path,
        _Recurrent(),
        **{
            "optim.name": "adamw",
            "loss": "[{name: bce}]",
            "trainer.precision": precision,
            "trainer.progress": True,
            "trainer.log_every_n_steps": 50,
        },
    )
    window = DeviceOpsWindow(2, 2 + steps)
    trainer, _ = build_trainer(cfg, tmp_path / "run", task.monitor, extra_callbacks=[window])
    trainer.fit(
        task, DataLoader([batch] * (steps + 4), batch_size=None), DataLoader(Batches(4), batch_size=4)
    )
    groups = len(trainer.optimizers[0].param_groups)
    assert groups == 2

    torch.manual_seed(0)
    model = _Recurrent()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    bare = DeviceOps()
    for i in range(steps + 2):
        if i == 2:
            bare.__enter__()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = F.binary_cross_entropy_with_logits(model(batch["image"]).float(), batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    bare.__exit__(None, None, None)

    per_step = {
        "zeros": 1,  # the guard's flag
        "_amp_foreach_non_finite_check_and_unscale_": 1,  # losses and gradients in one check
        "_foreach_sub_": groups,  # found_inf: the fused optimiser's step count kept on a skipped step
        "_foreach_add_": groups - 1,
        "_fused_adamw_": groups - 1,
        "clone": 1,  # Lightning's closure result
        "div": 2,  # Lightning's loss / accumulate_grad_batches, and its backward
    }
    assert window.ops.ops - bare.ops == collections.Counter({k: v * steps for k, v in per_step.items()})
    assert not bare.ops - window.ops.ops  # the model's own work is all there


@pytest.mark.slow
def test_compile_trains_a_tiny_model(tmp_path):
    """`trainer.compile: true` on the CPU: the compiled forward is the one that trains."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg, task = _task(tmp_path, **{"trainer.compile": True, "optim.name": "adamw"})
    trainer, _ = build_trainer(cfg, tmp_path / "run", task.monitor)
    before = task.model.conv.weight.detach().clone()
    trainer.fit(task, DataLoader(Batches(8), batch_size=4), DataLoader(Batches(8), batch_size=4))
    assert task._compiled is not None and type(task._compiled).__name__ == "OptimizedModule"
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the model: the compiled forward ran
    assert not torch.equal(before, task.model.conv.weight)  # the compiled module shares the weights
    assert set(
        torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ) == {f"model.{k}" for k in task.model.state_dict()}


# ------------------------------------------------------------------------------------------------ GPU


class _NoSyncWindow(L.Callback):
    """`set_sync_debug_mode("error")` from the start of batch `start` to the end of batch `stop - 1`: any
    device→host wait in between (the loop, the callbacks, the progress bar, the step) raises."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop, self.covered = start, stop, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.start:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start <= batch_idx < self.stop:
            self.covered += 1
        if batch_idx == self.stop - 1:
            torch.cuda.set_sync_debug_mode(0)

    def on_exception(self, trainer, pl_module, exception):
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compile"])
def test_steady_steps_never_wait_for_the_gpu(tmp_path, compile):
    from segladder.training.bench import _LoaderData, _Repeat, bench_config
    from segladder.training.build import build_task

    cfg = bench_config("Unet2D", 64, 1, 8, "bf16-mixed", True, compile, progress=True)
    t = cfg.trainer.model_copy(
        update={
            "accelerator": "cuda",
            "devices": 1,
            "gradient_clip_val": 1.0,
            "log_every_n_steps": 100,
            "limit_val_batches": 0,
            "limit_train_batches": 30,
        }
    )
    cfg = cfg.model_copy(update={"trainer": t})
    task = build_task(cfg)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(8, 3, 64, 64, generator=g).cuda(),
        "mask": (torch.rand(8, 1, 64, 64, generator=g) > 0.9).float().cuda(),
    }
    window = _NoSyncWindow(5, 25)
    trainer, guard = build_trainer(cfg, tmp_path / "run", task.monitor, extra_callbacks=[window])
    trainer.fit(task, datamodule=_LoaderData(_Repeat(batch, 30)))
    assert window.covered == 20 and trainer.global_step == 30
    assert trainer.optimizers[0].defaults["fused"] is True
    assert not guard.skipped


@pytest.mark.gpu
def test_a_nonfinite_step_is_skipped_on_the_gpu(tmp_path):
    cfg, task = _task(
        tmp_path, **{"optim.name": "adamw", "trainer.accelerator": "cuda", "trainer.devices": 1}
    )
    trainer, guard = build_trainer(cfg, tmp_path / "run", task.monitor)
    weights = []

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights.append(pl_module.model.conv.weight.detach().clone())

    trainer.callbacks.append(Snap())
    trainer.fit(task, DataLoader(Batches(16, bad=[9]), batch_size=4), DataLoader(Batches(8), batch_size=4))
    assert not torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])
    assert [s["kind"] for s in guard.skipped] == ["loss"]
