"""`--grid local`: the scene resampled onto a local UTM grid, the way OpenContrails built its records.

OpenContrails' records (Ng et al. 2023; the competition's `*_metadata.json` holds each one's
`projection_wkt`, `col_size` and `row_size`) lie on the WGS 84 Transverse Mercator of a UTM zone with
pixels of about 2 km, the ABI infrared pixel's size there. Google's notebook "Example code for
reprojecting GOES-16 images" (github.com/google-research/google-research, opencontrails/notebooks/
reproject_goes16_images.ipynb) builds a pyresample AreaDefinition of the ABI grid from the file's
projection and resamples bilinearly (`get_bil_info`, `get_sample_from_bil_info`); so does this module.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from segladder.errors import DataError
from segladder.scene.grid import SceneGrid, utm_crs
from segladder.scene.predict import ArrayReader, NativeReader, bbox_points

# OpenContrails' local pixel, m: the mean col_size and −row_size of the records whose metadata we could read
# (validation_metadata.json of the competition's layout: 1946.5/1966.6 and 1940.6/1969.1). Nearly square and
# nearly the same everywhere: records were cut to a fixed ground size, not to the ABI pixel's footprint,
# which grows north–south away from the sub-satellite point (2.5 km at 29° N from GOES-East).
OPENCONTRAILS_PIXEL_M = (1943.5, 1967.9)
# Bilinear resampling looks this far for the four source pixels around a target pixel: a few 2 km pixels.
RADIUS_M = 10_000.0
MAX_SIDE = 8192  # a local grid larger than this (16,000 km at 2 km) is a mistake in --bbox or --pixel-km


def _pyresample():
    with warnings.catch_warnings():  # pyresample warns at import that optional dask/xarray parts are off
        warnings.simplefilter("ignore")
        import pyresample.bilinear
        import pyresample.geometry

    return pyresample


def local_grid(
    native: SceneGrid, bbox: tuple[float, float, float, float], pixel_km: float | None = None
) -> SceneGrid:
    """The UTM grid over `bbox`: the zone of its centre, OpenContrails' pixel size (or `pixel_km` square)."""
    import pyproj

    lon_c, lat_c = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    crs = utm_crs(lon_c, lat_c)
    if pixel_km is not None:
        if not 0.1 <= pixel_km <= 50:
            raise DataError(f"--pixel-km {pixel_km}: give a pixel size between 0.1 and 50 km.")
        dx = dy = pixel_km * 1000.0
    else:
        dx, dy = OPENCONTRAILS_PIXEL_M
    to = pyproj.Transformer.from_crs(crs.geodetic_crs, crs, always_xy=True)
    x, y = to.transform(*bbox_points(bbox))
    x0, x1, y0, y1 = np.min(x), np.max(x), np.min(y), np.max(y)
    nx, ny = max(1, math.ceil((x1 - x0) / dx)), max(1, math.ceil((y1 - y0) / dy))
    if max(nx, ny) > MAX_SIDE:
        raise DataError(
            f"--bbox {','.join(f'{v:g}' for v in bbox)} at {dx / 1000:.2f} km pixels is {ny} × {nx}; give a "
            f"smaller box or a larger --pixel-km (at most {MAX_SIDE} pixels a side)."
        )
    xs = x0 + (np.arange(nx) + 0.5) * dx
    ys = y1 - (np.arange(ny) + 0.5) * dy
    return SceneGrid(crs, xs, ys, "local")


def area_definition(grid: SceneGrid, name: str):
    """The pyresample AreaDefinition of a regular grid (extent at the outer pixel edges)."""
    pr = _pyresample()
    dx = (grid.x[-1] - grid.x[0]) / max(len(grid.x) - 1, 1) if len(grid.x) > 1 else 2000.0
    dy = (grid.y[0] - grid.y[-1]) / max(len(grid.y) - 1, 1) if len(grid.y) > 1 else 2000.0
    extent = (grid.x[0] - dx / 2, grid.y[-1] - dy / 2, grid.x[-1] + dx / 2, grid.y[0] + dy / 2)
    return pr.geometry.AreaDefinition(name, name, name, grid.crs, len(grid.x), len(grid.y), extent)


def local_reader(
    native: NativeReader, bbox: tuple[float, float, float, float], pixel_km: float | None = None
) -> ArrayReader:
    """Every band and frame of `native`'s window resampled bilinearly onto the local grid over `bbox`."""
    pr = _pyresample()
    target = local_grid(native.grid, bbox, pixel_km)
    source = area_definition(native.grid, "abi_window")
    target_area = area_definition(target, "local")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyresample's warnings on pixels without neighbours: they become NaN
        info = pr.bilinear.get_bil_info(source, target_area, radius=RADIUS_M, neighbours=32)
    ny = native.shape[0]
    arrays = {}
    for position, band in _positions(native):
        src = native.rows(position, band, 0, ny).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = pr.bilinear.get_sample_from_bil_info(src.ravel(), *info, output_shape=target_area.shape)
        arrays[(position, band)] = np.asarray(np.ma.filled(out, np.nan), np.float32)
    return ArrayReader(target, arrays)


def _positions(native: NativeReader) -> list[tuple[int, int]]:
    return [(i, b) for i, frame in enumerate(native.stack.files) for b in frame]
