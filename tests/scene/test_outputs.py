"""The contrail map's files read back, follow the painted contrails, show them, and are written atomically."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pyproj
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely.geometry
import xarray as xr

from segladder.data.contrails import ash_from_bands
from segladder.errors import DataError
from segladder.scene.grid import GeosProjection, SceneGrid, fixed_grid, utm_crs
from segladder.scene.outputs import (
    MapInfo,
    contrail_features,
    contrail_mask,
    write_geojson,
    write_netcdf,
    write_quicklook,
)

GEOS = GeosProjection(35786023.0, 6378137.0, 6356752.31414, -75.0)
STEP = 5.6e-5  # rad: about 2 km at the sub-satellite point
GEOD = pyproj.Geod(ellps="WGS84")


def native_grid(ny: int = 64, nx: int = 160, x0: float = -0.02, y0: float = 0.09) -> SceneGrid:
    """The ABI fixed grid over the USA (x0, y0 the scan angles of the north-west pixel)."""
    return fixed_grid(GEOS, np.arange(nx) * STEP + x0, y0 - np.arange(ny) * STEP)


def local_grid(ny: int = 64, nx: int = 160) -> SceneGrid:
    return SceneGrid(
        utm_crs(-90, 35),
        x=410_000.0 + 2000.0 * np.arange(nx),
        y=3_950_000.0 - 2000.0 * np.arange(ny),
        name="local",
    )


def limb_grid() -> SceneGrid:
    """A grid over the eastern limb: its right-hand columns see no Earth."""
    return native_grid(ny=24, nx=90, x0=0.148, y0=0.012)


def info(grid: SceneGrid, **kw) -> MapInfo:
    base = dict(
        time="2023-07-13T18:00:00Z",
        platform="G16",
        sources=["OR_ABI-L1b-RadF-M6C11_G16_s20231941800.nc", "OR_ABI-L1b-RadF-M6C14_G16_s20231941800.nc"],
        checkpoint_sha256=["0f" * 32, "a1" * 32],
        threshold=0.45,
        min_area=4,
        segladder_version="9.8.7",
        grid=grid.name,
    )
    return MapInfo(**{**base, **kw})


def segment_distance(rows, cols, p0, p1) -> np.ndarray:
    """Distance in pixels of points (rows, cols) from the segment p0–p1 (row, col)."""
    p, a, b = np.stack([rows, cols], -1).astype(float), np.asarray(p0, float), np.asarray(p1, float)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)


def paint(shape, p0, p1, half_width: float = 1.2) -> np.ndarray:
    """The pixels whose centres lie within `half_width` of the segment p0–p1: 2–3 px thick by default."""
    rows, cols = np.indices(shape)
    return segment_distance(rows, cols, p0, p1) < half_width


def geodesic_km(grid: SceneGrid, p0, p1) -> float:
    lon, lat = grid.lonlat_of(np.array([p0[0], p1[0]]), np.array([p0[1], p1[1]]))
    return GEOD.inv(lon[0], lat[0], lon[1], lat[1])[2] / 1000


def vertices_rowcol(geometry: dict, grid: SceneGrid) -> list[np.ndarray]:
    """Each part's vertices as (n, 2) (row, col), read back from lon/lat."""
    parts = [geometry["coordinates"]] if geometry["type"] == "LineString" else geometry["coordinates"]
    out = []
    for part in parts:
        lonlat = np.array(part, float)
        row, col = grid.rowcol_of(lonlat[:, 0], lonlat[:, 1])
        out.append(np.stack([row, col], -1))
    return out


def assert_same_crs(read, crs: pyproj.CRS) -> None:
    """`read` (rioxarray's CRS) is `crs`: the same PROJ definition, placing points on the Earth alike.

    GDAL rewrites the WKT (axis names, a PROJ4 remark): `CRS.equals` is too strict for the geostationary CRS.
    """
    read = pyproj.CRS.from_user_input(read)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # to_proj4 warns that PROJ strings lose information
        assert read.to_proj4() == crs.to_proj4()
    x, y = np.array([-7.0e5, -4.0e5, 6.0e5]), np.array([3.2e6, 3.0e6, 3.9e6])
    to_ll = [pyproj.Transformer.from_crs(c, c.geodetic_crs, always_xy=True) for c in (read, crs)]
    np.testing.assert_allclose(to_ll[0].transform(x, y), to_ll[1].transform(x, y), atol=1e-9)


