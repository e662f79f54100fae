"""From checkpoints and ABI files to the map's three files, for one time or every 10 minutes of a range."""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import segladder
from segladder.errors import DataError, SegladderError
from segladder.inference.segmenters import Ensemble, load_segmenters, resolve_device
from segladder.io import atomic_write_json
from segladder.progress import progress_bar
from segladder.scene.grid import SceneGrid
from segladder.scene.inspect import iso_utc
from segladder.scene.predict import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    NativeReader,
    bbox_window,
    count_tiles,
    predict_probability,
    sha256_of,
    stack_layout,
    time_folder,
)
from segladder.scene.sources import DEFAULT_TOLERANCE, Catalogue, FrameStack, labelled_position

GRIDS = ("native", "local")
# Components under this many pixels are dropped from the mask unless --min-area says otherwise: the
# competition's labelling rules count a contrail only from 10 pixels (Ng et al. 2023, OpenContrails).
DEFAULT_MIN_AREA = 10
DONE_FILE = "scene.json"  # written last: its presence marks a time as finished
OUTPUT_FILES = ("contrails.nc", "contrails.geojson", "quicklook.png", DONE_FILE)
QUICKLOOK_BANDS = (11, 14, 15)  # the quick look is ash RGB whatever the model reads: these are always read


@dataclass
class SceneOptions:
    """How `scene predict` runs; the CLI's options, typed.

    Args:
        grid: "native" (the ABI fixed grid) or "local" (a local Transverse Mercator grid, as OpenContrails).
        bbox: (lon0, lat0, lon1, lat1) to cut, or None for the whole file.
        threshold, min_area: the mask's; None takes the checkpoint's threshold and DEFAULT_MIN_AREA.
        tile, overlap, batch_size: tiling.
        tolerance: how far a scan's start may be from a frame's time.
        device: cpu, cuda or cuda:N (None: cuda when present).
        pixel_km: the local grid's square pixel size (None: OpenContrails' 1.94 × 1.97 km).
        progress: show progress bars.
    """

    grid: str = "native"
    bbox: tuple[float, float, float, float] | None = None
    threshold: float | None = None
    min_area: int | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 4
    tolerance: timedelta = DEFAULT_TOLERANCE
    device: str | None = None
    pixel_km: float | None = None
    progress: bool = True

    def check(self) -> None:
        """A DataError naming the option and the fix for values that cannot work."""
        if self.grid not in GRIDS:
            raise DataError(f"--grid {self.grid}: give native or local.")
        if self.grid == "local" and self.bbox is None:
            raise DataError("--grid local needs --bbox: a local grid covers a region, not a whole disk.")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise DataError(f"--threshold {self.threshold}: give a probability between 0 and 1.")
        if self.min_area is not None and self.min_area < 0:
            raise DataError(f"--min-area {self.min_area}: give 0 or more pixels.")
        if self.tile < 64 or self.tile % 32:
            raise DataError(f"--tile {self.tile}: give a multiple of 32, at least 64.")
        if not 0 <= self.overlap < self.tile // 2:
            raise DataError(f"--overlap {self.overlap}: give 0 up to half the tile ({self.tile // 2}).")
        if self.batch_size < 1:
            raise DataError(f"--batch-size {self.batch_size}: give 1 or more.")


@dataclass
class SceneResult:
    """One time's map: where it went and what it holds."""

    time: datetime
    out: Path
    shape: tuple[int, int]
    contrails: int
    seconds: float
    skipped: bool = False
    files: list[str] = field(default_factory=list)


