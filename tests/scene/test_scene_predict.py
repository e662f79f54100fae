"""`scene predict`: the scene path equals the record path, contrails land at their lon/lat, frames and bad input."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pyproj
import pytest
import torch
import xarray as xr

from segladder.cli import run
from segladder.data.layout import band_file
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.inputs import Inputs
from segladder.inference.segmenters import Ensemble, TorchSegmenter
from segladder.scene.abi import open_abi, read_bt
from segladder.scene.testing import GOES_WEST_LON, write_abi
from tests.scene.conftest import BACKGROUND_K, CONTRAIL_K, T0, ash_bands, write_stack

TIME = "2023-07-13T18:00Z"


def noisy(seed: int, ny: int, nx: int) -> np.ndarray:
    return 265.0 + np.random.default_rng(seed).normal(0, 4, (ny, nx))


def predict(ckpt, goes, out, *extra) -> int:
    return run(
        [
            "scene",
            "predict",
            str(ckpt),
            "--goes",
            str(goes),
            "--time",
            TIME,
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
            *map(str, extra),
        ]
    )


def record_probs(ckpt: Path, scene_dir: Path, window, frames=(2, 3, 4)) -> np.ndarray:
    """The record path: the scene's pixels in `window` written as a competition record, read by `Inputs`."""
    r0, r1, c0, c1 = window
    files = {}
    for f in sorted(scene_dir.iterdir()):
        abi = open_abi(f)
        files[(abi.scan_start, abi.band)] = read_bt(abi, abi.band, window)
    rec = scene_dir.parent / "records" / "test" / "1"
    rec.mkdir(parents=True, exist_ok=True)
    for band in (11, 14, 15):
        stack = np.zeros((r1 - r0, c1 - c0, 8), np.float32)
        for f in frames:
            stack[..., f] = files[(T0 + (f - 4) * timedelta(minutes=10), band)]
        np.save(rec / band_file(band), stack)
    for b in (8, 9, 10, 12, 13, 16):
        np.save(rec / band_file(b), np.zeros((r1 - r0, c1 - c0, 8), np.float32))
    seg = TorchSegmenter(load_checkpoint(ckpt), torch.device("cpu"))
    ens = Ensemble([seg])
    batch = next(Inputs(ens.specs, scene_dir.parent / "records", "test").batches())
    return ens.probs(batch.images).numpy()[0, 0]


def scene_probs(out: Path) -> np.ndarray:
    with xr.open_dataset(out / "contrails.nc") as ds:
        return ds["contrail_probability"].values


@pytest.mark.medium
def test_single_tile_scene_equals_the_record_path(tmp_path, unet_ckpt):
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(noisy(f, 64, 64)))
    assert predict(unet_ckpt, goes, tmp_path / "out") == 0
    np.testing.assert_allclose(
        scene_probs(tmp_path / "out"), record_probs(unet_ckpt, goes, (0, 64, 0, 64)), atol=1e-5
    )


@pytest.mark.medium
def test_tiled_scene_equals_the_record_path_away_from_the_overlap(tmp_path, unet_ckpt):
    ny, nx, overlap = 64, 150, 16
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(noisy(10 + f, ny, nx)))
    assert predict(unet_ckpt, goes, tmp_path / "out", "--tile", 64, "--overlap", overlap) == 0
    prob = scene_probs(tmp_path / "out")
    first = record_probs(unet_ckpt, goes, (0, 64, 0, 64))
    np.testing.assert_allclose(prob[:, : 64 - overlap], first[:, : 64 - overlap], atol=1e-5)
    # Tiles start at columns 0, 48 and 86: the last sits flush with the right edge whatever the stride, so
    # it shares columns 86–111 with the middle one and stands alone from column 112.
    last = record_probs(unet_ckpt, goes, (0, 64, nx - 64, nx))
    np.testing.assert_allclose(prob[:, 112:], last[:, 112 - (nx - 64) :], atol=1e-5)
    # Inside the overlap the tiles are blended, not pasted: neither tile's value alone.
    seam = slice(64 - overlap, 64)
    assert not np.allclose(prob[:, seam], first[:, seam], atol=1e-4)


def paint(grid, ends_lonlat, ny: int, nx: int) -> tuple[np.ndarray, list]:
    """Band 14 with 2-px cold lines between lon/lat end points; the end points' exact pixel centres."""
    b14 = np.full((ny, nx), BACKGROUND_K)
    lines = []
    for (lon0, lat0), (lon1, lat1) in ends_lonlat:
        r, c = grid.rowcol_of(np.array([lon0, lon1]), np.array([lat0, lat1]))
        p0, p1 = (int(round(c[0])), int(round(r[0]))), (int(round(c[1])), int(round(r[1])))
        cv2.line(b14, p0, p1, CONTRAIL_K, thickness=2)
        lines.append((p0, p1))
    return b14, lines


