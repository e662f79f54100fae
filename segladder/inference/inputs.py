"""What a model reads: its input spec (frames, channels, size, statistics) and a split read once per spec."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from segladder.config import DataConfig
from segladder.data.cache import standardise
from segladder.data.contrails import ASH_CHANNELS, channels_from_bands, resolve_channels, resolve_frames
from segladder.data.datasets import ContrailsDataset, dataset_from_config
from segladder.errors import DataError
from segladder.inference.errors import InferenceError


@dataclass(frozen=True)
class InputSpec:
    """The dataset options a model was trained with; hashable, so models that read alike share one reader."""

    frames: tuple[int, ...]
    channels: tuple[str, ...]
    image_size: int
    normalize_ash: bool = False
    interpolation: str = "bilinear"
    stats: str | None = None  # the training statistics as JSON text (hashable), for raw-data inputs

    @classmethod
    def from_data_config(cls, d: DataConfig, stats: dict | None = None) -> InputSpec:
        """The spec of a data section, with the training statistics `stats` where given."""
        return cls(
            resolve_frames(d.frames),
            resolve_channels(d.channels),
            d.image_size,
            d.normalize_ash,
            d.interpolation,
            json.dumps(stats, sort_keys=True) if stats else None,
        )

    @classmethod
    def from_checkpoint(cls, ck) -> InputSpec:
        """The spec a checkpoint was trained with."""
        return cls.from_data_config(ck.config.data, ck.stats)

    @classmethod
    def from_dict(cls, d: Mapping) -> InputSpec:
        """The spec `as_dict` wrote (an ONNX model's metadata)."""
        stats = d.get("stats")
        return cls(
            resolve_frames(d["frames"]),
            resolve_channels(d["channels"]),
            int(d["image_size"]),
            bool(d.get("normalize_ash", False)),
            str(d.get("interpolation", "bilinear")),
            json.dumps(stats, sort_keys=True) if stats else None,
        )

    def as_dict(self) -> dict:
        """The spec as JSON-ready values."""
        return {
            "frames": list(self.frames),
            "channels": list(self.channels),
            "image_size": self.image_size,
            "normalize_ash": self.normalize_ash,
            "interpolation": self.interpolation,
            "stats": json.loads(self.stats) if self.stats else None,
        }

    def encode(self, bands: Mapping[int, np.ndarray]) -> np.ndarray:
        """Brightness temperatures {band: (T, H, W) K} → model input (C, T, H, W) float32, as records are read.

        The same steps as a raw record's read (channels, training statistics, ash standardisation), for
        inputs that are not records: `segladder scene` feeds satellite scenes through here.
        """
        channels = channels_from_bands(dict(bands), self.channels)
        stats = json.loads(self.stats) if self.stats else None
        image = standardise(channels, self.channels, stats).transpose(3, 0, 1, 2)
        if (
            self.normalize_ash
        ):  # the arithmetic of ContrailsDataset._ash_affine, so both paths agree bit for bit
            scale = np.ones(len(self.channels), np.float32)
            offset = np.zeros(len(self.channels), np.float32)
            for i, ch in enumerate(self.channels):
                if ch in ASH_CHANNELS:
                    k = stats["channels"].index(ch)
                    scale[i], offset[i] = 1.0 / stats["std"][k], -stats["mean"][k] / stats["std"][k]
            image = image * scale[:, None, None, None] + offset[:, None, None, None]
        return np.ascontiguousarray(image, dtype=np.float32)

    def data_config(self) -> DataConfig:
        """A data section that reads records as this spec says."""
        return DataConfig(
            frames=list(self.frames),
            channels=list(self.channels),
            image_size=self.image_size,
            normalize_ash=self.normalize_ash,
            interpolation=self.interpolation,
        )

    def dataset(self, data: str | Path, split: str) -> ContrailsDataset:
        """Split `split` of `data`, read as this spec says."""
        return dataset_from_config(
            self.data_config(), split, root=data, stats=json.loads(self.stats) if self.stats else None
        )


@dataclass
class Batch:
    """One batch of `Inputs`: the images for each input spec, the record ids and the primary spec's mask."""

    images: dict[InputSpec, torch.Tensor]  # (B, C, T, H, W) per input spec
    record_ids: list[str]
    mask: torch.Tensor | None  # (B, 1, H, W) of the primary spec, where the split is labelled


class Inputs:
    """One split read once per distinct input spec, in lockstep, so every model sees the same records in order.

    The first spec is the primary one: its masks come with each batch and its images go into overlays.

    Args:
        specs: the input specs to read; the first is the primary one.
        data: the dataset root or prepared cache.
        split: which split to read.
        batch_size: records per batch.
        workers: DataLoader workers per spec.
    """

    def __init__(
        self,
        specs: Sequence[InputSpec],
        data: str | Path,
        split: str,
        *,
        batch_size: int = 8,
        workers: int = 0,
    ):
        if batch_size < 1:
            raise InferenceError(f"batch size must be at least 1, got {batch_size}")
        self.data, self.split, self.batch_size, self.workers = Path(data), split, batch_size, workers
        self.specs = list(dict.fromkeys(specs))
        self.datasets = {s: s.dataset(data, split) for s in self.specs}
        primary = self.datasets[self.specs[0]]
        self.record_ids = list(primary.record_ids)
        if not self.record_ids:
            raise DataError(f"split '{split}' of {data} holds no records; there is nothing to predict.")
        for spec, ds in self.datasets.items():
            if list(ds.record_ids) != self.record_ids:
                raise DataError(
                    f"{data}/{split}: the records read with frames {list(spec.frames)} differ from those "
                    f"read with frames {list(self.specs[0].frames)}; is the cache complete?"
                )
        self.has_mask = primary.has_mask

    def __len__(self) -> int:
        return len(self.record_ids)

    def batches(self) -> Iterator[Batch]:
        """The split's batches in record order, each spec's images side by side."""
        loaders = [
            DataLoader(ds, batch_size=self.batch_size, num_workers=self.workers)
            for ds in self.datasets.values()
        ]
        for parts in zip(*loaders, strict=True):
            images = {spec: part["image"] for spec, part in zip(self.specs, parts, strict=True)}
            yield Batch(images, list(parts[0]["record_id"]), parts[0].get("mask"))

    def item(self, index: int) -> dict:
        """Record `index` of the primary spec's dataset."""
        return self.datasets[self.specs[0]][index]
