"""Pictures people would rather look at than numbers: prediction overlays on ash RGB."""

from __future__ import annotations

import numpy as np
import torch

GT_COLOUR = np.array([0.1, 1.0, 0.2], np.float32)  # green: ground truth
PRED_COLOUR = np.array([1.0, 0.15, 0.6], np.float32)  # magenta: prediction


def _frame_rgb(image: torch.Tensor, frame: int = -1) -> np.ndarray:
    """(C, T, H, W) → (H, W, 3) in [0, 1]: the first three channels (ash) of one frame, rescaled if needed."""
    x = image[:, frame].float().numpy()
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


def overlay_grid(
    images: torch.Tensor, masks: torch.Tensor | None, probs: torch.Tensor, threshold: float, frame: int = -1,
) -> np.ndarray:
    """One row per record: ash RGB | ground truth (green) | prediction (magenta) | probability map.

    images (B, C, T, H, W), masks and probs (B, 1, H, W); returns an (H', W', 3) uint8 picture.
    """
    rows = []
    for i in range(images.shape[0]):
        rgb = _frame_rgb(images[i].cpu(), frame)
        p = probs[i, 0].float().cpu().numpy()
        gt = _blend(rgb, masks[i, 0].cpu().numpy() > 0.5, GT_COLOUR) if masks is not None else rgb
        pred = _blend(rgb, p > threshold, PRED_COLOUR)
        heat = np.stack([p, p * 0.3, 1 - p], -1).clip(0, 1)
        pad = np.ones((rgb.shape[0], 2, 3), np.float32)
        rows.append(np.concatenate([rgb, pad, gt, pad, pred, pad, heat], axis=1))
        rows.append(np.ones((2, rows[-1].shape[1], 3), np.float32))
    grid = np.concatenate(rows[:-1], axis=0)
    scale = max(1, 256 // images.shape[-1])  # tiny synthetic images are enlarged so a person can see them
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return (grid * 255).round().astype(np.uint8)
