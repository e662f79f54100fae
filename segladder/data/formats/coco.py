"""COCO detection boxes and their image folder (task boxes): crops around jittered boxes, `data.coco`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from segladder.data.formats.base import DATA_FORMATS, DataFormat, FormatSection


class CocoSection(FormatSection):
    """`data.coco`: the COCO files of task boxes and the crop cut around each rough box."""

    images: str | None = Field(None, description="image folder of the COCO files")
    train: str | None = Field(None, description="COCO detection JSON of the training boxes")
    val: str | None = Field(None, description="COCO detection JSON of the validation boxes")
    crop_size: int = Field(224, ge=16, description="side of the crop around a rough box (box adjustment)")
    buffer_ratio: float = Field(
        1.1,
        ge=1.0,
        le=4.0,
        description="the crop is the rough box enlarged by this (Snapper, Williams et al., IUI 2024: 1.1)",
    )


@DATA_FORMATS.register("coco")
class CocoFormat(DataFormat):
    """Boxes in COCO detection files: `BoxesDataModule` (random jitter for training, seeded for validation)."""

    name = "coco"
    summary = (
        "coco: COCO detection boxes for task boxes (data.coco: images, train, val, crop_size, buffer_ratio)"
    )
    section = CocoSection
    # Before data.coco existed these sat at the top of `data` (every config carried them).
    moved_keys = {"images": None, "train": None, "val": None, "crop_size": 224, "buffer_ratio": 1.1}
    detect_order = 0

    @classmethod
    def detect(cls, data, source: str | Path | None) -> bool:
        """Whether `data` names a COCO training or validation file."""
        coco = getattr(data, cls.name, None)
        return coco is not None and (coco.train is not None or coco.val is not None)

    @classmethod
    def in_chans(cls, data) -> int:
        """Three: crops are read as RGB."""
        return 3  # crops are read as RGB

    @classmethod
    def datamodule(cls, data, seed: int):
        """The box crops' data module over the COCO files of `data.coco`."""
        from segladder.data.box_datasets import BoxesDataModule

        return BoxesDataModule(data, cls.options(data), seed)

    @classmethod
    def inputs(cls, data) -> dict[str, str | None]:
        """The paths this format reads, by config key, for the checks that no output overwrites them."""
        coco = cls.options(data)
        return {f"data.coco.{k}": getattr(coco, k) for k in ("images", "train", "val")}