# --------------------------------------------------------------------------------------------- contrails.nc


@pytest.mark.parametrize("which", ["native", "local", "limb"])
def test_netcdf_reads_back_with_xarray_and_rioxarray(tmp_path, which):
    grid = {"native": native_grid, "local": local_grid, "limb": limb_grid}[which]()
    ny, nx = grid.shape
    rng = np.random.default_rng(3)
    prob = rng.random((ny, nx), dtype=np.float32)
    prob[:3, -5:] = np.nan  # no data in the north-east corner
    lon, lat = grid.lonlat()
    prob[np.isnan(lon)] = np.nan
    mask = contrail_mask(prob, 0.45, 4)
    meta = info(grid)

    path = write_netcdf(tmp_path / "contrails.nc", grid, prob, mask, meta)

    mapping = "goes_imager_projection" if grid.name == "native" else "crs"
    with xr.open_dataset(path, decode_coords="all") as ds:
        assert set(ds.data_vars) == {"contrail_probability", "contrail_mask"}
        assert {"lat", "lon", "time", mapping} <= set(ds.coords)
        for name in ("contrail_probability", "contrail_mask", "lat", "lon"):
            assert ds[name].dims == ("y", "x") and ds[name].shape == (ny, nx)
        assert ds["contrail_mask"].dtype == np.uint8 and ds["contrail_probability"].dtype == np.float32
        np.testing.assert_array_equal(ds["contrail_probability"].values, prob)  # NaN where NaN, else exact
        np.testing.assert_array_equal(ds["contrail_mask"].values, mask)
        np.testing.assert_array_equal(ds["lat"].values, lat.astype(np.float32))
        np.testing.assert_array_equal(ds["lon"].values, lon.astype(np.float32))
        np.testing.assert_array_equal(ds["x"].values, grid.x)
        np.testing.assert_array_equal(ds["y"].values, grid.y)
        assert ds["time"].values == np.datetime64("2023-07-13T18:00:00")
        for name in ("contrail_probability", "contrail_mask"):
            assert ds[name].encoding["grid_mapping"] == mapping
            assert ds[name].encoding["zlib"]
        for name in ("contrail_probability", "lat", "lon"):  # NaN is the missing value, as CF readers see it
            assert np.isnan(ds[name].encoding["_FillValue"])
        assert not any("_FillValue" in ds[name].encoding for name in ("x", "y", "time", "contrail_mask"))
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate" and ds["x"].attrs["units"] == "m"
        assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
        assert ds["contrail_mask"].attrs["flag_meanings"] == "no_contrail contrail"
        assert ds["contrail_mask"].attrs["threshold"] == pytest.approx(0.45)
        a = ds.attrs
        assert a["Conventions"] == "CF-1.8" and a["platform"] == "G16" and a["grid"] == grid.name
        assert (
            a["threshold"] == pytest.approx(0.45) and a["min_area"] == 4 and a["segladder_version"] == "9.8.7"
        )
        assert all(s in a["source_files"] for s in meta.sources)
        assert all(h in a["checkpoint_sha256"] for h in meta.checkpoint_sha256)
        assert_same_crs(ds.rio.crs, grid.crs)
        assert_same_crs(ds["contrail_probability"].rio.crs, grid.crs)
    assert (which == "limb") == bool(np.isnan(lat).any())  # the limb grid does test NaN lat/lon


# ----------------------------------------------------------------------------------------- contrails.geojson


