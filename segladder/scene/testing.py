"""ABI files in NOAA's layout, written from brightness temperatures: what the scene tests and benchmarks read.

The layout follows the GOES-R Product User's Guide (vol. 3 L1b, vol. 5 L2+) and NOAA's files: packed
int16 with `scale_factor`, `add_offset` and `_Unsigned = "true"`, `_FillValue` −1 (65535 unsigned), scan
angles `x`/`y` packed the same way, `goes_imager_projection`, `band_id`, `t`, and the global attributes
`platform_ID`, `dataset_name`, `time_coverage_start` and `scene_id`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from segladder.io import atomic_path
from segladder.scene.grid import GeosProjection, fixed_grid

# GOES-R fixed grid: 56 µrad (2 km at nadir) per infrared pixel; CONUS's upper-left pixel centre as in
# NOAA's GOES-East CONUS files (x_image_bounds[0] + half a pixel).
IR_STEP_RAD = 5.6e-05
CONUS_X0, CONUS_Y0 = -0.101332, 0.128212
# A window near the northern Gulf of Mexico (about 29° N, 85° W), well on the disk: small test scenes sit here.
MID_X0, MID_Y0 = -0.031332, 0.086212
FULL_DISK_X0, FULL_DISK_Y0 = -0.151844, 0.151844
GOES_EAST_LON, GOES_WEST_LON = -75.0, -137.0
GRS80 = (6378137.0, 6356752.31414)
GEOS_HEIGHT = 35786023.0
# CMI's packing for the infrared bands (12-bit counts): 89.62–341.27 K.
BT_OFFSET, BT_RANGE, COUNTS = 89.62, 341.27 - 89.62, 4095
EPOCH_2000 = datetime(2000, 1, 1, 12, tzinfo=UTC)
# Central wavenumbers (cm⁻¹) of ABI's infrared bands; the Planck coefficients below follow from them
# (fk1 = c1·ν³, fk2 = c2·ν), close to those in NOAA's files.
WAVENUMBER = {
    7: 2570.0,
    8: 1607.0,
    9: 1436.0,
    10: 1353.0,
    11: 1170.0,
    12: 1036.0,
    13: 968.0,
    14: 893.0,
    15: 813.0,
    16: 751.0,
}
WAVELENGTH_UM = {b: round(1e4 / v, 2) for b, v in WAVENUMBER.items()}
C1, C2 = 1.191042e-5, 1.4387752


def planck(band: int) -> dict[str, float]:
    """The L1b Planck coefficients used for `band`: fk1, fk2, bc1, bc2."""
    nu = WAVENUMBER[band]
    return {"planck_fk1": C1 * nu**3, "planck_fk2": C2 * nu, "planck_bc1": 0.2, "planck_bc2": 0.9991}


def radiance_from_bt(bt: np.ndarray, band: int) -> np.ndarray:
    """The inverse of the L1b conversion: radiance whose brightness temperature is `bt`."""
    k = planck(band)
    return k["planck_fk1"] / (np.exp(k["planck_fk2"] / (k["planck_bc1"] + k["planck_bc2"] * bt)) - 1.0)


def scan_axes(ny: int, nx: int, x0: float = MID_X0, y0: float = MID_Y0, step: float = IR_STEP_RAD):
    """Scan angles (radians) of an ny × nx window whose upper-left pixel centre is (x0, y0)."""
    return x0 + step * np.arange(nx), y0 - step * np.arange(ny)


def abi_name(kind: str, sector: str, band: int | None, platform: str, start: datetime) -> str:
    """NOAA's file name, e.g. OR_ABI-L2-CMIPC-M6C14_G16_s20231941801171_e…_c….nc."""
    level = "L1b" if kind == "Rad" else "L2"
    band_part = "" if band is None else f"C{band:02d}"

    def stamp(t: datetime) -> str:
        return t.strftime("%Y%j%H%M%S") + str(t.microsecond // 100_000)

    end = start + timedelta(minutes=2, seconds=23)
    return (
        f"OR_ABI-{level}-{kind}{sector}-M6{band_part}_{platform}_s{stamp(start)}_e{stamp(end)}"
        f"_c{stamp(end + timedelta(seconds=40))}.nc"
    )


def _pack(values: np.ndarray, offset: float, scale: float) -> np.ndarray:
    counts = np.rint((values - offset) / scale)
    counts = np.where(np.isfinite(counts), np.clip(counts, 0, COUNTS - 1), 65535)
    return counts.astype(np.uint16).view(np.int16)


def _packed_var(nc, name: str, dims, values: np.ndarray, offset: float, scale: float, units: str, **attrs):
    v = nc.createVariable(name, "i2", dims, fill_value=np.int16(-1), zlib=True, complevel=1)
    v.set_auto_maskandscale(False)
    v.setncatts(
        {
            "_Unsigned": "true",
            "scale_factor": np.float32(scale),
            "add_offset": np.float32(offset),
            "units": units,
            **attrs,
        }
    )
    v[:] = _pack(values, offset, scale)
    return v


def write_abi(
    out: str | os.PathLike,
    bt: Mapping[int, np.ndarray],
    *,
    kind: str = "CMIP",
    platform: str = "G16",
    start: datetime,
    x_rad: np.ndarray | None = None,
    y_rad: np.ndarray | None = None,
    lon_0: float = GOES_EAST_LON,
    sector: str = "C",
    drop: Sequence[str] = (),
    name: str | None = None,
) -> Path:
    """Write one ABI file of brightness temperatures `bt` {band: (ny, nx) K} into folder `out`.

    `kind` "CMIP" and "Rad" take one band, "MCMIP" several. Pixels the grid sees off the Earth's disk, and
    NaN ones, are written as fill. `drop` leaves variables or global attributes out, as tools that cut
    files down do; `name` overrides NOAA's file name. Returns the file's path.
    """
    import netCDF4

    bands = sorted(bt)
    if kind in ("CMIP", "Rad") and len(bands) != 1:
        raise ValueError(f"{kind} files hold one band; got {bands}")
    ny, nx = np.asarray(bt[bands[0]]).shape
    if x_rad is None or y_rad is None:
        x_rad, y_rad = scan_axes(ny, nx)
    # Pack the scan angles first, so the off-disk test uses the angles a reader will decode.
    x_packed = _pack_axis(np.asarray(x_rad, np.float64))
    y_packed = _pack_axis(np.asarray(y_rad, np.float64))
    geos = GeosProjection(GEOS_HEIGHT, *GRS80, lon_0, "x")
    grid = fixed_grid(geos, _unpack_axis(*x_packed), _unpack_axis(*y_packed))
    off_disk = ~np.isfinite(grid.lonlat(np.float32)[0])
    fname = abi_name(kind, sector, bands[0] if kind != "MCMIP" else None, platform, start)
    path = Path(out) / (name or fname)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
            for dim, n in (("y", ny), ("x", nx), ("band", 1), ("number_of_image_bounds", 2)):
                nc.createDimension(dim, n)
            _write_geometry(nc, x_packed, y_packed, np.asarray(x_rad), np.asarray(y_rad), lon_0)
            t = nc.createVariable("t", "f8")
            t.setncatts({"units": "seconds since 2000-01-01 12:00:00", "axis": "T", "standard_name": "time"})
            t[:] = (start - EPOCH_2000).total_seconds() + 71.5
            for b in bands:
                _write_band(nc, kind, b, np.where(off_disk, np.nan, np.asarray(bt[b], np.float64)))
            nc.setncatts(_global_attrs(kind, platform, sector, fname, lon_0, start))
            for what in drop:
                if what in nc.ncattrs():
                    nc.delncattr(what)
            dropped = [d for d in drop if d in nc.variables]
        if dropped:  # netCDF cannot delete a variable in place: copy without it
            _rewrite_without(tmp, dropped)
    return path


def _write_geometry(nc, x_packed, y_packed, x_rad: np.ndarray, y_rad: np.ndarray, lon_0: float) -> None:
    """Packed scan angles, image bounds and the goes_imager_projection variable."""
    for axis, (counts, off, scale) in (("x", x_packed), ("y", y_packed)):
        v = nc.createVariable(axis, "i2", (axis,))
        v.set_auto_maskandscale(False)
        v.setncatts(
            {
                "scale_factor": np.float32(scale),
                "add_offset": np.float32(off),
                "units": "rad",
                "axis": axis.upper(),
                "standard_name": f"projection_{axis}_coordinate",
                "long_name": f"GOES fixed grid projection {axis}-coordinate",
            }
        )
        v[:] = counts
    p = nc.createVariable("goes_imager_projection", "i4")
    p.setncatts(
        {
            "long_name": "GOES-R ABI fixed grid projection",
            "grid_mapping_name": "geostationary",
            "perspective_point_height": GEOS_HEIGHT,
            "semi_major_axis": GRS80[0],
            "semi_minor_axis": GRS80[1],
            "inverse_flattening": 298.2572221,
            "latitude_of_projection_origin": 0.0,
            "longitude_of_projection_origin": lon_0,
            "sweep_angle_axis": "x",
        }
    )
    half = IR_STEP_RAD / 2
    nc.createVariable("x_image_bounds", "f4", ("number_of_image_bounds",))[:] = [
        x_rad[0] - half,
        x_rad[-1] + half,
    ]
    nc.createVariable("y_image_bounds", "f4", ("number_of_image_bounds",))[:] = [
        y_rad[0] + half,
        y_rad[-1] - half,
    ]


def _write_band(nc, kind: str, band: int, values: np.ndarray) -> None:
    """One band's packed imagery (CMI, CMI_Cnn or Rad with its Planck coefficients), band_id and wavelength."""
    suffix = f"_C{band:02d}" if kind == "MCMIP" else ""
    mapping = {"grid_mapping": "goes_imager_projection"}
    if kind == "Rad":
        rad = radiance_from_bt(values, band)
        hi = float(np.nanmax(rad)) * 1.5 if np.isfinite(rad).any() else 1.0
        _packed_var(
            nc,
            "Rad",
            ("y", "x"),
            rad,
            0.0,
            hi / COUNTS,
            "mW m-2 sr-1 (cm-1)-1",
            **mapping,
            long_name="ABI L1b Radiances",
        )
        for k, val in planck(band).items():
            nc.createVariable(k, "f4")[:] = val
    else:
        _packed_var(
            nc,
            f"CMI{suffix}",
            ("y", "x"),
            values,
            BT_OFFSET,
            BT_RANGE / COUNTS,
            "K",
            **mapping,
            standard_name="toa_brightness_temperature",
            long_name="ABI L2+ Cloud and Moisture Imagery brightness temperature",
        )
    nc.createVariable(f"band_id{suffix}", "i1", ("band",))[:] = band
    bw = nc.createVariable(f"band_wavelength{suffix}", "f4", ("band",))
    bw.units = "um"
    bw[:] = WAVELENGTH_UM[band]


def _global_attrs(kind: str, platform: str, sector: str, fname: str, lon_0: float, start: datetime) -> dict:
    return {
        "naming_authority": "gov.nesdis.noaa",
        "Conventions": "CF-1.7",
        "title": "ABI L1b Radiances" if kind == "Rad" else "ABI L2 Cloud and Moisture Imagery",
        "platform_ID": platform,
        "instrument_type": "GOES-R Series Advanced Baseline Imager (ABI)",
        "scene_id": {"F": "Full Disk", "C": "CONUS", "M": "Mesoscale"}[sector[0]],
        "dataset_name": fname,
        "spatial_resolution": "2km at nadir",
        "orbital_slot": "GOES-East" if lon_0 > -100 else "GOES-West",
        "cdm_data_type": "Image",
        "time_coverage_start": start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 100_000}Z",
        "timeline_id": "ABI Mode 6",
    }


