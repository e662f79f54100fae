"""Reading pseudo labels (written by `segladder pseudo-label`) so a training set can use them as targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segladder.data.contrails import resize_mask
from segladder.errors import DataError

INDEX_FORMAT = "segladder-pseudo-labels"  # the format `segladder.inference.pseudo` writes


class PseudoLabels:
    """A folder of float16 probability maps with its index.json; `load(record_id, size)` gives (H, W) float32.

    Args:
        folder: the folder `segladder pseudo-label` wrote.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "index.json"
        if not index.exists():
            raise DataError(
                f"{index}: missing; pseudo labels are complete only once `segladder pseudo-label` "
                "has written it. Re-run that command."
            )
        try:
            meta = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{index}: unreadable ({exc}); re-run `segladder pseudo-label`.") from None
        if meta.get("format") != INDEX_FORMAT:
            raise DataError(f"{index}: not a {INDEX_FORMAT} index.")
        self.split: str = meta["split"]
        self.records: list[str] = [str(r) for r in meta["records"]]
        self._pattern: str = meta["path"]

    def load(self, record_id: str, size: int) -> np.ndarray:
        """The pseudo label of `record_id` as (size, size) float32 probabilities."""
        path = self.folder / self._pattern.format(record_id=record_id)
        try:
            soft = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}: pseudo label unreadable ({exc}); re-run `segladder pseudo-label`."
            ) from None
        return resize_mask(soft, size, soft=True)

    def check_covers(self, record_ids: list[str], where: str) -> None:
        """Refuse pseudo labels that lack some of `record_ids` (the records of `where`)."""
        missing = sorted(set(record_ids) - set(self.records))
        if missing:
            raise DataError(
                f"pseudo labels in {self.folder} cover split '{self.split}' but not {len(missing)} record(s) "
                f"of {where} (e.g. {missing[0]}); make them for the same data."
            )