def test_features_follow_the_painted_contrails(tmp_path):
    grid = native_grid()
    shape = grid.shape
    lines = {"long": ((10, 5), (40, 120)), "short": ((58, 20), (46, 100))}
    painted = {name: paint(shape, *ends) for name, ends in lines.items()}
    prob = np.full(shape, 0.1, np.float32)
    prob[painted["long"]], prob[painted["short"]] = 0.8, 0.6
    peaks = {"long": (25, 63), "short": (52, 56)}  # pixels on each line, made the maximum of its contrail
    prob[peaks["long"]], prob[peaks["short"]] = 0.93, 0.71
    assert all(painted[n][peaks[n]] for n in lines)
    meta = info(grid)

    collection = contrail_features(contrail_mask(prob, 0.5, 5), prob, grid, meta)

    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    by_area = {f["properties"]["area_px"]: f for f in collection["features"]}
    for name, (p0, p1) in lines.items():
        f = by_area[int(painted[name].sum())]
        geometry, props = f["geometry"], f["properties"]
        assert f["type"] == "Feature" and geometry["type"] == "LineString"
        assert shapely.geometry.shape(geometry).is_valid
        assert all(round(v, 6) == v for xy in geometry["coordinates"] for v in xy)
        (rc,) = vertices_rowcol(geometry, grid)
        assert segment_distance(rc[:, 0], rc[:, 1], p0, p1).max() <= 1.0, rc
        along = (rc - p0) @ (np.subtract(p1, p0) / np.linalg.norm(np.subtract(p1, p0)))
        assert np.all(np.diff(along) > 0) or np.all(np.diff(along) < 0), (
            "vertices are not in order along the line"
        )
        assert props["length_km"] == pytest.approx(geodesic_km(grid, p0, p1), rel=0.05)
        values = prob[painted[name]]
        assert props["max_probability"] == pytest.approx(float(values.max()), abs=1e-4)
        assert props["mean_probability"] == pytest.approx(float(values.mean()), abs=1e-4)
        assert props["time"] == meta.time and props["platform"] == "G16"

    path = write_geojson(tmp_path / "contrails.geojson", collection)
    assert json.loads(path.read_text()) == collection


def test_a_branching_contrail_is_a_multilinestring_its_branches_leaving_the_main_line():
    grid = native_grid()
    main = ((8, 10), (50, 130))
    branches = [((29, 70), (58, 55)), ((38, 95), (20, 104))]  # one runs south-west, one north-east
    mask = paint(grid.shape, *main) | paint(grid.shape, *branches[0]) | paint(grid.shape, *branches[1])
    prob = np.where(mask, 0.9, 0.0).astype(np.float32)

    (f,) = contrail_features(mask, prob, grid, info(grid))["features"]

    assert f["geometry"]["type"] == "MultiLineString" and len(f["geometry"]["coordinates"]) == 3
    assert shapely.geometry.shape(f["geometry"]).is_valid
    first, *rest = vertices_rowcol(f["geometry"], grid)
    assert segment_distance(first[:, 0], first[:, 1], *main).max() <= 1.0  # the longest path comes first
    for branch in branches:
        part = min(rest, key=lambda rc, b=branch: segment_distance(rc[:, 0], rc[:, 1], *b).max())
        assert segment_distance(part[:, 0], part[:, 1], *branch).max() <= 1.0
        assert np.abs(part[0] - branch[0]).max() <= 1.5  # it starts where it leaves the main line
    true_km = sum(geodesic_km(grid, *line) for line in (main, *branches))
    assert f["properties"]["length_km"] == pytest.approx(true_km, rel=0.05)