class ScenePredictor:
    """Checkpoints loaded once, then run over any number of times.

    Args:
        checkpoints: segmentation checkpoints (an ensemble when several).
        goes: ABI files or folders.
        options: how to run.
    """

    def __init__(self, checkpoints: Sequence[str | Path], goes: Sequence[str | Path], options: SceneOptions):
        options.check()
        self.options = options
        self.checkpoints = [Path(c) for c in checkpoints]
        self.ensemble = Ensemble(load_segmenters(self.checkpoints, resolve_device(options.device)))
        self.frames, self.bands = stack_layout(self.ensemble)
        self.stack_bands = sorted(set(self.bands) | set(QUICKLOOK_BANDS))
        self.catalogue = Catalogue(goes)
        self.inputs = set(self.catalogue.paths)
        self._hashes = [sha256_of(c) for c in self.checkpoints]

    @property
    def threshold(self) -> float:
        """The mask threshold: --threshold, else the checkpoints' stored one."""
        return self.options.threshold if self.options.threshold is not None else self.ensemble.threshold

    @property
    def min_area(self) -> int:
        """The mask's minimum component size in pixels."""
        return self.options.min_area if self.options.min_area is not None else DEFAULT_MIN_AREA

    def reader(self, stack: FrameStack):
        """The band reader of a stack on the chosen grid and region."""
        first = next(iter(stack.labelled.values()))
        grid = first.grid
        window = (0, grid.shape[0], 0, grid.shape[1])
        if self.options.bbox is not None:
            margin = 3 if self.options.grid == "local" else 0  # bilinear resampling reads a pixel beyond
            window = bbox_window(grid, self.options.bbox, first.path.name, margin)
        native = NativeReader(stack, window)
        if self.options.grid == "native":
            return native
        from segladder.scene.local import local_reader

        return local_reader(native, self.options.bbox, self.options.pixel_km)

    def run(self, time: datetime, out: Path) -> SceneResult:
        """Predict the map at `time` into folder `out` (skipped when `out` already holds a finished one)."""
        out = Path(out)
        if (out / DONE_FILE).is_file():
            return SceneResult(time, out, (0, 0), 0, 0.0, skipped=True)
        clash = [p for p in self.inputs if p.resolve().parent == out.resolve() and p.name in OUTPUT_FILES]
        if clash:
            raise DataError(f"{clash[0]}: an input would be overwritten by an output; give another --out.")
        t0 = _time.perf_counter()
        stack = self.catalogue.stack(time, self.frames, self.stack_bands, self.options.tolerance)
        reader = self.reader(stack)
        opts = self.options
        with progress_bar(disable=not opts.progress) as bar:
            task = bar.add_task(
                f"scene {time_folder(time)}", total=count_tiles(reader.shape, opts.tile, opts.overlap)
            )
            prob = predict_probability(
                self.ensemble,
                reader,
                tile=opts.tile,
                overlap=opts.overlap,
                batch_size=opts.batch_size,
                advance=lambda n: bar.advance(task, n),
            )
        result = self._write(time, out, stack, reader.grid, prob, reader)
        result.seconds = _time.perf_counter() - t0
        return result

    def _write(
        self, time: datetime, out: Path, stack: FrameStack, grid: SceneGrid, prob, reader
    ) -> SceneResult:
        from segladder.scene import outputs

        out.mkdir(parents=True, exist_ok=True)
        info = outputs.MapInfo(
            time=iso_utc(time),
            platform=stack.platform,
            sources=stack.sources(),
            checkpoint_sha256=self._hashes,
            threshold=float(self.threshold),
            min_area=int(self.min_area),
            segladder_version=segladder.__version__,
            grid=self.options.grid,
        )
        mask = outputs.contrail_mask(prob, info.threshold, info.min_area)
        outputs.write_netcdf(out / "contrails.nc", grid, prob, mask, info)
        features = outputs.contrail_features(mask, prob, grid, info)
        outputs.write_geojson(out / "contrails.geojson", features)
        position = labelled_position(self.frames)
        bands = {b: reader.rows(position, b, 0, grid.shape[0]) for b in QUICKLOOK_BANDS}
        outputs.write_quicklook(out / "quicklook.png", bands, mask, title=f"{stack.platform} {info.time}")
        n = len(features["features"])
        atomic_write_json(
            out / DONE_FILE,
            {
                "time": info.time,
                "platform": info.platform,
                "grid": info.grid,
                "shape": list(grid.shape),
                "contrails": n,
                "threshold": info.threshold,
                "min_area": info.min_area,
                "sources": info.sources,
                "checkpoints": [str(c) for c in self.checkpoints],
                "checkpoint_sha256": self._hashes,
                "segladder_version": info.segladder_version,
            },
        )
        return SceneResult(time, out, grid.shape, n, 0.0, files=list(OUTPUT_FILES))


def predict_times(
    predictor: ScenePredictor, times: Sequence[datetime], out: Path, *, one_folder: bool = False
) -> tuple[list[SceneResult], list[tuple[datetime, str]]]:
    """Run every time into OUT/<time>/ (or OUT itself for one time with `one_folder`).

    A failing time is reported and the others go on. Returns the results and the (time, error) of the
    failures.
    """
    results, failures = [], []
    with progress_bar(disable=not predictor.options.progress or len(times) < 2) as bar:
        task = bar.add_task("scenes", total=len(times))
        for t in times:
            folder = out if one_folder else out / time_folder(t)
            try:
                results.append(predictor.run(t, folder))
            except SegladderError as exc:
                if one_folder:
                    raise
                failures.append((t, str(exc)))
                bar.console.print(f"[red]{time_folder(t)} failed[/]: {exc}")
            bar.advance(task)
    if failures:
        atomic_write_json(out / "failures.json", [{"time": iso_utc(t), "error": e} for t, e in failures])
    return results, failures