def distance_to_segment(p: np.ndarray, a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1)


def same_projection(a: pyproj.CRS, b: pyproj.CRS) -> bool:
    """Both CRSs put the same lon/lat at the same metres (to 1 mm); WKT round trips rename datums."""
    lon, lat = np.array([-87.0, -84.0, -80.0]), np.array([30.0, 28.0, 35.0])
    xa, ya = pyproj.Transformer.from_crs("EPSG:4326", a, always_xy=True).transform(lon, lat)
    xb, yb = pyproj.Transformer.from_crs("EPSG:4326", b, always_xy=True).transform(lon, lat)
    return bool(np.abs(np.subtract(xa, xb)).max() < 1e-3 and np.abs(np.subtract(ya, yb)).max() < 1e-3)


@pytest.mark.medium
def test_contrails_painted_at_known_lon_lat_come_out_there(tmp_path, cold_ckpt):
    ny, nx = 90, 140
    probe = open_abi(write_abi(tmp_path / "probe", {14: np.full((ny, nx), 280.0)}, start=T0))
    ends = [((-86.8, 29.8), (-84.2, 28.6)), ((-86.6, 28.4), (-86.0, 28.9))]
    b14, lines = paint(probe.grid, ends, ny, nx)
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(b14), frames=(4,))
    assert predict(cold_ckpt, goes, tmp_path / "out") == 0
    fc = json.loads((tmp_path / "out" / "contrails.geojson").read_text())
    assert len(fc["features"]) == 2
    geod = pyproj.Geod(ellps="WGS84")
    for feature in fc["features"]:
        coords = np.array(
            [
                c
                for part in (
                    [feature["geometry"]["coordinates"]]
                    if feature["geometry"]["type"] == "LineString"
                    else feature["geometry"]["coordinates"]
                )
                for c in part
            ]
        )
        rows, cols = probe.grid.rowcol_of(coords[:, 0], coords[:, 1])
        pix = np.stack([cols, rows], axis=1)
        (a, b) = min(lines, key=lambda ln: distance_to_segment(pix, *ln).max())
        assert distance_to_segment(pix, a, b).max() <= 1.0
        lon, lat = probe.grid.lonlat_of(np.array([a[1], b[1]]), np.array([a[0], b[0]]))
        true_km = geod.inv(lon[0], lat[0], lon[1], lat[1])[2] / 1000
        assert feature["properties"]["length_km"] == pytest.approx(true_km, rel=0.05)
        assert feature["properties"]["platform"] == "G16" and feature["properties"]["max_probability"] > 0.99
    with xr.open_dataset(tmp_path / "out" / "contrails.nc", decode_coords="all") as ds:
        mask = ds["contrail_mask"].values
        assert same_projection(pyproj.CRS(ds.rio.crs.to_wkt()), probe.grid.crs)
        np.testing.assert_allclose(ds["lat"].values, probe.grid.lonlat()[1], atol=1e-4)
    assert np.array_equal(mask > 0, b14 < 270)
    meta = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert meta["contrails"] == 2 and meta["threshold"] == 0.5 and meta["min_area"] == 10


@pytest.mark.medium
def test_local_grid_is_utm_at_opencontrails_pixel_size_and_keeps_contrails_in_place(tmp_path, cold_ckpt):
    ny, nx = 90, 140
    probe = open_abi(write_abi(tmp_path / "probe", {14: np.full((ny, nx), 280.0)}, start=T0))
    ends = [((-86.5, 29.6), (-84.6, 28.7))]
    b14, _ = paint(probe.grid, ends, ny, nx)
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(b14), frames=(4,))
    bbox = "-86.8,28.4,-84.4,29.9"
    assert predict(cold_ckpt, goes, tmp_path / "out", "--grid", "local", "--bbox", bbox) == 0
    with xr.open_dataset(tmp_path / "out" / "contrails.nc", decode_coords="all") as ds:
        crs = pyproj.CRS(ds.rio.crs.to_wkt())
        assert crs.utm_zone == "16N"  # the zone of the box's centre, 85.6° W
        dx, dy = float(np.diff(ds.x.values).mean()), float(np.diff(ds.y.values).mean())
        lat, lon, mask = ds["lat"].values, ds["lon"].values, ds["contrail_mask"].values
    assert (dx, dy) == pytest.approx((1943.5, -1967.9))  # OpenContrails' pixel
    assert -86.9 < lon.min() < -86.6 and -84.5 < lon.max() < -84.2 and 28.3 < lat.min() and lat.max() < 30.0
    # The contrail's end points, located on the local grid, are contrail pixels there.
    fc = json.loads((tmp_path / "out" / "contrails.geojson").read_text())
    assert len(fc["features"]) == 1
    for lon_e, lat_e in ends[0]:
        d = (lon - lon_e) ** 2 + (lat - lat_e) ** 2
        r, c = np.unravel_index(np.argmin(d), d.shape)
        assert mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any()


