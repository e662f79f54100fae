"""A realism test that cannot be tuned row by row: a small CNN trained to tell synthetic patches from real ones.

`synth compare`'s rows compare one statistic at a time, so a generator can match every row and still draw
skies no one would take for real (cloud texture, the shape of a contrail's edge). This test looks at whole
patches instead: a small convolutional network learns to separate patches of one dataset from patches of
another on one half of the records, and is scored on the other half by the ROC AUC of its outputs
(0.5: the two cannot be told apart; 1: always told apart). Records, never patches, are split, so a record
seen in training is never scored.

Each patch is three channels at the labelled frame, in kelvin, scaled by fixed constants so that absolute
temperatures stay visible: T14, the split-window differences T15 − T14 and T14 − T11 (the signals of ash
RGB, the false colour the contrail labellers worked in; Kulik 2019, the OpenContrails paper, Ng et al.
2023, arXiv:2304.02122). Half of a record's patches are centred on its contrail pixels when it has any, so
both sources are compared where contrails are as well as where they are not.

`realism_auc(a, b)` trains on the first half of A's and of B's records and scores the second halves. The
floor is REAL split against itself (`realism_floor`): two sets of real records differ by the skies they
happen to hold, and with few records a classifier finds some difference; a synthetic set is as good as
this test can show when its AUC is down to that floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from segladder.data.contrails import RecordRef, load_mask, read_bands
from segladder.data.layout import LABELED_FRAME

PATCH = 32  # pixels a side (smaller records give patches of their own size)
PATCHES_PER_RECORD = 32
EPOCHS = 12
BATCH = 64
LR = 1e-3
# Fixed scaling (K → about unit range), not per-patch statistics, so absolute temperatures stay visible.
T14_CENTRE, T14_SCALE = 260.0, 25.0
DIFF_15_14_SCALE = 3.0
DIFF_14_11_SCALE = 5.0


def record_patches(path: Path, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, size, size) float32 patches of one record at the labelled frame: scaled T14, T15 − T14, T14 − T11.

    Half are centred on contrail pixels of the record's mask when it has any, the rest anywhere.
    """
    bands = read_bands(path, (11, 14, 15), frames=[LABELED_FRAME])
    t11, t14, t15 = (bands[b][0].astype(np.float32) for b in (11, 14, 15))
    image = np.stack(
        [(t14 - T14_CENTRE) / T14_SCALE, (t15 - t14) / DIFF_15_14_SCALE, (t14 - t11) / DIFF_14_11_SCALE]
    )
    h, w = t14.shape
    size = min(size, h, w)
    mask = load_mask(path)
    on = np.argwhere(mask > 0) if mask is not None else np.zeros((0, 2), int)
    centres = rng.integers(0, [h, w], size=(n, 2))
    if len(on):
        half = n // 2
        centres[:half] = on[rng.integers(0, len(on), size=half)]
    tops = np.clip(centres[:, 0] - size // 2, 0, h - size)
    lefts = np.clip(centres[:, 1] - size // 2, 0, w - size)
    return np.stack([image[:, t : t + size, left : left + size] for t, left in zip(tops, lefts, strict=True)])


def _patches(refs: Sequence[RecordRef], size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([record_patches(r.path, PATCHES_PER_RECORD, size, rng) for r in refs])


class PatchClassifier(nn.Module):
    """Three conv blocks and a linear head: a logit that a (3, S, S) patch comes from the second dataset."""

    def __init__(self) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c_out in (16, 32, 64):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) patches → (B,) logits."""
        return self.head(self.features(x)).squeeze(1)


def _train(x: torch.Tensor, y: torch.Tensor, seed: int) -> PatchClassifier:
    """The classifier fitted to patches `x` and labels `y`, the two classes weighted equally."""
    torch.manual_seed(seed)
    model = PatchClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    pos = float(y.mean())
    weight = torch.where(y > 0, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx], weight=weight[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@dataclass
class RealismAUC:
    """How well a small CNN tells B's patches from A's on records it never trained on (0.5: not at all)."""

    auc: float
    train_records: tuple[int, int]  # A's and B's records it trained on
    test_records: tuple[int, int]  # A's and B's records it was scored on
    patches_per_record: int
    patch: int

    def as_dict(self) -> dict:
        """The figures as JSON."""
        return asdict(self)


def _halves(refs: Sequence[RecordRef]) -> tuple[list[RecordRef], list[RecordRef]]:
    ordered = sorted(refs, key=lambda r: (r.split, r.record_id))
    return ordered[0::2], ordered[1::2]


def realism_auc(
    a: Sequence[RecordRef], b: Sequence[RecordRef], *, patch: int = PATCH, seed: int = 0
) -> RealismAUC:
    """Train on the first half of A's and B's records (alternating by split and id), score the second halves."""
    from segladder.errors import DataError

    (a_train, a_test), (b_train, b_test) = _halves(a), _halves(b)
    if min(len(a_train), len(a_test), len(b_train), len(b_test)) == 0:
        raise DataError(
            f"the realism classifier needs at least 2 records on each side ({len(a)} and {len(b)} given): "
            "one half to train on, one to score."
        )
    size = patch

    def xy(a_refs, b_refs, s) -> tuple[torch.Tensor, torch.Tensor]:
        pa, pb = _patches(a_refs, size, s), _patches(b_refs, size, s + 1)
        x = torch.from_numpy(np.concatenate([pa, pb]))
        return x, torch.cat([torch.zeros(len(pa)), torch.ones(len(pb))])

    x_train, y_train = xy(a_train, b_train, seed)
    x_test, y_test = xy(a_test, b_test, seed + 2)
    with torch.inference_mode(False):
        model = _train(x_train, y_train, seed)
    with torch.no_grad():
        scores = torch.cat([model(chunk) for chunk in x_test.split(256)])
    auc = float(binary_auroc(scores, y_test.long()))
    return RealismAUC(
        auc,
        (len(a_train), len(b_train)),
        (len(a_test), len(b_test)),
        PATCHES_PER_RECORD,
        int(x_test.shape[-1]),
    )


def realism_floor(real: Sequence[RecordRef], *, patch: int = PATCH, seed: int = 0) -> RealismAUC:
    """REAL against itself: its records split in two alternating sets, each trained and scored by halves."""
    ordered = sorted(real, key=lambda r: (r.split, r.record_id))
    return realism_auc(ordered[0::2], ordered[1::2], patch=patch, seed=seed)
