"""`segladder scene ...`: ABI files in, georeferenced contrail maps out (inspect, predict, fetch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from segladder.cli.app import app

scene_app = typer.Typer(
    help="Contrails on GOES ABI scenes: inspect files, predict maps in lon/lat, fetch scans.",
    no_args_is_help=True,
)
app.add_typer(scene_app, name="scene")

EXIT_SOME_FAILED = 1


@scene_app.command("inspect")
def inspect_cmd(
    files: list[Path] = typer.Argument(..., help="ABI netCDF files (L2 CMIP, L2 MCMIP or L1b Rad)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per file."),
) -> None:
    """Platform, product, band, scan start, shape, corner lon/lat and brightness temperatures of ABI files."""
    from segladder.scene.inspect import format_report, inspect_file

    reports = [inspect_file(f) for f in files]
    if as_json:
        typer.echo(json.dumps(reports, indent=1))
    else:
        typer.echo("\n".join(format_report(r) for r in reports))


@scene_app.command("predict")
def predict_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Segmentation checkpoint(s); several are averaged."),
    goes: list[Path] = typer.Option(..., "--goes", help="ABI files or folders of them (repeat the option)."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (with --start/--end: one subfolder per time)."
    ),
    time: str = typer.Option(
        None, "--time", help="The labelled frame's time, ISO 8601 UTC (2023-07-13T18:00Z)."
    ),
    start: str = typer.Option(None, "--start", help="First time of a range (every 10 minutes to --end)."),
    end: str = typer.Option(None, "--end", help="Last time of a range."),
    grid: str = typer.Option(
        "native",
        "--grid",
        help="native: the ABI fixed grid as it is (default: no resampling, every pixel the satellite saw); "
        "local: a UTM grid over --bbox resampled bilinearly, as OpenContrails' records were.",
    ),
    bbox: str = typer.Option(
        None, "--bbox", help="LON0,LAT0,LON1,LAT1: cut this region (default: whole file)."
    ),
    threshold: float = typer.Option(None, "--threshold", help="Mask threshold (default: the checkpoint's)."),
    min_area: int = typer.Option(
        None,
        "--min-area",
        help="Drop mask components under this many pixels (default 10, the labelling rule).",
    ),
    tolerance: float = typer.Option(
        5.0,
        "--tolerance",
        help="Minutes a scan's start may be from a frame's time (frames are 10 min apart).",
    ),
    tile: int = typer.Option(
        768, "--tile", help="Tile side in pixels (a multiple of 32); tiles are evened out to fit."
    ),
    overlap: int = typer.Option(
        32, "--overlap", help="Pixels adjacent tiles share; blended with linear ramps."
    ),
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per forward pass (raise it on a GPU)."),
    pixel_km: float = typer.Option(
        None, "--pixel-km", help="--grid local's pixel size (default: OpenContrails' 1.94 × 1.97 km)."
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when present)."),
    devices: int = typer.Option(
        1,
        "--devices",
        help="With --start/--end: processes (GPUs) sharing the times, on Lightning's DDP predict loop.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress with ETA on stderr."),
) -> int:
    """Predict contrails over GOES ABI scenes: contrails.nc (CF-1.8), contrails.geojson and quicklook.png.

    The model's frames are the scans nearest t−40 … t (10 minutes apart, as OpenContrails), within
    --tolerance. With --start/--end every 10 minutes in between goes to OUT/<YYYYmmddTHHMMZ>/; finished
    times are skipped, and a failing time is reported without stopping the others (exit 1 at the end).
    """
    from datetime import timedelta

    from segladder.scene.pipeline import SceneOptions, ScenePredictor, predict_times
    from segladder.scene.predict import parse_bbox

    times = _times(time, start, end, tolerance)
    options = SceneOptions(
        grid=grid,
        bbox=parse_bbox(bbox) if bbox else None,
        threshold=threshold,
        min_area=min_area,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        tolerance=timedelta(minutes=tolerance),
        device=device,
        pixel_km=pixel_km,
        progress=progress,
    )
    if devices > 1:
        return _predict_distributed(checkpoints, goes, options, times, out, devices, time is not None)
    predictor = ScenePredictor(checkpoints, goes, options)
    results, failures = predict_times(predictor, times, out, one_folder=time is not None)
    return _report(results, failures, len(times), out)


def _predict_distributed(checkpoints, goes, options, times, out: Path, devices: int, one_time: bool) -> int:
    """--devices N: the times shared over N processes by Lightning; exit 1 when some are unfinished."""
    from segladder.errors import DataError
    from segladder.scene.task import predict_times_distributed

    if one_time:
        raise DataError(
            "--devices shares the times of --start/--end over processes; give a range, or drop --devices."
        )
    accelerator = "cpu" if options.device == "cpu" else "auto"
    finished, unfinished, main = predict_times_distributed(
        checkpoints, goes, options, times, out, devices=devices, accelerator=accelerator
    )
    if not main:
        return 0
    typer.echo(f"{len(finished)} of {len(times)} time(s) finished in {out} on {devices} processes")
    if unfinished:
        stamps = ", ".join(f"{t:%Y-%m-%dT%H:%MZ}" for t in unfinished[:10])
        typer.secho(
            f"unfinished: {stamps}; their errors are above; re-run to retry them.",
            fg=typer.colors.RED,
            err=True,
        )
        return EXIT_SOME_FAILED
    return 0


def _times(time: str | None, start: str | None, end: str | None, tolerance: float) -> list:
    """The times --time or --start/--end ask for, checked with --tolerance."""
    from segladder.errors import DataError
    from segladder.scene.sources import parse_time, times_between

    if (time is None) == (start is None and end is None) or (start is None) != (end is None):
        raise DataError("give --time T, or --start T0 with --end T1 (a range every 10 minutes).")
    if not 0 < tolerance <= 30:
        raise DataError(f"--tolerance {tolerance}: give minutes between 0 and 30.")
    if time:
        return [parse_time(time)]
    return times_between(parse_time(start, "--start"), parse_time(end, "--end"))


def _report(results, failures, n_times: int, out: Path) -> int:
    """One line per time; the failures on stderr; the exit code."""
    for r in results:
        state = (
            "already done"
            if r.skipped
            else f"{r.contrails} contrails, {r.shape[0]}×{r.shape[1]} px, {r.seconds:.1f} s"
        )
        typer.echo(f"{r.time:%Y-%m-%dT%H:%MZ} → {r.out}: {state}")
    if failures:
        typer.secho(
            f"{len(failures)} of {n_times} time(s) failed (listed in {out / 'failures.json'}); re-run the same "
            "command after fixing them: finished times are skipped.",
            fg=typer.colors.RED,
            err=True,
        )
        return EXIT_SOME_FAILED
    return 0


@scene_app.command("fetch")
def fetch_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to download into (files already there are skipped)."),
    satellite: str = typer.Option("G16", "--satellite", help="G16, G17, G18 or G19."),
    product: str = typer.Option(
        "ABI-L2-CMIPF", "--product", help="ABI-L2-CMIPF/C/M1/M2, ABI-L2-MCMIPF/C or ABI-L1b-RadF/C."
    ),
    bands: str = typer.Option("11,14,15", "--bands", help="Bands to fetch (ash RGB needs 11, 14 and 15)."),
    time: str = typer.Option(None, "--time", help="The labelled frame's time, ISO 8601 UTC."),
    start: str = typer.Option(None, "--start", help="First time of a range (every 10 minutes to --end)."),
    end: str = typer.Option(None, "--end", help="Last time of a range."),
    frames: str = typer.Option(
        "0-4",
        "--frames",
        help="Frames each time needs (frame 4 is the time itself, frame 0 40 minutes before).",
    ),
    tolerance: float = typer.Option(
        5.0, "--tolerance", help="Minutes a scan's start may be from a frame's time."
    ),
    endpoint: str = typer.Option(
        None, "--endpoint", help="Another S3 endpoint (a mirror); default: NOAA's bucket on AWS, anonymous."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress with ETA on stderr."),
) -> None:
    """Download the GOES ABI scans a time or a range needs from NOAA's public bucket (s3fs, anonymous).

    Offline, one error lists the files to get and where to put them; `segladder scene predict --goes OUT`
    reads the folder.
    """
    from datetime import timedelta

    from segladder.cli._common import parse_int_list
    from segladder.scene.fetch import fetch, make_filesystem
    from segladder.scene.sources import frame_times

    times = _times(time, start, end, tolerance)
    wanted = sorted({t for base in times for t in frame_times(base, parse_int_list(frames) or [4])})
    summary = fetch(
        wanted,
        satellite=satellite,
        product=product,
        bands=parse_int_list(bands, "bands") or [],
        out=out,
        tolerance=timedelta(minutes=tolerance),
        fs=make_filesystem(endpoint),
        progress=progress,
    )
    typer.echo(
        f"{summary.planned} file(s) for {len(wanted)} frame time(s) in {summary.out}: {summary.downloaded} "
        f"downloaded ({summary.bytes / 1e6:.1f} MB), {summary.skipped} already there"
    )
