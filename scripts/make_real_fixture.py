"""Regenerate tests/fixtures/opencontrails_crops/: four real OpenContrails records cropped to 32×32.

    python scripts/make_real_fixture.py TGZ [OUT]

TGZ is a .tar.gz of full 256×256 records in the competition layout (a folder holding `train/` and
`validation/`) that includes the four record ids below: they are in the Kaggle competition's data, and in
the 9-record public sample of docs/background.md ("Getting real records"; CC BY 4.0). OUT defaults to
tests/fixtures/opencontrails_crops. Every file keeps the competition layout, dtype and frame axis; only the
rows and columns are cut. A window is placed where the union of the annotators' masks is densest and then
centred on those pixels, so the contrails stay inside. 32×32 rather than 64×64 keeps the fixture near 1 MB:
the values are reprojected floats that compress only ~1.4×, and a 64×64 record alone is 1.2 MB.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
# (split, record_id, why it is here)
RECORDS = (
    ("train", "1002294268041839364", "contrails (820 px in the full record), 4 annotators"),
    ("train", "1000216489776414077", "no contrail, 4 annotators"),
    ("train", "1010450737335314351", "one annotator of 4 marked pixels; the consensus mask is empty"),
    ("validation", "1002777035567823518", "a tiny contrail (25 px), pixel mask only, with metadata"),
)

NOTICE = """\
Real OpenContrails records, cropped (CC BY 4.0)

The files under this folder are derived from the OpenContrails dataset by Google Research
(Ng, J. Y.-H., McCloskey, K., Cui, J., et al., "OpenContrails: Benchmarking Contrail Detection on
GOES-16 ABI", 2023, arXiv:2304.02122), as laid out for the Kaggle competition "Google Research -
Identify Contrails to Reduce Global Warming". OpenContrails is published under the Creative Commons
Attribution 4.0 International licence (https://creativecommons.org/licenses/by/4.0/).

The records were taken unchanged from two public MIT-licensed repositories that carry a sample:
  patmejia/contrails_vision @ d21d6001 (record 1002777035567823518, 1000216489776414077)
  SKT27182/Google-Research_Identify-Contrails-to-Reduce-Global-Warming @ bf2ed6e0
    (records 1002294268041839364, 1010450737335314351)

Changes: every array was CROPPED to a {size}x{size} window of the original 256x256 record (rows and
columns only; all 8 frames, the dtype and the values are unchanged). The window of each record:
{windows}
validation_metadata.json holds the competition's entry for the validation record with row_min and
col_min moved to the window's first row and column (row_min + r0 * row_size, col_min + c0 * col_size);
the other fields are unchanged. The training records have no metadata in the source sample.

Regenerate with: python scripts/make_real_fixture.py TGZ
"""


def window(union: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of a size×size window holding the most marked pixels, centred on them."""
    h, w = union.shape
    if not union.any():
        return (h - size) // 2, (w - size) // 2
    box = cv2.boxFilter(
        union, -1, (size, size), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT
    )
    r, c = np.unravel_index(np.argmax(box[: h - size + 1, : w - size + 1]), (h - size + 1, w - size + 1))
    rows, cols = np.nonzero(union[r : r + size, c : c + size])
    cr, cc = r + rows.mean(), c + cols.mean()
    return (
        int(np.clip(round(cr - size / 2), 0, h - size)),
        int(np.clip(round(cc - size / 2), 0, w - size)),
    )


def main(tgz: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        src = next(Path(tmp).rglob("train")).parent
        if out.exists():
            shutil.rmtree(out)
        windows = []
        meta_out = []
        for split, rid, why in RECORDS:
            rec = src / split / rid
            mask = np.load(rec / "human_pixel_masks.npy")[:, :, 0]
            ind_path = rec / "human_individual_masks.npy"
            union = np.load(ind_path)[:, :, 0].max(-1) if ind_path.exists() else mask
            r0, c0 = window(union.astype(np.float32), SIZE)
            dst = out / split / rid
            dst.mkdir(parents=True)
            for f in sorted(rec.glob("*.npy")):
                a = np.load(f)
                np.save(dst / f.name, np.ascontiguousarray(a[r0 : r0 + SIZE, c0 : c0 + SIZE]))
            windows.append(
                f"  {split}/{rid}: rows {r0}-{r0 + SIZE - 1}, columns {c0}-{c0 + SIZE - 1} ({why})"
            )
            meta_path = src / f"{split}_metadata.json"
            if meta_path.exists():
                for m in json.loads(meta_path.read_text()):
                    if str(m["record_id"]) == rid:
                        m = dict(m, record_id=rid)
                        m["row_min"] += r0 * m["row_size"]
                        m["col_min"] += c0 * m["col_size"]
                        meta_out.append((split, m))
        for split in {s for s, _ in meta_out}:
            entries = [m for s, m in meta_out if s == split]
            (out / f"{split}_metadata.json").write_text(json.dumps(entries, indent=1) + "\n")
        (out / "NOTICE").write_text(NOTICE.format(size=SIZE, windows="\n".join(windows)))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(RECORDS)} records → {out} ({total / 1e3:.0f} kB)")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not 1 <= len(args) <= 2:
        sys.exit(
            "usage: python scripts/make_real_fixture.py TGZ [OUT]  (TGZ: full records, see the docstring)"
        )
    main(
        Path(args[0]),
        Path(args[1]) if len(args) > 1 else REPO / "tests" / "fixtures" / "opencontrails_crops",
    )
