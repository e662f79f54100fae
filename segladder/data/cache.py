"""The compact cache: raw records → memory-mapped uint8/float16 arrays, prepared in parallel and resumable.

Layout of a cache folder::

    manifest.json          written last, atomically: a cache without it is incomplete and never read
    state.json             options, statistics and shapes, written before any array (enables resume)
    <split>/ids.json       record ids (strings), row order of the arrays below
    <split>/images.npy     (N, C, T, H, W) uint8 or float16, quantised per channel (see `encoding`)
    <split>/masks.npy      (N, H, W) uint8            train / validation only
    <split>/soft.npy       (N, H, W) uint8, mean of annotators × 255, where individual masks exist
    <split>/done.npy       (N,) bool, rows finished so far
    .prepare.lock          while a `data prepare` writes: its pid (a second one into the same folder refuses)
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segladder.data.check import check_record
from segladder.data.contrails import (
    ASH_CHANNELS,
    INTERPOLATIONS,
    RecordRef,
    bands_needed,
    discover_records,
    present_splits,
    read_sample,
    resolve_channels,
    resolve_frames,
)
from segladder.data.layout import DEFAULT_SIZE
from segladder.errors import BadDatasetError, CacheError, DataError
from segladder.io import (
    atomic_save_npy,
    atomic_write_json,
    exclusive_lock,
    free_bytes,
    guard_writes,
    preallocate,
    refuse_overwriting_inputs,
)
from segladder.progress import console, parallel_map

CACHE_FORMAT = "segladder-contrails-cache"
LOCK_FILE = ".prepare.lock"
CACHE_VERSION = 1
DTYPES = ("uint8", "float16")
# Non-ash channels are stored as standardised values; uint8 keeps mean ± STD_RANGE·std.
STD_RANGE = 4.0


@dataclass(frozen=True)
class CacheOptions:
    """What a cache holds; a cache answers a request only when these match (see `CacheSplit.select`)."""

    frames: tuple[int, ...] = tuple(range(8))
    channels: tuple[str, ...] = ASH_CHANNELS
    image_size: int = DEFAULT_SIZE
    dtype: str = "uint8"
    interpolation: str = "bilinear"
    stats_records: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", resolve_frames(self.frames))
        object.__setattr__(self, "channels", resolve_channels(self.channels))
        if self.dtype not in DTYPES:
            raise DataError(f"cache dtype '{self.dtype}' is not one of {DTYPES}.")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"interpolation '{self.interpolation}' is not one of {tuple(INTERPOLATIONS)}.")
        if self.image_size < 8:
            raise DataError(f"image_size {self.image_size} is too small (need ≥ 8).")

    def to_dict(self) -> dict:
        """The options as JSON-ready values (tuples as lists), as the manifest stores them."""
        d = asdict(self)
        d["frames"], d["channels"] = list(self.frames), list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CacheOptions:
        """The options a manifest stored (`to_dict`'s output)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# --------------------------------------------------------------------------------------------- stats


def _stats_one(args: tuple[RecordRef, CacheOptions]) -> np.ndarray:
    ref, opt = args
    if check_record(ref, values=True, bands=bands_needed(opt.channels)):
        return np.zeros((3, len(opt.channels)))  # bad records are reported by whoever reads them in full
    img = read_sample(ref, opt.channels, opt.frames, opt.image_size, opt.interpolation).image
    flat = img.reshape(-1, img.shape[-1]).astype(np.float64)
    return np.stack([np.full(flat.shape[1], flat.shape[0], np.float64), flat.sum(0), (flat**2).sum(0)])


def compute_stats(
    root: str | Path, options: CacheOptions, *, workers: int | None = None, progress: bool = True
) -> dict | None:
    """Per-channel mean/std over the training split (an evenly spaced subset of `stats_records`; 0 = all).

    Returns None when the dataset has no train split; statistics then cannot be had.
    """
    refs = discover_records(root, "train", required=False)
    if not refs:
        return None
    n = options.stats_records
    if 0 < n < len(refs):
        refs = [refs[i] for i in np.linspace(0, len(refs) - 1, n).round().astype(int)]
    acc = np.zeros((3, len(options.channels)))
    for part in parallel_map(
        _stats_one,
        [(r, options) for r in refs],
        workers=workers,
        description="training-set statistics",
        progress=progress,
    ):
        acc += part
    count, s, ss = acc
    mean = s / count
    std = np.sqrt(np.maximum(ss / count - mean**2, 0.0))
    return {
        "channels": list(options.channels),
        "mean": mean.tolist(),
        "std": np.maximum(std, 1e-6).tolist(),
        "records": len(refs),
    }


def encoding(options: CacheOptions, stats: dict | None) -> dict[str, list[float]]:
    """Per-channel affine map from stored values q to model units: x = q·scale + offset.

    Ash channels come back in [0, 1]; every other channel comes back standardised by training statistics.
    """
    scale, offset = [], []
    for ch in options.channels:
        if ch in ASH_CHANNELS:
            scale.append(1 / 255 if options.dtype == "uint8" else 1.0)
            offset.append(0.0)
        elif options.dtype == "uint8":
            scale.append(2 * STD_RANGE / 255)
            offset.append(-STD_RANGE)
        else:
            scale.append(1.0)
            offset.append(0.0)
        if ch not in ASH_CHANNELS and stats is None:
            raise DataError(
                f"channel '{ch}' is standardised by training-set statistics, but the dataset has no train split."
            )
    return {"scale": scale, "offset": offset}


def standardise(image: np.ndarray, channels: Sequence[str], stats: dict | None) -> np.ndarray:
    """Standardise non-ash channels of a (..., C) array by the training statistics (in place)."""
    for c, ch in enumerate(channels):
        if ch in ASH_CHANNELS:
            continue
        if stats is None:
            raise DataError(f"channel '{ch}' needs training-set statistics; the dataset has no train split.")
        k = stats["channels"].index(ch)
        image[..., c] -= stats["mean"][k]
        image[..., c] /= stats["std"][k]
    return image


def _encode(image: np.ndarray, options: CacheOptions, stats: dict | None, enc: dict) -> np.ndarray:
    """(T, H, W, C) float32 raw units → (C, T, H, W) stored dtype."""
    x = standardise(image.copy(), options.channels, stats).transpose(3, 0, 1, 2)
    if options.dtype == "float16":
        return x.astype(np.float16)
    scale = np.asarray(enc["scale"], np.float32)[:, None, None, None]
    offset = np.asarray(enc["offset"], np.float32)[:, None, None, None]
    q = np.rint((x - offset) / scale)
    return np.clip(q, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    """What `prepare_cache` did: records per split, written and reused ones, and the ids skipped as bad."""

    path: Path
    records: dict[str, int] = field(default_factory=dict)
    written: int = 0
    reused: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)


def _split_files(options: CacheOptions, n: int, labelled: bool, soft: bool) -> dict[str, dict]:
    s = options.image_size
    files = {
        "images": {"shape": [n, len(options.channels), len(options.frames), s, s], "dtype": options.dtype}
    }
    if labelled:
        files["masks"] = {"shape": [n, s, s], "dtype": "uint8"}
    if soft:
        files["soft"] = {"shape": [n, s, s], "dtype": "uint8"}
    return files


def _prepare_chunk(
    args: tuple[Path, str, list[tuple[int, RecordRef]], dict],
) -> tuple[str, list[int], list[tuple[str, str]]]:
    out, split, items, state = args
    options = CacheOptions.from_dict(state["options"])
    stats, enc = state["stats"], state["encoding"]
    files = state["splits"][split]["files"]
    arrays = {name: np.load(out / split / f"{name}.npy", mmap_mode="r+") for name in files}
    done, bad = [], []
    bands = bands_needed(options.channels)
    for row, ref in items:
        reasons = check_record(ref, values=True, bands=bands)
        if reasons:
            bad.append((ref.record_id, "; ".join(reasons)))
            continue
        sample = read_sample(ref, options.channels, options.frames, options.image_size, options.interpolation)
        arrays["images"][row] = _encode(sample.image, options, stats, enc)
        if "masks" in arrays:
            arrays["masks"][row] = sample.mask
        if "soft" in arrays:
            # A record without individual masks in a split that has them: its hard label is the best soft one.
            soft = sample.soft if sample.soft is not None else sample.mask.astype(np.float32)
            arrays["soft"][row] = np.rint(soft * 255).astype(np.uint8)
        done.append(row)
    for arr in arrays.values():
        arr.flush()
    return split, done, bad


def refuse_cache_inside_dataset(root: Path, out: Path, splits: Sequence[str] | None = None) -> None:
    """Refuse a cache whose <split>/ folders and arrays would land on ROOT's files or among its records.

    A folder inside ROOT, beside its splits, is fine, also when resumed.
    """
    root, out = Path(root), Path(out)
    split_dirs = {f"ROOT/{s}": root / s for s in (splits or present_splits(root))}
    refuse_overwriting_inputs(
        {"--out": out}, {"ROOT": root, **split_dirs}, shallow=("ROOT",), sealed=tuple(split_dirs)
    )


def prepare_cache(
    root: str | Path,
    out: str | Path,
    options: CacheOptions | None = None,
    splits: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    overwrite: bool = False,
    chunk: int = 16,
) -> PrepareResult:
    """Convert raw records into a cache at `out`; an interrupted run picks up where it stopped."""
    root, out = Path(root), Path(out)
    options = options or CacheOptions()
    splits = list(splits) if splits else present_splits(root)
    refs = {s: discover_records(root, s) for s in splits}
    if not refs:
        discover_records(root, "train")  # the clear "missing root / split" error
    if out.exists() and not out.is_dir():
        raise CacheError(f"cache path {out} is a file; give a folder.")
    refuse_cache_inside_dataset(root, out, splits)
    with exclusive_lock(out / LOCK_FILE, f"cache folder {out}"):
        return _prepare_locked(
            root, out, options, refs, splits, workers, progress, skip_bad, overwrite, chunk
        )


def _prepare_locked(
    root, out, options, refs, splits, workers, progress, skip_bad, overwrite, chunk
) -> PrepareResult:
    state = _start_or_resume(root, out, options, refs, overwrite, workers, progress)

    result = PrepareResult(out, {s: len(r) for s, r in refs.items()})
    work: list[tuple[Path, str, list[tuple[int, RecordRef]], dict]] = []
    done_masks: dict[str, np.ndarray] = {}
    for split, split_refs in refs.items():
        done = np.load(out / split / "done.npy")
        done_masks[split] = done
        result.reused += int(done.sum())
        todo = [(i, r) for i, r in enumerate(split_refs) if not done[i]]
        work += [(out, split, todo[k : k + chunk], state) for k in range(0, len(todo), chunk)]

    bad: dict[str, list[tuple[str, str]]] = {s: [] for s in splits}
    total = sum(len(w[2]) for w in work)
    for split, rows, bad_rows in parallel_map(
        _prepare_chunk,
        work,
        workers=workers,
        description="preparing cache",
        progress=progress,
        total=total,
        advance=lambda r: len(r[1]) + len(r[2]),
    ):
        done_masks[split][rows] = True
        atomic_save_npy(out / split / "done.npy", done_masks[split])
        result.written += len(rows)
        bad[split] += bad_rows

    problems = sorted(p for s in splits for p in bad[s])
    if problems and not skip_bad:
        raise BadDatasetError(
            problems,
            str(root),
            "Fix or remove these records, or run `segladder data prepare ... --skip-bad` to leave them out. "
            "Finished records are kept: re-running resumes.",
        )
    for split in splits:
        result.skipped[split] = sorted(rid for rid, _ in bad[split])
        for rid, reason in bad[split]:
            console.print(f"[yellow]skipped[/] {rid}: {reason}")
    manifest = dict(state, complete=True, skipped=result.skipped)
    atomic_write_json(out / "manifest.json", manifest)
    return result


def _start_or_resume(root, out, options, refs, overwrite, workers, progress) -> dict:
    manifest_path, state_path = out / "manifest.json", out / "state.json"
    if out.exists() and not out.is_dir():
        raise CacheError(f"cache path {out} is a file; give a folder.")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not state_path.exists():
        raise CacheError(f"{out} exists and is not a segladder cache; give an empty or new folder.")
    ids = {s: [r.record_id for r in rs] for s, rs in refs.items()}
    if state_path.exists() and not overwrite:
        state = json.loads(state_path.read_text())
        if state.get("options") != options.to_dict():
            raise CacheError(
                f"{out} was prepared with other options {state.get('options')} than asked {options.to_dict()}. "
                "Use another --out, or --overwrite to rebuild it."
            )
        for split, split_ids in ids.items():
            have = state["splits"].get(split, {}).get("ids")
            if have is not None and have != split_ids:
                raise CacheError(
                    f"{out}: the records of split '{split}' changed since it was prepared; use --overwrite."
                )
        if all(s in state["splits"] for s in ids):
            # Resuming: the manifest goes first, so that a cache being changed never reads as complete.
            manifest_path.unlink(missing_ok=True)
            return state
        stats, enc = state["stats"], state["encoding"]
    else:
        if overwrite and out.exists():
            for entry in out.iterdir():  # all but the lock this run holds
                if entry.name != LOCK_FILE:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        stats = compute_stats(root, options, workers=workers, progress=progress)
        enc = encoding(options, stats)
        state = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "source": str(Path(root).resolve()),
            "options": options.to_dict(),
            "stats": stats,
            "encoding": enc,
            "splits": {},
        }
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    _allocate_new_splits(out, options, refs, ids, state)
    atomic_write_json(state_path, state)
    return state


