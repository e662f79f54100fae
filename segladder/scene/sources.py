"""Which ABI files feed which frame: the scans nearest each frame's time, one per band, checked to stack."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from segladder.data.layout import LABELED_FRAME
from segladder.errors import DataError
from segladder.scene.abi import AbiFile, open_abi, parse_name

FRAME_STEP = timedelta(minutes=10)  # OpenContrails' frames are 10 minutes apart; frame 4 is labelled
# Half a frame step: the nearest scan to a frame's time is then never nearer another frame's time. CONUS
# scans start every 5 minutes (…:01:17, …:06:17) and full-disk ones every 10 (…:00:20), so both fit.
DEFAULT_TOLERANCE = timedelta(minutes=5)
# Where several products hold the same scan, which is read: L2 CMIP (NOAA's calibrated imagery) first.
KIND_ORDER = {"CMIP": 0, "MCMIP": 1, "Rad": 2}


def as_utc(t: datetime) -> datetime:
    """`t` as aware UTC; a time without a zone is UTC, as every GOES time is."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def labelled_position(frames: Sequence[int]) -> int:
    """Where the labelled frame (4) sits in `frames`, else the last one: the map's frame."""
    return frames.index(LABELED_FRAME) if LABELED_FRAME in frames else len(frames) - 1


def parse_time(text: str, what: str = "--time") -> datetime:
    """An ISO 8601 time ("2023-07-13T18:00", "…Z", "…+00:00") as aware UTC; naive means UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{what} {text!r}: give an ISO 8601 time such as 2023-07-13T18:00Z.") from None
    return as_utc(t)


def frame_times(time: datetime, frames: Sequence[int]) -> list[datetime]:
    """The time of each frame index: frame 4 (the labelled one) at `time`, others 10 minutes apart."""
    return [time + (f - LABELED_FRAME) * FRAME_STEP for f in frames]


def times_between(start: datetime, end: datetime, step_min: int = 10) -> list[datetime]:
    """`start`, `start + step_min` minutes, … up to and including `end` (for `--start/--end`)."""
    if as_utc(end) < as_utc(start):
        raise DataError(f"--end {end.isoformat()} is before --start {start.isoformat()}: swap them.")
    if step_min <= 0:
        raise DataError(f"the step between times must be positive minutes, got {step_min}.")
    out, t = [], start
    while as_utc(t) <= as_utc(end):
        out.append(t)
        t += timedelta(minutes=step_min)
    return out


def list_files(paths: Iterable[str | Path]) -> list[Path]:
    """The .nc files given, or inside the folders given (not recursive), sorted; an error names what is missing."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix == ".nc" and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"--goes {p}: no such file or folder; give ABI netCDF files or folders of them.")
    if not out:
        raise DataError(
            f"--goes {', '.join(map(str, paths))}: no .nc file there; fetch the scans with `segladder scene "
            "fetch` or give the folder that holds them."
        )
    return list(dict.fromkeys(out))


@dataclass
class FrameStack:
    """The files of one frame stack: `files[i][band]` feeds frame i's band; all on one platform and grid.

    Args:
        frames: the frame indices (4 is the labelled one).
        times: each frame's wanted time.
        files: per frame, {band: file}.
    """

    frames: list[int]
    times: list[datetime]
    files: list[dict[int, AbiFile]]

    @property
    def platform(self) -> str:
        """The satellite every file comes from."""
        return next(iter(self.labelled.values())).platform

    @property
    def labelled(self) -> dict[int, AbiFile]:
        """The labelled frame's files (frame 4, else the last): the map's time and grid."""
        return self.files[labelled_position(self.frames)]

    def sources(self) -> list[str]:
        """Every file name read, in frame then band order."""
        return [f.path.name for frame in self.files for f in frame.values()]


class Catalogue:
    """ABI files found under the paths given, read lazily: names first, metadata only for candidates.

    Args:
        paths: files or folders of ABI netCDF files.
    """

    def __init__(self, paths: Iterable[str | Path]):
        self.paths = list_files(paths)
        self._opened: dict[Path, AbiFile] = {}
        self._named = {p: parse_name(p.name) for p in self.paths}

    def _open(self, p: Path) -> AbiFile:
        if p not in self._opened:
            self._opened[p] = open_abi(p)
        return self._opened[p]

    def candidates(self, when: datetime, tolerance: timedelta) -> list[AbiFile]:
        """Files whose scan may start within `tolerance` of `when` (files without an ABI name are opened)."""
        out = []
        for p, fields in self._named.items():
            if fields is not None and abs(fields["scan_start"] - when) > tolerance + timedelta(seconds=1):
                continue
            out.append(self._open(p))
        return out

    def stack(
        self, time: datetime, frames: Sequence[int], bands: Sequence[int], tolerance: timedelta
    ) -> FrameStack:
        """The nearest scan of each band for each frame's time, within `tolerance`; checked to stack."""
        times = frame_times(time, frames)
        files: list[dict[int, AbiFile]] = []
        for f, when in zip(frames, times, strict=True):
            near = [a for a in self.candidates(when, tolerance) if abs(a.scan_start - when) <= tolerance]
            chosen: dict[int, AbiFile] = {}
            for band in bands:
                holding = [a for a in near if band in a.bands]
                if not holding:
                    raise DataError(self._missing(band, f, when, tolerance))
                chosen[band] = min(
                    holding, key=lambda a: (abs(a.scan_start - when), KIND_ORDER[a.kind], a.path.name)
                )
            files.append(chosen)
        stack = FrameStack(list(frames), times, files)
        check_stack(stack)
        return stack

    def _missing(self, band: int, frame: int, when: datetime, tolerance: timedelta) -> str:
        stamp = when.strftime("%Y-%m-%dT%H:%MZ")
        has_band = any(
            band in (self._open(p).bands if fields is None or fields["band"] is None else (fields["band"],))
            for p, fields in self._named.items()
        )
        if not has_band:
            return (
                f"band {band} is needed by the model (frame {frame}, {stamp}) but no file given holds it; add "
                f"its files (…M6C{band:02d}_…, or MCMIP files, which hold every band): `segladder scene fetch "
                f"--bands {band}`."
            )
        minutes = tolerance.total_seconds() / 60
        return (
            f"no scan of band {band} starts within {minutes:g} min of {stamp} (frame {frame}); fetch that "
            f"scan (`segladder scene fetch --time {stamp}`), choose another --time, or widen --tolerance."
        )


def check_stack(stack: FrameStack) -> None:
    """Every file of a stack from one satellite and on one fixed grid, or a DataError naming two that differ."""
    files = [a for frame in stack.files for a in frame.values()]
    first = files[0]
    for a in files[1:]:
        if a.platform != first.platform:
            raise DataError(
                f"{a.path.name} is from {a.platform} but {first.path.name} from {first.platform}: one frame stack "
                "mixes satellites; give the files of one satellite (--goes a folder of one platform)."
            )
        same = (
            a.shape == first.shape
            and a.grid.geos == first.grid.geos
            and np.allclose(a.grid.x, first.grid.x, rtol=0, atol=1.0)
            and np.allclose(a.grid.y, first.grid.y, rtol=0, atol=1.0)
        )
        if not same:
            raise DataError(
                f"{a.path.name} ({a.product}, {a.shape[0]}×{a.shape[1]}) and {first.path.name} ({first.product}, "
                f"{first.shape[0]}×{first.shape[1]}) lie on different grids; give files of one sector (all "
                "full disk, or all CONUS)."
            )
