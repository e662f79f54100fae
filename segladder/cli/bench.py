"""`segladder bench ...`: benchmark commands whose figures go into docs/benchmarks.md."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from segladder.cli._common import parse_int_list
from segladder.cli.app import app

bench_app = typer.Typer(help="Benchmarks (figures for docs/benchmarks.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("data")
def data(
    root: Path = typer.Option(
        None, "--data", help="Raw dataset root (default: a synthetic one made in a temp folder)."
    ),
    cache: Path = typer.Option(
        None, "--cache", help="Prepared cache of --data (default: prepared in a temp folder)."
    ),
    records: int = typer.Option(64, "--records", help="Synthetic training records when no --data is given."),
    frames: str = typer.Option("0-4", "--frames", help="Frames per sample, e.g. '0-4' (5 frames)."),
    seconds: float = typer.Option(3.0, "--seconds", help="Seconds to time each path."),
    batch: int = typer.Option(32, "--batch", help="Batch size: every path is timed in collated batches."),
    workers: int = typer.Option(2, "--workers", help="DataLoader workers for the full-loader path."),
) -> None:
    """Samples/s per core of each data path (raw, cached float, cached uint8, full loader) beside memcpy."""
    from segladder.data.bench import bench_data_loading, format_report
    from segladder.data.cache import CacheOptions, prepare_cache
    from segladder.data.synth import generate_contrails

    fr = parse_int_list(frames) or list(range(8))
    with tempfile.TemporaryDirectory(prefix="segladder-bench-") as tmp:
        if root is None:
            root = Path(tmp) / "raw"
            generate_contrails(root, records=records, val_records=0, test_records=0, size=256, seed=0)
        if cache is None:
            cache = Path(tmp) / "cache"
            prepare_cache(root, cache, CacheOptions(frames=tuple(fr)), ["train"])
        r = bench_data_loading(root, cache, fr, seconds=seconds, batch_size=batch, workers=workers)
    for line in format_report(r):
        typer.echo(line)


# Mode → the trainer keys it sets; the compile variants are what docs/benchmarks.md compares.
MODES: dict[str, dict] = {
    "fp32": {"precision": "32"},
    "fp32_cl": {"precision": "32", "channels_last": True},
    "fp32_cl_compile": {"precision": "32", "channels_last": True, "compile": True},
    "bf16": {"precision": "bf16-mixed"},
    "bf16_cl": {"precision": "bf16-mixed", "channels_last": True},
    "bf16_cl_nobenchmark": {"precision": "bf16-mixed", "channels_last": True, "cudnn_benchmark": False},
    "bf16_cl_compile": {"precision": "bf16-mixed", "channels_last": True, "compile": True},
    "bf16_cl_compile_dynamic": {
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile": True,
        "compile_dynamic": None,
    },
    "bf16_cl_compile_autotune": {
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile": True,
        "compile_mode": "max-autotune-no-cudagraphs",
    },
}


def _mode_config(mode: str, model: str, size: int, frames: int, batch: int, **data):
    from segladder.training.bench import bench_config

    m = MODES[mode]
    return bench_config(
        model,
        size,
        frames,
        batch,
        m["precision"],
        m.get("channels_last", False),
        m.get("compile", False),
        compile_mode=m.get("compile_mode", "default"),
        compile_dynamic=m.get("compile_dynamic", False),
        cudnn_benchmark=m.get("cudnn_benchmark", True),
        **data,
    )


@bench_app.command("train")
def train(
    model: str = typer.Option(
        "Unet2D", "--model", help="Registered model (Unet2D = smp Unet resnet18, the reference's case)."
    ),
    size: int = typer.Option(256, "--size", help="Image size."),
    frames: int = typer.Option(
        1, "--frames", help="Frames per sample (1: a 4-D batch, as the reference's 2-D cases)."
    ),
    batch: int = typer.Option(32, "--batch", help="Batch size."),
    steps: int = typer.Option(30, "--steps", help="Timed steps."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed steps first."),
    modes: str = typer.Option(
        "",
        "--modes",
        help=f"Comma-separated of {', '.join(MODES)} (default: bf16_cl,bf16_cl_compile on GPU, fp32 on CPU).",
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="Prepared cache for the real data path (default: synthetic records made in a temp folder).",
    ),
    records: int = typer.Option(
        64,
        "--records",
        help="Synthetic records for the real data path; drawn with replacement, so a few dozen suffice.",
    ),
    workers: int = typer.Option(4, "--workers", help="DataLoader workers for the real data path."),
    skip_data: bool = typer.Option(False, "--skip-data", help="Skip the real-data-path case."),
    skip_reference: bool = typer.Option(False, "--skip-reference", help="Skip the bare loop."),
    encoder: str = typer.Option(
        None, "--encoder", help="The model's encoder, where it has one (default: its own)."
    ),
    ops: bool = typer.Option(
        False,
        "--ops",
        help="Count each step's device ops (kernel launches on a GPU), Trainer beside bare loop, instead "
        "of timing; the same on any machine. Not with compile modes or the data path.",
    ),
) -> None:
    """Samples/s and peak memory of full training steps, the Trainer's beside a bare loop's.

    The Trainer is the one `segladder train` builds, the bare reference loop runs beside it, and the real data
    path (cache → workers → device decode → step) after them.
    """
    import json

    import torch

    from segladder.data.bench import synthetic_cache

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = _chosen_modes(modes, device, records, ops)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )
    case = BenchCase(model, size, frames, batch, steps, warmup, device, encoder)
    memory = {mode: _bench_mode(case, mode, ops, skip_reference) for mode in chosen}
    if skip_data or ops:
        return
    with tempfile.TemporaryDirectory(prefix="segladder-bench-") as tmp:
        cache = data or synthetic_cache(Path(tmp), records, size, frames)
        _bench_data_path(
            case, chosen[0], cache, workers, memory[chosen[0]], records if data is None else None
        )


def _chosen_modes(modes: str, device, records: int, ops: bool) -> list[str]:
    """`--modes` as a list (its default on `device`); refused when a mode is unknown or --ops can't count it."""
    from segladder.cli._common import parse_str_list

    chosen = parse_str_list(modes) or (["bf16_cl", "bf16_cl_compile"] if device.type == "cuda" else ["fp32"])
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        raise typer.BadParameter(
            f"unknown mode(s) {unknown}; choose from {list(MODES)}", param_hint="--modes"
        )
    if records < 1:
        raise typer.BadParameter("needs at least 1 record", param_hint="--records")
    if ops and any("compile" in m for m in chosen):
        raise typer.BadParameter(
            "--ops counts eager steps (a compiled graph runs below the op dispatcher); drop the compile "
            "modes from --modes",
            param_hint="--modes",
        )
    return chosen


