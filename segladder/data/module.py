"""The Lightning DataModule: splits, record budgets, positives-only training, reproducible sampling."""

from __future__ import annotations

import zlib

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from segladder.data.datasets import ContrailsDataset, LabelOptions, dataset_from_config, decode_batch
from segladder.data.folds import FoldRecord, check_covers, check_trainable, pooled_splits, read_folds
from segladder.data.handover import SlotCollate, SlotHandoverLoader
from segladder.data.pseudo import PseudoLabels
from segladder.errors import ConfigError

# Training asks for the cache's stored bytes; `on_after_batch_transfer` decodes them on the device.
TRAINING_OUTPUT_DTYPE = "uint8"


class EpochSeededSampler(Sampler[int]):
    """A shuffle that is a pure function of (seed, epoch): a resumed run draws the same order.

    Lightning calls `set_epoch` on any sampler that has it, as it does for DistributedSampler.

    Args:
        n: the dataset's length.
        seed: the seed the shuffles derive from.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose shuffle the next iteration draws."""
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _Seeded(Dataset):
    """Makes augmentation a function of (seed, epoch, index), independent of worker count and resume."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        seed = zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode())
        for ds in contrails_datasets(self.base):
            if ds.aug is not None:
                ds.aug.set_random_seed(seed)
        return self.base[index]


class ContrailsDataModule(L.LightningDataModule):
    """Builds train/validation datasets from a `DataConfig` (a cache or a raw root).

    Args:
        cfg: the data section of the experiment (`DataConfig`).
        seed: the seed of the training shuffle (and folds' records).
    """

    def __init__(self, cfg, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_set: _Seeded | None = None
        self.val_set: Dataset | None = None
        self._sampler: EpochSeededSampler | None = None
        self._folds: list[FoldRecord] | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the training and validation sets that `stage` needs."""
        if stage in (None, "fit"):
            self.build_train()
        if stage in (None, "fit", "validate"):
            self.build_val()

    def build_train(self) -> None:
        """Build the training set once: the training splits or folds, augmented, with any pseudo labels."""
        c = self.cfg
        if self.train_set is not None:
            return
        parts: list[Dataset] = []
        # Float pseudo labels joining this set: the splits' own soft labels must be float to collate with them.
        labels = LabelOptions(float_soft=bool(c.pseudo_labels))
        for split in self.train_splits:
            train = dataset_from_config(
                c, split, augment=True, labels=labels, output_dtype=TRAINING_OUTPUT_DTYPE
            )
            rows = np.arange(len(train))
            if c.folds:
                rows = fold_rows(train, self.folds, lambda f: f != c.fold)
            if c.positives_only:
                rows = rows[np.isin(rows, positive_rows(train))]
            parts.append(train if len(rows) == len(train) else Subset(train, rows.tolist()))
        base = joined(parts)
        if c.positives_only and len(base) == 0:
            raise ConfigError(
                f"data.positives_only: split '{c.train_split}' of {c.root} has no positive records."
            )
        if c.train_records is not None and c.train_records < len(base):
            base = Subset(base, range(c.train_records))
        if c.pseudo_labels:
            pseudo = PseudoLabels(c.pseudo_labels)
            keep_soft = contrails_datasets(base)[0].has_soft
            extra = dataset_from_config(
                c,
                pseudo.split,
                augment=True,
                labels=LabelOptions(pseudo, c.pseudo_threshold, keep_soft=keep_soft),
                output_dtype=TRAINING_OUTPUT_DTYPE,
            )
            base = joined([base, extra])
        self.train_set = _Seeded(base, self.seed)

    def build_val(self) -> None:
        """Build the validation set once: the held-out fold, or the validation split, cut to `val_records`."""
        c = self.cfg
        if self.val_set is not None:
            return
        if c.folds:
            val = held_out(c, self.folds, c.fold, output_dtype=TRAINING_OUTPUT_DTYPE)
        else:
            val = dataset_from_config(c, c.val_split, output_dtype=TRAINING_OUTPUT_DTYPE)
        self.val_set = val if c.val_records is None else Subset(val, range(min(c.val_records, len(val))))

    @property
    def train_splits(self) -> list[str]:
        """`data.train_split` as splits (`train+validation` trains on both); with folds, the folds' splits."""
        if self.cfg.folds:
            return sorted({r.split for r in self.folds})
        return [s for s in self.cfg.train_split.split("+") if s]

    @property
    def folds(self) -> list[FoldRecord]:
        """The rows of `data.folds`, read and checked once against the dataset and `data.fold`."""
        if self._folds is None:
            c = self.cfg
            self._folds = read_folds(c.folds)
            k = check_trainable(self._folds, c.folds)
            if c.root is not None and c.resolved_format == "contrails":
                check_covers(self._folds, c.folds, c.root, pooled_splits(c), k)
            if c.fold is None or not 0 <= c.fold < k:
                raise ConfigError(
                    f"data.folds {c.folds} has folds 0..{k - 1}: set data.fold to one of them "
                    f"(got {c.fold}), or train them all with `segladder train CONFIG --folds`."
                )
        return self._folds

    @property
    def stats(self) -> dict | None:
        """The training split's channel statistics (what a checkpoint needs to read raw data as training did)."""
        if self.train_set is None:
            return None
        return contrails_datasets(self.train_set.base)[0].stats

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the training set (its augmentation draws from it)."""
        if self.train_set is not None:
            self.train_set.epoch = epoch

    def train_dataloader(self) -> DataLoader:
        """The training loader, shuffled by an `EpochSeededSampler`."""
        self._sampler = EpochSeededSampler(len(self.train_set), self.seed)
        return make_loader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=self._sampler,
            num_workers=self.cfg.num_workers,
            drop_last=len(self.train_set) > self.cfg.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation loader; under DDP each record goes to exactly one process."""
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            # Lightning's default sampler pads shards to equal length, counting some records twice in the
            # global Dice; this one gives each record to exactly one process.
            sampler = UnrepeatedDistributedSampler(self.val_set, shuffle=False)
        return make_loader(
            self.val_set,
            batch_size=self.cfg.val_batch_size or self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move the batch's tensors to `device` (see `transfer_flat_batch`)."""
        return transfer_flat_batch(batch, device)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 batches become float32 here, on the device: the host moves stored bytes and converts none."""
        return decode_batch(batch, _input_memory_format(self, batch))


def transfer_flat_batch(batch, device: torch.device):
    """A batch dict of tensors and lists moved to `device` in one pass; anything else as Lightning moves it.

    Lightning's generic move walks any nested collection with isinstance checks against abstract types,
    about a millisecond a batch of Python time: on a GPU that waits for nothing, it is the step's pace.
    """
    if not isinstance(batch, dict):
        from lightning.fabric.utilities.apply_func import move_data_to_device

        return move_data_to_device(batch, device)
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _input_memory_format(dm: L.LightningDataModule, batch) -> torch.memory_format:
    """channels_last for 4-D images when the task asks for it (as the task's own layout step does)."""
    module = getattr(getattr(dm, "trainer", None), "lightning_module", None)
    trainer_cfg = getattr(getattr(module, "cfg", None), "trainer", None)
    image = batch.get("image") if isinstance(batch, dict) else None
    if getattr(trainer_cfg, "channels_last", False) and image is not None and image.dim() == 4:
        return torch.channels_last
    return torch.contiguous_format


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    slot_handover: bool = True,
) -> DataLoader:
    """The DataLoader training builds (the benchmark times this one): pinned on a GPU, workers per epoch.

    With workers over a dataset of uint8 items (fixed shapes), batches come back through reused
    shared-memory slots (`SlotCollate`) instead of PyTorch's fresh segment a batch; otherwise (or with
    `slot_handover=False`, the benchmark's reference) it is a plain DataLoader.
    """
    kwargs = dict(
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=False,
    )
    if slot_handover and num_workers > 0 and emits_uint8_batches(dataset):
        return SlotHandoverLoader(dataset, collate_fn=SlotCollate(dataset, batch_size), **kwargs)
    return DataLoader(dataset, **kwargs)


def emits_uint8_batches(ds: Dataset) -> bool:
    """Whether every dataset under `ds` hands out the fixed-shape uint8 items of the training path."""
    base = ds.base if isinstance(ds, _Seeded) else ds
    return all(getattr(d, "emits_uint8", False) for d in contrails_datasets(base))


def joined(parts: list[Dataset]) -> Dataset:
    """`parts` as one dataset, every item carrying the same keys.

    Where splits with and without soft labels meet (train+validation: the competition's validation has no
    individual masks), the ones without give their pixel mask as the soft label (`MaskAsSoft`).
    """
    if len(parts) == 1:
        return parts[0]
    if any(d.has_soft for part in parts for d in contrails_datasets(part)):
        parts = [part if gives_soft(part) else MaskAsSoft(part) for part in parts]
    return ConcatDataset(parts)


class MaskAsSoft(Dataset):
    """`base`'s items, with their pixel mask as the soft label where they have none.

    That is a split without annotators' masks joined with one that has them (`joined`). The soft label has the
    dtype the split's own would have had: the stored uint8 scale (0/255) where its items travel as uint8, else
    float32.

    Args:
        base: the dataset whose items lack a soft label.
    """

    def __init__(self, base: Dataset):
        self.base = base
        self.uint8 = all(getattr(d, "soft_uint8", False) for d in contrails_datasets(base))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        if "soft" not in item and "mask" in item:
            mask = item["mask"]
            item["soft"] = mask * 255 if self.uint8 else mask.to(torch.float32, copy=True)
        return item


def gives_soft(ds: Dataset) -> bool:
    """Whether every item of `ds` carries a soft label (its splits have annotators' masks, or `MaskAsSoft`)."""
    if isinstance(ds, MaskAsSoft):
        return True
    if isinstance(ds, Subset):
        return gives_soft(ds.dataset)
    if isinstance(ds, ConcatDataset):
        return all(gives_soft(part) for part in ds.datasets)
    return ds.has_soft


def held_out(cfg, folds: list[FoldRecord], fold: int, **options) -> Dataset:
    """The records of `fold` over every split the folds name, as one dataset.

    A fold run's validation and, with a checkpoint's `stats`, its out-of-fold predictions. `options` go to
    `dataset_from_config`.
    """
    parts = []
    for split in sorted({r.split for r in folds}):
        ds = dataset_from_config(cfg, split, **options)
        parts.append(Subset(ds, fold_rows(ds, folds, lambda f: f == fold).tolist()))
    return joined(parts)


def contrails_datasets(ds: Dataset) -> list[ContrailsDataset]:
    """The ContrailsDatasets under Subset/ConcatDataset/MaskAsSoft wrappers, in order."""
    if isinstance(ds, Subset):
        return contrails_datasets(ds.dataset)
    if isinstance(ds, MaskAsSoft):
        return contrails_datasets(ds.base)
    if isinstance(ds, ConcatDataset):
        return [d for part in ds.datasets for d in contrails_datasets(part)]
    return [ds]


def fold_rows(ds: ContrailsDataset, folds: list[FoldRecord], keep) -> np.ndarray:
    """Rows of `ds` whose record's fold passes `keep`; a record of the folds file missing from `ds` is an error."""
    index = {rid: i for i, rid in enumerate(ds.record_ids)}
    rows = []
    for r in folds:
        if r.split != ds.split or not keep(r.fold):
            continue
        if r.record_id not in index:
            raise ConfigError(
                f"record {r.split}/{r.record_id} of the folds file is not in {ds.source}; "
                "were the folds cut from another dataset?"
            )
        rows.append(index[r.record_id])
    return np.array(sorted(rows), dtype=np.int64)


def positive_rows(ds: ContrailsDataset) -> np.ndarray:
    """Indices of records whose mask has any contrail pixel (cached masks are read without decoding images)."""
    if not ds.has_mask:
        raise ConfigError(f"split '{ds.split}' has no masks, so positives cannot be selected.")
    if ds.cache is not None:
        masks = ds._split.arrays["masks"][ds._split.rows]
        return np.flatnonzero(masks.reshape(len(masks), -1).max(1) > 0)
    return np.flatnonzero([ds.read(i)[1].any() for i in range(len(ds))])
