"""Training-throughput benchmark: our Trainer beside a bare PyTorch loop (img/s, step ms, TFLOP/s, peak GiB)."""

from __future__ import annotations

import collections
import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from segladder.config import ExperimentConfig, build_config
from segladder.models import create


class DeviceOps(TorchDispatchMode):
    """Counts, by name, the ops that reach a device kernel while active.

    Views, aliases, bare allocations and profiler marks do not count: on a GPU each counted op is a launch,
    host time that a launch-bound step waits for. The count does not depend on the machine, so it compares the
    Trainer with the bare loop anywhere.
    """

    HOST_ONLY = frozenset(
        (
            "alias", "as_strided", "detach", "empty", "empty_strided", "expand", "lift_fresh", "permute",
            "resolve_conj", "resolve_neg", "select", "slice", "squeeze", "t", "unsqueeze", "view",
            "_unsafe_view", "_record_function_enter_new", "_record_function_exit",
        )
    )  # fmt: skip

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in self.HOST_ONLY:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class _StepTimer(Callback):
    """Times `steps` optimiser steps after `warmup`, synchronising the device at both ends."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.t0: float | None = None
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync(pl_module.device)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            _sync(pl_module.device)
            self.seconds = time.perf_counter() - self.t0
            trainer.should_stop = True


class DeviceOpsWindow(Callback):
    """`DeviceOps` from the start of batch `start` to the end of batch `stop - 1`, hooks between included.

    It is the Trainer's side of an op count. After `_StepTimer` in a callback list, its timing is the steps'
    own, since the counter then starts after the clock and stops after it.

    Args:
        start: the first batch counted.
        stop: the batch after the last one counted.
    """

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.ops = DeviceOps()
        self._active = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Start counting at batch `start`."""
        if batch_idx == self.start:
            self.ops.__enter__()
            self._active = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Stop counting after batch `stop - 1`."""
        if batch_idx == self.stop - 1:
            self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Stop counting."""
        self._close()

    def _close(self) -> None:
        if self._active:
            self.ops.__exit__(None, None, None)
            self._active = False


class _Repeat:
    """The same batch n times: a loader with no data cost (a plain list would read as several loaders)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


class _LoaderData(L.LightningDataModule):
    """A ready training loader with the data module's on-device decode of uint8 batches."""

    def __init__(self, loader: Iterable):
        super().__init__()
        self.loader = loader

    def train_dataloader(self) -> Iterable:
        return self.loader

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        from segladder.data.module import transfer_flat_batch

        return transfer_flat_batch(batch, device)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        from segladder.data.module import ContrailsDataModule

        return ContrailsDataModule.on_after_batch_transfer(self, batch, dataloader_idx)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def bench_config(
    model: str,
    size: int,
    frames: int,
    batch: int,
    precision: str,
    channels_last: bool,
    compile: bool,
    root: str | None = None,
    augment: dict | None = None,
    workers: int = 0,
    progress: bool = True,
    compile_mode: str = "default",
    compile_dynamic: bool | None = False,
    cudnn_benchmark: bool = True,
    encoder: str | None = None,
) -> ExperimentConfig:
    """A `train` config of the benchmark's case; the trainer keys are those a user's run would set."""
    return build_config(
        {
            "name": "bench",
            "data": {
                "root": root,
                "frames": list(range(5 - frames, 5)),
                "image_size": size,
                "batch_size": batch,
                "num_workers": workers,
                "augment": augment or {},
            },
            "model": {"name": model, **({"encoder": encoder} if encoder else {})},
            "loss": [{"name": "bce"}],
            "optim": {"name": "adamw", "lr": 1e-4, "schedule": "constant"},
            "trainer": {
                "precision": precision,
                "channels_last": channels_last,
                "compile": compile,
                "compile_mode": compile_mode,
                "compile_dynamic": compile_dynamic,
                "cudnn_benchmark": cudnn_benchmark,
                "progress": progress,
                "overlays": 0,
                "max_epochs": 1,
            },
        }
    )


