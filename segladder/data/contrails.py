"""Reading the competition layout: record discovery, ash false-colour RGB, masks, soft labels, extra channels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segladder.data.layout import (
    BANDS,
    INDIVIDUAL_MASKS_FILE,
    METADATA_FILES,
    N_FRAMES,
    PIXEL_MASK_FILE,
    SPLITS,
    band_file,
)
from segladder.errors import DataError
from segladder.registry import suggest

# Ash RGB ranges, the recipe of every top competition solution and of pycontrails
# (`pycontrails.datalib.goes.to_ash`, convention "SEVIRI"): (low, high) per channel.
ASH_R_RANGE = (-4.0, 2.0)  # B15 − B14, 12.3 µm − 11.2 µm
ASH_G_RANGE = (-4.0, 5.0)  # B14 − B11, 11.2 µm − 8.4 µm
ASH_B_RANGE = (243.0, 303.0)  # B14, K

ASH_CHANNELS: tuple[str, ...] = ("ash_r", "ash_g", "ash_b")
BAND_CHANNELS: tuple[str, ...] = tuple(f"band_{b:02d}" for b in BANDS)
# Band differences the classify-then-segment experiments stacked beside the raw bands ("9ch + 2diff").
DIFF_CHANNELS: dict[str, tuple[int, int]] = {
    "diff_15_14": (15, 14),
    "diff_14_11": (14, 11),
    "diff_13_15": (13, 15),
    "diff_14_08": (14, 8),
}
CHANNEL_GROUPS: dict[str, tuple[str, ...]] = {
    "ash": ASH_CHANNELS,
    "bands": BAND_CHANNELS,
    "diffs": ("diff_15_14", "diff_14_11"),
}
KNOWN_CHANNELS: tuple[str, ...] = ASH_CHANNELS + BAND_CHANNELS + tuple(DIFF_CHANNELS)
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class RecordRef:
    """One record of one split: its id (a string of digits, never a number) and its folder."""

    split: str
    record_id: str
    path: Path


def resolve_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """Expand group names ("ash", "bands", "diffs") and validate every channel name."""
    out: list[str] = []
    for name in channels:
        names = CHANNEL_GROUPS.get(name, (name,))
        for n in names:
            if n not in KNOWN_CHANNELS:
                hint = suggest(n, KNOWN_CHANNELS + tuple(CHANNEL_GROUPS))
                raise DataError(
                    f"unknown input channel '{n}'.{hint} Valid: groups {sorted(CHANNEL_GROUPS)}, "
                    f"channels {list(KNOWN_CHANNELS)}."
                )
            if n not in out:
                out.append(n)
    if not out:
        raise DataError("no input channels selected: use at least one of 'ash', 'bands', 'diffs'.")
    return tuple(out)


def resolve_frames(frames: Sequence[int] | None) -> tuple[int, ...]:
    """Validate a frame index list against the 8 frames of a record; None means all 8."""
    if frames is None:
        return tuple(range(N_FRAMES))
    frames = tuple(int(f) for f in frames)
    if not frames:
        raise DataError("the frame list is empty: give indices in 0..7 (the labelled frame is 4).")
    bad = [f for f in frames if not 0 <= f < N_FRAMES]
    if bad:
        raise DataError(f"frame indices {bad} are outside 0..{N_FRAMES - 1} (the labelled frame is 4).")
    return frames


def split_dir(root: str | Path, split: str) -> Path:
    """The folder of `split` under `root`; a DataError saying what to do for an unknown split or root."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}.")
    if not root.exists():
        raise DataError(
            f"data root {root} does not exist. Give the folder holding train/ and validation/ (--data on the "
            f"command line, data.root in a config), or make synthetic data with `segladder synth contrails {root}`."
        )
    if not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder with train/, validation/, test/.")
    return root / split


