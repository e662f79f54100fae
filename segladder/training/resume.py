"""Which checkpoint a resumed run continues from: the newest one that loads, is finite and can restore training."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from segladder.errors import SegladderError
from segladder.inference.checkpoint import sniff_checkpoint
from segladder.progress import console

LAST = "last.ckpt"


class ResumeError(SegladderError):
    """No checkpoint of a run can continue it."""


@dataclass
class CheckpointCheck:
    """What `check_checkpoint` found out about one file."""

    path: Path
    problem: str | None = None  # None: it can resume training
    epoch: int = -1
    global_step: int = -1

    @property
    def ok(self) -> bool:
        """Whether the checkpoint can resume training."""
        return self.problem is None


def check_checkpoint(path: str | Path) -> CheckpointCheck:
    """Load `path` weights-only and say whether training can continue from it, and if not, why (one line)."""
    path = Path(path)
    why = sniff_checkpoint(path) if path.is_file() else None
    if why is not None:  # torch answers some of these with a KeyError or IndexError
        return CheckpointCheck(path, f"truncated or corrupt ({path.stat().st_size} bytes; {why})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return CheckpointCheck(path, "refused: holds objects other than tensors and plain data")
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        size = path.stat().st_size if path.exists() else 0
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CheckpointCheck(path, f"truncated or corrupt ({size} bytes; {first[:120]})")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return CheckpointCheck(path, "not a training checkpoint (no state_dict)")
    check = CheckpointCheck(path, None, int(ckpt.get("epoch", -1)), int(ckpt.get("global_step", -1)))
    bad = [
        k
        for k, v in ckpt["state_dict"].items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        check.problem = f"non-finite weights in {bad[0]}"
    elif "optimizer_states" not in ckpt or "loops" not in ckpt:
        check.problem = "holds the weights only, no optimiser or loop state (trainer.optimizer_state=last)"
    return check


def choose_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint `segladder train --resume run_dir` continues from, saying which and why.

    Considers checkpoints/last.ckpt, then every other checkpoint of the run; takes the newest (highest
    global step, last.ckpt on a tie) that loads with `weights_only=True`, is finite and holds the optimiser
    and loop state. Temporary files left by a write that was killed are removed.
    """
    run_dir = Path(run_dir)
    ckdir = run_dir / "checkpoints"
    for partial in sorted(ckdir.glob(".*.tmp")) if ckdir.is_dir() else []:
        partial.unlink(missing_ok=True)
        console.print(
            f"removed {partial}, a partial checkpoint left by a write that was killed", soft_wrap=True
        )
    paths = sorted(ckdir.glob("*.ckpt"), key=lambda p: (p.name != LAST, p.name)) if ckdir.is_dir() else []
    if not paths:
        raise ResumeError(
            f"--resume {run_dir}: no checkpoints/{LAST} yet nor any other checkpoint (the run stopped "
            "before its first epoch ended); start it again instead."
        )
    checks = [check_checkpoint(p) for p in paths]
    good = [c for c in checks if c.ok]
    if not good:
        reasons = "; ".join(f"{c.path.name}: {c.problem}" for c in checks)
        raise ResumeError(
            f"--resume {run_dir}: no checkpoint can continue the run ({reasons}). Start it again, "
            "or train from its weights with a new run."
        )
    chosen = max(good, key=lambda c: (c.global_step, c.path.name == LAST))
    passed = [f"{c.path.name} {c.problem}" for c in checks if not c.ok]
    passed += [
        f"{c.path.name} is older (epoch {c.epoch + 1})"
        for c in good
        if c is not chosen and c.global_step < chosen.global_step
    ]
    why = f"; {', '.join(passed)}" if passed else ""
    console.print(
        f"resuming from {chosen.path.relative_to(run_dir)} (epoch {chosen.epoch + 1} done, step "
        f"{chosen.global_step}): the newest intact checkpoint{why}",
        soft_wrap=True,
    )
    return chosen.path