@dataclass(frozen=True)
class BenchCase:
    """What every timing of one `bench train` shares: the model and its batch, the steps, the device."""

    model: str
    size: int
    frames: int
    batch: int
    steps: int
    warmup: int
    device: Any
    encoder: str | None

    @property
    def name(self) -> str:
        """The case's name in the printed results: model, size and frames."""
        return f"{self.model}_{self.size}_T{self.frames}"

    def config(self, mode: str, **data):
        """The `train` config of this case in `mode`; `data` go to `bench_config` (root, augment, workers)."""
        return _mode_config(
            mode, self.model, self.size, self.frames, self.batch, encoder=self.encoder, **data
        )


def _bench_mode(case: BenchCase, mode: str, ops: bool, skip_reference: bool) -> float:
    """Time (or with `ops`, count the device ops of) the bare loop, then the Trainer, in `mode`.

    Both run on synthetic batches held in memory; prints both and returns the Trainer's samples/s.
    """
    from segladder.training.bench import bench_reference, bench_trainer, print_result

    cfg = case.config(mode)
    args = (cfg, case.name, case.steps, case.warmup, case.device)
    ref = None if skip_reference else bench_reference(*args, count_ops=ops)
    if ref is not None:
        print_result(ref)
    res = bench_trainer(*args, count_ops=ops)
    if ops and ref is not None:
        extra = {k: round(v - ref["ops"].get(k, 0), 2) for k, v in res["ops"].items()}
        res["extra_ops_per_step"] = round(res["ops_per_step"] - ref["ops_per_step"], 2)
        res["extra_ops"] = {k: v for k, v in extra.items() if v}
    elif ref is not None:
        res["vs_reference"] = round(res["img_per_s"] / ref["img_per_s"], 3)
    print_result(res)
    return res["img_per_s"]