@pytest.mark.medium
def test_frames_take_the_scan_nearest_each_time(tmp_path, unet_ckpt):
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(noisy(f, 64, 64)))
    # Decoys: band 14 scans 4 minutes before frame 4 and 6 minutes after frame 3 (the 17:56:20 scan is
    # nearer frame 4's 18:00 than frame 3's 17:50, so it must not be taken for either).
    for minutes in (-4.0, -3.5):
        write_abi(goes, {14: noisy(99, 64, 64)}, start=T0 + timedelta(minutes=minutes))
    assert predict(unet_ckpt, goes, tmp_path / "out") == 0
    sources = json.loads((tmp_path / "out" / "scene.json").read_text())["sources"]
    band14 = [s for s in sources if "C14_" in s]
    assert [s.split("_s")[1][:13] for s in band14] == ["2023194174020", "2023194175020", "2023194180020"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_missing_band_is_named(tmp_path, unet_ckpt, capsys):
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: {b: v for b, v in ash_bands(noisy(f, 64, 64)).items() if b != 15})
    assert predict(unet_ckpt, goes, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "band 15" in err and "no file given holds it" in err
    assert not (tmp_path / "out").exists()


def test_scan_time_without_file_is_named(tmp_path, unet_ckpt, capsys):
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(noisy(f, 64, 64)), frames=(3, 4))  # frame 2 (17:40) is missing
    assert predict(unet_ckpt, goes, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "2023-07-13T17:40Z" in err and "frame 2" in err
    assert not (tmp_path / "out").exists()


def test_mixed_satellites_are_refused(tmp_path, unet_ckpt, capsys):
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(noisy(f, 64, 64)), frames=(2, 3))
    write_stack(goes, lambda f: ash_bands(noisy(f, 64, 64)), frames=(4,), platform="G18", lon_0=GOES_WEST_LON)
    assert predict(unet_ckpt, goes, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "mixes satellites" in err and "G18" in err and "G16" in err


def test_bbox_off_the_disk_is_refused(tmp_path, unet_ckpt, capsys):
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(noisy(f, 64, 64)))
    assert predict(unet_ckpt, goes, tmp_path / "out", "--bbox", "100,10,110,20") == 2  # Asia, from GOES-East
    err = one_line_error(capsys)
    assert "off the Earth's disk" in err and "100,10,110,20" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.medium
