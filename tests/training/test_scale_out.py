"""Beyond one process: a 2-process DDP run on the CPU, and the cloud script end to end with a stand-in kaggle."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from segladder.config import build_config
from segladder.training.run import batch_summary, shared_run_dir

REPO = Path(__file__).resolve().parents[2]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("SEGLADDER_RUN_DIR", None)
    return env


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_run_directory(train_root, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "segladder",
        "train",
        "tiny_synthetic",
        "--set",
        f"data.root={train_root}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "trainer.overlays=1",
        "model.name=ResNet18_U",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs" / "tiny_synthetic").iterdir())
    assert len(runs) == 1, runs  # both processes wrote into the one directory rank 0 chose
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    final = metrics["final"]
    assert all(
        v == v and abs(v) != float("inf") for k, v in final.items() if k.startswith(("val/", "train/"))
    )
    assert "16 samples per optimiser step" in " ".join((proc.stdout + proc.stderr).split())
    assert (runs[0] / "checkpoints" / "best.ckpt").exists()
    assert proc.stdout.count(str(runs[0].name)) == 1  # one summary, from rank 0


def test_processes_started_together_must_share_an_out_folder(monkeypatch, tmp_path):
    cfg = build_config({})
    monkeypatch.delenv("SEGLADDER_RUN_DIR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(Exception, match="give --out RUN_DIR"):
        shared_run_dir(cfg, None)
    assert shared_run_dir(cfg, tmp_path) == tmp_path
    monkeypatch.setenv("SEGLADDER_RUN_DIR", str(tmp_path / "chosen"))
    assert shared_run_dir(cfg, None) == tmp_path / "chosen"  # a child of Lightning's launcher


def test_batch_summary_states_the_effective_batch_and_the_lr_rule():
    cfg = build_config(
        {"data": {"batch_size": 8}, "trainer": {"accumulate_grad_batches": 2}, "optim": {"lr": 1e-3}}
    )
    line = batch_summary(cfg, world_size=4)
    assert "8 per device × 2 accumulated × 4 process(es) = 64 samples" in line and "lr × 4" in line
    assert "lr ×" not in batch_summary(cfg, world_size=1)


STANDIN_KAGGLE = """#!{python}
import json, os, shutil, sys, zipfile
from pathlib import Path
log = Path(os.environ["STANDIN_LOG"])
args = sys.argv[1:]
with log.open("a") as fh:
    fh.write(" ".join(args) + "\\n")
creds = json.loads((Path.home() / ".kaggle" / "kaggle.json").read_text())
assert creds["key"] == os.environ["KAGGLE_KEY"]
if args[:2] == ["competitions", "download"]:
    dest = Path(args[args.index("-p") + 1]) / (args[args.index("-c") + 1] + ".zip")
    src = Path(os.environ["STANDIN_DATA"])
    with zipfile.ZipFile(dest, "w") as z:
        for f in src.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(src))
elif args[:2] == ["datasets", "status"]:
    sys.exit(1)
elif args[:2] == ["datasets", "create"]:
    folder = Path(args[args.index("-p") + 1])
    with log.open("a") as fh:
        fh.write("uploaded: " + ",".join(sorted(p.name for p in folder.iterdir())) + "\\n")
"""


@pytest.mark.slow
def test_cloud_script_end_to_end_with_a_standin_kaggle(train_root, tmp_path):
    home, bin_dir, work = tmp_path / "home", tmp_path / "bin", tmp_path / "work"
    for d in (home, bin_dir, work):
        d.mkdir()
    kaggle = bin_dir / "kaggle"
    kaggle.write_text(STANDIN_KAGGLE.format(python=sys.executable))
    kaggle.chmod(kaggle.stat().st_mode | stat.S_IEXEC)
    shutil.copytree(REPO / "configs", work / "configs")  # the script tars the working folder as "the code"
    secret = "s3cr3t-kaggle-key-value"
    env = _env(
        HOME=str(home),
        KAGGLE_USERNAME="someone",
        KAGGLE_KEY=secret,
        STANDIN_LOG=str(tmp_path / "kaggle.log"),
        STANDIN_DATA=str(train_root),
    )
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cmd = [
        "bash",
        str(REPO / "scripts" / "cloud_train.sh"),
        "--skip-install",
        "--gpus",
        "0",
        "--config",
        "tiny_synthetic",
        "--dataset-slug",
        "someone/contrails-model",
        "--",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "trainer.overlays=0",
        "trainer.limit_train_batches=2",
        "model.name=ResNet18_U",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for n in range(1, 7):
        assert f"== {n}/6" in out
    log = (tmp_path / "kaggle.log").read_text()
    assert "competitions download -c google-research-identify-contrails-reduce-global-warming" in log
    assert "uploaded: best.ckpt,config.yaml,dataset-metadata.json,segladder-code.tar.gz" in log
    assert (work / "data" / "cache" / "manifest.json").exists()
    assert secret not in out and secret not in log
    assert stat.S_IMODE((home / ".kaggle" / "kaggle.json").stat().st_mode) == 0o600
    # Pre-empted and started again: nothing is downloaded twice, training continues the same run.
    again = subprocess.run(
        cmd[:-6] + ["--no-upload", "--"] + cmd[-5:],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "already downloaded" in again.stdout and "resuming runs/cloud/tiny_synthetic" in again.stdout
    assert (tmp_path / "kaggle.log").read_text().count("competitions download") == 1


def test_cloud_script_dry_run_prints_the_plan(tmp_path):
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "cloud_train.sh"),
            "--dry-run",
            "--config",
            "coat_ulstm",
            "--gpus",
            "8",
            "--dataset-slug",
            "me/model",
        ],
        capture_output=True,
        text=True,
        env=_env(HOME=str(tmp_path)),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for expected in (
        "pip install",
        "kaggle competitions download",
        "segladder models fetch coat_ulstm",
        "segladder data prepare",
        "trainer.devices=8 trainer.strategy=ddp",
        "kaggle datasets create",
    ):
        assert expected in proc.stdout
    assert not (tmp_path / "data").exists()  # a dry run runs nothing
    bad = subprocess.run(
        ["bash", str(REPO / "scripts" / "cloud_train.sh"), "--gpus", "many"],
        capture_output=True,
        text=True,
        env=_env(HOME=str(tmp_path)),
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 2 and "--gpus 'many'" in bad.stderr
