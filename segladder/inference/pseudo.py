"""`pseudo-label`: soft labels (float16 probability maps) from a teacher ensemble, with an index a training config can point at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segladder.data.pseudo import INDEX_FORMAT
from segladder.inference.errors import InferenceError
from segladder.inference.inputs import Inputs
from segladder.inference.predict import prepare_output, write_probabilities
from segladder.inference.segmenters import Ensemble, load_segmenters, resolve_device
from segladder.io import atomic_write_json

LABELS_DIR = "labels"  # <record_id>.npy: float16 (H, W) probabilities in [0, 1]
INDEX_FILE = "index.json"
INDEX_VERSION = 1


@dataclass
class PseudoLabels:
    """What `pseudo_label` wrote: the folder, the split and the number of records."""

    out: Path
    split: str
    records: int

    @property
    def index(self) -> Path:
        """The path of the index, written last."""
        return self.out / INDEX_FILE


def pseudo_label(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    weights: Sequence[float] | None = None,
    tta: bool = False,
    tta_shift: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> PseudoLabels:
    """Write a teacher ensemble's probability map of every record of `split`, and the index that lists them.

    Writes `OUT/labels/<record_id>.npy` per record and `OUT/index.json` (written last, so a present index
    means a complete set). Maps are at the teachers' image size.
    """
    if not checkpoints:
        raise InferenceError("pseudo-labelling needs at least one teacher checkpoint.")
    dev = resolve_device(device)
    out = prepare_output(out, (LABELS_DIR,))
    ens = Ensemble(load_segmenters(checkpoints, dev, tta, tta_shift), weights)
    inputs = Inputs(ens.specs, data, split, batch_size=batch_size, workers=workers)
    write_probabilities(
        lambda b: ens.probs(b.images),
        inputs,
        out / LABELS_DIR,
        description=f"pseudo-labelling {split}",
        progress=progress,
    )
    size = ens.members[0].spec.image_size
    atomic_write_json(
        out / INDEX_FILE,
        {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "data": str(Path(data).resolve()),
            "split": split,
            "dtype": "float16",
            "shape": [size, size],
            "path": f"{LABELS_DIR}/{{record_id}}.npy",
            "teachers": [
                {"checkpoint": m.name, "weight": w, "input": m.spec.as_dict()}
                for m, w in zip(ens.members, ens.weights, strict=True)
            ],
            "tta": tta,
            "tta_shift": tta_shift,
            "records": inputs.record_ids,
        },
    )
    return PseudoLabels(out, split, len(inputs))