def test_time_range_goes_on_past_a_failing_time_and_resumes(tmp_path, cold_ckpt, capsys):
    goes = tmp_path / "goes"
    for k in (0, 2):  # 18:00 and 18:20 have scans, 18:10 has none
        write_stack(
            goes, lambda f, k=k: ash_bands(noisy(k, 64, 64)), frames=(4,), t0=T0 + timedelta(minutes=10 * k)
        )
    args = [
        "scene",
        "predict",
        str(cold_ckpt),
        "--goes",
        str(goes),
        "--start",
        "2023-07-13T18:00Z",
        "--end",
        "2023-07-13T18:20Z",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert run(args) == 1
    out = capsys.readouterr().out
    done = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert done == ["20230713T1800Z", "20230713T1820Z", "failures.json"]
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert [f["time"] for f in failures] == ["2023-07-13T18:10:00.0Z"]
    assert "contrails" in out
    stamp = (tmp_path / "out" / "20230713T1800Z" / "contrails.nc").stat().st_mtime_ns
    assert run(args) == 1
    assert "already done" in capsys.readouterr().out
    assert (tmp_path / "out" / "20230713T1800Z" / "contrails.nc").stat().st_mtime_ns == stamp


def test_tiles_are_evened_out_and_cover_every_pixel():
    from segladder.scene.predict import count_tiles, ramp, tile_side, tile_starts

    assert tile_side(1500, 768, 32) == 768 and tile_starts(1500, 768, 32) == [0, 732]
    assert tile_side(2500, 768, 32) == 672 and tile_starts(2500, 672, 32) == [0, 640, 1280, 1828]
    assert tile_side(150, 768, 32) == 160 and tile_side(256, 768, 32) == 256  # one tile, rounded up to 32
    for n in (300, 1000, 1500, 2500, 5424):
        side = tile_side(n, 768, 32)
        starts = tile_starts(n, side, 32)
        covered = np.zeros(n, bool)
        for s0 in starts:
            covered[s0 : s0 + side] = True
        assert covered.all() and starts[-1] + side == max(n, side) and side % 32 == 0 and side <= 768
        assert all(
            b - a <= side - 32 for a, b in zip(starts, starts[1:], strict=False)
        )  # at least the overlap
    assert count_tiles((1500, 2500), 768, 32) == 8
    w = ramp(64, 16, first=True, last=False)
    assert w[0] == 1.0 and w[-1] == pytest.approx(1 / 32) and np.all(np.diff(w[-16:]) < 0)
    assert ramp(64, 16, first=False, last=True)[0] == pytest.approx(1 / 32)


@pytest.mark.medium
@pytest.mark.parametrize("kind", ["MCMIP", "Rad"])
def test_mcmip_and_l1b_scenes_give_the_cmip_map(tmp_path, unet_ckpt, kind):
    cmip, other = tmp_path / "cmip", tmp_path / kind
    bands_of = {f: ash_bands(noisy(20 + f, 64, 96)) for f in (2, 3, 4)}
    write_stack(cmip, lambda f: bands_of[f])
    for f, bands in bands_of.items():
        start = T0 + (f - 4) * timedelta(minutes=10)
        if kind == "MCMIP":
            write_abi(other, bands, kind="MCMIP", start=start)
        else:
            for b, bt in bands.items():
                write_abi(other, {b: bt}, kind="Rad", start=start)
    assert predict(unet_ckpt, cmip, tmp_path / "out-cmip") == 0
    assert predict(unet_ckpt, other, tmp_path / "out-other") == 0
    # Both carry the same temperatures to within their packing (0.03 K), which moves probabilities little.
    np.testing.assert_allclose(
        scene_probs(tmp_path / "out-other"), scene_probs(tmp_path / "out-cmip"), atol=2e-3
    )
    meta = json.loads((tmp_path / "out-other" / "scene.json").read_text())
    assert all(("MCMIP" if kind == "MCMIP" else "L1b-Rad") in s for s in meta["sources"])


@pytest.mark.slow
def test_two_processes_share_a_time_range_on_lightnings_predict_loop(tmp_path, unet_ckpt):
    import subprocess
    import sys

    goes = tmp_path / "goes"
    for k in range(3):  # 18:00, 18:10, 18:20 and the 20 minutes before each
        write_stack(
            goes,
            lambda f, k=k: ash_bands(noisy(30 + f + k, 64, 64)),
            frames=(2, 3, 4) if k == 0 else (4,),
            t0=T0 + timedelta(minutes=10 * k),
        )
    common = [
        "--goes",
        str(goes),
        "--start",
        "2023-07-13T18:00Z",
        "--end",
        "2023-07-13T18:20Z",
        "--device",
        "cpu",
        "--no-progress",
    ]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "segladder",
            "scene",
            "predict",
            str(unet_ckpt),
            *common,
            "--out",
            str(tmp_path / "ddp"),
            "--devices",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "3 of 3 time(s) finished" in p.stdout and "on 2 processes" in p.stdout
    assert run(["scene", "predict", str(unet_ckpt), *common, "--out", str(tmp_path / "one")]) == 0
    for stamp in ("20230713T1800Z", "20230713T1810Z", "20230713T1820Z"):
        # Float sums differ with the thread count; the maps agree far below any threshold's resolution.
        np.testing.assert_allclose(
            scene_probs(tmp_path / "ddp" / stamp), scene_probs(tmp_path / "one" / stamp), atol=1e-5
        )


def test_pixels_off_the_disk_are_nan_in_the_map_and_never_contrails(tmp_path, cold_ckpt):
    from segladder.scene.testing import CONUS_X0, CONUS_Y0, scan_axes

    # GOES-East CONUS's upper-left corner: the limb crosses this window, so part of it sees space.
    x, y = scan_axes(64, 96, CONUS_X0 + 120 * 5.6e-5, CONUS_Y0 - 120 * 5.6e-5)
    b14 = np.full((64, 96), CONTRAIL_K)  # cold everywhere: every pixel on the disk is a contrail pixel
    goes = tmp_path / "goes"
    write_stack(goes, lambda f: ash_bands(b14), frames=(4,), x_rad=x, y_rad=y)
    off = np.isnan(read_bt(open_abi(next(goes.glob("*C14_*"))), 14))
    assert 0 < off.sum() < off.size and off[0, 0] and not off[-1, -1]
    assert predict(cold_ckpt, goes, tmp_path / "out", "--min-area", 0) == 0
    with xr.open_dataset(tmp_path / "out" / "contrails.nc") as ds:
        prob, mask, lat = ds["contrail_probability"].values, ds["contrail_mask"].values, ds["lat"].values
    assert np.array_equal(np.isnan(prob), off) and np.array_equal(np.isnan(lat), off)
    assert np.array_equal(mask > 0, ~off)