def _pack_axis(angles: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 counts, offset and scale of scan angles, NOAA's way: the first angle is the offset."""
    step = float(angles[1] - angles[0]) if len(angles) > 1 else IR_STEP_RAD
    counts = np.rint((angles - angles[0]) / step).astype(np.int16)
    off, scale = np.float32(angles[0]), np.float32(step)
    return counts, float(off), float(scale)


def _unpack_axis(counts: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """The angles a CF reader decodes from packed counts (float32 arithmetic, as xarray does)."""
    return (counts.astype(np.float32) * np.float32(scale) + np.float32(offset)).astype(np.float64)


def _rewrite_without(path: Path, names: Sequence[str]) -> None:
    """Rewrite `path` leaving out variables `names`."""
    import netCDF4

    full = path.with_name(path.name + ".full")
    os.replace(path, full)
    try:
        with netCDF4.Dataset(full) as src, netCDF4.Dataset(path, "w", format="NETCDF4") as dst:
            dst.setncatts({a: src.getncattr(a) for a in src.ncattrs()})
            for dname, dim in src.dimensions.items():
                dst.createDimension(dname, len(dim))
            for vname, var in src.variables.items():
                if vname in names:
                    continue
                var.set_auto_maskandscale(False)
                attrs = {a: var.getncattr(a) for a in var.ncattrs()}
                fill = attrs.pop("_FillValue", None)
                out = dst.createVariable(
                    vname, var.dtype, var.dimensions, fill_value=fill, zlib=True, complevel=1
                )
                out.set_auto_maskandscale(False)
                out.setncatts(attrs)
                out[...] = var[...]
    finally:
        full.unlink()
