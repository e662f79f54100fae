"""ABI files as NOAA writes them: L2 CMIP (one band), L2 MCMIP (all bands) and L1b Rad, read as brightness temperature.

The layout is the GOES-R Product User's Guide's (vol. 3 for L1b, vol. 5 for L2+): packed int16 with
`scale_factor`, `add_offset` and `_Unsigned`, scan-angle `x`/`y` and a `goes_imager_projection`
variable. xarray decodes the packing; the projection is read from each file, never assumed, since
GOES-East and GOES-West differ (and GOES-19 replaced GOES-16 as GOES-East in April 2025).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from segladder.errors import DataError
from segladder.scene.grid import GeosProjection, SceneGrid, fixed_grid

PLATFORMS = ("G16", "G17", "G18", "G19")
IR_BANDS = tuple(range(7, 17))  # bands 7–16 are emissive: brightness temperature; 1–6 are reflectance
# OR_ABI-L2-CMIPC-M6C14_G16_s20231941801171_e..._c....nc; MCMIP has no C<band>; mesoscale says CMIPM1/M2.
NAME = re.compile(
    r"OR_ABI-(?P<level>L1b|L2)-(?P<product>[A-Za-z]+?)(?P<sector>F|C|M[12]?)-M(?P<mode>\d)"
    r"(?:C(?P<band>\d{2}))?_(?P<platform>G\d{2})_s(?P<start>\d{13,14})(?:_e(?P<end>\d{14})_c(?P<created>\d{14}))?"
)
IMAGERY = {
    "CMIP": "ABI L2 Cloud and Moisture Imagery",
    "MCMIP": "ABI L2 Cloud and Moisture Imagery",
    "Rad": "ABI L1b Radiances",
}


@dataclass(frozen=True)
class AbiFile:
    """One ABI imagery file's metadata; its pixels are read with `read_bt`.

    Args:
        path: the file.
        platform: "G16" … "G19".
        product: e.g. "ABI-L2-CMIPC", "ABI-L2-MCMIPF", "ABI-L1b-RadC".
        kind: "CMIP", "MCMIP" or "Rad".
        bands: the bands the file holds (one, or 1–16 for MCMIP).
        scan_start: the scan's start, UTC.
        grid: the file's ABI fixed grid.
    """

    path: Path
    platform: str
    product: str
    kind: str
    bands: tuple[int, ...]
    scan_start: datetime
    grid: SceneGrid

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return self.grid.shape

    @property
    def band(self) -> int | None:
        """The one band of a single-band file; None for MCMIP."""
        return self.bands[0] if len(self.bands) == 1 else None


def _stamp(text: str) -> datetime:
    """YYYYJJJHHMMSS[t]: day of year, then tenths of a second."""
    when = datetime.strptime(text[:13], "%Y%j%H%M%S").replace(tzinfo=UTC)
    return when.replace(microsecond=int(text[13]) * 100_000) if len(text) > 13 else when


def parse_name(name: str) -> dict | None:
    """Fields of an ABI file name (or a `dataset_name` attribute, or a bucket key); None where it is not one.

    "product" is the bucket's product folder ("ABI-L2-CMIPM" for a CMIPM1 file); "sector" is F, C, M1 or
    M2; "scan_end" and "created" are None where the name is cut short.
    """
    m = NAME.search(str(name).replace("\\", "/").rsplit("/", 1)[-1])
    if m is None:
        return None
    try:
        start = _stamp(m["start"])
        end, created = (_stamp(m["end"]), _stamp(m["created"])) if m["end"] else (None, None)
    except ValueError:  # an impossible day of year or hour
        return None
    return {
        "product": f"ABI-{m['level']}-{m['product']}{m['sector'][0]}",
        "kind": m["product"],
        "sector": m["sector"],
        "band": int(m["band"]) if m["band"] else None,
        "platform": m["platform"],
        "scan_start": start,
        "scan_end": end,
        "created": created,
        "mode": int(m["mode"]),
    }


def _iso_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _open_dataset(path: Path):
    import xarray as xr

    try:
        return xr.open_dataset(path, engine="netcdf4", decode_times=False, mask_and_scale=True, cache=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give an ABI netCDF file or a folder of them.") from None
    except Exception as exc:  # netCDF4/HDF5 raise OSError, ValueError or RuntimeError for damaged files
        raise DataError(
            f"{path}: not a readable netCDF file ({type(exc).__name__}: {str(exc)[:120]}); it is truncated or "
            "corrupt: download it again (`segladder scene fetch`)."
        ) from None


def _projection(path: Path, ds) -> GeosProjection:
    if "goes_imager_projection" not in ds.variables or "x" not in ds.variables or "y" not in ds.variables:
        raise DataError(
            f"{path}: not an ABI fixed-grid file (no goes_imager_projection with x/y scan angles); give "
            "GOES-R ABI L2 CMIP/MCMIP or L1b Rad files as NOAA distributes them."
        )
    a = ds["goes_imager_projection"].attrs
    try:
        return GeosProjection(
            float(a["perspective_point_height"]),
            float(a["semi_major_axis"]),
            float(a["semi_minor_axis"]),
            float(a["longitude_of_projection_origin"]),
            str(a.get("sweep_angle_axis", "x")),
        )
    except KeyError as exc:
        raise DataError(
            f"{path}: goes_imager_projection lacks {exc.args[0]}; the file is not in NOAA's ABI layout."
        ) from None


def _kind_of(ds) -> str | None:
    if "Rad" in ds.variables:
        return "Rad"
    if "CMI" in ds.variables:
        return "CMIP"
    if any(re.fullmatch(r"CMI_C\d{2}", str(v)) for v in ds.variables):
        return "MCMIP"
    return None


def open_abi(path: str | Path) -> AbiFile:
    """Read an ABI file's metadata: platform, product, bands, scan start and fixed grid.

    Files cut down by other tools still read: band and time come from `band_id`/`t` where present, else
    from the global attributes (`dataset_name`, `time_coverage_start`), else from the file name.

    Raises:
        DataError: naming the file, when it is not ABI, not imagery or cannot be read.
    """
    path = Path(path)
    ds = _open_dataset(path)
    try:
        return _describe(path, ds)
    finally:
        ds.close()


def _describe(path: Path, ds) -> AbiFile:
    attrs = ds.attrs
    fields = parse_name(str(attrs.get("dataset_name", ""))) or parse_name(path.name) or {}
    kind = _kind_of(ds)
    if kind is None:
        product = fields.get("product") or attrs.get("title") or "this product"
        if "goes_imager_projection" in ds.variables:
            raise DataError(
                f"{path}: {product} is an ABI product but not imagery (no CMI or Rad variable); give "
                "ABI-L2-CMIP, ABI-L2-MCMIP or ABI-L1b-Rad files."
            )
        raise DataError(
            f"{path}: not an ABI file (no CMI or Rad variable, no goes_imager_projection); give GOES-R ABI "
            "L2 CMIP/MCMIP or L1b Rad files as NOAA distributes them."
        )
    geos = _projection(path, ds)
    try:
        x = np.asarray(ds["x"].values, np.float64)
        y = np.asarray(ds["y"].values, np.float64)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read x/y ({exc}); the file is truncated: download it again."
        ) from None
    grid = fixed_grid(geos, x, y)
    platform = str(attrs.get("platform_ID") or fields.get("platform") or "")
    if platform not in PLATFORMS:
        raise DataError(
            f"{path}: platform {platform or 'unknown'!r} is not a GOES-R ABI ({', '.join(PLATFORMS)}); the "
            "file lacks platform_ID and an ABI file name: restore its name (OR_ABI-..._G16_s...nc)."
        )
    if kind == "MCMIP":
        bands = tuple(sorted(int(str(v)[-2:]) for v in ds.variables if re.fullmatch(r"CMI_C\d{2}", str(v))))
    else:
        band = None
        if "band_id" in ds.variables:
            band = int(np.asarray(ds["band_id"].values).ravel()[0])
        band = band or fields.get("band")
        if band is None:
            raise DataError(
                f"{path}: which band it holds is not said (no band_id, no dataset_name, no ABI file name); "
                "restore the file's name (…M6C14_G16_s…) or its band_id variable."
            )
        bands = (band,)
    start = _iso_time(str(attrs.get("time_coverage_start", ""))) or fields.get("scan_start")
    if start is None:
        raise DataError(
            f"{path}: its scan time is not said (no time_coverage_start, no ABI file name); restore the "
            "file's name (…_s20231941801171_…) or its global attributes."
        )
    product = fields.get("product") or _product_from_attrs(attrs, kind)
    return AbiFile(path, platform, product, kind, bands, start, grid)


def _product_from_attrs(attrs: dict, kind: str) -> str:
    scene = str(attrs.get("scene_id", "")).lower()
    sector = "F" if "full" in scene else "C" if "conus" in scene else "M" if "meso" in scene else ""
    level = "L1b" if kind == "Rad" else "L2"
    return f"ABI-{level}-{kind}{sector}"


def _variable(abi: AbiFile, band: int) -> str:
    if band not in abi.bands:
        raise DataError(f"{abi.path}: holds band(s) {list(abi.bands)}, not band {band}.")
    return {"CMIP": "CMI", "Rad": "Rad"}.get(abi.kind, f"CMI_C{band:02d}")


def read_bt(abi: AbiFile, band: int, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Brightness temperature (K) of `band` over rows r0:r1, columns c0:c1 (all when None), float32.

    Fill values (off the Earth's disk, missing scan lines) are NaN. L1b radiances are converted with the
    file's own Planck coefficients (PUG vol. 3, §5.1.3.8): T = (fk2 / ln(fk1 / L + 1) − bc1) / bc2.
    """
    if band not in IR_BANDS:
        raise DataError(
            f"{abi.path}: band {band} is a reflectance band; contrail models read the infrared bands 7–16."
        )
    name = _variable(abi, band)
    r0, r1, c0, c1 = window or (0, abi.shape[0], 0, abi.shape[1])
    ds = _open_dataset(abi.path)
    try:
        values = ds[name][r0:r1, c0:c1].values.astype(np.float32)
        if abi.kind == "Rad":
            k = {n: float(ds[n].values) for n in ("planck_fk1", "planck_fk2", "planck_bc1", "planck_bc2")}
            with np.errstate(divide="ignore", invalid="ignore"):
                values = (k["planck_fk2"] / np.log(k["planck_fk1"] / values + 1.0) - k["planck_bc1"]) / k[
                    "planck_bc2"
                ]
            values = np.where(np.isfinite(values), values, np.nan).astype(np.float32)
    except KeyError as exc:
        raise DataError(f"{abi.path}: no variable {exc.args[0]}; the file is not in NOAA's layout.") from None
    except Exception as exc:
        raise DataError(
            f"{abi.path}: reading {name} failed ({type(exc).__name__}: {str(exc)[:120]}); the file is "
            "truncated or corrupt: download it again."
        ) from None
    finally:
        ds.close()
    return values
