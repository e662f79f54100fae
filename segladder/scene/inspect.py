"""`scene inspect`: what an ABI file holds and where it looks, the `gdalinfo` of ABI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segladder.scene.abi import IR_BANDS, AbiFile, open_abi, read_bt

# Which band's temperatures a multi-band file reports: the clean 11.2 µm window, the contrail models' core.
REPORT_BAND = 14


def iso_utc(when) -> str:
    """ISO 8601 UTC with a Z, to the tenth of a second as NOAA writes scan times."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 100_000}Z"


def corner_points(shape: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Pixel (row, col) of each named corner and the centre; row 0 is north, column 0 west."""
    ny, nx = shape
    return {
        "upper_left": (0, 0),
        "upper_right": (0, nx - 1),
        "lower_left": (ny - 1, 0),
        "lower_right": (ny - 1, nx - 1),
        "center": (ny // 2, nx // 2),
    }


def corners(abi: AbiFile) -> dict[str, dict]:
    """{lat, lon} of each corner's pixel centre; `{lat: None, lon: None, off_disk: True}` off the Earth."""
    out = {}
    for key, (r, c) in corner_points(abi.shape).items():
        lon, lat = abi.grid.lonlat_of(np.array([r]), np.array([c]))
        if np.isnan(lon[0]):
            out[key] = {"lat": None, "lon": None, "off_disk": True}
        else:
            out[key] = {"lat": round(float(lat[0]), 6), "lon": round(float(lon[0]), 6)}
    return out


def bt_stats(abi: AbiFile, band: int) -> dict | None:
    """{min, max, mean} of `band`'s brightness temperature (K) over valid pixels; None when none is valid."""
    bt = read_bt(abi, band)
    valid = bt[np.isfinite(bt)]
    if valid.size == 0:
        return None
    return {
        "min": round(float(valid.min()), 3),
        "max": round(float(valid.max()), 3),
        "mean": round(float(valid.mean(dtype=np.float64)), 3),
    }


def inspect_file(path: str | Path) -> dict:
    """One file's report, with the keys `scene inspect --json` prints."""
    abi = open_abi(path)
    ir = [b for b in abi.bands if b in IR_BANDS]
    band = REPORT_BAND if REPORT_BAND in ir else (ir[0] if ir else None)
    return {
        "file": str(abi.path),
        "platform": abi.platform,
        "product": abi.product,
        "band": abi.band if abi.band is not None else list(abi.bands),
        "scan_start": iso_utc(abi.scan_start),
        "shape": list(abi.shape),
        "longitude_of_projection_origin": abi.grid.geos.longitude_of_projection_origin,
        "corners": corners(abi),
        "bt_band": band,
        "bt": bt_stats(abi, band) if band is not None else None,
    }


def format_report(report: dict) -> str:
    """The report as the lines `scene inspect` prints without --json."""
    lines = [
        f"{report['file']}",
        f"  platform {report['platform']}, product {report['product']}, band {report['band']}",
        f"  scan start {report['scan_start']}, shape {report['shape'][0]} × {report['shape'][1]} (ny × nx), "
        f"sub-satellite longitude {report['longitude_of_projection_origin']:g}",
    ]
    for key, p in report["corners"].items():
        where = (
            "off the Earth's disk (no lat/lon)"
            if p.get("off_disk")
            else f"lat {p['lat']:.4f}, lon {p['lon']:.4f}"
        )
        lines.append(f"  {key.replace('_', ' '):<12} {where}")
    bt = report["bt"]
    if bt is None:
        lines.append(
            "  brightness temperature: no valid pixel" if report["bt_band"] else "  no infrared band"
        )
    else:
        lines.append(
            f"  band {report['bt_band']} brightness temperature: min {bt['min']:.2f} K, max {bt['max']:.2f} K, "
            f"mean {bt['mean']:.2f} K"
        )
    return "\n".join(lines)
