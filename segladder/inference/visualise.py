"""`segladder viz`: overlays and curves of one finished run, drawn from its best checkpoint and metrics.json."""

from __future__ import annotations

from pathlib import Path

import torch

from segladder.data.datasets import dataset_from_config
from segladder.errors import SegladderError
from segladder.inference.checkpoint import load_checkpoint
from segladder.viz import overlay_grid, plot_histories, save_image


def visualise_run(
    run_dir: str | Path, data: str | Path | None = None, split: str = "validation", records: int = 8
) -> list[Path]:
    """Draw a run's best checkpoint on the first `records` records of `split`, and its curves; return the PNGs.

    `data` is the dataset to read (default: the run's own); the curves are drawn when metrics.json exists.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if not ckpt.exists():
        raise SegladderError(
            f"{run_dir}: no checkpoints/best.ckpt; give a run directory made by `segladder train`."
        )
    loaded = load_checkpoint(ckpt)
    if loaded.task != "segmentation":
        raise SegladderError(
            f"{run_dir}: a {loaded.task} run; viz draws segmentation overlays "
            f"(its training curves are in {run_dir / 'curves.png'})."
        )
    ds = dataset_from_config(loaded.config.data, split, root=data, stats=loaded.stats)
    n = min(records, len(ds))
    items = [ds[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"] for it in items]) if "mask" in items[0] else None
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(images).float())
    written = [run_dir / f"overlays_{split}.png"]
    save_image(overlay_grid(images, masks, probs, loaded.threshold), written[0])
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        import json

        written.append(run_dir / "curves_viz.png")
        plot_histories({loaded.config.name: json.loads(metrics.read_text())["epochs"]}, written[-1])
    return written
