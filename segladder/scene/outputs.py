"""Writing the contrail map's files: CF-1.8 NetCDF, GeoJSON contrail lines and a quicklook PNG."""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from heapq import heappop, heappush
from pathlib import Path

import cv2
import numpy as np
import pyproj

from segladder.data.contrails import ash_from_bands
from segladder.errors import DataError, SegladderError
from segladder.inference.postprocess import binarize, remove_small_components
from segladder.io import atomic_path, atomic_write_text
from segladder.scene.grid import SceneGrid

MIN_SPUR_PX = 3.0  # a branch reaching this far past the contrail's edge is one, not a ragged edge
MIN_LOOP_PX = 12.0  # a skeleton loop shorter than this rings the ragged edge of a thick mask, not a hole
MAX_HOLE_PX = 12  # holes up to this many pixels in a contrail are noise of the mask, not a loop of the trail
SMOOTH_PX = 2  # half-window of the running mean along a skeleton path, pixels
EXTEND_DIR_PX = 4  # a free end is carried on along the direction of its last this many pixels
SIMPLIFY_PX = 0.5  # Douglas-Peucker tolerance in pixels: straight runs lose their staircase, bends stay
QUICKLOOK_MAX_PX = 2000  # larger scenes are block-averaged so the PNG stays a few MB
CONTRAIL_COLOUR = np.array([255, 0, 255], np.uint8)  # magenta: no natural ash-RGB scene is this colour
_GEOD = pyproj.Geod(ellps="WGS84")
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class MapInfo:
    """What the files say about where the map came from.

    Args:
        time: ISO 8601 UTC time of the labelled frame, e.g. "2023-07-13T18:00:00Z".
        platform: the satellite, "G16".."G19".
        sources: the names of the ABI files read.
        checkpoint_sha256: the SHA-256 of each checkpoint that predicted.
        threshold: the probability above which a pixel is contrail.
        min_area: components of the mask smaller than this (pixels) were dropped.
        segladder_version: the version that wrote the files.
        grid: "native" (the ABI fixed grid) or "local".
    """

    time: str
    platform: str
    sources: list[str]
    checkpoint_sha256: list[str]
    threshold: float
    min_area: int
    segladder_version: str
    grid: str


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SegladderError(
            f"writing the contrail map needs {module}, which is not installed; install the scene extra: "
            "pip install 'segladder[scene]'."
        ) from exc


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, int]) -> None:
    if np.shape(array) != shape:
        raise ValueError(f"{name} has shape {np.shape(array)}, expected {shape}")


def _datetime64(time: str) -> np.datetime64:
    """An ISO 8601 time as a UTC datetime64; one without a zone is taken as UTC."""
    try:
        t = datetime.fromisoformat(time.strip())
    except (AttributeError, ValueError) as exc:
        raise DataError(
            f"the map's time {time!r} is not an ISO 8601 time; give it as e.g. 2023-07-13T18:00:00Z."
        ) from exc
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(t, "us")