def _allocate_new_splits(out: Path, options, refs: dict, ids: dict[str, list[str]], state: dict) -> None:
    """Create the arrays of each split of `refs` that `state` does not hold yet, and record them there.

    The arrays are full size and empty, with their ids.json and done.npy, and go into `state["splits"]`. Their
    space is checked first; an error removes every array this call created.
    """
    new_splits = {}
    for split, split_refs in refs.items():
        if split not in state["splits"]:
            has_soft = any((r.path / "human_individual_masks.npy").exists() for r in split_refs)
            new_splits[split] = _split_files(options, len(split_refs), split != "test", has_soft)
    # The arrays are written through memory maps, where a full disk is a SIGBUS, not an error: so their
    # space is checked and reserved here, before any record is read.
    needed = sum(
        int(np.prod(f["shape"])) * np.dtype(f["dtype"]).itemsize
        for fs in new_splits.values()
        for f in fs.values()
    )
    free = free_bytes(out)
    if new_splits and free is not None and needed > free:
        with guard_writes(out, needed=needed):
            raise OSError(errno.ENOSPC, "not enough space for the cache's arrays")
    created: list[Path] = []
    try:
        for split, files in new_splits.items():
            sdir = out / split
            sdir.mkdir(exist_ok=True)
            atomic_write_json(sdir / "ids.json", ids[split])
            for name, spec in files.items():
                path = sdir / f"{name}.npy"
                created.append(path)
                with guard_writes(
                    path, needed=int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                ):
                    np.lib.format.open_memmap(
                        path, mode="w+", dtype=spec["dtype"], shape=tuple(spec["shape"])
                    ).flush()
                preallocate(path)
            atomic_save_npy(sdir / "done.npy", np.zeros(len(refs[split]), bool))
            state["splits"][split] = {"ids": ids[split], "files": files}
    except BaseException:
        for path in created:  # no half-made array is left behind; earlier splits and files stay
            path.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- read


