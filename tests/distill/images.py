"""Writes tiny RGB image/mask folders for tests: a bright disc on noise, its mask 0/255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image_folder(
    root: Path, n_train: int = 8, n_val: int = 4, size: int = 40, seed: int = 0, suffix: str = ".png"
) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            image[disc] = (220, 200, 60)
            Image.fromarray(image).save(root / split / "images" / f"img{i:03d}{suffix}")
            Image.fromarray((disc * 255).astype(np.uint8)).save(root / split / "masks" / f"img{i:03d}.png")
    return root
