"""Teacher vs student (vs the student trained without the teacher), measured: accuracy, speed, memory, size."""

from __future__ import annotations

import ctypes
import gc
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from segladder.data.datasets import dataset_from_config
from segladder.errors import DataError
from segladder.inference.checkpoint import LoadedCheckpoint, input_mismatches, load_checkpoint
from segladder.inference.errors import CheckpointError
from segladder.io import atomic_write_json
from segladder.progress import progress_bar

CPU_MEMORY = (
    "weights + peak resident-memory growth during inference (Linux VmHWM, reset through "
    "/proc/self/clear_refs after malloc_trim)"
)
CUDA_MEMORY = "torch.cuda.max_memory_allocated during inference (weights + activations)"


@dataclass
class ModelMeasure:
    """One model's row of the comparison (the JSON keys per model)."""

    checkpoint: str
    params: int
    dice: float
    miou: float
    ms_per_image: float
    peak_mib: float
    size_mb: float
    threshold: float


@dataclass
class Comparison:
    """What `compare` measured: each model's figures, the setting, and the student's shares of the teacher's."""

    models: dict[str, ModelMeasure]
    device: str
    batch_size: int
    memory_method: str
    summary: dict

    def as_json(self) -> dict:
        """The comparison as compare.json holds it."""
        return {
            **{k: asdict(v) for k, v in self.models.items()},
            "device": self.device,
            "batch_size": self.batch_size,
            "memory_method": self.memory_method,
            "summary": self.summary,
        }


def _scores(
    model, ds, threshold: float, device: torch.device, batch_size: int, label: str
) -> tuple[float, float]:
    """Global Dice and binary mIoU (mean of foreground and background IoU) at the checkpoint's threshold."""
    tp = fp = fn = tn = 0
    with progress_bar() as bar, torch.inference_mode():
        task = bar.add_task(f"scoring {label}", total=len(ds))
        for batch in DataLoader(ds, batch_size=batch_size):
            pred = torch.sigmoid(model(batch["image"].to(device)).float()).cpu() > threshold
            truth = batch["mask"] > 0.5
            tp += int((pred & truth).sum())
            fp += int((pred & ~truth).sum())
            fn += int((~pred & truth).sum())
            tn += int((~pred & ~truth).sum())
            bar.advance(task, len(batch["record_id"]))
    dice = 2 * tp / max(1, 2 * tp + fp + fn)
    miou = 0.5 * (tp / max(1, tp + fp + fn) + tn / max(1, tn + fp + fn))
    return dice, miou


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_cpu_peak() -> float:
    """Return freed heap to the OS, reset the peak RSS, and give the RSS now (MiB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_mib("VmRSS")


def _timed(model, x: torch.Tensor, device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(ms per image over `repeats` forward passes after `warmup` untimed ones, peak MiB of the passes)."""
    weights_mib = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss0 = _reset_cpu_peak()
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else weights_mib + _rss_mib("VmHWM") - rss0
    return 1000 * elapsed / (repeats * x.shape[0]), peak


def _segmenter(path: str | Path, option: str) -> LoadedCheckpoint:
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{option}: {exc}") from None
    if ck.task != "segmentation":
        raise CheckpointError(
            f"{option} {path}: a {ck.task} checkpoint; distill compare needs segmentation checkpoints."
        )
    return ck


def measure(
    checkpoint: str | Path | LoadedCheckpoint,
    data: str | Path,
    split: str,
    device: torch.device,
    batch_size: int,
    warmup: int,
    repeats: int,
    label: str,
) -> ModelMeasure:
    """Scores on `split` of `data`, then speed and memory on one batch of it (the same batch size for every model)."""
    ck = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else _segmenter(checkpoint, label)
    checkpoint = ck.path
    ds = dataset_from_config(ck.config.data, split, root=data, stats=ck.stats)
    if not ds.has_mask:
        raise DataError(f"split '{split}' of {data} has no masks to score against.")
    model = ck.model.to(device).eval()
    dice, miou = _scores(model, ds, ck.threshold, device, batch_size, label)
    x = torch.stack([ds[i % len(ds)]["image"] for i in range(batch_size)]).to(device)
    ms, peak = _timed(model, x, device, warmup, repeats)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return ModelMeasure(
        str(checkpoint),
        sum(p.numel() for p in model.parameters()),
        dice,
        miou,
        ms,
        peak,
        buf.getbuffer().nbytes / 1e6,
        ck.threshold,
    )


