"""Cross-validation folds as data: a CSV of record → fold, stratified by "has a contrail", grouped by time or key."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segladder.data.cache import ContrailsCache, is_cache
from segladder.data.contrails import discover_records, read_metadata
from segladder.data.layout import PIXEL_MASK_FILE
from segladder.errors import DataError
from segladder.io import atomic_path

FOLD_COLUMNS = ("record_id", "split", "fold", "has_contrail", "group")


@dataclass(frozen=True)
class FoldRecord:
    """One row of a folds file: a record, the split it comes from, its fold, its label and its group.

    `has_contrail` is what folds are stratified by; records of one `group` (a time cluster or metadata key)
    share a fold.
    """

    record_id: str
    split: str
    fold: int
    has_contrail: bool
    group: str


def _labelled_records(root: Path, splits: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(split, record_id, has a contrail) for every record of `splits`, read from a cache or the raw layout."""
    out = []
    for split in splits:
        if is_cache(root):
            part = ContrailsCache(root).split(split)
            if not part.has_masks:
                raise DataError(
                    f"split '{split}' of {root} has no masks; folds are cut over labelled splits."
                )
            masks = part.arrays["masks"][part.rows]
            positive = masks.reshape(len(masks), -1).max(1) > 0
            out += [(split, rid, bool(p)) for rid, p in zip(part.ids, positive, strict=True)]
        else:
            for ref in discover_records(root, split):
                path = ref.path / PIXEL_MASK_FILE
                if not path.exists():
                    raise DataError(
                        f"{path} is missing; folds are cut over labelled splits (train, validation)."
                    )
                out.append((split, ref.record_id, bool(np.load(path, mmap_mode="r").any())))
    return out


def _groups(
    root: Path, records: list[tuple[str, str, bool]], by: str, window_s: float, group_key: str
) -> list[str]:
    """The group of each record: itself (`record`), a time cluster (`time`), or metadata values (`group`)."""
    if by == "record":
        return [f"{s}/{r}" for s, r, _ in records]
    if is_cache(root):
        raise DataError(
            f"{root} is a cache, which keeps no metadata: give the raw dataset root for --by {by} "
            "(the folds CSV then serves the cache too: record ids are the same)."
        )
    meta: dict[tuple[str, str], dict] = {}
    for split in {s for s, _, _ in records}:
        for m in read_metadata(root, split) or []:
            meta[(split, m["record_id"])] = m
    missing = [f"{s}/{r}" for s, r, _ in records if (s, r) not in meta]
    if missing:
        raise DataError(
            f"no metadata for {len(missing)} record(s) (e.g. {missing[0]}) in {root}: --by {by} needs "
            "the split's *_metadata.json; use --by record instead."
        )
    if by == "group":
        keys = [k.strip() for k in group_key.split(",") if k.strip()]
        bad = [k for k in keys if k not in meta[(records[0][0], records[0][1])]]
        if bad:
            known = ", ".join(sorted(meta[(records[0][0], records[0][1])]))
            raise DataError(f"--group-key {','.join(bad)}: not a metadata field; fields: {known}.")
        return ["|".join(str(meta[(s, r)][k]) for k in keys) for s, r, _ in records]
    # Time: records whose timestamps lie within `window_s` of a neighbour form one cluster, so frames that
    # neighbour in time never straddle folds (the classify-then-segment experiments found a validation set
    # drawn at random too close to training).
    times = np.array([float(meta[(s, r)]["timestamp"]) for s, r, _ in records])
    order = np.argsort(times, kind="stable")
    cluster = np.empty(len(records), dtype=np.int64)
    current = 0
    for i, idx in enumerate(order):
        if i and times[idx] - times[order[i - 1]] > window_s:
            current += 1
        cluster[idx] = current
    return [f"t{c}" for c in cluster]


def assign_folds(
    groups: Sequence[str], positive: Sequence[bool], k: int, seed: int = 0, fix: str | None = None
) -> list[int]:
    """A fold per record: whole groups to folds, balancing record counts and positive counts (greedy).

    Groups are visited largest first (ties in a seeded random order) and each goes to the fold that is
    furthest below its share of records and of positives, so folds are stratified by "has a contrail".
    `fix` is what the error for too few groups advises (the options of the command that asked).
    """
    names = sorted(set(groups))
    if len(names) < k:
        raise DataError(
            f"only {len(names)} group(s) for {k} folds: {fix or 'lower --k or use a finer --by'}."
        )
    members: dict[str, list[int]] = {g: [] for g in names}
    for i, g in enumerate(groups):
        members[g].append(i)
    rng = np.random.default_rng(seed)
    tiebreak = dict(zip(names, rng.permutation(len(names)), strict=True))
    order = sorted(names, key=lambda g: (-len(members[g]), tiebreak[g]))
    n_total, p_total = len(groups), max(1, sum(bool(p) for p in positive))
    counts, pos = np.zeros(k), np.zeros(k)
    fold_of = [0] * len(groups)
    for g in order:
        n, p = len(members[g]), sum(bool(positive[i]) for i in members[g])
        deficit = (counts + n) / n_total + (pos + p) / p_total
        f = int(np.argmin(deficit + 1e-9 * np.arange(k)))
        counts[f] += n
        pos[f] += p
        for i in members[g]:
            fold_of[i] = f
    return fold_of