def discover_records(root: str | Path, split: str, *, required: bool = True) -> list[RecordRef]:
    """List `ROOT/<split>/<record_id>/` folders, sorted by id; ids stay strings."""
    sdir = split_dir(root, split)
    if not sdir.is_dir():
        if not required:
            return []
        present = [s for s in SPLITS if (Path(root) / s).is_dir()]
        raise DataError(
            f"split folder {sdir} does not exist (found splits: {present or 'none'}). "
            f"Expected the competition layout ROOT/{{train,validation,test}}/<record_id>/band_XX.npy."
        )
    refs = [RecordRef(split, p.name, p) for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not refs and required:
        raise DataError(f"split {sdir} holds no record folders; expected {sdir}/<record_id>/band_08.npy ...")
    return sorted(refs, key=lambda r: r.record_id)


def native_size(root: str | Path) -> int:
    """The image size of a dataset's records: that of the first record of its first split.

    It is read from the band file's header, no pixels; records of other sizes are resized to it by the cache.
    """
    splits = present_splits(root)
    ref = discover_records(root, splits[0] if splits else "train")[0]
    path = ref.path / band_file(BANDS[0])
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read its header ({exc}); check the file or give --size.") from None
    if len(shape) != 3 or shape[0] != shape[1]:
        raise DataError(f"{path}: shape {shape} is not (H, W, frames) with H = W; give --size.")
    return int(shape[0])


def present_splits(root: str | Path) -> list[str]:
    """The splits of `root` whose folders hold at least one record (the default when none are named)."""
    root = Path(root)
    return [
        s
        for s in SPLITS
        if (root / s).is_dir()
        and any(p.is_dir() and not p.name.startswith(".") for p in (root / s).iterdir())
    ]


def read_metadata(root: str | Path, split: str) -> list[dict] | None:
    """The split's metadata JSON (list of records) or None when the split has none (test)."""
    name = METADATA_FILES.get(split)
    if name is None:
        return None
    path = Path(root) / name
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc}). Restore it from the dataset archive.") from exc
    if not isinstance(data, list) or not all(isinstance(d, dict) and "record_id" in d for d in data):
        raise DataError(f"{path}: expected a JSON list of objects with a 'record_id' key.")
    for d in data:
        d["record_id"] = str(d["record_id"])
    return data


def load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    """np.load with the failure turned into a DataError naming the file."""
    if not path.exists():
        raise DataError(f"{path}: missing. Every record needs {', '.join(band_file(b) for b in BANDS)}.")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}). Re-extract this record.") from exc


