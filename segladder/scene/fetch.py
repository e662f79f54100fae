"""Downloading the GOES ABI scans a time range needs from NOAA's public buckets (`segladder scene fetch`).

NOAA's AWS Open Data buckets (`noaa-goes16` … `noaa-goes19`) hold one folder per product and hour of scan
start: `s3://noaa-goes16/ABI-L2-CMIPF/2023/194/18/OR_ABI-L2-CMIPF-M6C14_G16_s20231941800208_e…_c….nc`.
They are read anonymously through s3fs (fsspec's S3 client).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from numbers import Integral
from pathlib import Path

from fsspec.callbacks import Callback
from fsspec.exceptions import FSTimeoutError

from segladder.errors import DataError, SegladderError, WriteError
from segladder.io import free_bytes, write_error
from segladder.progress import progress_bar
from segladder.scene.abi import parse_name
from segladder.scene.sources import as_utc

ENDPOINT_ENV = "SEGLADDER_GOES_ENDPOINT"
PLATFORMS = ("G16", "G17", "G18", "G19")
# Imagery products and whether their files hold one band (C<band> in the name) or all of them.
PRODUCT_KINDS = {"ABI-L2-CMIP": True, "ABI-L2-MCMIP": False, "ABI-L1b-Rad": True}
SECTORS = ("F", "C", "M1", "M2")
DEFAULT_TOLERANCE = timedelta(minutes=5)
_LIST_MAX = 40  # lines of an error's file list before "... and N more"


@dataclass(frozen=True)
class ScanFile:
    """One ABI file in a NOAA bucket.

    Args:
        key: the bucket key without `s3://`, e.g. "noaa-goes16/ABI-L2-CMIPF/2023/194/18/OR_….nc".
        platform: "G16" … "G19".
        product: the bucket's product folder, e.g. "ABI-L2-CMIPF" (mesoscale: "ABI-L2-CMIPM").
        band: the ABI band 1–16; None for MCMIP files, which hold all of them.
        scan_start: the scan's start, UTC.
        size: the file's size in bytes as the bucket listed it; None when unknown.
    """

    key: str
    platform: str
    product: str
    band: int | None
    scan_start: datetime
    size: int | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        """The public https URL of the file."""
        bucket, _, rest = self.key.partition("/")
        return f"https://{bucket}.s3.amazonaws.com/{rest}"

    @property
    def name(self) -> str:
        """The file name."""
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class FetchSummary:
    """What `fetch` did.

    Args:
        planned: distinct files the times need.
        downloaded: files downloaded now.
        skipped: files already in `out` with the bucket's size.
        bytes: bytes downloaded now.
        out: the folder the files are in.
        files: the local path of every planned file, in plan order.
    """

    planned: int
    downloaded: int
    skipped: int
    bytes: int
    out: Path
    files: tuple[Path, ...] = ()


def parse_abi_name(name: str) -> dict:
    """The fields of an ABI file name (a bare name, a path or a bucket key); DataError if it is not one.

    Returns a dict with "platform" ("G16"), "product" (the bucket folder: "ABI-L2-CMIPM" for a CMIPM1 file),
    "sector" ("F", "C", "M1", "M2"), "kind" ("CMIP", "MCMIP", "Rad"), "mode" (6 for M6), "band" (int, None
    for MCMIP), "scan_start", "scan_end" and "created" (UTC datetimes).
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    fields = parse_name(base)
    # A bucket's file has its full name: end and creation stamps, a known band, nothing after ".nc".
    complete = fields is not None and fields["created"] is not None and base.endswith(".nc")
    if not complete or (fields["band"] is not None and not 1 <= fields["band"] <= 16):
        raise DataError(
            f"{base!r} is not a GOES ABI file name: expected NOAA's "
            "OR_ABI-<level>-<product><sector>-M<mode>[C<band>]_G<nn>_s<YYYYJJJHHMMSSt>_e<…>_c<…>.nc, e.g. "
            "OR_ABI-L2-CMIPF-M6C14_G16_s20231941800208_e20231941809516_c20231941809597.nc. Keep the "
            "name NOAA gave the file."
        )
    return fields


