"""Where a scene's pixels lie on the Earth: the ABI fixed grid, a local grid, and pixel ↔ lon/lat through pyproj.

The ABI fixed grid is a geostationary projection whose coordinates are scan angles in radians (GOES-R
Product User's Guide, vol. 5, §4.2.8); multiplied by the perspective point height they are the metres of
PROJ's `+proj=geos` with `+sweep=x`. Rows run north to south and columns west to east.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyproj

from segladder.errors import DataError


@dataclass(frozen=True)
class GeosProjection:
    """The `goes_imager_projection` variable of an ABI file: a geostationary view from `lon_0`.

    Args:
        perspective_point_height: satellite height above the ellipsoid, m (35,786,023 for GOES-R).
        semi_major_axis, semi_minor_axis: the GRS80 ellipsoid's axes, m.
        longitude_of_projection_origin: the sub-satellite longitude (−75 GOES-East, −137 GOES-West).
        sweep_angle_axis: "x" for ABI.
    """

    perspective_point_height: float
    semi_major_axis: float
    semi_minor_axis: float
    longitude_of_projection_origin: float
    sweep_angle_axis: str = "x"

    @cached_property
    def crs(self) -> pyproj.CRS:
        """The projection as a pyproj CRS in metres (scan angle × height)."""
        return pyproj.CRS.from_proj4(
            f"+proj=geos +h={self.perspective_point_height!r} +lon_0={self.longitude_of_projection_origin!r} "
            f"+a={self.semi_major_axis!r} +b={self.semi_minor_axis!r} +sweep={self.sweep_angle_axis} "
            "+units=m +no_defs +type=crs"
        )

    def cf_attrs(self) -> dict:
        """CF-1.8 `geostationary` grid-mapping attributes, as NOAA writes them, plus the WKT GDAL reads."""
        return {
            "grid_mapping_name": "geostationary",
            "perspective_point_height": self.perspective_point_height,
            "semi_major_axis": self.semi_major_axis,
            "semi_minor_axis": self.semi_minor_axis,
            "inverse_flattening": self.semi_major_axis / (self.semi_major_axis - self.semi_minor_axis),
            "latitude_of_projection_origin": 0.0,
            "longitude_of_projection_origin": self.longitude_of_projection_origin,
            "sweep_angle_axis": self.sweep_angle_axis,
            "crs_wkt": self.crs.to_wkt(),
            "spatial_ref": self.crs.to_wkt(),
        }


@dataclass(frozen=True)
class SceneGrid:
    """A regular grid of pixel centres in a projected CRS: what a scene's arrays (ny, nx) are laid on.

    Args:
        crs: the grid's projected CRS (metres).
        x: (nx,) pixel-centre eastings, m, increasing west to east.
        y: (ny,) pixel-centre northings, m, decreasing north to south (row 0 is north).
        name: "native" (the ABI fixed grid) or "local" (a local Transverse Mercator grid).
        geos: the ABI projection when `name` is "native".
    """

    crs: pyproj.CRS
    x: np.ndarray
    y: np.ndarray
    name: str = "native"
    geos: GeosProjection | None = field(default=None, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return len(self.y), len(self.x)

    @cached_property
    def _to_lonlat(self) -> pyproj.Transformer:
        return pyproj.Transformer.from_crs(self.crs, self.crs.geodetic_crs, always_xy=True)

    @cached_property
    def _from_lonlat(self) -> pyproj.Transformer:
        return pyproj.Transformer.from_crs(self.crs.geodetic_crs, self.crs, always_xy=True)

    def xy_of(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Projected (x, y) of fractional pixel positions (row, col); integers are pixel centres exactly.

        Between centres the coordinates are interpolated, beyond the edges extrapolated, linearly: a
        file's decoded scan angles are not exactly evenly spaced (float32 packing), and integer positions
        must give the file's own coordinates.
        """
        return _along(self.x, np.asarray(cols, np.float64)), _along(self.y, np.asarray(rows, np.float64))

    def lonlat_of(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lon, lat) in degrees of fractional pixel positions; NaN where the pixel sees no Earth."""
        x, y = self.xy_of(rows, cols)
        lon, lat = self._to_lonlat.transform(x, y, errcheck=False)
        lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
        off = ~(np.isfinite(lon) & np.isfinite(lat))
        lon[off], lat[off] = np.nan, np.nan
        return lon, lat

    def rowcol_of(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, col) of lon/lat points; NaN where the grid's projection cannot see them."""
        x, y = self._from_lonlat.transform(
            np.asarray(lon, np.float64), np.asarray(lat, np.float64), errcheck=False
        )
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        col = np.where(ok, _index_of(self.x, np.where(ok, x, 0.0)), np.nan)
        row = np.where(ok, _index_of(self.y, np.where(ok, y, 0.0)), np.nan)
        return row, col

    def lonlat(self, dtype=np.float64, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """2-D (lon, lat) of every pixel centre, (ny, nx) of `dtype` each; NaN off the Earth's disk.

        Computed `block` rows at a time, so a full disk's (5424², 29 M pixels) costs its two outputs and
        one block of float64 work, not six full-size float64 arrays.
        """
        ny, nx = len(self.y), len(self.x)
        lon, lat = np.empty((ny, nx), dtype), np.empty((ny, nx), dtype)
        for r0 in range(0, ny, block):
            r1 = min(ny, r0 + block)
            rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(nx), indexing="ij")
            lon[r0:r1], lat[r0:r1] = self.lonlat_of(rows, cols)
        return lon, lat

    def window(self, r0: int, r1: int, c0: int, c1: int) -> SceneGrid:
        """The sub-grid of rows r0:r1 and columns c0:c1."""
        return SceneGrid(self.crs, self.x[c0:c1].copy(), self.y[r0:r1].copy(), self.name, self.geos)

    def cf_grid_mapping(self) -> dict:
        """CF grid-mapping attributes of the grid's CRS (with `crs_wkt` and `spatial_ref` for GDAL)."""
        if self.geos is not None:
            return self.geos.cf_attrs()
        attrs = self.crs.to_cf()
        attrs["spatial_ref"] = attrs.get("crs_wkt", self.crs.to_wkt())
        return attrs


