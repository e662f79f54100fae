"""ABI files in NOAA's layout: reading CMIP, MCMIP and L1b Rad, georeferencing, `scene inspect` and bad files."""

from __future__ import annotations

import json
import math

import netCDF4
import numpy as np
import pyproj
import pytest

from segladder.cli import run
from segladder.errors import DataError
from segladder.scene.abi import open_abi, read_bt
from segladder.scene.inspect import inspect_file
from segladder.scene.testing import FULL_DISK_X0, GOES_WEST_LON, scan_axes, write_abi
from tests.scene.conftest import T0

NY, NX = 23, 41  # not square, so a swapped axis shows


def gradient(ny: int = NY, nx: int = NX) -> np.ndarray:
    """Brightness temperatures that differ along both axes, and differently."""
    r, c = np.mgrid[0:ny, 0:nx]
    return 230.0 + 0.9 * r + 0.31 * c


def pug_lonlat(x: np.ndarray, y: np.ndarray, lon_0: float) -> tuple[np.ndarray, np.ndarray]:
    """Scan angles → geodetic lon/lat by the GOES-R PUG vol. 5 §4.2.8.1 formulas (independent of pyproj)."""
    r_eq, r_pol, h = 6378137.0, 6356752.31414, 35786023.0 + 6378137.0
    a = np.sin(x) ** 2 + np.cos(x) ** 2 * (np.cos(y) ** 2 + (r_eq**2 / r_pol**2) * np.sin(y) ** 2)
    b = -2 * h * np.cos(x) * np.cos(y)
    c = h**2 - r_eq**2
    rs = (-b - np.sqrt(b**2 - 4 * a * c)) / (2 * a)
    sx, sy, sz = rs * np.cos(x) * np.cos(y), -rs * np.sin(x), rs * np.cos(x) * np.sin(y)
    lat = np.degrees(np.arctan((r_eq**2 / r_pol**2) * sz / np.sqrt((h - sx) ** 2 + sy**2)))
    lon = lon_0 - np.degrees(np.arctan(sy / (h - sx)))
    return lon, lat


@pytest.mark.parametrize("kind", ["CMIP", "MCMIP", "Rad"])
def test_brightness_temperature_round_trips_through_each_product(tmp_path, kind):
    bt = gradient()
    bands = {14: bt} if kind != "MCMIP" else {11: bt - 3.0, 14: bt, 15: bt[::-1].copy()}
    abi = open_abi(write_abi(tmp_path, bands, kind=kind, start=T0))
    assert (abi.kind, abi.platform, abi.shape, abi.scan_start) == (kind, "G16", (NY, NX), T0)
    # CMI packs 12-bit counts over 89.6–341.3 K: 0.061 K a count, so half of it is the worst error.
    for b, want in bands.items():
        assert np.abs(read_bt(abi, b) - want).max() < 0.035
    r0, r1, c0, c1 = 3, 9, 5, 30
    assert np.array_equal(read_bt(abi, 14, (r0, r1, c0, c1)), read_bt(abi, 14)[r0:r1, c0:c1])


def test_product_names_follow_noaa(tmp_path):
    names = {
        k: open_abi(
            write_abi(
                tmp_path / k,
                {14: gradient()} if k != "MCMIP" else {14: gradient(), 11: gradient()},
                kind=k,
                start=T0,
            )
        ).product
        for k in ("CMIP", "MCMIP", "Rad")
    }
    assert names == {"CMIP": "ABI-L2-CMIPC", "MCMIP": "ABI-L2-MCMIPC", "Rad": "ABI-L1b-RadC"}


def test_georeferencing_matches_the_pug_formulas_and_pyproj(tmp_path):
    x, y = scan_axes(NY, NX)
    for lon_0 in (-75.0, GOES_WEST_LON):
        abi = open_abi(
            write_abi(tmp_path / str(lon_0), {14: gradient()}, start=T0, x_rad=x, y_rad=y, lon_0=lon_0)
        )
        lon, lat = abi.grid.lonlat()
        xr_, yr_ = np.meshgrid(abi.grid.x / 35786023.0, abi.grid.y / 35786023.0)
        plon, plat = pug_lonlat(xr_, yr_, lon_0)
        assert np.abs(lon - plon).max() < 1e-6 and np.abs(lat - plat).max() < 1e-6
        geos = pyproj.Proj(f"+proj=geos +h=35786023 +lon_0={lon_0} +a=6378137 +b=6356752.31414 +sweep=x")
        qlon, qlat = geos(xr_ * 35786023.0, yr_ * 35786023.0, inverse=True)
        assert np.abs(lon - qlon).max() < 1e-6 and np.abs(lat - qlat).max() < 1e-6
        # Row 0 is north, column 0 west.
        assert lat[0, 0] > lat[-1, 0] and lon[0, -1] > lon[0, 0]
    west = open_abi(tmp_path / str(GOES_WEST_LON) / next((tmp_path / str(GOES_WEST_LON)).iterdir()).name)
    east = open_abi(next((tmp_path / "-75.0").iterdir()))
    # The same scan angles look 62° further west from GOES-West: the projection is read, not assumed.
    assert east.grid.lonlat_of(np.array([0]), np.array([0]))[0][0] - west.grid.lonlat_of(
        np.array([0]), np.array([0])
    )[0][0] == pytest.approx(62.0, abs=0.5)