class CacheSplit:
    """Memory-mapped arrays of one split of a prepared cache.

    Args:
        cache: the cache the split belongs to.
        split: the split's name.
    """

    def __init__(self, cache: ContrailsCache, split: str):
        self.cache, self.split = cache, split
        info = cache.manifest["splits"][split]
        sdir = cache.path / split
        self.arrays: dict[str, np.ndarray] = {}
        for name, spec in info["files"].items():
            path = sdir / f"{name}.npy"
            try:
                # Copy-on-write: writable views (torch.from_numpy needs them) that never touch the file.
                arr = np.load(path, mmap_mode="c", allow_pickle=False)
            except FileNotFoundError:
                raise CacheError(
                    f"{path}: missing from the cache. Re-run `segladder data prepare` with --overwrite."
                ) from None
            except (ValueError, OSError, EOFError) as exc:
                raise CacheError(
                    f"{path}: corrupted ({exc}). Re-run `segladder data prepare` with --overwrite."
                ) from exc
            if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
                raise CacheError(
                    f"{path}: holds {arr.dtype}{list(arr.shape)}, the manifest says {spec['dtype']}{spec['shape']}; "
                    "the cache is corrupted. Re-run `segladder data prepare` with --overwrite."
                )
            self.arrays[name] = arr
        skipped = set(cache.manifest.get("skipped", {}).get(split, []))
        all_ids = info["ids"]
        rows = {len(a) for a in self.arrays.values()}
        if rows != {len(all_ids)}:
            raise CacheError(
                f"{cache.path / 'manifest.json'}: {len(all_ids)} record ids for split '{split}' but "
                f"its arrays hold {sorted(rows)[0]} rows; the cache was changed. Re-run "
                "`segladder data prepare` with --overwrite."
            )
        self.rows = np.array([i for i, r in enumerate(all_ids) if r not in skipped], dtype=np.int64)
        self.ids = [all_ids[i] for i in self.rows]
        if not self.ids:
            raise DataError(f"split '{split}' of cache {cache.path} holds no records.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_masks(self) -> bool:
        """Whether the split holds pixel masks (the test split does not)."""
        return "masks" in self.arrays

    @property
    def has_soft(self) -> bool:
        """Whether the split holds soft labels (the annotators' mean mask)."""
        return "soft" in self.arrays


class ContrailsCache:
    """A prepared cache: its manifest (options, statistics, encoding) and its splits.

    Args:
        path: the cache's folder (holding manifest.json).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            state = (
                "an interrupted preparation (re-run the same `segladder data prepare` to finish it)"
                if (self.path / "state.json").exists()
                else "no cache"
            )
            raise CacheError(f"{self.path}: no manifest.json; this is {state}.")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(
                f"{mpath}: unreadable ({exc}); re-run `segladder data prepare` with --overwrite."
            ) from exc
        if (
            not isinstance(self.manifest, dict)
            or self.manifest.get("format") != CACHE_FORMAT
            or not self.manifest.get("complete")
        ):
            raise CacheError(f"{mpath}: not a complete {CACHE_FORMAT} manifest.")
        if self.manifest.get("version") != CACHE_VERSION:
            raise CacheError(
                f"{mpath}: cache version {self.manifest.get('version')}, this segladder reads {CACHE_VERSION}; re-prepare it."
            )
        missing = [k for k in ("options", "stats", "encoding", "splits") if k not in self.manifest]
        bad_splits = [
            s
            for s, info in self.manifest.get("splits", {}).items()
            if not isinstance(info, dict) or not {"ids", "files"} <= info.keys()
        ]
        if missing or bad_splits:
            raise CacheError(
                f"{mpath}: damaged (missing {', '.join(missing + [f'splits.{s}' for s in bad_splits])}); "
                "re-run `segladder data prepare` with --overwrite."
            )
        self.options = CacheOptions.from_dict(self.manifest["options"])
        self.stats: dict | None = self.manifest["stats"]
        self.encoding: dict = self.manifest["encoding"]
        self._splits: dict[str, CacheSplit] = {}

    @property
    def splits(self) -> list[str]:
        """The names of the splits the cache holds."""
        return list(self.manifest["splits"])

    def split(self, name: str) -> CacheSplit:
        """The split `name`, opened once; a CacheError naming the fix when the cache lacks it."""
        if name not in self.manifest["splits"]:
            raise CacheError(
                f"cache {self.path} has no split '{name}' (has {self.splits}); prepare it with --splits {name}."
            )
        if name not in self._splits:
            self._splits[name] = CacheSplit(self, name)
        return self._splits[name]

    def check_request(
        self, frames: Sequence[int], channels: Sequence[str], image_size: int
    ) -> tuple[list[int], list[int]]:
        """Indices of the requested frames and channels in the cache; a clear error when it cannot serve them."""
        o = self.options
        missing_f = [f for f in frames if f not in o.frames]
        missing_c = [c for c in channels if c not in o.channels]
        diffs = []
        if missing_f:
            diffs.append(f"frames {list(frames)} (cache has {list(o.frames)})")
        if missing_c:
            diffs.append(f"channels {list(channels)} (cache has {list(o.channels)})")
        if image_size != o.image_size:
            diffs.append(f"image_size {image_size} (cache has {o.image_size})")
        if diffs:
            raise CacheError(
                f"cache {self.path} was prepared with other options than asked: {'; '.join(diffs)}. "
                "Re-run `segladder data prepare` with matching --frames/--channels/--size into a new --out."
            )
        return [o.frames.index(f) for f in frames], [o.channels.index(c) for c in channels]


def is_cache(path: str | Path) -> bool:
    """Whether `path` is a prepared cache, finished (manifest.json) or interrupted (state.json)."""
    p = Path(path)
    return (p / "manifest.json").exists() or (p / "state.json").exists()