def _bench_data_path(
    case: BenchCase, mode: str, cache: Path, workers: int, memory: float, records: int | None
) -> None:
    """Time the Trainer in `mode` fed by the real data path from `cache`, and print it beside `memory`.

    `memory` is the samples/s of the same steps on batches held in memory.
    """
    from segladder.data.bench import drawing_train_loader
    from segladder.training.bench import bench_trainer, print_result

    cfg = case.config(mode, root=str(cache), augment={"rot90_p": 0.5, "cutout_p": 0.5}, workers=workers)
    samples = case.batch * (case.warmup + case.steps)
    loader, uint8 = drawing_train_loader(cfg.data, cfg.seed, case.batch, samples, workers)
    res = bench_trainer(cfg, case.name, case.steps, case.warmup, case.device, data=loader)
    print_result(
        {
            **res,
            "data_path": "uint8" if uint8 else "float32",
            "records": records,
            "workers": workers,
            "vs_memory": round(res["img_per_s"] / memory, 3),
        }
    )


@bench_app.command("boxes")
def boxes(
    checkpoint: Path = typer.Argument(..., help="A best.ckpt or last.ckpt of a `boxes` run."),
    images: Path = typer.Option(..., "--images", help="Image folder."),
    annotations: Path = typer.Option(
        ..., "--annotations", help="COCO file whose boxes are jittered and snapped."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Crops per batch for the batched path."),
    boxes: int = typer.Option(256, "--boxes", help="Boxes snapped in the timed batched pass."),
    single: int = typer.Option(32, "--single", help="Boxes snapped one at a time."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures as JSON."),
) -> None:
    """Adjusted boxes per second: a COCO file batched (reading and cropping included) and single boxes."""
    import json

    from segladder.inference.boxes import bench_box_adjustment
    from segladder.io import atomic_write_json, refuse_folders_as_files, refuse_overwriting_inputs

    refuse_folders_as_files({"--json": json_out})
    refuse_overwriting_inputs(
        {"--json": json_out}, {"CHECKPOINT": checkpoint, "--images": images, "--annotations": annotations}
    )
    r = bench_box_adjustment(
        checkpoint, images, annotations, batch_size=batch_size, boxes=boxes, single=single, device=device
    )
    typer.echo(
        f"{r['device']} ({r['threads']} threads), crop {r['crop_size']}: "
        f"batched {r['batch_boxes_per_s']:.1f} boxes/s ({r['boxes']} boxes, batch {r['batch_size']}); "
        f"single {r['single_boxes_per_s']:.1f} boxes/s ({r['single_ms_per_box']:.1f} ms/box)"
    )
    if json_out is not None:
        atomic_write_json(json_out, r)
        typer.echo(f"written: {json.dumps(str(json_out))}")


@bench_app.command("scene")
def scene(
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Checkpoint (default: a random ResNet18_U, frame 4)."
    ),
    sector: str = typer.Option("conus", "--sector", help="conus (1500×2500) or full (5424×5424)."),
    tile: int = typer.Option(768, "--tile", help="Tile side, as `scene predict --tile`."),
    overlap: int = typer.Option(32, "--overlap", help="Tile overlap, as `scene predict --overlap`."),
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per forward pass."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when present)."),
) -> None:
    """`scene predict` on a synthetic ABI scene beside the model's forward pass alone, and its peak memory."""
    import json

    from segladder.errors import DataError
    from segladder.scene.bench import SECTORS, as_dict, bench_scene

    if sector not in SECTORS:
        raise DataError(f"--sector {sector}: give one of {', '.join(SECTORS)}.")
    result = bench_scene(checkpoint, sector, tile=tile, overlap=overlap, batch_size=batch_size, device=device)
    typer.echo(json.dumps(as_dict(result)))
