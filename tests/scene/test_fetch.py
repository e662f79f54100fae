"""`segladder scene fetch`'s planning and downloads against moto's S3 server standing in for NOAA's bucket."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from segladder.errors import DataError  # noqa: E402
from segladder.scene.fetch import (  # noqa: E402
    ScanFile,
    fetch,
    make_filesystem,
    parse_abi_name,
    plan_scans,
)
from segladder.scene.sources import frame_times, times_between  # noqa: E402

BUCKET = "noaa-goes16"
DAY = datetime(2023, 7, 13, tzinfo=UTC)  # day of year 194


def at(hour: int, minute: int, second: float = 0.0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute, seconds=second)


def stamp(t: datetime) -> str:
    return f"{t:%Y%j%H%M%S}{t.microsecond // 100_000}"


def abi_name(product: str, band: int | None, start: datetime, platform: str = "G16") -> str:
    """NOAA's name; `product` as files spell it (ABI-L2-CMIPF, ABI-L2-CMIPM1, ABI-L1b-RadC)."""
    band_part = f"C{band:02d}" if band is not None else ""
    end, created = start + timedelta(minutes=9, seconds=20), start + timedelta(minutes=9, seconds=40)
    return f"OR_{product}-M6{band_part}_{platform}_s{stamp(start)}_e{stamp(end)}_c{stamp(created)}.nc"


def key_of(product: str, band: int | None, start: datetime) -> str:
    folder = product[:-1] if product[-1] in "12" else product
    return f"{BUCKET}/{folder}/{start:%Y/%j/%H}/{abi_name(product, band, start)}"


# The bucket's scans: (file product, band, scan start). Band 14 every 10 min at :x0:20; band 15 near the
# 18:00 hour boundary so the nearest scan to 18:01 lies in the 17 folder; no band 13 anywhere.
SCANS = [
    ("ABI-L2-CMIPF", 14, at(17, 50, 20.2)),
    ("ABI-L2-CMIPF", 14, at(18, 0, 20.8)),
    ("ABI-L2-CMIPF", 14, at(18, 10, 20.3)),
    ("ABI-L2-CMIPF", 14, at(18, 20, 20.5)),
    ("ABI-L2-CMIPF", 15, at(17, 59, 40.1)),
    ("ABI-L2-CMIPF", 15, at(18, 9, 40.4)),
    ("ABI-L2-MCMIPF", None, at(18, 10, 20.3)),
    ("ABI-L2-CMIPM1", 14, at(18, 10, 27.0)),
    ("ABI-L2-CMIPM2", 14, at(18, 10, 57.0)),
]
KEYS = [key_of(*s) for s in SCANS]
# Distinct sizes, so a file mixed up with another shows.
CONTENT = {k: bytes([i + 1]) * (300 + 37 * i) for i, k in enumerate(KEYS)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server on a free local port holding SCANS, readable anonymously like NOAA's bucket."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server._port}"
    # The writer signs with dummy keys; moto accepts any. The reader is anonymous, as for NOAA, and moto
    # serves anonymous GETs only of public-read objects (it ignores bucket policies), hence the ACL.
    writer = s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": url}, skip_instance_cache=True
    )
    writer.mkdir(BUCKET)
    for key, data in CONTENT.items():
        writer.pipe(key, data, ACL="public-read")
    writer.pipe(f"{BUCKET}/ABI-L2-CMIPF/2023/194/18/index.txt", b"not an ABI file", ACL="public-read")
    yield url
    server.stop()


@pytest.fixture
def fs(endpoint):
    return make_filesystem(endpoint)