def flops_per_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The FLOPs of one BCE training step (forward and backward) of `model` on `x` and `y`."""
    counter = FlopCounterMode(display=False)
    with counter:
        F.binary_cross_entropy_with_logits(model(x).float(), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _result(case: str, mode: str, batch: int, seconds: float, steps: int, flops: int, device) -> dict:
    dt = seconds / steps
    return {
        "case": case,
        "mode": mode,
        "batch": batch,
        "img_per_s": round(batch / dt, 1),
        "step_ms": round(dt * 1e3, 2),
        "tflops": round(flops / dt / 1e12, 3),
        "gflop_per_img": round(flops / batch / 1e9, 2),
        "peak_gib": _peak_gib(device),
    }


def bench_reference(
    cfg: ExperimentConfig, case: str, steps: int, warmup: int, device: torch.device, count_ops: bool = False
) -> dict:
    """A bare PyTorch training loop around the same model (what a user would write instead of segladder).

    Data is already on the device, the optimiser is fused AdamW. `count_ops` adds the device ops of a step
    (`with_ops`); its timing then is not the step's.
    """
    torch.manual_seed(0)
    model = create(cfg.model.name, **cfg.model.kwargs).to(device)
    x, y = _batch(cfg, device)
    cl, amp = cfg.trainer.channels_last, cfg.trainer.precision.startswith("bf16")
    if cl:
        model = model.to(memory_format=torch.channels_last)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    flops = flops_per_step(model, x, y)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the Trainer, on the CPU too
    t = cfg.trainer
    torch.backends.cudnn.benchmark = t.cudnn_benchmark
    run = torch.compile(model, mode=t.compile_mode, dynamic=t.compile_dynamic) if t.compile else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.binary_cross_entropy_with_logits(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    counter = DeviceOps() if count_ops else None
    t0 = time.perf_counter()
    with counter or contextlib.nullcontext():
        for _ in range(steps):
            step()
    _sync(device)
    res = _result(case, f"reference_{_mode(cfg)}", x.shape[0], time.perf_counter() - t0, steps, flops, device)
    return with_ops(res, counter, steps)


def with_ops(res: dict, counter: DeviceOps | None, steps: int) -> dict:
    """`res` with the device ops per step, in total and by name, where they were counted."""
    if counter is None:
        return res
    by_name = {k: round(v / steps, 2) for k, v in counter.ops.most_common()}
    return {**res, "ops_per_step": round(sum(counter.ops.values()) / steps, 2), "ops": by_name}


def _batch(cfg: ExperimentConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    d = cfg.data
    g = torch.Generator().manual_seed(0)
    x = torch.rand(d.batch_size, 3, len(d.frames), d.image_size, d.image_size, generator=g)
    if len(d.frames) == 1:
        x = x[:, :, 0]
    y = (torch.rand(d.batch_size, 1, d.image_size, d.image_size, generator=g) > 0.97).float()
    return x.to(device), y.to(device)


def _mode(cfg: ExperimentConfig) -> str:
    t = cfg.trainer
    return (
        {"32": "fp32", "32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}[t.precision]
        + ("_cl" if t.channels_last else "")
        + ("_compile" if t.compile else "")
    )


def bench_trainer(
    cfg: ExperimentConfig,
    case: str,
    steps: int,
    warmup: int,
    device: torch.device,
    data: Iterable | None = None,
    count_ops: bool = False,
) -> dict:
    """The Trainer `segladder train` builds (callbacks, logger and progress bar), timed over `steps` steps.

    The optimiser steps are timed after `warmup`; `data` None means the same in-memory batch every step.
    `count_ops` adds the device ops of a step (`with_ops`); its timing then is not the step's.
    """
    from segladder.training.build import build_task, build_trainer

    torch.manual_seed(0)
    t = cfg.trainer
    cfg = cfg.model_copy(
        update={
            "trainer": t.model_copy(
                update={
                    "accelerator": device.type,
                    "devices": 1,
                    "max_epochs": 1,
                    "limit_train_batches": warmup + steps,
                    "limit_val_batches": 0,
                }
            )
        }
    )
    task = build_task(cfg)
    x, y = _batch(cfg, torch.device("cpu"))
    flops = flops_per_step(create(cfg.model.name, **cfg.model.kwargs), x, y)
    if data is None:
        xd, yd = x.to(device), y.to(device)
        if cfg.trainer.channels_last and xd.dim() == 4:
            # As the reference's batch, and as the data module's decode delivers it: no copy in the step.
            xd = xd.contiguous(memory_format=torch.channels_last)
        data = _Repeat({"image": xd, "mask": yd}, warmup + steps)
        label = "trainer_memory"
    else:
        label = "trainer_cache_aug"
    timer = _StepTimer(warmup, steps)
    window = DeviceOpsWindow(warmup, warmup + steps) if count_ops else None
    with tempfile.TemporaryDirectory(prefix="segladder-bench-run-") as run_dir:
        extra = [timer] if window is None else [timer, window]
        trainer, _ = build_trainer(cfg, Path(run_dir), task.monitor, extra_callbacks=extra)
        with warnings.catch_warnings():
            # No validation here, so the best-checkpoint callback finds no monitored value (as intended).
            warnings.filterwarnings("ignore", ".*could not find the monitored key.*")
            trainer.fit(task, datamodule=_LoaderData(data))
    if timer.seconds is None:
        raise RuntimeError(
            f"the data gave fewer than {warmup + steps} batches; use more records or fewer steps"
        )
    res = _result(case, f"{label}_{_mode(cfg)}", cfg.data.batch_size, timer.seconds, steps, flops, device)
    return with_ops(res, None if window is None else window.ops, steps)


def print_result(res: dict) -> None:
    """Print a result as one JSON line."""
    print(json.dumps(res), flush=True)