def _along(axis: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Coordinates at fractional indices `pos` of a monotonic axis: exact at integers, linear elsewhere."""
    n = len(axis)
    if n == 1:
        return np.full_like(pos, axis[0], dtype=np.float64)
    idx = np.arange(n, dtype=np.float64)
    inside = np.interp(pos, idx, axis)
    below, above = pos < 0, pos > n - 1
    inside = np.where(below, axis[0] + pos * (axis[1] - axis[0]), inside)
    return np.where(above, axis[-1] + (pos - (n - 1)) * (axis[-1] - axis[-2]), inside)


def _index_of(axis: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Fractional indices of coordinates `value` on a monotonic axis (the inverse of `_along`)."""
    if len(axis) == 1:
        return np.zeros_like(value, dtype=np.float64)
    increasing = axis[-1] > axis[0]
    a = axis if increasing else axis[::-1]
    idx = np.arange(len(axis), dtype=np.float64)
    idx = idx if increasing else idx[::-1]
    out = np.interp(value, a, idx)
    lo, hi = value < a[0], value > a[-1]
    out = np.where(lo, idx[0] + (value - a[0]) / (a[1] - a[0]) * (idx[1] - idx[0]), out)
    return np.where(hi, idx[-1] + (value - a[-1]) / (a[-1] - a[-2]) * (idx[-1] - idx[-2]), out)


def fixed_grid(geos: GeosProjection, x_rad: np.ndarray, y_rad: np.ndarray) -> SceneGrid:
    """The ABI fixed grid of a file: scan angles (radians) become `+proj=geos` metres."""
    h = geos.perspective_point_height
    x, y = np.asarray(x_rad, np.float64) * h, np.asarray(y_rad, np.float64) * h
    if len(x) > 1 and not np.all(np.diff(x) > 0):
        raise DataError("the file's x scan angles do not increase west to east; it is not an ABI fixed grid.")
    if len(y) > 1 and not np.all(np.diff(y) < 0):
        raise DataError(
            "the file's y scan angles do not decrease north to south; it is not an ABI fixed grid."
        )
    return SceneGrid(geos.crs, x, y, "native", geos)


def utm_crs(lon: float, lat: float) -> pyproj.CRS:
    """The WGS 84 UTM zone of a point (EPSG 326NN north, 327NN south): OpenContrails' local records use these."""
    zone = int(np.floor((lon + 180.0) / 6.0)) % 60 + 1
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