class Spy:
    """`fs` with its calls counted, and `get_file` optionally failing after writing half the file."""

    def __init__(self, fs, fail: BaseException | None = None):
        self.fs, self.fail, self.calls = fs, fail, {"ls": 0, "get_file": 0}

    def ls(self, path, **kw):
        self.calls["ls"] += 1
        return self.fs.ls(path, **kw)

    def get_file(self, rpath, lpath, **kw):
        self.calls["get_file"] += 1
        if self.fail is not None:
            Path(lpath).write_bytes(CONTENT[rpath][: len(CONTENT[rpath]) // 2])
            raise self.fail
        return self.fs.get_file(rpath, lpath, **kw)


def plan_one(fs, t: datetime, band: int = 14, **kw) -> ScanFile:
    (scan,) = plan_scans(fs, "G16", "ABI-L2-CMIPF", [band], [t], **kw)
    return scan


# --- names and times ---------------------------------------------------------------------------------


def test_parse_abi_name_reads_cmip_mcmip_l1b_and_mesoscale_names():
    cmip = parse_abi_name("OR_ABI-L2-CMIPF-M6C14_G16_s20231941800208_e20231941809516_c20231941809597.nc")
    assert cmip == {
        "platform": "G16",
        "product": "ABI-L2-CMIPF",
        "sector": "F",
        "kind": "CMIP",
        "mode": 6,
        "band": 14,
        "scan_start": datetime(2023, 7, 13, 18, 0, 20, 800_000, tzinfo=UTC),
        "scan_end": datetime(2023, 7, 13, 18, 9, 51, 600_000, tzinfo=UTC),
        "created": datetime(2023, 7, 13, 18, 9, 59, 700_000, tzinfo=UTC),
    }
    mcmip = parse_abi_name("OR_ABI-L2-MCMIPC-M6_G18_s20230010001171_e20230010003544_c20230010004091.nc")
    assert (mcmip["product"], mcmip["kind"], mcmip["band"], mcmip["platform"]) == (
        "ABI-L2-MCMIPC",
        "MCMIP",
        None,
        "G18",
    )
    assert mcmip["scan_start"] == datetime(2023, 1, 1, 0, 1, 17, 100_000, tzinfo=UTC)
    rad = parse_abi_name("OR_ABI-L1b-RadC-M3C07_G17_s20183650457189_e20183650459573_c20183650500011.nc")
    assert (rad["product"], rad["kind"], rad["band"], rad["mode"]) == ("ABI-L1b-RadC", "Rad", 7, 3)
    assert rad["scan_start"] == datetime(2018, 12, 31, 4, 57, 18, 900_000, tzinfo=UTC)
    meso = parse_abi_name("OR_ABI-L2-CMIPM1-M6C14_G16_s20231941800257_e20231941800314_c20231941800383.nc")
    assert (meso["product"], meso["sector"], meso["band"]) == ("ABI-L2-CMIPM", "M1", 14)
    rad_meso = parse_abi_name("OR_ABI-L1b-RadM2-M6C02_G19_s20251001200551_e20251001201008_c20251001201042.nc")
    assert (rad_meso["product"], rad_meso["sector"], rad_meso["band"]) == ("ABI-L1b-RadM", "M2", 2)
    # A bucket key or a path parses as its file name.
    assert parse_abi_name(KEYS[0])["scan_start"] == at(17, 50, 20.2)


@pytest.mark.parametrize(
    "name",
    [
        "contrails_0042.nc",
        "OR_ABI-L2-CMIPF-M6C17_G16_s20231941800208_e20231941809516_c20231941809597.nc",  # no band 17
        "OR_ABI-L2-CMIPF-M6C14_G16_s20234001800208_e20234001809516_c20234001809597.nc",  # day 400
        "OR_ABI-L2-CMIPF-M6C14_G16_s20231941800208_e20231941809516_c20231941809597.nc.part",
    ],
)
def test_parse_abi_name_rejects_other_names_naming_them(name):
    with pytest.raises(DataError, match="not a GOES ABI file name") as err:
        parse_abi_name(f"/data/goes/{name}")
    assert repr(name) in str(err.value)


def test_frame_times_and_times_between():
    t = at(18, 0)
    assert frame_times(t, range(8)) == [t + timedelta(minutes=10 * (i - 4)) for i in range(8)]
    assert frame_times(t, [2, 4]) == [t - timedelta(minutes=20), t]
    assert times_between(at(18, 0), at(18, 30)) == [at(18, 0), at(18, 10), at(18, 20), at(18, 30)]
    assert times_between(at(18, 0), at(18, 25)) == [at(18, 0), at(18, 10), at(18, 20)]
    assert times_between(at(18, 0), at(18, 0)) == [at(18, 0)]
    with pytest.raises(DataError, match="before --start"):
        times_between(at(18, 10), at(18, 0))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"satellite": "G15"}, "unknown satellite 'G15'"),
        ({"satellite": "himawari9"}, "unknown satellite"),
        ({"product": "ABI-L2-ACMF"}, "unknown product 'ABI-L2-ACMF'"),
        ({"product": "ABI-L2-CMIPM"}, "ABI-L2-CMIPM1 or ABI-L2-CMIPM2"),
        ({"bands": [0]}, "band.*0.*1–16"),
        ({"bands": [14, 17]}, "band.*17.*1–16"),
        ({"bands": []}, "name the bands"),
        ({"times": []}, "no times"),
    ],
)
def test_bad_requests_are_refused_before_any_listing(kw, message):
    args = {"satellite": "G16", "product": "ABI-L2-CMIPF", "bands": [14], "times": [at(18, 0)], **kw}
    with pytest.raises(DataError, match=message):
        plan_scans(object(), **args)  # an fs that would fail if touched


