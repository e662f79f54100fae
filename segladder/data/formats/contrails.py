"""The competition layout (OpenContrails records) or its prepared cache.

`ContrailsDataModule` over `ContrailsDataset`. Every key it reads is a shared one of `data` (frames,
channels, splits, folds, ...).
"""

from __future__ import annotations

from pathlib import Path

from segladder.data.formats.base import DATA_FORMATS, DataFormat


@DATA_FORMATS.register("contrails")
class ContrailsFormat(DataFormat):
    """Records in the competition layout, or a cache from `segladder data prepare`; auto's fallback."""

    name = "contrails"
    summary = "contrails: the competition layout or its prepared cache (data.root)"

    @classmethod
    def datamodule(cls, data, seed: int):
        """The contrails data module over `data`."""
        from segladder.data.module import ContrailsDataModule

        return ContrailsDataModule(data, seed)

    @classmethod
    def dataset(
        cls,
        data,
        split: str,
        source: str | Path,
        *,
        augment: bool = False,
        stats: dict | None = None,
        **options,
    ):
        """One split of `source` as a `ContrailsDataset` set up from `data`."""
        from segladder.data.datasets import ContrailsDataset

        return ContrailsDataset(
            source,
            split,
            frames=data.frames,
            channels=data.channels,
            image_size=data.image_size,
            augment=data.augment if augment else None,
            normalize_ash=data.normalize_ash,
            interpolation=data.interpolation,
            skip_bad=data.skip_bad,
            stats=stats,
            **options,
        )