def make_folds(
    root: str | Path,
    out: str | Path,
    *,
    k: int = 5,
    by: str = "record",
    splits: Sequence[str] = ("train",),
    seed: int = 0,
    window_minutes: float = 60.0,
    group_key: str = "row_min,col_min",
    k_option: str = "--k",
) -> list[FoldRecord]:
    """Cut `splits` of `root` into `k` folds and write them as CSV (`FOLD_COLUMNS`); returns the rows.

    `k_option` is how the caller's command names `k` (`data folds --k`, `train --folds`), for its errors.
    """
    if k < 2:
        raise DataError(f"{k_option} {k}: cross-validation needs at least 2 folds.")
    if by not in ("record", "time", "group"):
        raise DataError(f"--by {by!r}: use record, time or group.")
    root = Path(root)
    records = _labelled_records(root, splits)
    if not records:
        raise DataError(f"no records in split(s) {', '.join(splits)} of {root}.")
    groups = _groups(root, records, by, window_minutes * 60.0, group_key)
    fix = None if k_option == "--k" else f"lower {k_option} to at most {len(set(groups))}"
    folds = assign_folds(groups, [p for _, _, p in records], k, seed, fix)
    rows = [FoldRecord(r, s, f, p, g) for (s, r, p), f, g in zip(records, folds, groups, strict=True)]
    with atomic_path(Path(out)) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FOLD_COLUMNS)
        w.writerows((r.record_id, r.split, r.fold, int(r.has_contrail), r.group) for r in rows)
    return rows


def read_folds(path: str | Path) -> list[FoldRecord]:
    """The rows of a folds CSV, with a clear error for a missing file, missing columns or bad values."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"folds file {path} does not exist; make one with `segladder data folds ROOT --out {path}`."
        )
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in FOLD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(FOLD_COLUMNS)}."
            )
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                rows.append(
                    FoldRecord(
                        row["record_id"],
                        row["split"],
                        int(row["fold"]),
                        row["has_contrail"] == "1",
                        row["group"],
                    )
                )
            except ValueError:
                raise DataError(f"{path}:{n}: fold {row['fold']!r} is not an integer.") from None
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r.split, r.record_id) in seen:
            raise DataError(f"{path}: record {r.split}/{r.record_id} appears twice.")
        seen.add((r.split, r.record_id))
    return rows


def split_record_ids(root: str | Path, split: str) -> list[str]:
    """The record ids of `split` in a raw dataset or a cache (without reading any record)."""
    if is_cache(root):
        return [str(i) for i in ContrailsCache(root).split(split).ids]
    return [ref.record_id for ref in discover_records(root, split)]


def pooled_splits(data) -> list[str]:
    """The splits a run with folds must find in its folds file (`data` is a `DataConfig`).

    Those it names in data.train_split when set; by default (none) the folds file's own splits are the pool.
    """
    return data.train_split.split("+") if "train_split" in data.model_fields_set else []


def check_covers(
    rows: Sequence[FoldRecord], path: str | Path, root: str | Path, splits: Sequence[str], k: int
) -> None:
    """Refuse a folds file that does not match the dataset it is used with.

    That is a record it names that `root` lacks (folds cut from another dataset), or records of `splits` (the
    splits the run pools, and those the file names) that have no fold, which would never be trained or
    validated on.
    """
    root = Path(root)
    named: dict[str, set[str]] = {}
    for r in rows:
        named.setdefault(r.split, set()).add(r.record_id)
    pooled = list(dict.fromkeys([*splits, *named]))
    fix = (
        f"cut folds for this dataset with `segladder data folds {root} --k {k} --pool {','.join(pooled)} "
        "--out NEW.csv` and set data.folds=NEW.csv"
    )
    for split in pooled:
        present = split_record_ids(root, split)
        unknown = sorted(named.get(split, set()) - set(present))
        if unknown:
            raise DataError(
                f"{path}: {len(unknown)} record(s) of split '{split}' are not in {root} (first: "
                f"{split}/{unknown[0]}), so the folds were cut from another dataset; {fix}."
            )
        missing = [rid for rid in present if rid not in named.get(split, set())]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} of the {len(present)} records of split '{split}' in {root} have no "
                f"fold (first: {split}/{missing[0]}), so they would never be trained or validated on; {fix}."
            )


def fold_count(rows: Sequence[FoldRecord]) -> int:
    """The number of folds in `rows`: the highest fold plus one."""
    return max(r.fold for r in rows) + 1


def check_trainable(rows: Sequence[FoldRecord], path: str | Path, wanted: int | None = None) -> int:
    """The number of folds in `rows` (read from `path`), each checked to hold out and leave records.

    Otherwise a DataError names the file, the fold and the command that cuts `wanted` folds (what the run
    asked for; default: the file's count).
    """
    if not rows:
        raise DataError(f"{path}: no records; cut folds with `segladder data folds ROOT --out {path}`.")
    k = fold_count(rows)
    sizes = [0] * k
    for r in rows:
        if r.fold < 0:
            raise DataError(f"{path}: record {r.split}/{r.record_id} has fold {r.fold}; folds count from 0.")
        sizes[r.fold] += 1
    cut = wanted or (k if k >= 2 else 5)
    fix = (
        f"cut folds again with `segladder data folds ROOT --k {cut} --out NEW.csv` and set data.folds=NEW.csv"
    )
    if k < 2:
        raise DataError(f"{path}: every record is in fold 0, so fold 0 has no records to train on; {fix}.")
    empty = [f for f, n in enumerate(sizes) if n == 0]
    if empty:
        raise DataError(
            f"{path}: fold {empty[0]} holds no records (folds 0..{k - 1} are numbered), so it has nothing "
            f"to validate on; {fix}."
        )
    return k