def compare(
    teacher: str | Path,
    student: str | Path,
    data: str | Path,
    *,
    baseline: str | Path | None = None,
    split: str = "validation",
    device: str | None = None,
    batch_size: int = 4,
    warmup: int = 3,
    repeats: int = 10,
    out: Path | None = None,
) -> Comparison:
    """The distillation comparison: each model's params, Dice, mIoU, ms/image, peak memory and MB, and ratios.

    Every model runs on the same device with the same batch (warm-up passes excluded from the timing).
    `baseline` is the student's architecture trained without the teacher under the same schedule, so the
    summary says whether distillation helped. Writes `compare.json` and `compare.png` into `out` when given.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    # Every checkpoint is read and checked before any model is scored (scoring takes a while).
    options = {"teacher": "TEACHER", "student": "STUDENT", "baseline": "--baseline"}
    paths = {"teacher": teacher, "student": student, **({"baseline": baseline} if baseline else {})}
    loaded = {name: _segmenter(p, options[name]) for name, p in paths.items()}
    for name, ck in loaded.items():
        differ = input_mismatches(loaded["teacher"].config, ck.config)
        if differ:
            key, t_value, value = differ[0]
            raise CheckpointError(
                f"{options[name]} {ck.path} reads {key} {value}, TEACHER {teacher} {t_value}: models compared "
                "must read the same input (size, frames, channels); give a "
                f"{'student distilled from' if name == 'student' else 'model trained like'} this teacher."
            )
    models = {
        name: measure(ck, data, split, dev, batch_size, warmup, repeats, name) for name, ck in loaded.items()
    }
    t, s = models["teacher"], models["student"]
    summary = {
        "speedup": t.ms_per_image / s.ms_per_image if s.ms_per_image else None,
        "memory_share": s.peak_mib / t.peak_mib if t.peak_mib else None,
        "params_share": s.params / t.params,
        "size_share": s.size_mb / t.size_mb,
        "dice_share": s.dice / t.dice if t.dice else None,
        "miou_share": s.miou / t.miou if t.miou else None,
    }
    if "baseline" in models:
        b = models["baseline"]
        summary |= {
            "kd_dice_gain": s.dice - b.dice,
            "kd_miou_gain": s.miou - b.miou,
            "distillation_helped": bool(s.miou > b.miou and s.dice > b.dice),
        }
    result = Comparison(
        models,
        str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        batch_size,
        CUDA_MEMORY if dev.type == "cuda" else CPU_MEMORY,
        summary,
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "compare.json", result.as_json())
        compare_figure(result, out / "compare.png")
    return result


def table_rows(result: Comparison) -> list[list[str]]:
    """The comparison as text rows (header first), for the terminal and the PNG."""
    rows = [["model", "params (M)", "Dice", "mIoU", "ms/image", "peak MiB", "weights MB"]]
    for name, m in result.models.items():
        rows.append(
            [
                name,
                f"{m.params / 1e6:.2f}",
                f"{m.dice:.4f}",
                f"{m.miou:.4f}",
                f"{m.ms_per_image:.2f}",
                f"{m.peak_mib:.1f}",
                f"{m.size_mb:.1f}",
            ]
        )
    return rows


def compare_figure(result: Comparison, path: Path) -> None:
    """The table above bars of Dice, mIoU, ms/image and peak memory per model, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segladder.viz import save_figure

    names = list(result.models)
    fig = plt.figure(figsize=(11, 6))
    ax_table = fig.add_subplot(2, 1, 1)
    ax_table.axis("off")
    rows = table_rows(result)
    ax_table.table(cellText=rows[1:], colLabels=rows[0], loc="center").scale(1, 1.4)
    s = result.summary
    ax_table.set_title(
        f"{result.device}, batch {result.batch_size}: speed-up {s['speedup']:.2f}×, student memory "
        f"{100 * (s['memory_share'] or 0):.0f}% of teacher, Dice share {100 * (s['dice_share'] or 0):.0f}%"
        + (f", KD gain {s['kd_miou_gain']:+.4f} mIoU" if "kd_miou_gain" in s else ""),
        fontsize=9,
    )
    for i, (key, title) in enumerate(
        [("dice", "Dice"), ("miou", "mIoU"), ("ms_per_image", "ms / image"), ("peak_mib", "peak MiB")]
    ):
        ax = fig.add_subplot(2, 4, 5 + i)
        values = [getattr(result.models[n], key) for n in names]
        ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:gray"][: len(names)])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def format_table(result: Comparison) -> str:
    """The comparison as a plain-text table, with a summary line of the student's shares."""
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    s = result.summary
    lines.append(
        f"speed-up {s['speedup']:.2f}× · student memory {100 * (s['memory_share'] or 0):.0f}% · "
        f"params {100 * s['params_share']:.0f}% · Dice share {100 * (s['dice_share'] or 0):.1f}% · "
        f"mIoU share {100 * (s['miou_share'] or 0):.1f}% ({result.device}, batch {result.batch_size})"
    )
    if "kd_miou_gain" in s:
        verdict = "helped" if s["distillation_helped"] else "did NOT help"
        lines.append(
            f"distillation {verdict}: student − baseline = {s['kd_dice_gain']:+.4f} Dice, "
            f"{s['kd_miou_gain']:+.4f} mIoU"
        )
    lines.append(f"memory: {result.memory_method}")
    return "\n".join(lines)


__all__ = ["Comparison", "ModelMeasure", "compare", "format_table", "measure"]
