"""Torch side of box adjustment: crops around rough boxes with their edge targets, and `BoxesDataModule`."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segladder.data.boxes import (
    BoxRecord,
    crop_image,
    crop_region,
    eval_rng,
    jitter_box,
    normalise,
    open_image,
    read_coco,
    to_crop,
    xywh_to_xyxy,
)
from segladder.errors import ConfigError


class BoxCrops(Dataset):
    """Crops around rough boxes, each with its true edges in crop coordinates.

    Each item: `image` (3, S, S) float32 (ImageNet-normalised), `target` (4,) true edges (left, top, right,
    bottom) in crop coordinates (may lie outside [0, S] when the rough box missed by more than the buffer),
    `region` (4,) the crop (x0, y0, x1, y1) in image pixels, `rough` and `true` (4,) xyxy in image pixels,
    `ann_id`.

    Args:
        records: ground-truth boxes (from `read_coco`).
        images: the image folder.
        crop_size: S, the side of the resized crop.
        buffer_ratio: the crop is the rough box enlarged by this about its centre.
        jitter: "random" (training: a function of (seed, epoch, index)), "fixed" (evaluation: a function of
            (seed, annotation id)) or "none" (the rough box is `rough[ann_id]`, or the true box).
        seed: the jitter's seed.
        rough: rough boxes (x, y, w, h) by annotation id, used with jitter "none" (e.g. `boxes adjust`).
    """

    def __init__(
        self,
        records: Sequence[BoxRecord],
        images: str | Path,
        crop_size: int = 224,
        buffer_ratio: float = 1.1,
        jitter: str = "fixed",
        seed: int = 0,
        rough: dict[int, Sequence[float]] | None = None,
    ):
        if jitter not in ("random", "fixed", "none"):
            raise ValueError(f"jitter must be random, fixed or none, not {jitter!r}")
        self.records, self.images = list(records), Path(images)
        self.crop_size, self.buffer_ratio, self.jitter, self.seed = crop_size, buffer_ratio, jitter, seed
        self.rough = rough or {}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that the training jitter draws from."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def rough_box(self, index: int) -> tuple[float, ...]:
        """The rough (x, y, w, h) box of record `index`: jittered as `jitter` says, or the given one."""
        r = self.records[index]
        if self.jitter == "random":
            return jitter_box(
                r.box, np.random.default_rng(zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode()))
            )
        if self.jitter == "fixed":
            return jitter_box(r.box, eval_rng(self.seed, r.ann_id))
        return tuple(self.rough.get(r.ann_id, r.box))

    @functools.lru_cache(maxsize=32)  # noqa: B019  (a few images hold many boxes; the cache dies with the dataset)
    def _image(self, file_name: str):
        return open_image(self.images / file_name)

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        rough = self.rough_box(index)
        region = crop_region(rough, self.buffer_ratio)
        crop = crop_image(self._image(r.file_name), region, self.crop_size)
        true = xywh_to_xyxy(r.box)
        return {
            "image": torch.from_numpy(normalise(crop)),
            "target": torch.from_numpy(to_crop(true, region, self.crop_size)).float(),
            "region": torch.from_numpy(region),
            "rough": torch.from_numpy(xywh_to_xyxy(rough)),
            "true": torch.from_numpy(true),
            "ann_id": r.ann_id,
        }


class BoxesDataModule(L.LightningDataModule):
    """COCO train/val boxes from `data.coco` (images, train, val): random jitter for training, seeded for validation.

    Args:
        cfg: the `DataConfig` (batch sizes, workers, record budgets).
        coco: its `data.coco` section (`images`, `train`, `val`, `crop_size`, `buffer_ratio`).
        seed: the experiment seed (training jitter is a function of (seed, epoch, index), validation's of (seed, id)).
    """

    def __init__(self, cfg, coco, seed: int = 0):
        super().__init__()
        self.cfg, self.coco, self.seed = cfg, coco, seed
        self.train_set: BoxCrops | None = None
        self.val_set: BoxCrops | None = None
        self.stats = None  # box crops are ImageNet-normalised; nothing to carry in the checkpoint

    def _records(self, key: str) -> list[BoxRecord]:
        c = self.coco
        missing = [k for k in ("images", key) if getattr(c, k) is None]
        if missing:
            raise ConfigError(
                f"data.format coco needs {' and '.join('data.coco.' + k for k in missing)}: e.g. "
                "--set data.coco.images=DIR data.coco.train=TRAIN.json data.coco.val=VAL.json"
            )
        return read_coco(getattr(c, key), c.images)

    def setup(self, stage: str | None = None) -> None:
        """Build the training crops (jittered anew each epoch) and validation crops (jittered once) needed."""
        c, coco = self.cfg, self.coco
        crops = (coco.images, coco.crop_size, coco.buffer_ratio)
        if stage in (None, "fit") and self.train_set is None:
            records = self._records("train")[: c.train_records]
            self.train_set = BoxCrops(records, *crops, "random", self.seed)
        if stage in (None, "fit", "validate") and self.val_set is None:
            records = self._records("val")[: c.val_records]
            self.val_set = BoxCrops(records, *crops, "fixed", self.seed)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the training crops' jitter."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        workers = self.cfg.num_workers
        # Workers are kept alive between epochs only when there are any; the epoch reaches them through
        # the dataset, so persistent workers would miss it: they restart each epoch.
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            generator=g,
            drop_last=False,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """The shuffled loader over the training crops."""
        return self._loader(self.train_set, self.cfg.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        """The loader over the validation crops, at the validation batch size."""
        return self._loader(self.val_set, self.cfg.val_batch_size or self.cfg.batch_size, False)