def _frames_of(path: Path, frames: tuple[int, ...]) -> np.ndarray:
    arr = load_npy(path)
    if arr.ndim != 3 or arr.shape[2] != N_FRAMES:
        raise DataError(f"{path}: shape {arr.shape}, expected (H, W, {N_FRAMES}).")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: dtype {arr.dtype}, expected float32 brightness temperatures in K.")
    # Gather only the wanted frames: (H, W, T) -> (T, H, W) float32.
    out = np.asarray(arr[:, :, list(frames)], dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def read_bands(
    record_dir: str | Path, bands: Sequence[int], frames: Sequence[int] | None = None
) -> dict[int, np.ndarray]:
    """Brightness temperatures {band: (T, H, W) float32} for the requested frames."""
    record_dir = Path(record_dir)
    fr = resolve_frames(frames)
    out = {b: _frames_of(record_dir / band_file(b), fr) for b in bands}
    shapes = {b: a.shape[1:] for b, a in out.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{record_dir}: band files disagree in size: {shapes}.")
    return out


def ash_from_bands(b11: np.ndarray, b14: np.ndarray, b15: np.ndarray) -> np.ndarray:
    """Ash false-colour RGB from brightness temperatures: (...,) -> (..., 3) in [0, 1].

    The ranges above, as pycontrails' `to_ash` (convention "SEVIRI").
    """

    def scale(x: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
        lo, hi = rng
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)

    r = scale(b15 - b14, ASH_R_RANGE)
    g = scale(b14 - b11, ASH_G_RANGE)
    b = scale(b14, ASH_B_RANGE)
    return np.stack([r, g, b], axis=-1).astype(np.float32, copy=False)


def ash_rgb(record_dir: str | Path, frames: Sequence[int] | None = None) -> np.ndarray:
    """Ash RGB of a record: (T, H, W, 3) float32 in [0, 1]; `frames=None` means all 8."""
    bands = read_bands(record_dir, (11, 14, 15), frames)
    return ash_from_bands(bands[11], bands[14], bands[15])


def channels_from_bands(bands: dict[int, np.ndarray], channels: Sequence[str]) -> np.ndarray:
    """Stack the requested channels (ash in [0, 1]; raw bands and differences in K) as (T, H, W, C)."""
    planes: list[np.ndarray] = []
    ash = None
    for name in channels:
        if name in ASH_CHANNELS:
            if ash is None:
                ash = ash_from_bands(bands[11], bands[14], bands[15])
            planes.append(ash[..., ASH_CHANNELS.index(name)])
        elif name in DIFF_CHANNELS:
            a, b = DIFF_CHANNELS[name]
            planes.append(bands[a] - bands[b])
        else:
            planes.append(bands[int(name.split("_")[1])])
    return np.stack(planes, axis=-1).astype(np.float32, copy=False)


def bands_needed(channels: Sequence[str]) -> tuple[int, ...]:
    """The band numbers that `channels` are computed from, sorted."""
    need: set[int] = set()
    for name in channels:
        if name in ASH_CHANNELS:
            need |= {11, 14, 15}
        elif name in DIFF_CHANNELS:
            need |= set(DIFF_CHANNELS[name])
        else:
            need.add(int(name.split("_")[1]))
    return tuple(sorted(need))


def read_channels(
    record_dir: str | Path, channels: Sequence[str], frames: Sequence[int] | None = None
) -> np.ndarray:
    """The selected input channels of a record: (T, H, W, C) float32, unnormalised."""
    chans = resolve_channels(channels)
    return channels_from_bands(read_bands(record_dir, bands_needed(chans), frames), chans)


def _binary_mask(path: Path) -> np.ndarray:
    arr = np.asarray(load_npy(path))
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: shape {arr.shape}, expected (H, W, 1).")
    if not np.isin(arr, (0, 1)).all():
        raise DataError(f"{path}: mask values outside {{0, 1}} ({np.unique(arr)[:8].tolist()}).")
    return arr.astype(np.uint8)


def load_mask(record_dir: str | Path) -> np.ndarray | None:
    """The labelled mask of frame 4: (H, W) uint8 in {0, 1}, or None where the record has none (test)."""
    path = Path(record_dir) / PIXEL_MASK_FILE
    return _binary_mask(path) if path.exists() else None


def load_soft_label(record_dir: str | Path) -> np.ndarray | None:
    """Mean of the individual annotators' masks: (H, W) float32 in [0, 1], or None where absent."""
    path = Path(record_dir) / INDIVIDUAL_MASKS_FILE
    if not path.exists():
        return None
    arr = np.asarray(load_npy(path))
    if arr.ndim != 4 or arr.shape[2] != 1 or arr.shape[3] < 1:
        raise DataError(f"{path}: shape {arr.shape}, expected (H, W, 1, R) with R ≥ 1 annotators.")
    if not np.isin(arr, (0, 1)).all():
        raise DataError(f"{path}: mask values outside {{0, 1}}.")
    return arr[:, :, 0, :].mean(axis=-1, dtype=np.float32)


def resize_frames(x: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize (T, H, W, C) to (T, size, size, C); a no-op at the right size."""
    t, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    flat = np.ascontiguousarray(x.transpose(1, 2, 0, 3).reshape(h, w, t * c))
    # cv2 handles at most 512 channels per call; T·C is far below that for any sane input.
    out = cv2.resize(flat, (size, size), interpolation=INTERPOLATIONS[interpolation])
    return np.ascontiguousarray(out.reshape(size, size, t, c).transpose(2, 0, 1, 3))


def resize_mask(mask: np.ndarray, size: int, *, soft: bool = False) -> np.ndarray:
    """Resize a (H, W) mask: nearest for hard masks, bilinear for soft labels (a probability stays one)."""
    if mask.shape == (size, size):
        return mask
    interp = cv2.INTER_LINEAR if soft else cv2.INTER_NEAREST
    return cv2.resize(mask, (size, size), interpolation=interp)


@dataclass
class RawSample:
    """What one record yields before normalisation and augmentation."""

    record_id: str
    image: np.ndarray  # (T, H, W, C) float32
    mask: np.ndarray | None  # (H, W) uint8
    soft: np.ndarray | None  # (H, W) float32


def read_sample(
    ref: RecordRef,
    channels: Sequence[str] = ("ash",),
    frames: Sequence[int] | None = None,
    image_size: int | None = None,
    interpolation: str = "bilinear",
) -> RawSample:
    """Read one record as model input (resized to `image_size` when it differs) with its labels."""
    image = read_channels(ref.path, channels, frames)
    mask, soft = load_mask(ref.path), load_soft_label(ref.path)
    h, w = image.shape[1:3]
    for name, m in (("human_pixel_masks", mask), ("human_individual_masks", soft)):
        if m is not None and m.shape != (h, w):
            raise DataError(f"{ref.path}: {name} is {m.shape[0]}×{m.shape[1]} but the bands are {h}×{w}.")
    if image_size is not None:
        image = resize_frames(image, image_size, interpolation)
        mask = None if mask is None else resize_mask(mask, image_size)
        soft = None if soft is None else resize_mask(soft, image_size, soft=True)
    return RawSample(ref.record_id, image, mask, soft)
