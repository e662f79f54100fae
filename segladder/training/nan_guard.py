"""The NaN guard: a step with a non-finite loss or gradient changes no weight; many in a row stop training.

What it detects: NaN or ±inf in an optimiser step's losses or gradients. The losses are those of the step's
micro-batches (one per micro-batch under gradient accumulation), which `Task.training_step`
(segladder/tasks/base.py) appends, detached, to `Task.step_losses`; the gradients are every parameter's
`.grad` as the backward passes accumulated it. Under 16-mixed only the losses are checked: the GradScaler
finds and skips overflowing gradients itself while it calibrates its scale, and those steps are not counted.

Where the flag comes from: `NonFiniteGuard.on_before_optimizer_step`, which Lightning calls after the step's
backward passes (under 16-mixed, after the GradScaler has unscaled the gradients of an optimiser that does
not unscale its own) and before gradient clipping and `optimizer.step`. It takes and empties
`Task.step_losses` and makes one float device tensor, 1.0 for a bad step, in GradScaler's fused check
(`torch._amp_foreach_non_finite_check_and_unscale_` with a scale of 1.0, one kernel per device and dtype;
max-abs `_foreach_norm`s where a device lacks it). Nothing is read back from the device to make it.

What a bad step does:
- with a fused optimiser (`optimizer.defaults["fused"]`: every Adam and AdamW `segladder.optim` builds when
  all parameters are on the CPU or all on CUDA) the flag becomes `optimizer.found_inf`, which torch's fused
  kernel reads: when it is 1, the weights, both moments and the step count stay as they were;
- with any other optimiser, and under 16-mixed, the flag is read on the host once a step, and on a bad step
  every gradient is set to None, so the optimiser applies none of them (torch's non-fused optimisers have no
  on-device skip);
- the LR schedule still advances (it steps per batch), Lightning's `global_step` still counts the step, and
  the step's loss is left out of the epoch's training mean (`StepMeans` keeps finite values only);
- the flag is copied to pinned host memory without waiting; once the copy has landed (at most `MAX_PENDING`
  steps later, at the latest at the epoch's end) the step is reported: its losses are read back to tell a
  bad loss from a bad gradient, one console line is printed and a record joins `skipped` (step, epoch, LR,
  record ids, loss parts);
- after `patience` bad steps in a row the guard diagnoses (it re-runs the forward pass with hooks to name the
  first module whose output is not finite, else the parameters whose gradients are not), writes
  nan_batch.pt and nan_report.json in the run directory, sets `stopped_reason` and asks the trainer to stop
  (`trainer.should_stop`). The report's advice answers a known case: a fit of the 2nd-place CoaT_ULSTM recipe
  (github.com/DrHB/2nd-place-contrails) under fp16 with 16-step gradient accumulation went NaN at the
  one-cycle LR peak and never recovered.

What must stay true elsewhere for this to hold:
- `Task.training_step` appends each micro-batch's detached loss to `step_losses` and sets `step_parts`;
- gradients are clipped after the flag is made, by `Task.configure_gradient_clipping` (in place, foreach
  kernels, nothing read back) rather than by Lightning's precision plugin, which refuses a fused optimiser
  under mixed precision; a clipped non-finite gradient stays non-finite, and a skipped step ignores it;
- `segladder.optim` builds Adam and AdamW with `fused=True` (`_fused`), and every optimiser whose `defaults`
  say `fused` honours `found_inf` as torch's fused Adam and AdamW do: one that ignored it would step on NaN;
- under 16-mixed the GradScaler owns `found_inf` (`scaler.step` sets it for an optimiser that unscales its
  own gradients), so the guard never sets it there;
- `on_train_end` sets `found_inf` back to None, so an optimiser used after training steps as usual;
- the task passes `require_task`: the diagnosis calls its `model_input`, `compute_loss` and `model`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from segladder.io import atomic_path, atomic_write_json
from segladder.progress import console
from segladder.tasks.base import require_task


def _finite(t: Any) -> bool:
    if isinstance(t, torch.Tensor):
        return bool(torch.isfinite(t).all()) if t.is_floating_point() else True
    if isinstance(t, (list, tuple)):
        return all(_finite(x) for x in t)
    if isinstance(t, dict):
        return all(_finite(x) for x in t.values())
    return True


def _nonfinite_flag(tensors: list[torch.Tensor], device: torch.device, ones: dict) -> torch.Tensor:
    """A float device flag, 1 when an element of `tensors` is NaN or ±inf, else 0.

    It is what a fused optimiser reads as `found_inf`. GradScaler's own check makes it in one fused kernel per
    device and dtype; it multiplies the values by `ones[device]` (1.0) in place, which leaves them as they
    were. `ones` caches that tensor.
    """
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

    The module's docstring holds the whole contract: what is checked, how a bad step is skipped, and what the
    task, the optimisers and gradient clipping must keep true for it to hold.

    Args:
        run_dir: where nan_batch.pt and nan_report.json are written.
        patience: bad steps in a row that stop training.
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
        """Refuse a module that is not a segladder task."""
        require_task(pl_module, type(self).__name__)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Keep the batch, for the report and the diagnosis of a bad step."""
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Flag a step with a non-finite loss or gradient and skip it, without reading anything back."""
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
        """Report the steps whose flags have reached the host."""
        self._drain(trainer, pl_module, wait=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Report every step still pending."""
        self._drain(trainer, pl_module, wait=True)

    def on_train_end(self, trainer, pl_module) -> None:
        """Report every step still pending and hand `found_inf` back to the optimisers."""
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
                "lower optim.lr (the 2nd-place CoaT_ULSTM recipe went NaN at the one-cycle LR peak)",
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