def test_cut_down_file_takes_band_and_time_from_attributes(tmp_path):
    path = write_abi(
        tmp_path, {15: gradient()}, start=T0, drop=("band_id", "t", "band_wavelength"), name="window.nc"
    )
    with netCDF4.Dataset(path) as nc:
        assert "band_id" not in nc.variables and "t" not in nc.variables
    abi = open_abi(path)
    assert (abi.bands, abi.scan_start, abi.product) == ((15,), T0, "ABI-L2-CMIPC")


def test_cut_down_file_takes_band_and_time_from_its_name(tmp_path):
    path = write_abi(
        tmp_path, {11: gradient()}, start=T0, drop=("band_id", "dataset_name", "time_coverage_start")
    )
    abi = open_abi(path)
    assert (abi.bands, abi.scan_start) == ((11,), T0)
    renamed = path.rename(tmp_path / "cut.nc")
    with pytest.raises(DataError, match=r"cut\.nc.*band"):
        open_abi(renamed)


def test_inspect_reports_corners_and_temperatures(tmp_path):
    bt = gradient()
    rep = inspect_file(write_abi(tmp_path, {14: bt}, start=T0))
    assert rep["platform"] == "G16" and rep["band"] == 14 and rep["shape"] == [NY, NX]
    assert rep["scan_start"] == "2023-07-13T18:00:20.0Z"
    abi = open_abi(rep["file"])
    want = {
        "upper_left": (0, 0),
        "upper_right": (0, NX - 1),
        "lower_left": (NY - 1, 0),
        "lower_right": (NY - 1, NX - 1),
        "center": (NY // 2, NX // 2),
    }
    for key, (r, c) in want.items():
        lon, lat = abi.grid.lonlat_of(np.array([r]), np.array([c]))
        assert rep["corners"][key] == {"lat": round(float(lat[0]), 6), "lon": round(float(lon[0]), 6)}
    assert rep["bt"]["min"] == pytest.approx(bt.min(), abs=0.04)
    assert rep["bt"]["max"] == pytest.approx(bt.max(), abs=0.04)
    assert rep["bt"]["mean"] == pytest.approx(bt.mean(), abs=0.04)


def test_inspect_full_disk_says_corners_are_off_the_disk(tmp_path, capsys):
    n = 31
    x, y = scan_axes(n, n, FULL_DISK_X0, -FULL_DISK_X0, 2 * -FULL_DISK_X0 / (n - 1))
    path = write_abi(tmp_path, {14: np.full((n, n), 250.0)}, start=T0, x_rad=x, y_rad=y, sector="F")
    assert run(["scene", "inspect", str(path), str(path), "--json"]) == 0
    text = capsys.readouterr().out
    reports = json.loads(text)  # strict JSON: NaN would not parse as a number here
    assert "NaN" not in text and len(reports) == 2
    corners = reports[0]["corners"]
    assert corners["upper_left"] == {"lat": None, "lon": None, "off_disk": True}
    assert corners["center"]["lat"] == pytest.approx(0.0, abs=1e-6) and corners["center"]["lon"] == -75.0
    assert reports[0]["product"] == "ABI-L2-CMIPF"
    assert math.isclose(reports[0]["bt"]["max"], 250.0, abs_tol=0.04)
    assert run(["scene", "inspect", str(path)]) == 0
    assert "off the Earth's disk" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_netcdf_that_is_not_abi_is_refused(tmp_path, capsys):
    path = tmp_path / "era5.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("lat", 3)
        nc.createVariable("t2m", "f4", ("lat",))[:] = [1, 2, 3]
    assert run(["scene", "inspect", str(path)]) == 2
    err = one_line_error(capsys)
    assert "era5.nc" in err and "not an ABI file" in err


def test_abi_product_that_is_not_imagery_is_refused(tmp_path, capsys):
    path = write_abi(tmp_path, {14: gradient()}, start=T0, name="OR_ABI-L2-ACHAC-M6_G16_s20231941800200.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc.renameVariable("CMI", "HT")
        nc.dataset_name = "OR_ABI-L2-ACHAC-M6_G16_s20231941800200_e20231941802573_c20231941804359.nc"
    assert run(["scene", "inspect", str(path)]) == 2
    err = one_line_error(capsys)
    assert "ACHAC" in err and "not imagery" in err


def test_truncated_file_is_refused(tmp_path, capsys):
    path = write_abi(tmp_path, {14: gradient(200, 300)}, start=T0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert run(["scene", "inspect", str(path)]) == 2
    err = one_line_error(capsys)
    assert path.name in err and "download it again" in err