def test_make_filesystem_is_anonymous_and_takes_the_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("SEGLADDER_GOES_ENDPOINT", "http://127.0.0.1:9")
    fs = make_filesystem()
    assert fs.anon and fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:9"
    assert make_filesystem("http://127.0.0.1:8").client_kwargs["endpoint_url"] == "http://127.0.0.1:8"
    monkeypatch.delenv("SEGLADDER_GOES_ENDPOINT")
    assert "endpoint_url" not in make_filesystem().client_kwargs


# --- planning ----------------------------------------------------------------------------------------


def test_plan_picks_the_nearest_scan_within_tolerance(fs):
    # 18:14 is 3:40 after the 18:10:20 scan and 6:20 before 18:20:20; 18:16 the other way round.
    assert plan_one(fs, at(18, 14)).scan_start == at(18, 10, 20.3)
    assert plan_one(fs, at(18, 16)).scan_start == at(18, 20, 20.5)
    assert plan_one(fs, at(18, 0)).scan_start == at(18, 0, 20.8)
    scan = plan_one(fs, at(18, 14))
    assert (
        scan.key == KEYS[2] and scan.band == 14 and scan.platform == "G16" and scan.product == "ABI-L2-CMIPF"
    )
    assert scan.size == len(CONTENT[KEYS[2]])
    assert scan.name == KEYS[2].rsplit("/", 1)[1]
    assert scan.url == f"https://noaa-goes16.s3.amazonaws.com/{KEYS[2].partition('/')[2]}"


def test_plan_crosses_the_hour_folder_boundary(fs):
    # For 18:01 the nearest band-15 scan started at 17:59:40, in the 17 folder; for 17:57 band 14's is
    # 18:00:20, in the 18 folder.
    scan = plan_one(fs, at(18, 1), band=15)
    assert scan.scan_start == at(17, 59, 40.1) and "/2023/194/17/" in scan.key
    assert plan_one(fs, at(17, 57)).key == KEYS[1]
    assert plan_one(fs, at(17, 53)).key == KEYS[0]


def test_plan_orders_by_time_then_band_lists_each_hour_once_and_accepts_aliases(fs):
    spy = Spy(fs)
    times = frame_times(at(18, 10), [3, 4])  # 18:00, 18:10
    plan = plan_scans(spy, "goes16", "ABI-L2-CMIPF", [14, 15], times)
    assert [(s.scan_start, s.band) for s in plan] == [
        (at(18, 0, 20.8), 14),
        (at(17, 59, 40.1), 15),
        (at(18, 10, 20.3), 14),
        (at(18, 9, 40.4), 15),
    ]
    assert spy.calls["ls"] == 2  # the 17 and 18 folders, once each
    # Naive times are UTC.
    assert plan_scans(fs, "G16", "ABI-L2-CMIPF", [14], [datetime(2023, 7, 13, 18, 14)])[0].key == KEYS[2]


