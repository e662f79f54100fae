"""PyTorch datasets over a prepared cache or the raw layout, yielding (C, T, H, W) images and masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segladder.data.cache import CacheOptions, ContrailsCache, compute_stats, is_cache, standardise
from segladder.data.check import check_record
from segladder.data.contrails import (
    ASH_CHANNELS,
    INTERPOLATIONS,
    bands_needed,
    discover_records,
    read_sample,
    resolve_channels,
    resolve_frames,
)
from segladder.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePair,
    check_pair,
    discover_pairs,
    read_image,
    read_mask,
)
from segladder.data.layout import DEFAULT_SIZE
from segladder.data.pseudo import PseudoLabels
from segladder.data.transforms import AugmentConfig, augment, build_augment
from segladder.errors import BadDatasetError, ConfigError, DataError
from segladder.progress import console

OUTPUT_DTYPES = ("float32", "uint8")
# Pixel permutations commute with the per-channel decode, so they run on the stored uint8 values unchanged.
UINT8_EXACT_AUGMENTS = ("hflip_p", "vflip_p", "rot90_p")


@dataclass(frozen=True)
class LabelOptions:
    """Where a `ContrailsDataset`'s labels come from and how it hands them out, fixed at construction.

    Attributes:
        pseudo: pseudo labels (from `segladder pseudo-label`) replacing the split's own: soft = the teachers'
            probability, mask = soft > `pseudo_threshold`.
        pseudo_threshold: the mask's threshold on the pseudo soft label.
        keep_soft: with `pseudo`, hand out the soft label too (as the splits it is joined with do).
        float_soft: soft labels as float32 even where the images stay uint8, so they collate with the float
            pseudo labels of another part of the training set.
    """

    pseudo: PseudoLabels | None = None
    pseudo_threshold: float = 0.5
    keep_soft: bool = True
    float_soft: bool = False


class ContrailsDataset(Dataset):
    """One split of a contrails dataset, read from a prepared cache or from the raw layout.

    `ContrailsDataset(source, ...)` opens a `CachedContrailsDataset` when `source` is a prepared cache
    (fast) and a `RawContrailsDataset` over the raw layout otherwise (small experiments); both take the same
    arguments and hand out the same items.

    Each item is a dict: ``image`` (C, T, H, W) float32, ``mask`` (1, H, W) float32 where the split is
    labelled, ``soft`` (1, H, W) float32 where annotators' masks exist, and ``record_id`` (str).
    Ash channels are in [0, 1] (standardised by training statistics when ``normalize_ash``); raw bands
    and band differences are always standardised. Augmentation happens before ash standardisation.

    With ``output_dtype="uint8"`` a uint8 cache hands out its stored values instead: ``image`` (C, T, H, W)
    uint8 with ``image_scale`` / ``image_offset`` (C,) float32 (the manifest's affine with ash
    standardisation folded in) and ``mask`` (1, H, W) uint8, so a loader moves a quarter of the bytes and
    `decode_batch` makes the float image on the device. Where the stored values cannot be served exactly
    (raw records, a float16 cache, augmentation other than flips/rot90, or cutout over standardised
    channels) the items stay float32, so the output is the same either way (`emits_uint8` says which).

    Args:
        source: a prepared cache (detected by its manifest) or a raw dataset root.
        split: the split to read.
        labels: pseudo labels and how soft labels are handed out (`LabelOptions`).
        output_dtype: "float32" (default: inference, evaluation) or "uint8" (training from a uint8 cache).
        interpolation, skip_bad, stats, stats_records: how raw records are read (a cache was read so when it
            was prepared): resizing, leaving bad records out, and channel statistics (None: computed from
            `stats_records` training records where standardisation needs them).
    """

    cache: ContrailsCache | None = None
    emits_uint8: bool = False
    # Set by a subclass's `_open`.
    record_ids: list[str]
    has_mask: bool
    has_soft: bool
    stats: dict | None

    def __new__(cls, *args, **kwargs):
        """Pick the subclass that reads `source`: the cached one for a prepared cache, else the raw one."""
        # Unpickling and copying call __new__ with no arguments, on the subclass itself.
        if cls is ContrailsDataset:
            source = args[0] if args else kwargs["source"]
            cls = CachedContrailsDataset if is_cache(Path(source)) else RawContrailsDataset
        return super().__new__(cls)

    def __init__(
        self,
        source: str | Path,
        split: str = "train",
        *,
        frames: Sequence[int] | None = None,
        channels: Sequence[str] = ("ash",),
        image_size: int = DEFAULT_SIZE,
        augment: AugmentConfig | None = None,
        normalize_ash: bool = False,
        labels: LabelOptions | None = None,
        output_dtype: str = "float32",
        interpolation: str = "bilinear",
        skip_bad: bool = False,
        stats: dict | None = None,
        stats_records: int = 64,
    ):
        if output_dtype not in OUTPUT_DTYPES:
            raise DataError(f"output_dtype '{output_dtype}' is not one of {OUTPUT_DTYPES}.")
        self.source, self.split = Path(source), split
        self.frames, self.channels = resolve_frames(frames), resolve_channels(channels)
        self.image_size, self.interpolation = image_size, interpolation
        self.normalize_ash = normalize_ash
        self.aug = build_augment(augment, size=image_size)
        if augment is not None and augment.uses_gamma and any(c not in ASH_CHANNELS for c in self.channels):
            raise DataError(
                "augment.gamma_p / gamma_or_brightness_p > 0 needs inputs in [0, 1] (RandomGamma), but "
                "standardised bands/diffs are selected; set both to 0."
            )
        self._open(skip_bad=skip_bad, stats=stats, stats_records=stats_records)
        # Pseudo labels replace the split's own labels: soft = the teachers' probability, mask = soft > threshold.
        self.labels = labels = labels or LabelOptions()
        self.pseudo, self.pseudo_threshold = labels.pseudo, labels.pseudo_threshold
        if labels.pseudo is not None:
            labels.pseudo.check_covers(self.record_ids, f"{self.source}/{split}")
            self.has_mask, self.has_soft = True, labels.keep_soft
        if normalize_ash and self.stats is None:
            raise DataError(f"normalize_ash needs training statistics, but {self.source} has no train split.")
        self._ash_scale, self._ash_offset = self._ash_affine()
        self.emits_uint8 = self._prepare_output(output_dtype, augment)
        # Soft labels travel as their stored uint8 too (decoded with the image), except where they must collate
        # with float pseudo labels (this split's own, or another part's: `labels.float_soft`).
        self.soft_uint8 = self.emits_uint8 and labels.pseudo is None and not labels.float_soft

    # ------------------------------------------------------------------------------------- building

    def _open(self, *, skip_bad: bool, stats: dict | None, stats_records: int) -> None:
        """Find the split's records: set `record_ids`, `has_mask`, `has_soft` and `stats`."""
        raise NotImplementedError

    def _prepare_output(self, output_dtype: str, augment: AugmentConfig | None) -> bool:
        """Get ready to hand out items; whether they are the stored uint8 values (`emits_uint8`)."""
        return False

    def _ash_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, offset) that standardises ash channels when asked; identity otherwise."""
        scale = np.ones(len(self.channels), np.float32)
        offset = np.zeros(len(self.channels), np.float32)
        if self.normalize_ash:
            for i, ch in enumerate(self.channels):
                if ch in ASH_CHANNELS:
                    k = self.stats["channels"].index(ch)
                    scale[i] = 1.0 / self.stats["std"][k]
                    offset[i] = -self.stats["mean"][k] / self.stats["std"][k]
        return scale, offset

    # -------------------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.record_ids)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Record `index` before augmentation: image, mask and soft label (None where the split has none).

        The image is (C, T, H, W) float32 (ash standardised already when there is no augmentation), the mask
        (H, W) uint8 and the soft label (H, W) float32.
        """
        raise NotImplementedError

    def _standardise_ash(self, image: np.ndarray) -> np.ndarray:
        if not self.normalize_ash:
            return image
        return image * self._ash_scale[:, None, None, None] + self._ash_offset[:, None, None, None]

    def _pseudo(self, index: int, side: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The pseudo labels of record `index` at `side`²: mask (uint8) and soft (None unless kept)."""
        soft = self.pseudo.load(self.record_ids[index], side)
        mask = (soft > self.pseudo_threshold).astype(np.uint8)
        return mask, soft if self.has_soft else None

    def _uint8_item(self, index: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.emits_uint8:
            return self._uint8_item(index)
        image, mask, soft = self.read(index)
        if self.pseudo is not None:
            mask, soft = self._pseudo(index, image.shape[-1])
        if self.aug is not None:
            image, mask, soft = augment(self.aug, image, mask, soft)
            image = self._standardise_ash(image)
        item: dict = {"image": torch.from_numpy(image), "record_id": self.record_ids[index]}
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        if soft is not None:
            item["soft"] = torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32))[None]
        return item


class RawContrailsDataset(ContrailsDataset):
    """A split read from the raw competition layout, decoded from its band files on every read.

    Each record is checked once (`data check`'s checks, limited to the bands read).
    """

    def _open(self, *, skip_bad: bool, stats: dict | None, stats_records: int) -> None:
        refs = self._validated(discover_records(self.source, self.split), skip_bad)
        self._refs = refs
        self.record_ids = [r.record_id for r in refs]
        need_stats = self.normalize_ash or any(c not in ASH_CHANNELS for c in self.channels)
        if stats is None and need_stats:
            opts = CacheOptions(
                self.frames,
                self.channels,
                self.image_size,
                interpolation=self.interpolation,
                stats_records=stats_records,
            )
            stats = compute_stats(self.source, opts, workers=1, progress=False)
        self.stats = stats
        self.has_mask = self.split != "test"
        # As the cache: a split has soft labels when any record has annotators' masks (mixed splits occur,
        # e.g. records of train and validation gathered into one folder to score), so every item carries one.
        self.has_soft = any((r.path / "human_individual_masks.npy").exists() for r in refs)

    def _validated(self, refs, skip_bad: bool):
        """`data check` of every raw record, limited to the band files this dataset reads, with its messages."""
        bands = bands_needed(self.channels)
        problems = [
            (r.record_id, "; ".join(reasons))
            for r in refs
            if (reasons := check_record(r, values=True, bands=bands))
        ]
        if problems and not skip_bad:
            raise BadDatasetError(
                problems,
                f"{self.source}/{self.split}",
                f"Run `segladder data check {self.source}` for a full report; fix or remove them, or leave "
                "them out: `--set data.skip_bad=true` for training, `segladder data prepare --skip-bad` "
                "for a cache.",
            )
        bad = {rid for rid, _ in problems}
        for rid, reason in problems:
            console.print(f"[yellow]skipping[/] {rid}: {reason}")
        kept = [r for r in refs if r.record_id not in bad]
        if not kept:
            raise DataError(f"{self.source}/{self.split}: every record is bad; nothing to load.")
        return kept

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Decode record `index` from its band files and standardise it; see `ContrailsDataset.read`."""
        s = read_sample(self._refs[index], self.channels, self.frames, self.image_size, self.interpolation)
        image = standardise(s.image, self.channels, self.stats).transpose(3, 0, 1, 2)
        if self.aug is None:
            image = self._standardise_ash(image)
        soft = s.soft
        if self.has_soft and soft is None and s.mask is not None:
            soft = s.mask.astype(np.float32)  # its hard label is the best soft one
        return np.ascontiguousarray(image, dtype=np.float32), s.mask, soft if self.has_soft else None


class CachedContrailsDataset(ContrailsDataset):
    """A split read from a prepared cache (`segladder data prepare`): memory-mapped stored values.

    They are decoded per read, or handed out as they are (uint8 items, `output_dtype="uint8"`) where that is
    exact.
    """

    def _open(self, *, skip_bad: bool, stats: dict | None, stats_records: int) -> None:
        # The cache's records were checked and its statistics computed when it was prepared.
        self.cache = ContrailsCache(self.source)
        self._split = self.cache.split(self.split)
        self._frame_idx, self._chan_idx = self.cache.check_request(
            self.frames, self.channels, self.image_size
        )
        self.stats = self.cache.stats
        self.record_ids = self._split.ids
        self.has_mask, self.has_soft = self._split.has_masks, self._split.has_soft

    def _prepare_output(self, output_dtype: str, augment: AugmentConfig | None) -> bool:
        self._prepare_decode()
        emits = output_dtype == "uint8" and self._uint8_exact(augment)
        if emits:
            # The whole affine (ash standardisation included) is applied after the uint8 augmentation.
            self._item_scale = torch.from_numpy(self._scale_all * self._ash_scale)
            self._item_offset = torch.from_numpy(self._offset_all * self._ash_scale + self._ash_offset)
        return emits

    def _uint8_exact(self, cfg: AugmentConfig | None) -> bool:
        """Whether uint8 items decode to exactly what the float path gives for this cache and augmentation."""
        if self.cache.options.dtype != "uint8":
            return False
        if cfg is None or self.aug is None:
            return True
        used = {k for k, v in cfg.model_dump().items() if k.endswith("_p") and v > 0}
        # Cutout fills 0: the same value in model units only where the stored 0 decodes to 0 (ash).
        if "cutout_p" in used and not np.all(self._offset_all == 0):
            return False
        return used <= {*UINT8_EXACT_AUGMENTS, "cutout_p"}

    def _prepare_decode(self) -> None:
        enc = self.cache.encoding
        scale = np.asarray(enc["scale"], np.float32)[self._chan_idx]
        offset = np.asarray(enc["offset"], np.float32)[self._chan_idx]
        self._scale_all, self._offset_all = scale, offset
        if self.aug is None:
            # No augmentation in between: fold ash standardisation into the decode, one pass over memory.
            offset = offset * self._ash_scale + self._ash_offset
            scale = scale * self._ash_scale
        self._scale, self._offset = scale, offset
        n_c, n_f = len(self.cache.options.channels), len(self.cache.options.frames)
        self._whole = self._chan_idx == list(range(n_c)) and self._frame_idx == list(range(n_f))
        self._uniform = bool(np.all(scale == scale[0]) and np.all(offset == 0))

    def _stored_image(self, row: int) -> np.ndarray:
        q = self._split.arrays["images"][row]
        return q if self._whole else q[np.ix_(self._chan_idx, self._frame_idx)]

    def _cached_image(self, row: int) -> np.ndarray:
        # torch's dtype conversion is vectorised and about 3× faster than numpy's casting multiply.
        out = _to_float(self._stored_image(row))
        if self._uniform:
            out.mul_(float(self._scale[0]))
        else:
            out.mul_(torch.from_numpy(self._scale)[:, None, None, None]).add_(
                torch.from_numpy(self._offset)[:, None, None, None]
            )
        return out.numpy()

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Decode record `index` from the cache's arrays; see `ContrailsDataset.read`."""
        row = int(self._split.rows[index])
        image = self._cached_image(row)
        mask = np.asarray(self._split.arrays["masks"][row]) if self._split.has_masks else None
        soft = (
            _to_float(self._split.arrays["soft"][row]).mul_(1 / 255).numpy() if self._split.has_soft else None
        )
        return image, mask, soft

    def _uint8_item(self, index: int) -> dict:
        """Stored values as they are: views of the memory map until collation copies them once."""
        row = int(self._split.rows[index])
        q = self._stored_image(row)
        mask = self._split.arrays["masks"][row] if self._split.has_masks else None
        soft = self._split.arrays["soft"][row] if self._split.has_soft else None
        if soft is not None and not self.soft_uint8:
            soft = _to_float(soft).mul_(1 / 255).numpy()
        if self.pseudo is not None:
            mask, soft = self._pseudo(index, q.shape[-1])
        if self.aug is not None:
            q, mask, soft = augment(self.aug, q, mask, soft, dtype=None)
        item: dict = {
            "image": torch.from_numpy(q),
            "image_scale": self._item_scale,
            "image_offset": self._item_offset,
            "record_id": self.record_ids[index],
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(mask)[None]
        if soft is not None:
            item["soft"] = torch.from_numpy(np.ascontiguousarray(soft))[None]
        return item


def decode_images(
    q: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 (B, C, ...) → float32 q·scale + offset with per-sample, per-channel (B, C) scale and offset.

    On an accelerator this is one kernel (`addcmul` reads uint8 and writes float32 once, in `memory_format`);
    on the CPU torch's vectorised copy then two in-place passes are faster than the mixed-dtype kernel.
    Either way the numbers are those of the dataset's float path (within one float32 rounding).
    """
    shape = (*scale.shape, *([1] * (q.dim() - scale.dim())))
    scale, offset = scale.reshape(shape), offset.reshape(shape)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device, memory_format=memory_format)
    if q.device.type == "cpu":
        return out.copy_(q).mul_(scale).add_(offset)
    return torch.addcmul(offset, q, scale, out=out)


def decode_batch(batch: dict, memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """A collated batch of `ContrailsDataset` items as float32, wherever it lies; float batches pass unchanged.

    Call it after the batch is on the device (the DataModule does, in `on_after_batch_transfer`), or on
    the CPU before handing a loader's batch to a model outside Lightning.
    """
    if "image_scale" not in batch:
        return batch
    batch = dict(batch)
    scale, offset = batch.pop("image_scale"), batch.pop("image_offset")
    batch["image"] = decode_images(batch["image"], scale, offset, memory_format)
    if "mask" in batch and batch["mask"].dtype == torch.uint8:
        batch["mask"] = batch["mask"].to(torch.float32)
    if "soft" in batch and batch["soft"].dtype == torch.uint8:
        batch["soft"] = batch["soft"].to(torch.float32).mul_(1 / 255)
    return batch


class ImageMaskDataset(Dataset):
    """One split of an RGB image/mask folder, shaped like the contrails samples so every task trains on it.

    Each item: ``image`` (3, 1, H, W) float32 standardised with ImageNet statistics (one frame, T = 1),
    ``mask`` (1, H, W) float32 in {0, 1} and ``record_id`` (the file stem). Images of any size are resized
    to `image_size` (masks by nearest neighbour). Every pair is checked when the dataset is built (mask
    present, readable files, equal sizes, mask values in {0, 1, 255}); `skip_bad` leaves bad pairs out.

    Args:
        root: the folder holding `train/` and `val/` (or `validation/`).
        split: which split to read.
        image_size: side of the square the images are resized to.
        augment: albumentations options; `preset: heavy` adds the B3→B0 distillation recipe's photometric set.
        interpolation: image resizing, "bilinear" or "bicubic".
        skip_bad: leave bad pairs out (printed) instead of refusing the split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int = 256,
        augment: AugmentConfig | None = None,
        interpolation: str = "bilinear",
        skip_bad: bool = False,
    ):
        from segladder.data.transforms import build_augment

        self.source, self.split, self.image_size, self.interpolation = (
            Path(root),
            split,
            image_size,
            interpolation,
        )
        pairs = discover_pairs(root, split, need_masks=split != "test")
        self.pairs = self._validated(pairs, skip_bad)
        self.record_ids = [p.stem for p in self.pairs]
        self.has_mask = all(p.mask is not None for p in self.pairs)
        self.has_soft, self.cache, self.stats = False, None, None
        self.aug = build_augment(augment, rgb=True, size=image_size)
        self._mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
        self._std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]

    def _validated(self, pairs: list[ImagePair], skip_bad: bool) -> list[ImagePair]:
        problems = [(p.stem, reason) for p in pairs if (reason := check_pair(p))]
        if problems and not skip_bad:
            if len(problems) == 1:
                raise DataError(problems[0][1])
            raise BadDatasetError(
                problems, f"{self.source}/{self.split}", "Fix or remove them, or set data.skip_bad=true."
            )
        for stem, reason in problems:
            console.print(f"[yellow]skipping[/] {stem}: {reason}")
        bad = {stem for stem, _ in problems}
        kept = [p for p in pairs if p.stem not in bad]
        if not kept:
            raise DataError(f"{self.source}/{self.split}: every image is bad; nothing to load.")
        return kept

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, None]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask at `image_size`, before augmentation."""
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.mask, pair.image, image.shape[:2]) if pair.mask is not None else None
        size = (self.image_size, self.image_size)
        if image.shape[:2] != size:
            image = cv2.resize(image, size, interpolation=INTERPOLATIONS[self.interpolation])
            if mask is not None:
                mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return image, mask, None

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, mask, _ = self.read(index)
        if self.aug is not None:
            out = self.aug(image=image, **({"mask": mask} if mask is not None else {}))
            image, mask = out["image"], out.get("mask")
        chw = (image.transpose(2, 0, 1).astype(np.float32) / 255.0 - self._mean) / self._std
        item: dict = {
            "image": torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[:, None],
            "record_id": self.record_ids[index],
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return item


def _to_float(a: np.ndarray) -> torch.Tensor:
    return torch.empty(a.shape, dtype=torch.float32).copy_(torch.from_numpy(np.ascontiguousarray(a)))


def dataset_from_config(
    cfg,
    split: str,
    *,
    root: str | Path | None = None,
    augment: bool = False,
    stats: dict | None = None,
    **extra,
) -> Dataset:
    """The one way a `DataConfig` becomes a dataset: its data format's reader of records.

    Training, evaluate, predict, viz and the ladder all read records through it; the format is
    `cfg.resolve_format` (segladder/data/formats/).

    Args:
        cfg: the data section of an experiment (`DataConfig`: frames, channels, size, interpolation, ...).
        split: which split to read.
        root: read this dataset instead of `cfg.root` (evaluate or predict on other data).
        augment: apply `cfg.augment` (training only).
        stats: channel statistics to normalise raw data with (a checkpoint's); None: the cache's or computed.
        extra: further `ContrailsDataset` options (`labels`, `output_dtype`).
    """
    source = root if root is not None else cfg.root
    if source is None:
        raise ConfigError(
            "data.root is not set: give a raw dataset root or a prepared cache (--set data.root=PATH)."
        )
    return cfg.resolve_format(source).dataset(cfg, split, source, augment=augment, stats=stats, **extra)


def data_format(cfg, source: str | Path | None = None) -> str:
    """The name of the format that reads `cfg` (`DataConfig`), looking at `source` instead of its root."""
    return cfg.resolve_format(source).name
