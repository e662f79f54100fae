"""Training behaviour added as Lightning callbacks: NaN safety, atomic finite checkpoints, RNG state,
metrics.json with curves and overlays as PNG, throughput and a one-line summary per epoch."""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.precision import MixedPrecision

from segladder.errors import Interrupted
from segladder.io import atomic_path, atomic_write_json, link_or_copy
from segladder.progress import console
from segladder.tasks.base import logs_this_step, require_task
from segladder.viz import plot_histories, save_figure, save_image, threshold_curve_figure

# ---------------------------------------------------------------------------------------- NaN safety


def _finite(t: Any) -> bool:
    if isinstance(t, torch.Tensor):
        return bool(torch.isfinite(t).all()) if t.is_floating_point() else True
    if isinstance(t, (list, tuple)):
        return all(_finite(x) for x in t)
    if isinstance(t, dict):
        return all(_finite(x) for x in t.values())
    return True


def _nonfinite_flag(tensors: list[torch.Tensor], device: torch.device, ones: dict) -> torch.Tensor:
    """A float device flag, 1 when an element of `tensors` is NaN or ±inf, else 0: what a fused optimiser reads
    as `found_inf`. GradScaler's own check makes it in one fused kernel per device and dtype; it multiplies
    the values by `ones[device]` (1.0) in place, which leaves them as they were. `ones` caches that tensor."""
    found = torch.zeros((), device=device)
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for (dev, _), group in groups.items():
        flag = found if dev == found.device else torch.zeros((), device=dev)
        if dev not in ones:
            ones[dev] = torch.ones((), device=dev)
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, ones[dev])
        except (RuntimeError, NotImplementedError):  # a device without the check: max-abs norms instead
            norms = torch._foreach_norm(group, float("inf"))
            flag = torch.maximum(flag, (~torch.stack(norms).isfinite().all()).float())
        if flag is not found:
            found = torch.maximum(found, flag.to(device))
    return found


def first_nonfinite_module(model: torch.nn.Module, x: torch.Tensor, context) -> dict | None:
    """Re-run a forward pass with hooks; name the first module whose inputs are finite but outputs are not."""
    found: dict = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            if found or _finite(output):
                return
            found.update(module=name or "(model)", type=type(module).__name__, inputs_finite=_finite(inputs))

        return fn

    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), context:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return found or None