def test_plan_mcmip_gives_one_file_per_time_and_mesoscale_its_sector(fs):
    (mcmip,) = plan_scans(fs, "G16", "ABI-L2-MCMIPF", [11, 14, 15], [at(18, 10)])
    assert mcmip.band is None and mcmip.product == "ABI-L2-MCMIPF" and mcmip.key == KEYS[6]
    (m2,) = plan_scans(fs, "G16", "ABI-L2-CMIPM2", [14], [at(18, 10)])
    assert m2.key == KEYS[8] and m2.product == "ABI-L2-CMIPM"
    (m1,) = plan_scans(fs, "G16", "abi-l2-cmipm1", [14], [at(18, 11)])  # nearer the M2 scan, but M1 asked
    assert m1.key == KEYS[7]


def test_plan_names_band_and_time_when_a_band_is_missing_or_too_far(fs):
    with pytest.raises(DataError) as err:
        plan_scans(fs, "G16", "ABI-L2-CMIPF", [13, 14], [at(18, 0)])
    msg = str(err.value)
    assert "2023-07-13 18:00:00 UTC band 13" in msg and "band 14" not in msg
    assert "s3://noaa-goes16/ABI-L2-CMIPF/2023/194/17/" in msg and "widen the tolerance" in msg
    # 18:35 is 14:40 after the last band-14 scan: outside 5 min, inside 15.
    with pytest.raises(
        DataError, match=r"18:35:00 UTC band 14.*nearest is OR_ABI-L2-CMIPF-M6C14_G16_s202319418202"
    ):
        plan_one(fs, at(18, 35))
    assert plan_one(fs, at(18, 35), tolerance=timedelta(minutes=15)).key == KEYS[3]
    # A day with no folder at all is a missing scan too, not an unreachable bucket.
    with pytest.raises(DataError, match="2023-07-14 18:00:00 UTC band 14.*none there"):
        plan_one(fs, at(42, 0))


# --- downloads ---------------------------------------------------------------------------------------


def test_fetch_downloads_then_skips_everything(fs, tmp_path):
    out = tmp_path / "goes"
    times = [at(18, 0), at(18, 10), at(18, 12)]  # 18:10 and 18:12 share their scans
    summary = fetch(
        times, satellite="G16", product="ABI-L2-CMIPF", bands=[14, 15], out=out, fs=fs, progress=False
    )
    want = [KEYS[1], KEYS[4], KEYS[2], KEYS[5]]
    assert (summary.planned, summary.downloaded, summary.skipped) == (4, 4, 0)
    assert summary.bytes == sum(len(CONTENT[k]) for k in want) and summary.out == out
    assert summary.files == tuple(out / k.rsplit("/", 1)[1] for k in want)
    assert sorted(p.name for p in out.iterdir()) == sorted(k.rsplit("/", 1)[1] for k in want)
    for k in want:
        assert (out / k.rsplit("/", 1)[1]).read_bytes() == CONTENT[k]

    spy = Spy(fs)
    again = fetch(
        times, satellite="G16", product="ABI-L2-CMIPF", bands=[14, 15], out=out, fs=spy, progress=True
    )
    assert (again.planned, again.downloaded, again.skipped, again.bytes) == (4, 0, 4, 0)
    assert spy.calls["get_file"] == 0