def make_filesystem(endpoint_url: str | None = None, **options):
    """An anonymous s3fs filesystem for NOAA's buckets.

    The endpoint is `endpoint_url`, else the environment's SEGLADDER_GOES_ENDPOINT (a mirror, or a local
    stand-in in tests), else AWS. `options` go to `s3fs.S3FileSystem` (e.g. `config_kwargs` for botocore's
    retries); `anon=False` there uses the environment's AWS credentials instead.
    """
    try:
        import s3fs
    except ModuleNotFoundError:
        raise DataError(
            "`segladder scene fetch` needs s3fs: pip install s3fs (or pip install -e '.[fetch]')."
        ) from None
    endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    if endpoint_url:
        client_kwargs["endpoint_url"] = endpoint_url
    options.setdefault("anon", True)
    # A fresh instance: fsspec's instance cache would share listings and a dead endpoint's state across calls.
    options.setdefault("skip_instance_cache", True)
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, **options)


@dataclass(frozen=True)
class _Request:
    bucket: str  # "noaa-goes16"
    platform: str  # "G16"
    folder: str  # "ABI-L2-CMIPM"
    sector: str  # "M1"
    bands: tuple[int | None, ...]  # (None,) for MCMIP
    times: tuple[datetime, ...]  # UTC
    tolerance: timedelta

    @property
    def file_product(self) -> str:
        # The product as file names spell it: the sector in full (CMIPM1).
        return self.folder[:-1] + self.sector

    def prefix(self, hour: datetime) -> str:
        return f"{self.bucket}/{self.folder}/{hour:%Y}/{hour:%j}/{hour:%H}/"

    def wanted(self, t: datetime, band: int | None) -> str:
        """Where to find the scan for `t` and `band` by hand: the bucket's browser page and a name pattern."""
        band_part = f"C{band:02d}" if band is not None else ""
        stamp = f"{t:%Y%j%H}{t.minute // 10}"
        index = f"https://{self.bucket}.s3.amazonaws.com/index.html#{self.prefix(t).partition('/')[2]}"
        return f"{index}  OR_{self.file_product}-M?{band_part}_{self.platform}_s{stamp}*"


def _platform(satellite: str) -> str:
    m = re.fullmatch(r"(?:g|goes)?[-_ ]?(\d\d)", str(satellite).strip(), re.IGNORECASE)
    platform = f"G{m[1]}" if m else ""
    if platform not in PLATFORMS:
        raise DataError(
            f"unknown satellite {satellite!r}: NOAA's buckets hold {', '.join(PLATFORMS)} "
            "(also written goes16 … goes19)."
        )
    return platform


def _product(product: str) -> tuple[str, str]:
    """(bucket folder, sector) of a product name such as ABI-L2-CMIPF or ABI-L2-CMIPM1."""
    for base in PRODUCT_KINDS:
        for sector in SECTORS:
            if str(product).strip().lower() == (base + sector).lower():
                return base + sector[0], sector
    known = ", ".join(b + s for b in PRODUCT_KINDS for s in SECTORS)
    if str(product).strip().lower() in {(b + "M").lower() for b in PRODUCT_KINDS}:
        raise DataError(
            f"product {product!r} has two mesoscale sectors scanned at the same times: name one, "
            f"{product}1 or {product}2."
        )
    raise DataError(f"unknown product {product!r}: expected one of {known}.")


def _request(satellite, product, bands, times, tolerance) -> _Request:
    platform = _platform(satellite)
    folder, sector = _product(product)
    bad = [b for b in bands if isinstance(b, bool) or not isinstance(b, Integral) or not 1 <= b <= 16]
    if bad:
        raise DataError(f"band(s) {', '.join(map(str, bad))} not ABI bands: expected whole numbers 1–16.")
    bands = [int(b) for b in bands]
    if not times:
        raise DataError("no times to fetch: give at least one time (or a --start before --end).")
    if not bands and PRODUCT_KINDS[folder[:-1]]:
        raise DataError(f"{folder} holds one band per file: name the bands to fetch (e.g. 11,14,15).")
    if tolerance < timedelta(0):
        raise DataError(f"the time tolerance must not be negative, got {tolerance}.")
    return _Request(
        bucket=f"noaa-goes{platform[1:]}",
        platform=platform,
        folder=folder,
        sector=sector,
        bands=tuple(dict.fromkeys(bands)) if PRODUCT_KINDS[folder[:-1]] else (None,),
        times=tuple(as_utc(t) for t in times),
        tolerance=tolerance,
    )


