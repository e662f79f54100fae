#!/usr/bin/env python
"""The README's quick-look figure: real OpenContrails records laid out as an ABI window, through `scene predict`.

    python scripts/scene_figure.py SAMPLE_ROOT CHECKPOINT OUT

No real GOES file ships with segladder, so four real records' brightness temperatures (frames 0–7 of
bands 11, 14, 15; OpenContrails, Ng et al. 2023, CC BY 4.0) are written 2 × 2 as ABI L2 CMIP files of a
512 × 512 window of GOES-East's fixed grid (`segladder.scene.testing.write_abi`), and `segladder scene
predict` runs on them. The records lie on their own local grids, so the lon/lat of this figure are a
stand-in; the pixels, the tiling and the outputs are the real path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from segladder.data.contrails import discover_records, read_bands
from segladder.scene.testing import scan_axes, write_abi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", type=Path)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    refs = sorted(discover_records(args.sample, "train"), key=lambda r: r.record_id)[:4]
    bands = [read_bands(r.path, (11, 14, 15), range(8)) for r in refs]
    t0 = datetime(2023, 7, 13, 18, 0, 20, tzinfo=UTC)
    goes = args.out / "goes"
    shutil.rmtree(goes, ignore_errors=True)
    x, y = scan_axes(512, 512)
    for f in range(8):
        for b in (11, 14, 15):
            tiles = [bt[b][f] for bt in bands]
            scene = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
            write_abi(goes, {b: scene}, start=t0 + (f - 4) * timedelta(minutes=10), x_rad=x, y_rad=y)
    cmd = [
        sys.executable,
        "-m",
        "segladder",
        "scene",
        "predict",
        str(args.checkpoint),
        "--goes",
        str(goes),
        "--time",
        "2023-07-13T18:00Z",
        "--out",
        str(args.out / "map"),
        "--tile",
        "512",
        "--no-progress",
    ]
    subprocess.run(cmd, check=True)
    print(args.out / "map" / "quicklook.png")


if __name__ == "__main__":
    main()
