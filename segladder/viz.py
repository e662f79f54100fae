"""Pictures people would rather look at than numbers: prediction overlays on ash RGB."""

from __future__ import annotations

import numpy as np
import torch

GT_COLOUR = np.array([0.1, 1.0, 0.2], np.float32)  # green: ground truth
PRED_COLOUR = np.array([1.0, 0.15, 0.6], np.float32)  # magenta: prediction


def _frame_rgb(image: torch.Tensor, frame: int = -1) -> np.ndarray:
    """(C, T, H, W) → (H, W, 3) in [0, 1]: the first three channels (ash) of one frame, rescaled if needed."""
    x = image[:, frame].float().cpu().numpy()
    rgb = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, 0)
    lo, hi = rgb.min(), rgb.max()
    if lo < 0 or hi > 1:  # standardised inputs: stretch for display
        rgb = (rgb - lo) / max(hi - lo, 1e-6)
    return rgb.transpose(1, 2, 0)


def _blend(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    out = rgb.copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * colour
    return out


def overlay_panels(
    image: torch.Tensor, mask: torch.Tensor | None, prob: torch.Tensor, threshold: float, frame: int = -1
) -> dict[str, np.ndarray]:
    """One record as four (H, W, 3) float pictures: ash, ground truth, prediction at `threshold`, probability.

    image (C, T, H, W); mask and prob (1, H, W).
    """
    rgb = _frame_rgb(image, frame)
    p = prob[0].float().cpu().numpy()
    return {
        "ash": rgb,
        "truth": _blend(rgb, mask[0].cpu().numpy() > 0.5, GT_COLOUR) if mask is not None else rgb,
        "prediction": _blend(rgb, p > threshold, PRED_COLOUR),
        "probability": np.stack([p, p * 0.3, 1 - p], -1).clip(0, 1),
    }


def overlay_grid(
    images: torch.Tensor, masks: torch.Tensor | None, probs: torch.Tensor, threshold: float, frame: int = -1
) -> np.ndarray:
    """One row per record: ash RGB | ground truth (green) | prediction (magenta) | probability map.

    images (B, C, T, H, W), masks and probs (B, 1, H, W); returns an (H', W', 3) uint8 picture.
    """
    rows = []
    for i in range(images.shape[0]):
        panels = overlay_panels(images[i], None if masks is None else masks[i], probs[i], threshold, frame)
        pad = np.ones((panels["ash"].shape[0], 2, 3), np.float32)
        row = [x for p in panels.values() for x in (p, pad)][:-1]
        rows += [np.concatenate(row, axis=1), np.ones((2, sum(r.shape[1] for r in row), 3), np.float32)]
    grid = np.concatenate(rows[:-1], axis=0)
    scale = max(1, 256 // images.shape[-1])  # tiny synthetic images are enlarged so a person can see them
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return (grid * 255).round().astype(np.uint8)


def save_figure(fig, path) -> None:
    """A matplotlib figure as PNG, written atomically."""
    from segladder.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def save_image(rgb: np.ndarray, path) -> None:
    """An (H, W, 3) uint8 picture as PNG, written atomically."""
    import matplotlib.pyplot as plt

    from segladder.io import atomic_path

    with atomic_path(path) as tmp:
        plt.imsave(tmp, rgb, format="png")


def threshold_curve_figure(
    thresholds: np.ndarray, curve: np.ndarray, title: str = "", stored: float | None = None
):
    """Global Dice against threshold, the best marked (and the checkpoint's stored threshold when given).

    Returns the figure, so a caller can also hand it to TensorBoard; close it with `plt.close(fig)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(thresholds, curve)
    best = int(np.argmax(curve))
    ax.axvline(thresholds[best], color="r", ls="--", label=f"best {curve[best]:.3f} @ {thresholds[best]:.2f}")
    if stored is not None:
        ax.axvline(stored, color="g", ls=":", label=f"stored threshold {stored:.2f}")
    ax.set_xlabel("threshold")
    ax.set_ylabel("global Dice")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_histories(
    histories: dict[str, list[dict]],
    path,
    loss_keys=("train/loss_epoch",),
    metric_keys=("val/dice_best",),
    titles: tuple[str, str] | None = None,
) -> None:
    """Losses (left) and validation metrics (right) per epoch, a line per run and key; absent keys are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, keys in zip(axes, (loss_keys, metric_keys), strict=True):
        for name, history in histories.items():
            for key in keys:
                ys = [h.get(key) for h in history]
                if any(y is not None for y in ys):
                    label = " ".join(x for x in (name, key if len(keys) > 1 else "") if x)
                    ax.plot([h["epoch"] + 1 for h in history], ys, marker="o", label=label)
    titles = titles or ("loss", "validation (F1 = global Dice at the best threshold)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- boxes

BOX_COLOURS = {
    "rough": (255, 200, 0),
    "true": (0, 220, 0),
    "snapped": (255, 0, 255),
}  # yellow, green, magenta


def draw_boxes(image: np.ndarray, boxes: dict[str, np.ndarray], scale: int = 1) -> np.ndarray:
    """An (H, W, 3) uint8 image enlarged `scale` times with xyxy boxes drawn by name ("rough", "true", "snapped")."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST
    )
    d = ImageDraw.Draw(im)
    for name, box in boxes.items():
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        d.rectangle(
            [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_COLOURS.get(name, (255, 255, 255))
        )
    return np.asarray(im)


def box_grid(panels: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Equal-sized (H, W, 3) uint8 panels tiled `columns` wide with a 2-pixel white gap."""
    h, w = panels[0].shape[:2]
    rows = -(-len(panels) // columns)
    grid = np.full((rows * (h + 2) - 2, min(columns, len(panels)) * (w + 2) - 2, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        r, c = divmod(i, columns)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = p
    return grid


def denormalise(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) ImageNet-normalised crop back to (H, W, 3) uint8 for drawing."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
