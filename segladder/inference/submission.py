"""The competition's submission format: run-length encoding of masks and validation of a submission file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from segladder.data.cache import ContrailsCache, is_cache
from segladder.data.contrails import discover_records, load_npy
from segladder.data.layout import BAND_FILES
from segladder.errors import SegladderError

SUBMISSION_HEADER = ("record_id", "encoded_pixels")
EMPTY = "-"  # how the competition writes an empty mask


class SubmissionError(SegladderError, ValueError):
    """A run-length encoding or a submission file is malformed."""


def rle_encode(mask: np.ndarray) -> str:
    """(H, W) mask (non-zero = positive) → 'start length ...', 1-indexed, column-major; '-' when empty."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise SubmissionError(f"rle_encode needs an (H, W) mask, got shape {m.shape}")
    # Column-major: pixels are numbered top to bottom, then left to right (the Kaggle competition's submission
    # format, "Google Research - Identify Contrails to Reduce Global Warming", Evaluation page).
    flat = m.T.reshape(-1).astype(bool)
    if not flat.any():
        return EMPTY
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).view(np.int8))) + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {n}" for s, n in zip(starts.tolist(), (ends - starts).tolist(), strict=True))


def rle_problems(rle: str, n_pixels: int) -> list[str]:
    """What is wrong with one encoded mask of `n_pixels` pixels (at most one message per kind); [] when valid."""
    text = rle.strip()
    if text == EMPTY:
        return []
    if not text:
        return [f"empty field; an empty mask is written '{EMPTY}'"]
    tokens = text.split()
    bad = [t for t in tokens if not t.isdigit()]
    if bad:
        return [f"not a non-negative integer: {bad[0]!r}"]
    if big := [t for t in tokens if len(t.lstrip("0")) > 18]:
        return [f"integer {big[0]} is far beyond any image"]
    if len(tokens) % 2:
        return [f"odd number of integers ({len(tokens)}); expected 'start length' pairs"]
    values = np.array([int(t) for t in tokens], dtype=np.int64)
    starts, lengths = values[0::2], values[1::2]
    problems = []
    if (i := _first(starts < 1)) is not None:
        problems.append(f"pair {i + 1}: start {starts[i]} < 1 (starts are 1-indexed)")
    if (i := _first(lengths < 1)) is not None:
        problems.append(f"pair {i + 1}: length {lengths[i]} < 1")
    if (i := _first(starts[1:] <= starts[:-1])) is not None:
        problems.append(
            f"pair {i + 2}: start {starts[i + 1]} is not after the previous start {starts[i]} (pairs must be sorted)"
        )
    elif (i := _first(starts[1:] < starts[:-1] + lengths[:-1])) is not None:
        problems.append(f"pair {i + 2}: start {starts[i + 1]} overlaps the run {starts[i]}+{lengths[i]}")
    if (i := _first(starts + lengths - 1 > n_pixels)) is not None:
        problems.append(f"pair {i + 1}: run {starts[i]}+{lengths[i]} ends past the last pixel {n_pixels}")
    return problems


def _first(flags: np.ndarray) -> int | None:
    idx = np.flatnonzero(flags)
    return int(idx[0]) if idx.size else None


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) uint8 {0, 1} mask of an encoding; SubmissionError when it is malformed for `shape`."""
    h, w = shape
    problems = rle_problems(rle, h * w)
    if problems:
        raise SubmissionError(f"bad run-length encoding: {problems[0]}")
    flat = np.zeros(h * w, np.uint8)
    if rle.strip() != EMPTY:
        values = np.array(rle.split(), dtype=np.int64)
        for start, length in zip(values[0::2], values[1::2], strict=True):
            flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(w, h).T.copy()


def read_submission(path: str | Path) -> dict[str, str]:
    """record_id → encoded pixels of a well-formed submission (use `check_submission` to diagnose a bad one)."""
    problems = check_submission(path)
    if problems:
        raise SubmissionError(
            f"{path}: {problems[0]}"
            + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
        )
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return {rid: rle for rid, rle in rows}


def split_shapes(data: str | Path, split: str) -> dict[str, tuple[int, int]]:
    """record_id → (H, W) of every record of a split: from band headers (raw layout) or the cache's size."""
    if is_cache(data):
        cache = ContrailsCache(data)
        size = cache.options.image_size
        return dict.fromkeys(cache.split(split).ids, (size, size))
    return {
        r.record_id: tuple(load_npy(r.path / BAND_FILES[0]).shape[:2]) for r in discover_records(data, split)
    }


def check_submission(path: str | Path, data: str | Path | None = None, split: str = "test") -> list[str]:
    """One line per problem of a submission file: header, rows, RLE, and (with `data`) ids against the split."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    shapes = split_shapes(data, split) if data is not None else None
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return [f"{path}: empty file; expected the header {','.join(SUBMISSION_HEADER)}"]
            if tuple(header) != SUBMISSION_HEADER:
                problems.append(
                    f"line 1: header {','.join(header)!r}, expected {','.join(SUBMISSION_HEADER)!r}"
                )
            for line, row in enumerate(reader, start=2):
                if len(row) != 2:
                    problems.append(f"line {line}: {len(row)} fields, expected 2 (record_id,encoded_pixels)")
                    continue
                rid, rle = row[0].strip(), row[1]
                if rid in seen:
                    problems.append(f"line {line}: duplicate record_id {rid} (first on line {seen[rid]})")
                    continue
                seen[rid] = line
                if shapes is not None and rid not in shapes:
                    problems.append(f"line {line}: record_id {rid} is not in split '{split}' of {data}")
                    continue
                h, w = shapes[rid] if shapes is not None else (np.iinfo(np.int64).max, 1)
                problems += [f"line {line}, record {rid}: {p}" for p in rle_problems(rle, h * w)]
    except (UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path}: not a readable CSV file ({exc})")
    if shapes is not None:
        problems += [f"missing record_id {rid} of split '{split}'" for rid in shapes if rid not in seen]
    return problems