@dataclass
class _StepFlags:
    """One optimiser step's non-finite flag on its way to the host, and what a report of it needs."""

    flag: torch.Tensor  # 1.0 when the step was not finite; in pinned host memory once `ready`
    event: Any  # a CUDA event recorded after the copy; None when the flag was on the CPU all along
    losses: list[torch.Tensor]  # the step's losses, read back only when the flag is set (loss or gradient?)
    record: dict
    batch: dict

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class NonFiniteGuard(Callback):
    """Skips steps with a non-finite loss or gradient; after `patience` in a row, diagnoses and stops.

    Nothing is read back from the device to decide a step, and deciding it costs a few kernel launches. The
    task keeps the step's losses (`Task.step_losses`); here they and the gradients are checked in
    GradScaler's fused kernel, and for a fused optimiser (every AdamW/Adam segladder builds on a CPU or CUDA
    device) the flag is handed to the fused kernel as `found_inf`, which leaves the weights, the moments
    and the step count untouched when it is set. The flag is copied to the host without waiting (pinned
    memory and an event) and reported, counted and acted on once the copy has landed, at most `MAX_PENDING`
    steps later; only then, and only for a bad step, are its losses read to tell a bad loss from a bad
    gradient. Other optimisers get the gradients set to None after one host read of the flag per step
    (torch's non-fused optimisers have no on-device skip). Under 16-mixed the GradScaler already skips
    overflowing steps while it calibrates its scale, so only non-finite losses count there. With gradient
    accumulation a non-finite micro-batch drops its whole optimiser step.
    """

    MAX_PENDING = 16

    def __init__(self, run_dir: Path, patience: int = 5):
        self.run_dir, self.patience = Path(run_dir), patience
        self.consecutive = 0
        self.skipped: list[dict] = []
        self.stopped_reason: str | None = None
        self._batch: dict | None = None
        self._batch_idx = -1
        self._pending: deque[_StepFlags] = deque()
        self._pinned: list[torch.Tensor] = []
        self._ones: dict[torch.device, torch.Tensor] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        require_task(pl_module, type(self).__name__)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        losses, pl_module.step_losses = pl_module.step_losses, []
        scaled = trainer.precision == "16-mixed"
        checked = losses if scaled else [*losses, *grads]
        bad = _nonfinite_flag(checked, checked[0].device if checked else pl_module.device, self._ones)
        if getattr(optimizer, "defaults", {}).get("fused") and not scaled:
            optimizer.found_inf = bad  # read by the fused kernel: skip this step when 1
        elif bool(bad):  # no on-device skip for this optimiser: one host read a step
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None
        lr = optimizer.param_groups[0]["lr"] if optimizer.param_groups else float("nan")
        self._enqueue(trainer, pl_module, bad, losses, lr)

    def _enqueue(self, trainer, pl_module, flag: torch.Tensor, losses: list[torch.Tensor], lr) -> None:
        batch = self._batch or {}
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": self._batch_idx,
            "lr": lr,  # a tensor LR is read at report time, not now
            "record_ids": list(batch.get("record_id", [])),
            "parts": dict(pl_module.step_parts),
        }
        event = None
        if flag.device.type == "cuda":
            host = self._pinned.pop() if self._pinned else torch.empty((), pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flag = host
        self._pending.append(_StepFlags(flag, event, losses, record, batch))
        if len(self._pending) > self.MAX_PENDING:
            self._pending[0].wait()  # the device is that many steps behind; the queue still holds work

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._drain(trainer, pl_module, wait=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._drain(trainer, pl_module, wait=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._drain(trainer, pl_module, wait=True)
        for opt in trainer.optimizers:
            if hasattr(opt, "found_inf"):
                opt.found_inf = None

    def _drain(self, trainer, pl_module, wait: bool) -> None:
        while self._pending and (wait or self._pending[0].ready()):
            step = self._pending.popleft()
            step.wait()
            bad = bool(step.flag.numpy())  # host memory (the pinned copy on CUDA): no wait for the device
            if step.event is not None:
                self._pinned.append(step.flag)
            if self.stopped_reason is not None:
                continue
            kind = None
            if bad:  # something is wrong: now the losses may be read back
                kind = "gradient" if all(bool(torch.isfinite(v).all()) for v in step.losses) else "loss"
            self._account(trainer, pl_module, step, kind)

    def _account(self, trainer, pl_module, step: _StepFlags, kind: str | None) -> None:
        if kind is None:
            self.consecutive = 0
            return
        self.consecutive += 1
        rec = step.record
        record = {
            "step": rec["step"],
            "epoch": rec["epoch"],
            "batch_idx": rec["batch_idx"],
            "kind": kind,
            "lr": float(rec["lr"]),
            "record_ids": rec["record_ids"],
            "loss_parts": {k: float(v) for k, v in rec["parts"].items()},
        }
        self.skipped.append(record)
        ids = record["record_ids"]
        console.print(
            f"[yellow]non-finite {kind}[/] at step {record['step']} (lr {record['lr']:.3g}); step skipped; "
            f"records {', '.join(ids[:4])}{' …' if len(ids) > 4 else ''}"
        )
        if self.consecutive >= self.patience:
            self._diagnose(trainer, pl_module, step.batch, record)
            trainer.should_stop = True

    def _diagnose(self, trainer, pl_module, batch, record) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ctx = trainer.precision_plugin.forward_context()
        x = pl_module.model_input(batch)
        module = first_nonfinite_module(pl_module.model, x, ctx)
        grad_params: list[str] = []
        if module is None:
            # The forward pass is finite: find the parameters whose gradients are not.
            pl_module.model.zero_grad(set_to_none=True)
            with ctx:
                loss, _ = pl_module.compute_loss(batch)
            loss.backward()
            grad_params = [
                n
                for n, p in pl_module.model.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            pl_module.model.zero_grad(set_to_none=True)
        batch_path = self.run_dir / "nan_batch.pt"
        with atomic_path(batch_path) as tmp:
            torch.save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, tmp)
        report = {
            "stopped_after": self.consecutive,
            "last": record,
            "precision": str(trainer.precision),
            "input_finite": _finite(x),
            "first_nonfinite_module": module,
            "nonfinite_gradients": grad_params[:20],
            "skipped_steps": self.skipped[-50:],
            "replay": f"torch.load('{batch_path}', weights_only=True) holds the batch",
            "advice": [
                "use precision 32 (or bf16-mixed) instead of 16-mixed",
                "lower optim.lr (seed 002: NaN at the one-cycle LR peak)",
                "set trainer.gradient_clip_val (e.g. 1.0)",
                "reduce trainer.accumulate_grad_batches",
            ],
        }
        atomic_write_json(self.run_dir / "nan_report.json", report)
        where = (
            module["module"] if module else (f"gradients of {grad_params[0]}" if grad_params else "unknown")
        )
        self.stopped_reason = (
            f"stopped after {self.consecutive} consecutive non-finite steps; first non-finite "
            f"output: {where}; see {self.run_dir / 'nan_report.json'}"
        )
        console.print(f"[red]{self.stopped_reason}[/]")


# -------------------------------------------------------------------------------------- checkpoints


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested checkpoint: what torch.save will need on disk, give or take the index."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a full disk never clobbers the old one, and
    becomes one `DiskFullError` naming the file, the bytes it needs and the bytes free."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path, needed=tensor_bytes(checkpoint) + (1 << 16)) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class CachedAutocastPrecision(MixedPrecision):
    """Lightning's mixed precision with torch's autocast cache on, as a bare `torch.autocast` loop has it.

    Lightning 2.6 turns the cache off (its issue #20644: a trainable weight first cast under a nested
    `torch.no_grad()` is cached without its graph, and later uses of it then train nothing). Off, a weight
    used several times in one forward is cast each time: ResNet18_ULSTM's recurrent gates, once per frame,
    16 more casts and their gradients a step. No segladder model runs its trainable weights under no_grad
    inside forward (the distillation teacher is frozen, so its weights are never cached), so the cache is
    kept; it is emptied when each autocast region ends, every step."""

    def autocast_context_manager(self) -> torch.autocast:
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.half
        return torch.autocast(self.device, dtype=dtype)

    @classmethod
    def replacing(cls, plugin: MixedPrecision) -> CachedAutocastPrecision:
        """The same precision, device and GradScaler as `plugin`, the one Lightning resolved."""
        return cls(plugin.precision, plugin.device, plugin.scaler)


class EpochProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting epochs from 1 ("Epoch 1/3" … "Epoch 3/3") as the log lines,
    metrics and overlays file names do (Lightning's own shows "Epoch 0/2" … "Epoch 2/2")."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}" + (
            f"/{self.trainer.max_epochs}" if self.trainer.max_epochs not in (None, -1) else ""
        )
        return f"{text:{len(self.validation_description)}}"


class FiniteModelCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that refuses to write weights holding NaN or inf, and spends no disk twice.

    When `last` is saved at the step `best` was just saved, it becomes a hard link to it (or a copy-on-write
    clone, or a copy where links are unsupported). With `optimizer_state="last"` only `last` carries the
    optimiser and scheduler state; `best` holds weights and what inference needs.

    Args:
        optimizer_state: "all" (every checkpoint can resume training) or "last" (only last.ckpt can).
    """

    def __init__(self, *args, optimizer_state: str = "all", **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer_state = optimizer_state

    # Lightning ≥ 2.4 writes last.ckpt only at steps where a top-k checkpoint was written, so after the best
    # epoch "last" would stay the best one and a resumed run would redo every later epoch.
    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = [
            k
            for k, v in trainer.lightning_module.state_dict().items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            console.print(
                f"[red]not writing {Path(filepath).name}: non-finite weights in {', '.join(bad[:3])}[/]"
            )
            return
        is_last = Path(filepath).stem == self.CHECKPOINT_NAME_LAST
        same_step = self._last_checkpoint_saved and self._last_global_step_saved == trainer.global_step
        if (
            is_last
            and same_step
            and self.optimizer_state == "all"
            and self._last_checkpoint_saved != filepath
        ):
            if trainer.is_global_zero:
                link_or_copy(self._last_checkpoint_saved, filepath)
            trainer.strategy.barrier()
            self._last_checkpoint_saved = filepath
            return
        if not is_last and self.optimizer_state == "last":
            trainer.save_checkpoint(filepath, weights_only=True)
            self._last_global_step_saved, self._last_checkpoint_saved = trainer.global_step, filepath
            return
        super()._save_checkpoint(trainer, filepath)


class GracefulStop(Callback):
    """SIGINT or SIGTERM stops training at the next batch boundary with an `Interrupted` error.

    The unfinished epoch is dropped; checkpoints/last.ckpt keeps the last finished one, from which
    `segladder train --resume RUN` continues exactly. A second signal stops at once.
    (Lightning would turn Ctrl-C into `sys.exit(1)` and SIGTERM into a mid-epoch exit; this replaces both.)
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.received: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer, pl_module) -> None:
        # Here, not in on_fit_start: Lightning installs its own SIGTERM handler between the two.
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled by the main thread
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _check(self, trainer) -> None:
        if self.received is None:
            return
        last = self.run_dir / "checkpoints" / "last.ckpt"
        kept = (
            "checkpoints/last.ckpt keeps the last finished epoch"
            if last.exists()
            else "no epoch had finished, so nothing to keep"
        )
        raise Interrupted(
            f"training stopped on {self.received} during epoch {trainer.current_epoch + 1} (step "
            f"{trainer.global_step}); {kept}",
            hint=f"segladder train --resume {self.run_dir}",
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check(trainer)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._check(trainer)


class RNGState(Callback):
    """Saves and restores the global RNGs with each checkpoint so a resumed run draws what it would have."""

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        p = state["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class IntervalProgressBar(EpochProgressBar):
    """Lightning's rich progress bar, showing the training loss and samples/s read every `log_every_n_steps`
    steps: each read waits for the device to finish all the work queued so far, so the training step logs
    nothing to the bar itself (Lightning would read every progress-bar value after every batch)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict = {}

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training and (logs_this_step(trainer) or not self._shown):
            loss = getattr(pl_module, "last_loss", None)
            recorder = next((c for c in trainer.callbacks if isinstance(c, RunRecorder)), None)
            self._shown = {
                **({"train/loss": f"{float(loss):.4g}"} if loss is not None else {}),
                **(
                    {"samples/s": f"{recorder.samples_per_s:.1f}"}
                    if recorder and recorder.samples_per_s
                    else {}
                ),
            }
        return {**metrics, **self._shown}


# ------------------------------------------------------------------------------ metrics and pictures


# "Loss at the end of an epoch" as a training log shows it (fastai's smoothed loss): the mean of the last steps.
LOSS_END_STEPS = 10


class RunRecorder(Callback):
    """Per epoch: metrics.json and overlays as PNG and in TensorBoard; the loss/Dice curves and the threshold
    curve as PNG at most every `REFRESH_S` seconds while training, and always when training ends.

    Drawing those two costs ~0.5 s an epoch on a CPU: a quarter of an epoch of the demo's rungs, nothing
    against a GPU epoch of minutes, which still gets them every epoch.
    """

    REFRESH_S = 20.0

    def __init__(self, run_dir: Path, overlays: int = 8):
        self.run_dir, self.n_overlays = Path(run_dir), overlays
        self.history: list[dict] = []
        self._drawn_at: dict[str, float] = {}
        self._stale: dict[str, object] = {}  # picture → what draws it once training ends
        self._t0 = time.perf_counter()
        self._samples = 0
        self.samples_per_s: float | None = None
        self._epoch_t0 = time.perf_counter()
        self._recent: deque[torch.Tensor] = deque(maxlen=LOSS_END_STEPS)  # on the device until epoch end

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def setup(self, trainer, pl_module, stage: str) -> None:
        require_task(pl_module, type(self).__name__)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._samples, self._epoch_t0 = 0, time.perf_counter()
        self._recent.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += pl_module.model_input(batch).shape[0]
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._recent.append(loss.detach())
        elapsed = time.perf_counter() - self._epoch_t0
        self.samples_per_s = self._samples / elapsed if elapsed > 0 else None
        # A logged Python number becomes a device tensor (a blocking host→device copy): only at log steps.
        if self.samples_per_s and logs_this_step(trainer):
            pl_module.log("samples_per_s", self.samples_per_s, on_step=True, on_epoch=False)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if pl_module.threshold_curve is not None:
            epoch = pl_module.current_epoch
            self._refresh("threshold", lambda: self._threshold_png(pl_module, epoch))
        if self.n_overlays:
            self._overlays(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        # The task's training means are logged after the callbacks' epoch end; they are read from it here.
        logged = {**trainer.callback_metrics, **pl_module.train_epoch_metrics()}
        metrics = {k: float(v) for k, v in logged.items() if v.numel() == 1}
        elapsed = time.perf_counter() - self._epoch_t0
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "samples_per_s": self._samples / elapsed if elapsed else None,
            **metrics,
        }
        recent = torch.stack(list(self._recent)).float() if self._recent else None
        if recent is not None and bool(torch.isfinite(recent).any()):
            row["train/loss_end"] = float(recent[torch.isfinite(recent)].mean())
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        final = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        atomic_write_json(
            self.run_dir / "metrics.json",
            {"final": final, "epochs": self.history, "world_size": trainer.world_size},
        )
        self._refresh("curves", lambda: self._curves_png(pl_module))
        val = metrics.get(pl_module.monitor)
        train_loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        console.print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} · train loss "
            f"{train_loss if train_loss is None else f'{train_loss:.4f}'} · {pl_module.monitor} "
            f"{'-' if val is None else f'{val:.4f}'}"
            + (f" @ {metrics['val/threshold']:.2f}" if "val/threshold" in metrics else "")
            + f" · {row['samples_per_s'] or 0:.1f} samples/s · {time.perf_counter() - self._t0:.0f}s",
            soft_wrap=True,
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        self._draw_stale(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._draw_stale(trainer)  # a stopped run (NaN, Ctrl-C) keeps pictures of where it stopped

    def _refresh(self, name: str, draw) -> None:
        now = time.perf_counter()
        if now - self._drawn_at.get(name, -math.inf) >= self.REFRESH_S:
            draw()
            self._drawn_at[name] = now
            self._stale.pop(name, None)
        else:
            self._stale[name] = draw

    def _draw_stale(self, trainer) -> None:
        if trainer.is_global_zero:
            for draw in self._stale.values():
                draw()
        self._stale.clear()

    def _curves_png(self, pl_module) -> None:
        plot_histories(
            {"": self.history},
            self.run_dir / "curves.png",
            loss_keys=("train/loss_epoch", "val/loss"),
            metric_keys=pl_module.curve_keys,
            titles=("loss", pl_module.curve_title),
        )

    def _threshold_png(self, pl_module, epoch: int) -> None:
        import matplotlib.pyplot as plt

        th, curve = pl_module.threshold_curve
        fig = threshold_curve_figure(th, curve, f"validation, epoch {epoch + 1}")
        save_figure(fig, self.run_dir / "threshold_curve.png")
        tb = _tensorboard(pl_module)
        if tb is not None:
            tb.add_figure("val/threshold_curve", fig, global_step=pl_module.global_step)
        plt.close(fig)

    def _overlays(self, trainer, pl_module) -> None:
        loader = trainer.val_dataloaders
        if loader is None:
            return
        from segladder.data.datasets import decode_batch

        batch = decode_batch(next(iter(loader)))  # the loader may hand out uint8 (see ContrailsDataset)
        grid = pl_module.pictures(batch, min(self.n_overlays, pl_module.model_input(batch).shape[0]))
        if grid is None:
            return
        save_image(grid, self.run_dir / "overlays" / f"epoch_{trainer.current_epoch + 1:03d}.png")
        tb = _tensorboard(pl_module)
        if tb is not None:
            tb.add_image("val/overlays", grid, global_step=pl_module.global_step, dataformats="HWC")


def _tensorboard(pl_module):
    logger = pl_module.logger
    return (
        getattr(logger, "experiment", None) if logger is not None and hasattr(logger, "log_graph") else None
    )