def ragged(shape, p0, p1, half_width: float, seed: int) -> np.ndarray:
    """A thick painted line with a third of the pixels along its edge added at random: a thresholded mask."""
    line = paint(shape, p0, p1, half_width)
    edge = cv2.dilate(line.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~line
    return line | (edge & (np.random.default_rng(seed).random(shape) < 0.3))


def test_ragged_edges_and_holes_in_thick_contrails_grow_no_spurs_or_loops():
    grid = native_grid()
    lines = {((10, 8), (30, 150)): 2.0, ((44, 8), (54, 150)): 3.0}  # (ends): half-width
    (a, wa), (b, wb) = lines.items()
    mask = ragged(grid.shape, *a, wa, seed=4) | ragged(grid.shape, *b, wb, seed=0)
    assert mask[22:25, 94:108].all() and mask[46:52, 69:76].all()  # the holes below are enclosed
    mask[23, 95:107] = False  # a 12-pixel slit in the thinner line: a hole of the mask, filled
    mask[47:50, 70:75] = False  # a 15-pixel hole in the thicker one: kept, but its ring is too short a loop
    prob = np.where(mask, 0.9, 0.0).astype(np.float32)

    features = contrail_features(mask, prob, grid, info(grid))["features"]

    assert len(features) == 2
    for f in features:
        # the skeleton reaches out to edge pixels and rings the holes; those are no branches
        assert f["geometry"]["type"] == "LineString"
        (rc,) = vertices_rowcol(f["geometry"], grid)
        ends = min(lines, key=lambda line: segment_distance(rc[:, 0], rc[:, 1], *line).mean())
        distance = segment_distance(rc[:, 0], rc[:, 1], *ends)
        # inside, the line passes the hole on one side; its ends may reach a corner of the ragged end
        assert distance[1:-1].max() <= 2.5 and distance.max() <= lines[ends] + 1.5
        # its ends reach into the painted line's round caps, a half-width beyond the segment
        assert f["properties"]["length_km"] == pytest.approx(geodesic_km(grid, *ends), rel=0.08)


def test_tiny_components_give_short_lines_and_an_empty_mask_no_features(tmp_path):
    grid = native_grid()
    mask = np.zeros(grid.shape, np.uint8)
    mask[20, 30:33] = 1  # three pixels in a row, west to east
    mask[50, 100] = 1  # one pixel
    prob = np.where(mask, 0.7, 0.2).astype(np.float32)
    prob[20, 32] = 0.75

    features = contrail_features(mask, prob, grid, info(grid))["features"]

    assert sorted(f["properties"]["area_px"] for f in features) == [1, 3]
    pixel_km = geodesic_km(grid, (20, 30), (20, 31))
    for f in features:
        assert f["geometry"]["type"] == "LineString" and len(f["geometry"]["coordinates"]) >= 2
        assert shapely.geometry.shape(f["geometry"]).is_valid
        n = f["properties"]["area_px"]
        assert f["properties"]["length_km"] == pytest.approx(max(n - 1, 1) * pixel_km, rel=0.1)
        rc = vertices_rowcol(f["geometry"], grid)[0]
        centre = (20, 31) if n == 3 else (50, 100)
        assert np.abs(rc - centre).max() <= 1.01
    three = next(f for f in features if f["properties"]["area_px"] == 3)
    assert three["properties"]["max_probability"] == pytest.approx(0.75)
    rc = vertices_rowcol(three["geometry"], grid)[0]
    assert np.ptp(rc[:, 1]) > np.ptp(rc[:, 0])  # the line runs along the row, not across it

    empty = contrail_features(np.zeros(grid.shape, np.uint8), prob, grid, info(grid))
    assert empty["type"] == "FeatureCollection" and empty["features"] == []
    path = write_geojson(tmp_path / "empty.geojson", empty)
    assert json.loads(path.read_text())["features"] == []


def test_vertices_off_the_earths_disk_are_skipped(tmp_path):
    grid = limb_grid()
    lon, _ = grid.lonlat()
    row = 12
    off = np.isnan(lon[row])
    assert off.any() and not off[:40].any()  # the line below runs from the disk off its edge
    mask = paint(grid.shape, (row, 5), (row, 85))
    prob = np.where(mask, 0.9, 0.0).astype(np.float32)

    (f,) = contrail_features(mask, prob, grid, info(grid))["features"]

    coords = np.array(f["geometry"]["coordinates"], float)
    assert np.isfinite(coords).all() and len(coords) >= 2
    _, cols = grid.rowcol_of(coords[:, 0], coords[:, 1])
    assert cols.min() <= 6 and not off[int(round(cols.max()))]
    # strict JSON: NaN would be written as a bare NaN token, which RFC 7946 readers refuse
    text = write_geojson(tmp_path / "c.geojson", {"type": "FeatureCollection", "features": [f]}).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the GeoJSON"))


# --------------------------------------------------------------------------------------------- contrail_mask


def test_contrail_mask_drops_small_components_and_nan():
    prob = np.zeros((12, 20), np.float32)
    prob[1, 1:4] = 0.9  # 3 px: under min_area 4, dropped
    prob[5, 2:6] = 0.9  # 4 px: kept
    for i in range(4):  # 4 px touching only at corners: one 8-connected component, kept
        prob[7 + i, 10 + i] = 0.9
    prob[0, 15:19] = 0.5  # exactly the threshold: not above it
    prob[3:8, 16] = np.nan  # no data
    prob[9:11, 16:19] = 0.6  # 6 px: kept

    mask = contrail_mask(prob, 0.5, 4)

    assert mask.dtype == np.uint8 and mask.shape == (12, 20)
    expected = np.zeros((12, 20), np.uint8)
    expected[5, 2:6] = 1
    expected[[7, 8, 9, 10], [10, 11, 12, 13]] = 1
    expected[9:11, 16:19] = 1
    np.testing.assert_array_equal(mask, expected)
    assert contrail_mask(prob, 0.5, 1)[1, 1:4].all()  # min_area 1 keeps everything above the threshold
    assert not contrail_mask(np.full((4, 5), np.nan, np.float32), 0.0, 1).any()


# --------------------------------------------------------------------------------------------- quicklook.png


def scene_bands(ny: int, nx: int) -> dict[int, np.ndarray]:
    rows, cols = np.indices((ny, nx), dtype=np.float32)
    b14 = 250.0 + 40.0 * cols / nx + 5.0 * rows / ny
    return {11: b14 - 3.0 + rows / ny, 14: b14, 15: b14 - 2.0 + 3.0 * cols / nx}


def read_png_rgb(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None
    return bgr[..., ::-1]


def test_quicklook_shows_the_ash_rgb_with_contrails_over_it(tmp_path):
    ny, nx = 20, 30
    bands = scene_bands(ny, nx)
    bands[14][:3, :4] = np.nan  # no data in the north-west corner
    mask = np.zeros((ny, nx), np.uint8)
    mask[12, 5:25] = 1

    plain = read_png_rgb(write_quicklook(tmp_path / "plain.png", bands, np.zeros_like(mask)))
    drawn = read_png_rgb(write_quicklook(tmp_path / "quicklook.png", bands, mask, title=""))

    assert plain.shape == drawn.shape == (ny, nx, 3)
    ash = (np.nan_to_num(ash_from_bands(bands[11], bands[14], bands[15])) * 255).round()
    np.testing.assert_allclose(plain, ash, atol=1)  # RGB in order, rows north to south
    assert (plain[:3, :4] == 0).all()  # NaN is black
    m = mask.astype(bool)
    np.testing.assert_array_equal(drawn[~m], plain[~m])
    diff = np.abs(drawn[m].astype(int) - plain[m].astype(int)).sum(-1)
    assert (diff > 60).all()
    r, g, b = drawn[m].astype(int).T
    assert (r > g + 100).all() and (b > g + 100).all()  # magenta


def test_quicklook_of_a_large_scene_is_downscaled_keeping_thin_contrails(tmp_path):
    ny, nx = 30, 4100
    mask = np.zeros((ny, nx), np.uint8)
    mask[16, 4000] = 1  # one pixel: max-pooling must keep it

    out = read_png_rgb(write_quicklook(tmp_path / "q.png", scene_bands(ny, nx), mask, title="G16 2023-07-13"))

    assert out.shape == (10, 1367, 3)  # 3×3 blocks: the long side under 2000 px
    r, g, b = out[5, 1333].astype(int)
    assert r > g + 100 and b > g + 100
    assert np.count_nonzero((out[..., 0] > 200) & (out[..., 1] < 80) & (out[..., 2] > 200)) == 1


# --------------------------------------------------------------------------------------------- atomic writes


def test_writes_leave_only_the_three_files_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    grid = native_grid(ny=24, nx=36)
    prob = np.zeros(grid.shape, np.float32)
    prob[5:8, 4:20] = 0.9
    mask = contrail_mask(prob, 0.5, 4)
    meta = info(grid)
    rows, cols = np.indices(grid.shape)
    bands = {11: 260.0 + rows * 0.1, 14: 262.0 + cols * 0.2, 15: 261.0 + rows * 0.0}
    out = tmp_path / "map"

    write_netcdf(out / "contrails.nc", grid, prob, mask, meta)
    write_geojson(out / "contrails.geojson", contrail_features(mask, prob, grid, meta))
    write_quicklook(out / "quicklook.png", bands, mask)

    assert sorted(p.name for p in out.iterdir()) == ["contrails.geojson", "contrails.nc", "quicklook.png"]
    before = (out / "contrails.nc").read_bytes()

    def half_then_fail(self, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"\x89HDF partial")
        raise RuntimeError("the writer died")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half_then_fail)
    with pytest.raises(RuntimeError, match="writer died"):
        write_netcdf(out / "contrails.nc", grid, prob * 0.5, mask, meta)
    assert (out / "contrails.nc").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["contrails.geojson", "contrails.nc", "quicklook.png"]


def test_a_bad_time_is_a_data_error_naming_the_value(tmp_path):
    grid = native_grid(ny=4, nx=5)
    zeros = np.zeros(grid.shape, np.float32)
    with pytest.raises(DataError, match="13/07/2023"):
        write_netcdf(tmp_path / "c.nc", grid, zeros, zeros.astype(np.uint8), info(grid, time="13/07/2023"))
    assert list(tmp_path.iterdir()) == []
