"""RGB image/mask folders, `ROOT/{train,val}/{images,masks}/`.

`ImageMaskDataset` under the same `ContrailsDataModule` as the contrails records, one frame per sample.
"""

from __future__ import annotations

from pathlib import Path

from segladder.data.formats.base import DATA_FORMATS, DataFormat


@DATA_FORMATS.register("images")
class ImagesFormat(DataFormat):
    """Image/mask pairs with the same file stems.

    Auto picks it when the root holds `train/images` (or `val/`, `validation/`, `test/`).
    """

    name = "images"
    summary = "images: RGB image/mask folders ROOT/{train,val}/{images,masks}/"
    detect_order = 10

    @classmethod
    def detect(cls, data, source: str | Path | None) -> bool:
        """Whether `source` is an image/mask folder."""
        from segladder.data.images import is_image_folder

        return source is not None and is_image_folder(source)

    @classmethod
    def datamodule(cls, data, seed: int):
        """The data module over the image/mask folders (the contrails one, one frame per sample)."""
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
        """One split of `source` as an `ImageMaskDataset` set up from `data`."""
        from segladder.data.datasets import ImageMaskDataset
        from segladder.data.images import check_image_options

        check_image_options(options)  # `stats` goes unused: images are standardised with ImageNet's
        return ImageMaskDataset(
            source,
            split,
            image_size=data.image_size,
            augment=data.augment if augment else None,
            interpolation=data.interpolation,
            skip_bad=data.skip_bad,
        )