def _remote_errors() -> tuple[type[BaseException], ...]:
    """What the network, botocore (connection failures and the S3 errors s3fs wraps) and aiohttp raise."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror, FSTimeoutError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        kinds += [BotoCoreError, ClientError]
    except ModuleNotFoundError:
        pass
    try:
        from aiohttp import ClientError

        kinds.append(ClientError)
    except ModuleNotFoundError:
        pass
    return tuple(kinds)


def _is_remote(exc: BaseException) -> bool:
    """Whether `exc` came from the network or the bucket (s3fs turns S3 errors into OSErrors it causes)."""
    kinds = _remote_errors()
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, kinds):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _unreachable(bucket: str, reason: BaseException, wanted: Iterable[str], out: Path | None) -> DataError:
    lines = list(dict.fromkeys(wanted))
    shown = lines[:_LIST_MAX] + ([f"... and {len(lines) - _LIST_MAX} more"] if len(lines) > _LIST_MAX else [])
    where = str(out) if out is not None else "DIR"
    return DataError(
        f"could not reach the GOES bucket s3://{bucket} ({type(reason).__name__}: {reason}).\n"
        "Get these files on a machine that can (a browser, curl or `aws s3 cp --no-sign-request`):\n  "
        + "\n  ".join(shown)
        + f"\nPut them in {where}/ with their names unchanged; `segladder scene predict --goes {where}` "
        "reads them, and `segladder scene fetch` run again once the bucket is reachable skips the ones "
        "already there."
    )


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:.1f}".rstrip("0").rstrip(".") + " min"


def _hours(t: datetime, tolerance: timedelta) -> list[datetime]:
    hour = (t - tolerance).replace(minute=0, second=0, microsecond=0)
    out = []
    while hour <= t + tolerance:
        out.append(hour)
        hour += timedelta(hours=1)
    return out


def _list(fs, req: _Request, prefix: str) -> list[ScanFile]:
    """The request's files in one hour folder (raises `fs`'s own errors but FileNotFoundError)."""
    try:
        entries = fs.ls(prefix, detail=True)
    except FileNotFoundError:
        return []  # no folder: no scans that hour (before launch, an outage, the future)
    out = []
    for entry in entries:
        key = entry["name"]
        try:
            info = parse_abi_name(key)
        except DataError:
            continue
        if (info["platform"], info["product"], info["sector"]) == (req.platform, req.folder, req.sector):
            out.append(
                ScanFile(
                    key,
                    info["platform"],
                    info["product"],
                    info["band"],
                    info["scan_start"],
                    entry.get("size"),
                )
            )
    return out


def _nearest(candidates: list[ScanFile], t: datetime) -> ScanFile | None:
    # Ties go to the earlier scan so the choice does not depend on listing order.
    return min(candidates, key=lambda s: (abs(s.scan_start - t), s.scan_start), default=None)


def _plan(fs, req: _Request, out: Path | None) -> list[ScanFile]:
    listings: dict[str, list[ScanFile]] = {}
    plan, misses = [], []
    for t in req.times:
        prefixes = [req.prefix(h) for h in _hours(t, req.tolerance)]
        for prefix in prefixes:
            if prefix not in listings:
                try:
                    listings[prefix] = _list(fs, req, prefix)
                except (OSError, *_remote_errors()) as exc:
                    wanted = [req.wanted(u, b) for u in req.times for b in req.bands]
                    raise _unreachable(req.bucket, exc, wanted, out) from None
        for band in req.bands:
            near = _nearest([s for p in prefixes for s in listings[p] if s.band == band], t)
            if near is not None and abs(near.scan_start - t) <= req.tolerance:
                plan.append(near)
                continue
            what = f"band {band}" if band is not None else "all bands"
            seen = (
                f"nearest is {near.name}, {_minutes(abs(near.scan_start - t))} away" if near else "none there"
            )
            misses.append(
                f"{t:%Y-%m-%d %H:%M:%S} UTC {what}: {' '.join('s3://' + p for p in prefixes)} ({seen})"
            )
    if misses:
        shown = misses[:_LIST_MAX] + (
            [f"... and {len(misses) - _LIST_MAX} more"] if len(misses) > _LIST_MAX else []
        )
        raise DataError(
            f"no {req.file_product} scan from {req.platform} within {_minutes(req.tolerance)} of:\n  "
            + "\n  ".join(shown)
            + f"\nPick times the satellite scanned this sector (browse https://{req.bucket}.s3.amazonaws.com/"
            f"index.html#{req.folder}/), widen the tolerance, or choose another satellite or product."
        )
    return plan


def plan_scans(
    fs,
    satellite: str,
    product: str,
    bands: Sequence[int],
    times: Sequence[datetime],
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> list[ScanFile]:
    """The scan whose start is nearest each time, for each time and then each band, within `tolerance`.

    Lists each hour folder that could hold such a scan once. Naive times are UTC. `product` is a bucket
    product with its sector, e.g. "ABI-L2-CMIPF", "ABI-L2-MCMIPC", "ABI-L1b-RadM1"; MCMIP gives one file per
    time whatever the bands. Raises one DataError listing every time and band without a scan, or, when the
    bucket cannot be reached, what to download by hand.
    """
    return _plan(fs, _request(satellite, product, bands, times, tolerance), out=None)


class _BarCallback(Callback):
    """Advances a rich progress bar by the bytes fsspec reports written, in megabytes.

    Args:
        bar: the rich `Progress`.
        task: its task id.
    """

    def __init__(self, bar, task):
        super().__init__()
        self._bar, self._task, self._seen = bar, task, 0

    def call(self, *args, **kwargs):
        done = self.value or 0
        self._bar.advance(self._task, (done - self._seen) / 1e6)
        self._seen = done


def _is_done(path: Path, size: int | None) -> bool:
    try:
        return path.is_file() and (size is None or path.stat().st_size == size)
    except OSError:
        return False


def _download(fs, scan: ScanFile, dest: Path, callback) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        fs.get_file(scan.key, str(part), callback=callback)
        got = part.stat().st_size
        if scan.size is not None and got != scan.size:
            raise DataError(
                f"{scan.url} arrived with {got} bytes, the bucket lists {scan.size}: the connection dropped "
                "or the file changed; run `segladder scene fetch` again."
            )
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
        # Only a complete file gets the real name: a killed download leaves a .part, never a short .nc.
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def fetch(
    times: Sequence[datetime],
    *,
    satellite: str,
    product: str,
    bands: Sequence[int],
    out: Path,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    fs=None,
    progress: bool = True,
) -> FetchSummary:
    """Download the scans `times` need into the flat folder `out`, skipping those already there.

    A file counts as there when `out/<name>` has the bucket's size; downloads go to `out/<name>.part` and
    are renamed when complete. `fs` defaults to `make_filesystem()`. An unreachable bucket raises one
    DataError listing the files to get by hand and where to put them.
    """
    out = Path(out)
    req = _request(satellite, product, bands, times, tolerance)
    fs = make_filesystem() if fs is None else fs
    plan = list(dict.fromkeys(_plan(fs, req, out)))  # frames close in time can share a scan
    todo = [s for s in plan if not _is_done(out / s.name, s.size)]
    total = sum(s.size or 0 for s in todo)
    if todo:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, out) or WriteError(
                f"cannot create the download folder {out}: {exc}.", out
            ) from None
    with progress_bar(disable=not progress or not todo) as bar:
        task = bar.add_task(f"fetching {len(todo)} file(s), MB", total=total / 1e6)
        for i, scan in enumerate(todo):
            free_before = free_bytes(out)
            try:
                _download(fs, scan, out / scan.name, _BarCallback(bar, task))
            except SegladderError:
                raise
            except Exception as exc:
                if _is_remote(exc):
                    raise _unreachable(req.bucket, exc, [s.url for s in todo[i:]], out) from None
                dest = out / scan.name
                err = write_error(exc, dest, needed=scan.size, free_before=free_before)
                if err is None and isinstance(exc, OSError):
                    err = WriteError(f"cannot write {dest}: {exc}. Nothing partial was left there.", dest)
                if err is None:
                    raise
                raise err from exc
    return FetchSummary(
        planned=len(plan),
        downloaded=len(todo),
        skipped=len(plan) - len(todo),
        bytes=total,
        out=out,
        files=tuple(out / s.name for s in plan),
    )
