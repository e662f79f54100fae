"""`bench scene`: `scene predict`'s throughput beside the model's own forward pass on the same pixels, and its peak memory."""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch

from segladder.scene.testing import CONUS_X0, CONUS_Y0, FULL_DISK_X0, IR_STEP_RAD, scan_axes, write_abi

SCAN = datetime(2023, 7, 13, 18, 0, 20, tzinfo=UTC)
SECTORS = {"conus": ((1500, 2500), CONUS_X0, CONUS_Y0), "full": ((5424, 5424), FULL_DISK_X0, -FULL_DISK_X0)}


@dataclass
class SceneBench:
    """What `bench_scene` measured.

    Args:
        sector: "conus" or "full".
        shape: the scene's (ny, nx).
        tiles: tiles `scene predict` ran, and their side.
        forward_mpx_s: the model's forward pass alone, megapixels a second of the pixels it is given
            (tiles of the scene's tile shape, inputs ready in memory).
        scene_mpx_s: `scene predict` end to end (reading the files, tiling, stitching, writing the three
            outputs), megapixels of scene a second.
        ratio: scene_mpx_s / forward_mpx_s.
        peak_rss_gb: the process's peak resident memory while predicting, GB (the scene is written in another
            process).
        contrails: features in the GeoJSON (each costs its skeleton tracing).
    """

    sector: str
    shape: tuple[int, int]
    tiles: int
    tile_shape: tuple[int, int]
    forward_mpx_s: float
    scene_mpx_s: float
    ratio: float
    scene_seconds: float
    peak_rss_gb: float
    device: str
    contrails: int


def write_scene(folder: Path, sector: str, frames: list[int], seed: int = 0) -> Path:
    """Bands 11, 14 and 15 of a synthetic scene of `sector`'s size for each frame, as CMIP files."""
    (ny, nx), x0, y0 = SECTORS[sector]
    step = IR_STEP_RAD if sector == "conus" else 2 * -FULL_DISK_X0 / (nx - 1)
    x, y = scan_axes(ny, nx, x0, y0, step)
    rng = np.random.default_rng(seed)
    base = 260.0 + rng.normal(0, 5, (ny, nx)).astype(np.float32)
    for f in frames:
        for band, offset in ((11, -2.5), (14, 0.0), (15, -0.7)):
            start = SCAN + (f - 4) * timedelta(minutes=10)
            write_abi(
                folder,
                {band: base + offset},
                start=start,
                x_rad=x,
                y_rad=y,
                sector="C" if sector == "conus" else "F",
            )
    return folder


# A random model's probabilities hover around 0.5 and its mask breaks into thousands of specks, each a
# GeoJSON line to trace; started at this positive rate (`output_prior`), it marks few pixels, as a trained
# model does on a real scene, so the figure is the pipeline's and not the speck tracing's.
RANDOM_PRIOR = 0.002


def random_checkpoint(path: Path, model: str = "ResNet18_U", frames: tuple[int, ...] = (4,)) -> Path:
    """A randomly initialised checkpoint in the trainer's format (throughput does not depend on weights)."""
    from segladder.config import ExperimentConfig
    from segladder.models import create

    cfg = ExperimentConfig(
        data={"frames": list(frames), "image_size": 256}, model={"name": model, "output_prior": RANDOM_PRIOR}
    )
    net = create(model, **cfg.model.kwargs)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "segladder": {
                "version": 1,
                "task": "segmentation",
                "threshold": 0.5,
                "config": cfg.model_dump(mode="json"),
            },
        },
        path,
    )
    return path


def _forward_mpx_s(ensemble, tiles: int, shape: tuple[int, int], batch: int) -> float:
    """Megapixels a second the model's forward pass alone reaches on `tiles` tiles of `shape` (warm)."""
    spec = ensemble.specs[0]
    c = len(spec.channels)
    x = torch.rand(batch, c, len(spec.frames), *shape)
    ensemble.probs({spec: x})  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < tiles:
        n = min(batch, tiles - done)
        ensemble.probs({spec: x[:n]})
        done += n
    return tiles * shape[0] * shape[1] / (time.perf_counter() - t0) / 1e6


def bench_scene(
    checkpoint: Path | None = None,
    sector: str = "conus",
    *,
    tile: int = 768,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | None = None,
) -> SceneBench:
    """Time `scene predict` on a synthetic scene of `sector`'s size beside the model's forward pass, in one run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from segladder.scene.pipeline import SceneOptions, ScenePredictor
    from segladder.scene.predict import _tile_shape, count_tiles

    with tempfile.TemporaryDirectory(prefix="segladder-bench-scene-") as tmp:
        tmp = Path(tmp)
        ckpt = checkpoint or random_checkpoint(tmp / "model.ckpt")
        frames = sorted({f for s in _specs(ckpt) for f in s.frames})
        # Written in another process, so that this one's peak memory is that of predicting alone.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(write_scene, tmp / "goes", sector, frames).result()
        options = SceneOptions(
            tile=tile, overlap=overlap, batch_size=batch_size, device=device, progress=False
        )
        predictor = ScenePredictor([ckpt], [tmp / "goes"], options)
        shape = SECTORS[sector][0]
        th, tw = _tile_shape(*shape, tile, overlap)
        tiles = count_tiles(shape, tile, overlap)
        scene_px = shape[0] * shape[1]
        t0 = time.perf_counter()
        result = predictor.run(SCAN.replace(second=0), tmp / "out")
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
        forward = _forward_mpx_s(predictor.ensemble, tiles, (th, tw), batch_size)
    scene = scene_px / seconds / 1e6
    return SceneBench(
        sector,
        shape,
        tiles,
        (th, tw),
        round(forward, 3),
        round(scene, 3),
        round(scene / forward, 3),
        round(seconds, 2),
        round(peak, 2),
        str(predictor.ensemble.members[0].device),
        result.contrails,
    )


def _specs(ckpt: Path):
    from segladder.inference.checkpoint import load_checkpoint
    from segladder.inference.inputs import InputSpec

    return [InputSpec.from_checkpoint(load_checkpoint(ckpt))]


def as_dict(b: SceneBench) -> dict:
    """The figures as JSON-ready values."""
    return asdict(b)