def test_fetch_redoes_stale_part_files_and_truncated_files(fs, tmp_path):
    out = tmp_path / "goes"
    out.mkdir()
    stale, short = KEYS[1], KEYS[2]
    stale_name, short_name = stale.rsplit("/", 1)[1], short.rsplit("/", 1)[1]
    (out / f"{stale_name}.part").write_bytes(CONTENT[stale])  # even complete, a .part is not done
    (out / short_name).write_bytes(CONTENT[short][:-1])
    spy = Spy(fs)
    summary = fetch(
        [at(18, 0), at(18, 10)],
        satellite="G16",
        product="ABI-L2-CMIPF",
        bands=[14],
        out=out,
        fs=spy,
        progress=False,
    )
    assert (summary.downloaded, summary.skipped) == (2, 0) and spy.calls["get_file"] == 2
    assert (out / stale_name).read_bytes() == CONTENT[stale]
    assert (out / short_name).read_bytes() == CONTENT[short]
    assert sorted(p.name for p in out.iterdir()) == sorted([stale_name, short_name])


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), RuntimeError("boom")])
def test_a_download_that_dies_leaves_no_file_that_looks_complete(fs, tmp_path, stop):
    out = tmp_path / "goes"
    with pytest.raises(type(stop)):
        fetch([at(18, 0)], satellite="G16", product="ABI-L2-CMIPF", bands=[14], out=out, fs=Spy(fs, stop))
    assert list(out.iterdir()) == []


# --- an unreachable bucket ---------------------------------------------------------------------------


def test_unreachable_bucket_lists_what_to_get_by_hand_and_writes_nothing(tmp_path):
    out = tmp_path / "goes"
    out.mkdir()
    dead = make_filesystem(f"http://127.0.0.1:{free_port()}", config_kwargs={"retries": {"max_attempts": 1}})
    with pytest.raises(DataError) as err:
        fetch(
            [at(18, 0), at(18, 10)],
            satellite="G16",
            product="ABI-L2-CMIPF",
            bands=[14],
            out=out,
            fs=dead,
            progress=False,
        )
    msg = str(err.value)
    assert "could not reach the GOES bucket s3://noaa-goes16" in msg
    assert "https://noaa-goes16.s3.amazonaws.com/index.html#ABI-L2-CMIPF/2023/194/18/" in msg
    assert "OR_ABI-L2-CMIPF-M?C14_G16_s2023194180*" in msg and "OR_ABI-L2-CMIPF-M?C14_G16_s2023194181*" in msg
    assert f"Put them in {out}/" in msg and f"segladder scene predict --goes {out}" in msg
    assert "Traceback" not in msg and err.value.__cause__ is None and err.value.__suppress_context__
    assert list(out.iterdir()) == []


def test_connection_lost_after_planning_lists_the_file_urls(fs, tmp_path):
    from botocore.exceptions import EndpointConnectionError

    out = tmp_path / "goes"
    drop = Spy(fs, EndpointConnectionError(endpoint_url="https://noaa-goes16.s3.amazonaws.com"))
    with pytest.raises(DataError) as err:
        fetch([at(18, 0), at(18, 10)], satellite="G16", product="ABI-L2-CMIPF", bands=[14], out=out, fs=drop)
    msg = str(err.value)
    assert "could not reach the GOES bucket" in msg and "EndpointConnectionError" in msg
    for key in KEYS[1:3]:
        assert f"https://noaa-goes16.s3.amazonaws.com/{key.partition('/')[2]}" in msg
    assert f"segladder scene predict --goes {out}" in msg
    assert list(out.iterdir()) == []


def test_fetch_command_downloads_the_frames_a_time_needs(endpoint, tmp_path, capsys):
    from segladder.cli import run

    out = tmp_path / "goes"
    args = [
        "scene",
        "fetch",
        "--out",
        str(out),
        "--time",
        "2023-07-13T18:10Z",
        "--frames",
        "3,4",
        "--bands",
        "14",
        "--endpoint",
        endpoint,
        "--no-progress",
    ]
    assert run(args) == 0
    # Frame 3 is 18:00 (its scan 18:00:20.8), frame 4 is 18:10 (18:10:20.3).
    assert sorted(p.name for p in out.iterdir()) == sorted(k.rsplit("/", 1)[1] for k in (KEYS[1], KEYS[2]))
    assert "2 downloaded" in capsys.readouterr().out
    assert run(args) == 0
    again = capsys.readouterr().out
    assert "0 downloaded" in again and "2 already there" in again