def contrail_mask(probability: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """uint8 (ny, nx): probability > threshold, 8-connected components under `min_area` px gone; NaN → 0."""
    p = np.nan_to_num(np.asarray(probability, np.float32), nan=0.0)
    return remove_small_components(binarize(p, threshold), int(min_area), connectivity=8)


# --------------------------------------------------------------------------------------------- NetCDF


def _grid_mapping_name(grid: SceneGrid) -> str:
    """The grid-mapping variable's name: NOAA's `goes_imager_projection` on the ABI fixed grid, else `crs`."""
    return "goes_imager_projection" if grid.name == "native" else "crs"


def _coords(grid: SceneGrid, info: MapInfo) -> dict:
    lon, lat = grid.lonlat(np.float32)
    xy = "metres of the grid's projection" + (" (scan angle × height)" if grid.name == "native" else "")
    x = {"standard_name": "projection_x_coordinate", "long_name": f"x: {xy}", "units": "m", "axis": "X"}
    y = {**x, "standard_name": "projection_y_coordinate", "long_name": f"y: {xy}", "axis": "Y"}
    lat_attrs = {"standard_name": "latitude", "long_name": "pixel centre latitude", "units": "degrees_north"}
    lon_attrs = {"standard_name": "longitude", "long_name": "pixel centre longitude", "units": "degrees_east"}
    time = {"standard_name": "time", "long_name": "time of the labelled ABI frame", "axis": "T"}
    return {
        "x": ("x", np.asarray(grid.x, np.float64), x),
        "y": ("y", np.asarray(grid.y, np.float64), y),
        "lat": (("y", "x"), lat, lat_attrs),
        "lon": (("y", "x"), lon, lon_attrs),
        "time": ((), _datetime64(info.time), time),
    }


def _data_vars(grid: SceneGrid, probability: np.ndarray, mask: np.ndarray, info: MapInfo) -> dict:
    mapping = _grid_mapping_name(grid)
    prob_attrs = {
        "long_name": "probability that the pixel is part of a contrail",
        "units": "1",
        "valid_range": np.array([0.0, 1.0], np.float32),
        "grid_mapping": mapping,
    }
    mask_attrs = {
        "long_name": "contrail: probability > threshold, components under min_area pixels dropped",
        "flag_values": np.array([0, 1], np.uint8),
        "flag_meanings": "no_contrail contrail",
        "threshold": float(info.threshold),
        "min_area": int(info.min_area),
        "grid_mapping": mapping,
    }
    # netCDF attributes take numbers and strings only; pyproj's CF dict may hold None for unset parameters.
    crs_attrs = {k: v for k, v in grid.cf_grid_mapping().items() if isinstance(v, (str, int, float))}
    return {
        "contrail_probability": (("y", "x"), np.asarray(probability, np.float32), prob_attrs),
        "contrail_mask": (("y", "x"), np.asarray(mask).astype(np.uint8), mask_attrs),
        mapping: ((), np.int32(0), crs_attrs),
    }


def _global_attrs(grid: SceneGrid, info: MapInfo) -> dict:
    made = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    platform = f"GOES-{info.platform[1:]}" if info.platform[:1].upper() == "G" else info.platform
    return {
        "Conventions": "CF-1.8",
        "title": f"Contrail probability and mask from {platform} ABI, {info.time}",
        "institution": f"segladder {info.segladder_version}",
        "source": f"segladder {info.segladder_version} (segladder scene predict) on GOES ABI radiances",
        "platform": info.platform,
        "time_coverage_start": info.time,
        "source_files": ", ".join(info.sources),
        "checkpoint_sha256": ", ".join(info.checkpoint_sha256),
        "threshold": float(info.threshold),
        "min_area": int(info.min_area),
        "segladder_version": info.segladder_version,
        "grid": grid.name,
        "history": f"{made} segladder {info.segladder_version} scene predict",
    }


def write_netcdf(path, grid: SceneGrid, probability: np.ndarray, mask: np.ndarray, info: MapInfo) -> Path:
    """Write contrails.nc (CF-1.8): probability, mask, lat/lon, the grid mapping GDAL and rioxarray read.

    Written atomically: a reader sees no file or the complete one.
    """
    xr = _require("xarray")
    _require("netCDF4")
    _check_shape("probability", probability, grid.shape)
    _check_shape("mask", mask, grid.shape)
    data_vars = _data_vars(grid, probability, mask, info)
    ds = xr.Dataset(data_vars, coords=_coords(grid, info), attrs=_global_attrs(grid, info))
    # xarray names lat, lon and the scalar time in each data variable's `coordinates`, as CF asks; the
    # grid mapping is no data and gets none.
    ds[_grid_mapping_name(grid)].encoding["coordinates"] = None
    packed = {"zlib": True, "complevel": 4, "shuffle": True}
    encoding = {
        "contrail_probability": {"_FillValue": np.float32(np.nan), **packed},
        "contrail_mask": {"_FillValue": None, **packed},
        "lat": {"_FillValue": np.float32(np.nan), **packed},
        "lon": {"_FillValue": np.float32(np.nan), **packed},
        # CF: coordinate variables have no missing values, so no _FillValue either
        "x": {"_FillValue": None},
        "y": {"_FillValue": None},
        "time": {
            "units": "seconds since 1970-01-01",
            "calendar": "standard",
            "dtype": "float64",
            "_FillValue": None,
        },
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    return Path(path)


# --------------------------------------------------------------------------------------------- GeoJSON


def _skeleton_graph(skel: np.ndarray) -> dict[tuple[int, int], list[tuple[tuple[int, int], float]]]:
    """Skeleton pixel → its neighbours and step lengths; no diagonal step where two 4-steps join its pixels.

    A skeleton's L-shaped corners would otherwise form triangles, which read as junctions with spurs.
    """
    pixels = {(int(r), int(c)) for r, c in zip(*np.nonzero(skel), strict=True)}
    graph: dict[tuple[int, int], list[tuple[tuple[int, int], float]]] = {p: [] for p in pixels}
    for r, c in pixels:
        for dr, dc in _NEIGHBOURS:
            q = (r + dr, c + dc)
            if q not in pixels:
                continue
            if dr and dc and ((r + dr, c) in pixels or (r, c + dc) in pixels):
                continue
            graph[(r, c)].append((q, math.hypot(dr, dc)))
    return graph


def _farthest(start, graph, edges: set[frozenset]) -> tuple[tuple[int, int], list[tuple[int, int]], float]:
    """The pixel farthest from `start` along `edges`, the path from it back to `start` and its length."""
    dist = {start: 0.0}
    prev = {start: start}
    heap = [(0.0, start)]
    while heap:
        d, p = heappop(heap)
        if d > dist[p]:
            continue
        for q, w in graph[p]:
            if d + w < dist.get(q, math.inf) and frozenset((p, q)) in edges:
                dist[q], prev[q] = d + w, p
                heappush(heap, (d + w, q))
    far = max(dist, key=lambda p: (dist[p], p))
    path = [far]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return far, path, dist[far]


def _edge_components(edges: set[frozenset]) -> list[set[frozenset]]:
    """`edges` split into connected pieces."""
    by_pixel: dict[tuple[int, int], list[frozenset]] = {}
    for e in edges:
        for p in e:
            by_pixel.setdefault(p, []).append(e)
    left, pieces = set(edges), []
    while left:
        seed = left.pop()
        piece, todo = {seed}, [seed]
        while todo:
            for p in todo.pop():
                for e in by_pixel[p]:
                    if e in left:
                        left.discard(e)
                        piece.add(e)
                        todo.append(e)
        pieces.append(piece)
    return pieces


def _skeleton_paths(skel: np.ndarray, depth: np.ndarray) -> list[tuple[float, list[tuple[int, int]]]]:
    """The skeleton as (length px, pixel path) pieces, longest first, without spurs.

    The longest path, then the longest path of each branch left over (starting at the pixel it leaves
    from), and so on. A branch shorter than MIN_SPUR_PX plus `depth` (the distance to the background) at
    the pixel it leaves from is a spur, the skeleton reaching out to a ragged edge, and is dropped with
    whatever branches off it; so is a loop (a branch that comes back) under MIN_LOOP_PX.
    """
    graph = _skeleton_graph(skel)
    edges = {frozenset((p, q)) for p, near in graph.items() for q, _ in near}
    parts, todo, taken, kept = [], [edges] if edges else [], set(), set()
    while todo:
        piece = todo.pop()
        start = min(p for e in piece for p in e)
        a, _, _ = _farthest(start, graph, piece)  # two sweeps: the diameter of a tree, near it otherwise
        _, path, length = _farthest(a, graph, piece)
        if path[-1] in taken and path[0] not in taken:
            path = path[::-1]  # a branch runs away from the line it leaves
        anchor = path[0] if path[0] in taken else None
        need = MIN_LOOP_PX if path[-1] in taken else MIN_SPUR_PX + (depth[anchor] if anchor else 0.0)
        if not taken or (length >= need and (anchor is None or anchor in kept)):
            parts.append((length, path))
            kept.update(path)
        taken.update(path)
        todo += _edge_components(piece - {frozenset(pq) for pq in zip(path, path[1:], strict=False)})
    parts.sort(key=lambda lp: -lp[0])
    return parts


def _principal_axis_line(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A 2-point (row, col) line through a small blob along its longest extent (1 px long for one pixel)."""
    pts = np.stack([rows, cols], 1).astype(np.float64)
    centre = pts.mean(0)
    if len(pts) < 2:
        axis = np.array([0.0, 1.0])
    else:
        vals, vecs = np.linalg.eigh(np.cov(pts.T))
        axis = vecs[:, int(np.argmax(vals))]
    t = (pts - centre) @ axis
    mid, half = (t.min() + t.max()) / 2, max((t.max() - t.min()) / 2, 0.5)
    return np.stack([centre + (mid - half) * axis, centre + (mid + half) * axis])


def _fill_small_holes(component: np.ndarray) -> np.ndarray:
    """`component` (a padded crop) with its holes of up to MAX_HOLE_PX pixels filled.

    A skeleton rings every hole, so a pinhole in a thresholded mask would become a loop beside the line; a
    holding pattern's wide loop stays.
    """
    background = (~component).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] <= MAX_HOLE_PX
    small[0] = small[labels[0, 0]] = False  # label 0 is the component itself; the crop's corner is outside
    return component | small[labels]


def _component_lines(component: np.ndarray) -> list[np.ndarray]:
    """(row, col) polylines of one component (a padded crop): its skeleton's paths, or the principal axis."""
    skeletonize = _require("skimage.morphology").skeletonize
    component = _fill_small_holes(component)
    depth = cv2.distanceTransform(component.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    parts = _skeleton_paths(skeletonize(component, method="lee"), depth)
    if not parts or parts[0][0] < 2.0:
        return [_principal_axis_line(*np.nonzero(component))]
    return _extend_free_ends([path for _, path in parts], depth)


def _extend_free_ends(paths: list[list[tuple[int, int]]], depth: np.ndarray) -> list[np.ndarray]:
    """Each path, its free ends carried on along the line to where the shape's middle ends.

    A skeleton stops short of each end of the shape (the medial axis of a 2 px line ends a pixel inside
    it), so a 32 px contrail's skeleton measured 8 % short. Each free end goes on along its direction to
    the mask's edge, less the line's half-width (the median distance to the background along the path):
    for a line with round ends, that is where its centre line ends. An end that meets another path stays.
    """
    counts: dict[tuple[int, int], int] = {}
    for path in paths:
        for p in {path[0], path[-1]}:
            counts[p] = counts.get(p, 0) + 1
    inner = {p for path in paths for p in path[1:-1]}
    out = []
    for path in paths:
        line = np.array(path, np.float64)
        half = float(np.median([depth[p] for p in path]))
        for end in (0, -1):
            if len(line) < 2 or path[end] in inner or counts[path[end]] > 1:
                continue
            ref = (
                line[min(EXTEND_DIR_PX, len(line) - 1)]
                if end == 0
                else line[max(-1 - EXTEND_DIR_PX, -len(line))]
            )
            direction = line[end] - ref
            norm = float(np.hypot(*direction))
            if norm == 0:
                continue
            direction /= norm
            inside = _inside_along(depth > 0, line[end], direction)
            reach = inside + 0.25 - half  # the last pixel inside reaches past its centre: a quarter, measured
            if reach > 0:
                tip = line[end] + direction * reach
                line = np.vstack([tip, line]) if end == 0 else np.vstack([line, tip])
        out.append(line)
    return out


def _inside_along(mask: np.ndarray, start: np.ndarray, direction: np.ndarray, step: float = 0.25) -> float:
    """How far from `start` along `direction` the pixels stay inside `mask` (pixel centres, rounded)."""
    t, last = 0.0, 0.0
    while True:
        t += step
        r, c = np.rint(start + t * direction).astype(int)
        if not (0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]) or not mask[r, c]:
            return last
        last = t


def _smooth(line: np.ndarray, half: int = SMOOTH_PX) -> np.ndarray:
    """A running mean over 2·half + 1 vertices, the window shrinking towards the ends, which stay put."""
    n = len(line)
    i = np.arange(n)
    k = np.minimum(np.minimum(i, n - 1 - i), half)
    total = np.vstack([np.zeros((1, line.shape[1])), np.cumsum(line, 0)])
    return (total[i + k + 1] - total[i - k]) / (2 * k + 1)[:, None]


def _runs(ok: np.ndarray) -> list[slice]:
    """The runs of consecutive True in `ok`."""
    edges = np.flatnonzero(np.diff(np.r_[0, ok.astype(np.int8), 0]))
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _lonlat_parts(
    lines: list[np.ndarray], offset: tuple[int, int], grid: SceneGrid
) -> list[list[list[float]]]:
    """Pixel polylines → GeoJSON [lon, lat] parts, simplified in pixel space; off the disk a part is cut."""
    from shapely.geometry import LineString

    parts = []
    for line in lines:
        # Skeleton pixels step in whole pixels: the running mean takes out the staircase, which no
        # half-pixel simplification would, and which makes a straight contrail a few percent too long.
        rc = _smooth(line + np.asarray(offset, np.float64))
        lon, lat = grid.lonlat_of(rc[:, 0], rc[:, 1])
        for run in _runs(np.isfinite(lon) & np.isfinite(lat)):
            if run.stop - run.start < 2:
                continue
            # shapely works in (x, y) = (col, row); simplified before projecting, the tolerance is in pixels.
            simple = LineString(rc[run, ::-1]).simplify(SIMPLIFY_PX, preserve_topology=False)
            cols, rows = np.asarray(simple.coords).T
            lon_s, lat_s = grid.lonlat_of(rows, cols)
            coords: list[list[float]] = []
            for x, y in zip(np.round(lon_s, 6), np.round(lat_s, 6), strict=True):
                if np.isfinite(x) and np.isfinite(y) and (not coords or coords[-1] != [float(x), float(y)]):
                    coords.append([float(x), float(y)])
            if len(coords) >= 2:
                parts.append(coords)
    return parts


def _geometry(parts: list[list[list[float]]]) -> dict:
    if len(parts) == 1:
        return {"type": "LineString", "coordinates": parts[0]}
    return {"type": "MultiLineString", "coordinates": parts}


def contrail_features(mask, probability, grid: SceneGrid, info: MapInfo) -> dict:
    """A GeoJSON FeatureCollection (RFC 7946, WGS 84 lon/lat) with one line feature per contrail.

    A contrail is an 8-connected component of `mask`; its line is its skeleton walked end to end (a
    MultiLineString where it branches). Properties: `length_km` (geodesic), `mean_probability` and
    `max_probability` over its pixels, `area_px`, `time`, `platform`. A component wholly off the Earth's
    disk has no line and no feature.
    """
    m = (np.asarray(mask) != 0).astype(np.uint8)
    _check_shape("mask", m, grid.shape)
    _check_shape("probability", probability, grid.shape)
    prob = np.asarray(probability, np.float32)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    features = []
    for k in range(1, n):
        left, top, w, h, area = (int(v) for v in stats[k])
        window = (slice(top, top + h), slice(left, left + w))
        component = labels[window] == k
        # A one-pixel frame of background keeps the skeleton off the crop's edge.
        parts = _lonlat_parts(_component_lines(np.pad(component, 1)), (top - 1, left - 1), grid)
        if not parts:
            continue
        values = prob[window][component]
        finite = values[np.isfinite(values)]
        length_m = sum(_GEOD.line_length([p[0] for p in part], [p[1] for p in part]) for part in parts)
        features.append(
            {
                "type": "Feature",
                "id": len(features) + 1,
                "geometry": _geometry(parts),
                "properties": {
                    "length_km": round(length_m / 1000.0, 3),
                    "mean_probability": round(float(finite.mean()), 4) if finite.size else None,
                    "max_probability": round(float(finite.max()), 4) if finite.size else None,
                    "area_px": area,
                    "time": info.time,
                    "platform": info.platform,
                },
            }
        )
    return {"type": "FeatureCollection", "name": "contrails", "features": features}


def write_geojson(path, collection: dict) -> Path:
    """Write a FeatureCollection as compact JSON, atomically; NaN is refused (RFC 7946 JSON has none)."""
    atomic_write_text(path, json.dumps(collection, allow_nan=False, separators=(",", ":")) + "\n")
    return Path(path)


# --------------------------------------------------------------------------------------------- quicklook


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """NaN-aware mean over f×f blocks (the edges padded); a block with no finite value is NaN."""
    ny, nx = x.shape
    pad = ((0, -ny % f), (0, -nx % f))
    finite = np.pad(np.isfinite(x), pad)
    total = np.pad(np.where(np.isfinite(x), x, np.float32(0)).astype(np.float32), pad)
    shape = (total.shape[0] // f, f, total.shape[1] // f, f)
    count = finite.reshape(shape).sum((1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total.reshape(shape).sum((1, 3)) / count).astype(np.float32)


def _block_max(x: np.ndarray, f: int) -> np.ndarray:
    ny, nx = x.shape
    padded = np.pad(x, ((0, -ny % f), (0, -nx % f)))
    return padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).max((1, 3))


def _draw_title(rgb: np.ndarray, title: str) -> None:
    """`title` in white on a black band across the top-left corner (readable over cloud and clear sky)."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(rgb.shape[1] / 1600, 0.35)
    thick = max(1, round(2 * scale))
    (w, h), base = cv2.getTextSize(title, font, scale, thick)
    pad = max(2, h // 3)
    cv2.rectangle(rgb, (0, 0), (w + 2 * pad, h + base + 2 * pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(rgb, title, (pad, pad + h), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def write_quicklook(path, bands: dict[int, np.ndarray], mask: np.ndarray, title: str = "") -> Path:
    """Write quicklook.png: the scene's ash RGB (NaN black) with the mask's contrails in magenta.

    Scenes over QUICKLOOK_MAX_PX on a side are block-averaged; the mask is max-pooled so no contrail vanishes.
    """
    missing = sorted({11, 14, 15} - set(bands))
    if missing:
        raise ValueError(f"the quicklook needs ABI bands 11, 14 and 15; missing {missing}")
    b11, b14, b15 = (np.asarray(bands[b], np.float32) for b in (11, 14, 15))
    m = np.asarray(mask) != 0
    for name, array in (("band 11", b11), ("band 15", b15), ("mask", m)):
        _check_shape(name, array, b14.shape)
    f = math.ceil(max(m.shape) / QUICKLOOK_MAX_PX)
    if f > 1:
        # Averaging the temperatures before the ash recipe keeps memory to three small planes on a full disk.
        b11, b14, b15 = (_block_mean(b, f) for b in (b11, b14, b15))
        m = _block_max(m, f)
    rgb = ash_from_bands(b11, b14, b15)
    rgb = (np.nan_to_num(rgb, nan=0.0) * 255).round().astype(np.uint8)
    rgb[m] = (0.25 * rgb[m] + 0.75 * CONTRAIL_COLOUR).round().astype(np.uint8)
    if title:
        _draw_title(rgb, title)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise SegladderError(f"OpenCV could not encode the quicklook {path} as PNG.")
    with atomic_path(path, needed=len(png)) as tmp:
        tmp.write_bytes(png.tobytes())
    return Path(path)
