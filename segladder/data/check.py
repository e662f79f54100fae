"""Up-front validation of a dataset (competition layout or image/mask folders): one reason per bad record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segladder.data.contrails import RecordRef, discover_records, present_splits, read_metadata
from segladder.data.images import check_pair, discover_pairs, is_image_folder, split_dir
from segladder.data.layout import (
    BAND_FILES,
    INDIVIDUAL_MASKS_FILE,
    METADATA_FILES,
    N_FRAMES,
    PIXEL_MASK_FILE,
    band_file,
)
from segladder.errors import BadDatasetError, DataError
from segladder.progress import parallel_map

LABELLED_SPLITS = ("train", "validation")


@dataclass
class CheckReport:
    """Result of `check_dataset`: counts per split and the `(record_id, reason)` of every bad record."""

    root: Path
    records: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    layout: str = "competition"  # or "image folders"

    @property
    def ok(self) -> bool:
        """Whether every record passed."""
        return not self.problems

    @property
    def bad_ids(self) -> set[str]:
        """The ids of the records that failed."""
        return {rid for rid, _ in self.problems}

    def raise_if_bad(self, hint: str = "") -> None:
        """Raise a BadDatasetError listing the failed records, if any; `hint` is its last line."""
        if self.problems:
            raise BadDatasetError(self.problems, str(self.root), hint)


def _open(path: Path) -> tuple[np.ndarray | None, str | None]:
    if not path.exists():
        return None, f"missing {path.name}"
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    except (ValueError, OSError, EOFError):
        return None, f"{path.name} is not a readable .npy file"


def _check_mask(path: Path, hw: tuple[int, ...] | None, ndim: int, values: bool) -> str | None:
    arr, err = _open(path)
    if err:
        return err
    expected = "(H, W, 1)" if ndim == 3 else "(H, W, 1, R)"
    if arr.ndim != ndim or arr.shape[2] != 1 or (hw is not None and arr.shape[:2] != hw):
        return f"{path.name} has shape {arr.shape}, expected {expected} matching the bands"
    if ndim == 4 and arr.shape[3] < 1:
        return f"{path.name} has no annotator slices"
    if values:
        a = np.asarray(arr)
        if not np.isin(a, (0, 1)).all():
            odd = np.unique(a[~np.isin(a, (0, 1))])[:5].tolist()
            return f"{path.name} has values outside {{0, 1}}: {odd}"
    return None


def check_record(ref: RecordRef, values: bool = True, bands: Sequence[int] | None = None) -> list[str]:
    """Every reason this record cannot be used; empty when it is fine.

    `values` scans the data for NaN/inf and masks for values outside {0, 1}; `bands` limits the band
    files checked to those a consumer reads (all nine by default).
    """
    reasons: list[str] = []
    hw: tuple[int, ...] | None = None
    for name in BAND_FILES if bands is None else [band_file(b) for b in bands]:
        arr, err = _open(ref.path / name)
        if err:
            reasons.append(err)
            continue
        if arr.ndim != 3:
            reasons.append(f"{name} has shape {arr.shape}, expected (H, W, {N_FRAMES})")
            continue
        if arr.shape[2] != N_FRAMES:
            reasons.append(f"{name} has {arr.shape[2]} frames, expected {N_FRAMES}")
        if not np.issubdtype(arr.dtype, np.floating):
            reasons.append(f"{name} has dtype {arr.dtype}, expected float32")
        elif values and not np.isfinite(arr).all():
            n = int((~np.isfinite(arr)).sum())
            reasons.append(f"{name} has {n} NaN/inf values")
        if hw is None:
            hw = arr.shape[:2]
        elif arr.shape[:2] != hw:
            reasons.append(f"{name} is {arr.shape[0]}×{arr.shape[1]}, other bands are {hw[0]}×{hw[1]}")
    if ref.split in LABELLED_SPLITS:
        err = _check_mask(ref.path / PIXEL_MASK_FILE, hw, 3, values)
        if err:
            reasons.append(err)
    if (ref.path / INDIVIDUAL_MASKS_FILE).exists():
        err = _check_mask(ref.path / INDIVIDUAL_MASKS_FILE, hw, 4, values)
        if err:
            reasons.append(err)
    return reasons


def _check_one(args: tuple[RecordRef, bool]) -> tuple[str, list[str]]:
    ref, values = args
    return ref.record_id, check_record(ref, values)


def check_dataset(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    values: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> CheckReport:
    """Validate every record of the splits (all present ones by default) and the metadata JSON files.

    A root in the image/mask folder layout (`ROOT/{train,val}/{images,masks}/`) is checked as such: every
    image readable, every labelled image with a mask of its size holding 0/1 or 0/255.
    """
    root = Path(root)
    if is_image_folder(root):
        return check_image_folders(root, splits, workers=workers, progress=progress)
    report = CheckReport(root)
    wanted = list(splits) if splits else present_splits(root)
    if not wanted:
        discover_records(root, "train")  # raises the clear "no such root / split" error
    items: list[tuple[RecordRef, bool]] = []
    for split in wanted:
        refs = discover_records(root, split)
        report.records[split] = len(refs)
        items += [(r, values) for r in refs]
        meta = _metadata_problems(root, split, {r.record_id for r in refs})
        report.problems += meta
    for rid, reasons in parallel_map(
        _check_one, items, workers=workers, description="checking records", progress=progress
    ):
        if reasons:
            report.problems.append((rid, "; ".join(reasons)))
    report.problems.sort()
    return report


def check_image_folders(
    root: Path, splits: Sequence[str] | None = None, *, workers: int | None = None, progress: bool = True
) -> CheckReport:
    """`check_dataset` for image/mask folders; problems are keyed `split/stem`."""
    report = CheckReport(root, layout="image folders")
    present = [s for s in ("train", "val", "validation", "test") if (root / s / "images").is_dir()]
    pairs = []
    for split in list(splits) if splits else present:
        found = discover_pairs(root, split, need_masks=False)
        name = split_dir(root, split).name
        report.records[name] = len(found)
        for p in found:
            if p.mask is None and name != "test":
                report.problems.append((f"{name}/{p.stem}", f"no mask {name}/masks/{p.stem}.png"))
            else:
                pairs.append((name, p))
    for key, reason in parallel_map(
        _check_pair, pairs, workers=workers, description="checking images", progress=progress
    ):
        if reason:
            report.problems.append((key, reason))
    report.problems.sort()
    return report


def _check_pair(item) -> tuple[str, str | None]:
    split, pair = item
    return f"{split}/{pair.stem}", check_pair(pair)


def _metadata_problems(root: Path, split: str, ids: set[str]) -> list[tuple[str, str]]:
    try:
        meta = read_metadata(root, split)
    except DataError as exc:
        return [(METADATA_FILES[split], str(exc))]
    if meta is None:
        return []
    return [
        (m["record_id"], f"listed in {METADATA_FILES[split]} but {split}/{m['record_id']}/ does not exist")
        for m in meta
        if m["record_id"] not in ids
    ]
