"""`predict`: probability maps, masks, submission.csv and overlays from an ensemble of checkpoints or an ONNX model."""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from segladder.config import DataConfig
from segladder.data.contrails import resolve_channels, resolve_frames
from segladder.data.datasets import ContrailsDataset
from segladder.errors import DataError, SegladderError
from segladder.inference.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from segladder.inference.postprocess import (
    Float16Histogram,
    binarize,
    check_threshold_options,
    remove_small_components,
    resolve_threshold,
)
from segladder.inference.submission import SUBMISSION_HEADER, rle_encode, split_shapes
from segladder.io import atomic_path, atomic_save_npy, atomic_write_json
from segladder.progress import progress_bar

PROBS_DIR = "probs"  # <record_id>.npy: float16 (H, W) probabilities
MASKS_DIR = "masks"  # <record_id>.npy: uint8 (H, W) {0, 1}, after thresholding and component removal
OVERLAYS_DIR = "overlays"
SUBMISSION_FILE = "submission.csv"
SUMMARY_FILE = "predict.json"
OVERLAY_ROWS = 8  # records per overlay PNG


class InferenceError(SegladderError):
    """Inference cannot start: bad options, incompatible models, an unusable device or output folder."""


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class InputSpec:
    """The dataset options a model was trained with; hashable, so models that read alike share one reader."""

    frames: tuple[int, ...]
    channels: tuple[str, ...]
    image_size: int
    normalize_ash: bool = False
    interpolation: str = "bilinear"
    stats: str | None = None  # the training statistics as JSON text (hashable), for raw-data inputs

    @classmethod
    def from_data_config(cls, d: DataConfig, stats: dict | None = None) -> InputSpec:
        return cls(resolve_frames(d.frames), resolve_channels(d.channels), d.image_size, d.normalize_ash, d.interpolation,
                   json.dumps(stats, sort_keys=True) if stats else None)

    @classmethod
    def from_checkpoint(cls, ck) -> InputSpec:
        return cls.from_data_config(ck.config.data, ck.stats)

    @classmethod
    def from_dict(cls, d: Mapping) -> InputSpec:
        stats = d.get("stats")
        return cls(resolve_frames(d["frames"]), resolve_channels(d["channels"]), int(d["image_size"]),
                   bool(d.get("normalize_ash", False)), str(d.get("interpolation", "bilinear")),
                   json.dumps(stats, sort_keys=True) if stats else None)

    def as_dict(self) -> dict:
        return {"frames": list(self.frames), "channels": list(self.channels), "image_size": self.image_size,
                "normalize_ash": self.normalize_ash, "interpolation": self.interpolation,
                "stats": json.loads(self.stats) if self.stats else None}

    def dataset(self, data: str | Path, split: str) -> ContrailsDataset:
        return ContrailsDataset(data, split, frames=self.frames, channels=self.channels, image_size=self.image_size,
                                normalize_ash=self.normalize_ash, interpolation=self.interpolation,
                                stats=json.loads(self.stats) if self.stats else None)


@dataclass
class Batch:
    images: dict[InputSpec, torch.Tensor]  # (B, C, T, H, W) per input spec
    record_ids: list[str]
    mask: torch.Tensor | None  # (B, 1, H, W) of the primary spec, where the split is labelled


class Inputs:
    """One split read once per distinct input spec, in lockstep, so every model sees the same records in order.

    The first spec is the primary one: its masks come with each batch and its images go into overlays.
    """

    def __init__(self, specs: Sequence[InputSpec], data: str | Path, split: str, *, batch_size: int = 8,
                 workers: int = 0):
        if batch_size < 1:
            raise InferenceError(f"batch size must be at least 1, got {batch_size}")
        self.data, self.split, self.batch_size, self.workers = Path(data), split, batch_size, workers
        self.specs = list(dict.fromkeys(specs))
        self.datasets = {s: s.dataset(data, split) for s in self.specs}
        primary = self.datasets[self.specs[0]]
        self.record_ids = list(primary.record_ids)
        if not self.record_ids:
            raise DataError(f"split '{split}' of {data} holds no records; there is nothing to predict.")
        for spec, ds in self.datasets.items():
            if list(ds.record_ids) != self.record_ids:
                raise DataError(f"{data}/{split}: the records read with frames {list(spec.frames)} differ from those "
                                f"read with frames {list(self.specs[0].frames)}; is the cache complete?")
        self.has_mask = primary.has_mask

    def __len__(self) -> int:
        return len(self.record_ids)

    def batches(self) -> Iterator[Batch]:
        loaders = [DataLoader(ds, batch_size=self.batch_size, num_workers=self.workers) for ds in self.datasets.values()]
        for parts in zip(*loaders, strict=True):
            images = {spec: part["image"] for spec, part in zip(self.specs, parts, strict=True)}
            yield Batch(images, list(parts[0]["record_id"]), parts[0].get("mask"))

    def item(self, index: int) -> dict:
        return self.datasets[self.specs[0]][index]


# ------------------------------------------------------------------------------------------ models


def shift_along(t: torch.Tensor, pixels: int, dim: int) -> torch.Tensor:
    """out[q] = t[q + pixels] along `dim`, repeating the edge value where that runs off the image."""
    if pixels == 0:
        return t
    n = t.shape[dim]
    idx = (torch.arange(n, device=t.device) + pixels).clamp(0, n - 1)
    return t.index_select(dim, idx)


class Segmenter:
    """Images (B, C, T, H, W) → contrail probabilities (B, 1, H, W), float32 on the CPU; optional flip TTA.

    Flip TTA averages the plain prediction with those of the horizontally and vertically flipped input,
    flipped back. Competition masks sit half a pixel off the image grid (domain-facts §5), so a
    flipped-back prediction lands one pixel off; `tta_shift` moves it back: out[q] = flipped_back[q + shift]
    along the flipped axis (+1 when labels lie half a pixel right/below their pixels; docs/inference.md).
    """

    def __init__(self, name: str, spec: InputSpec, threshold: float, tta: bool = False, tta_shift: int = 0):
        self.name, self.spec, self.threshold = name, spec, float(threshold)
        self.tta, self.tta_shift = tta, int(tta_shift)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.logits(x).float())
        if self.tta:
            views = [p]
            for dim in (-1, -2):
                back = torch.sigmoid(self.logits(x.flip(dim)).float()).flip(dim)
                views.append(shift_along(back, self.tta_shift, dim))
            p = torch.stack(views).mean(0)
        return p.nan_to_num(0.0).cpu()


class TorchSegmenter(Segmenter):
    def __init__(self, ck: LoadedCheckpoint, device: torch.device, tta: bool = False, tta_shift: int = 0):
        if ck.task != "segmentation":
            raise CheckpointError(f"{ck.path}: a {ck.task} checkpoint where a segmentation model is needed.")
        super().__init__(str(ck.path), InputSpec.from_checkpoint(ck), ck.threshold, tta, tta_shift)
        self.device = device
        self.model = ck.model.to(device).eval()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device, non_blocking=True))


class TorchClassifier:
    """Images → per-record contrail probabilities (B,) from a classification checkpoint."""

    def __init__(self, ck: LoadedCheckpoint, device: torch.device):
        if ck.task != "classification":
            raise CheckpointError(f"{ck.path}: a {ck.task} checkpoint where a classifier is needed.")
        self.name, self.spec, self.threshold = str(ck.path), InputSpec.from_checkpoint(ck), ck.threshold
        self.device = device
        self.model = ck.model.to(device).eval()

    @torch.inference_mode()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x.to(self.device)).float()).reshape(x.shape[0]).nan_to_num(0.0).cpu()


class Ensemble:
    """Weighted mean of segmenters' probabilities. Members may read different frames or channels (each
    gets its own input), but must predict at one image size."""

    def __init__(self, members: Sequence[Segmenter], weights: Sequence[float] | None = None):
        if not members:
            raise InferenceError("no model to predict with: give at least one checkpoint (or --onnx).")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise InferenceError(f"{len(weights)} ensemble weight(s) for {len(members)} model(s).")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise InferenceError(f"ensemble weights must be positive numbers, got {weights}.")
        if len({m.spec.image_size for m in members}) > 1:
            sizes = ", ".join(f"{m.name}: {m.spec.image_size}" for m in members)
            raise InferenceError(f"the models predict at different image sizes ({sizes}); "
                                 "an ensemble needs one size to average at.")
        total = sum(weights)
        self.members, self.weights = list(members), [w / total for w in weights]

    @property
    def threshold(self) -> float:
        """The members' stored thresholds, averaged with the ensemble weights."""
        return sum(w * m.threshold for m, w in zip(self.members, self.weights, strict=True))

    @property
    def specs(self) -> list[InputSpec]:
        return list(dict.fromkeys(m.spec for m in self.members))

    def member_probs(self, images: Mapping[InputSpec, torch.Tensor],
                     known: Mapping[Segmenter, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Each member's probabilities; those in `known` (already computed elsewhere) are not run again."""
        known = known or {}
        return [known[m] if m in known else m.probs(images[m.spec]) for m in self.members]

    def combine(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(w * p for w, p in zip(self.weights, probs, strict=True))

    def probs(self, images: Mapping[InputSpec, torch.Tensor],
              known: Mapping[Segmenter, torch.Tensor] | None = None) -> torch.Tensor:
        return self.combine(self.member_probs(images, known))


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InferenceError(f"unknown device {device!r}; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} asked for, but no CUDA device is available; use --device cpu.")
    return dev


def load_segmenters(checkpoints: Sequence[str | Path], device: torch.device, tta: bool = False,
                    tta_shift: int = 0) -> list[TorchSegmenter]:
    return [TorchSegmenter(load_checkpoint(c), device, tta, tta_shift) for c in checkpoints]


def prepare_output(out: str | Path) -> Path:
    """Create the output folder and prove it writable, so a bad --out fails before any inference."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise InferenceError(f"output folder {out} is not writable ({exc.strerror or exc}).") from None
    return out


# ------------------------------------------------------------------------------------------ writing


@dataclass
class Prediction:
    out: Path
    records: int
    threshold: float
    threshold_source: str
    positive_records: int
    positive_pixels: int
    dice: float | None = None  # global Dice on a labelled split, before component removal
    submission_problems: list[str] = field(default_factory=list)  # records whose size the masks do not have

    @property
    def submission(self) -> Path:
        return self.out / SUBMISSION_FILE


ProbFn = Callable[[Batch], torch.Tensor]  # a batch → (B, 1, H, W) probabilities


def write_probabilities(prob_fn: ProbFn, inputs: Inputs, folder: Path, *, description: str, progress: bool = True,
                        observe: Callable[[np.ndarray, Batch], None] | None = None) -> None:
    """Pass 1: run `prob_fn` over the split, writing `folder/<record_id>.npy` (float16, H × W) per record;
    `observe(probs, batch)` sees each batch's float16 probabilities (B, H, W)."""
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(description, total=len(inputs))
        for batch in inputs.batches():
            p16 = prob_fn(batch)[:, 0].numpy().astype(np.float16)
            if observe is not None:
                observe(p16, batch)
            for rid, p in zip(batch.record_ids, p16, strict=True):
                atomic_save_npy(folder / f"{rid}.npy", p)
            bar.advance(task, len(batch.record_ids))


def write_predictions(prob_fn: ProbFn, inputs: Inputs, out: Path, *, stored_threshold: float,
                      stored_source: str = "stored with the checkpoint(s)", threshold: float | None = None,
                      percentile: float | None = None, min_component: int = 0, overlays: int = 0,
                      progress: bool = True, summary: dict | None = None) -> Prediction:
    """Probabilities (pass 1), then the threshold, then masks + submission.csv from the saved float16 maps (pass 2).

    Pass 2 binarises exactly the probabilities on disk, so `probs/` thresholded and cleaned reproduces
    `masks/`, and decoding submission.csv reproduces `masks/`. On a labelled split, histograms of the
    probabilities of all and of positive pixels give the exact global Dice at the chosen threshold
    (before component removal) without keeping any map in memory.
    """
    hist = Float16Histogram() if percentile is not None or inputs.has_mask else None
    pos_hist = Float16Histogram() if inputs.has_mask else None

    def observe(p16: np.ndarray, batch: Batch) -> None:
        hist.update(p16)
        if pos_hist is not None:
            pos_hist.update(p16[batch.mask[:, 0].numpy() > 0.5])

    write_probabilities(prob_fn, inputs, out / PROBS_DIR, description=f"predicting {inputs.split}",
                        progress=progress, observe=observe if hist is not None else None)
    th, source = resolve_threshold(stored_threshold, threshold, percentile, hist, stored_source)
    dice = None
    if pos_hist is not None:
        denom = hist.count_above(th) + pos_hist.total
        dice = 1.0 if denom == 0 else 2 * pos_hist.count_above(th) / denom
    pos_records = pos_pixels = 0
    with (atomic_path(out / SUBMISSION_FILE) as tmp, open(tmp, "w", newline="") as fh,
          progress_bar(disable=not progress) as bar):
        writer = csv.writer(fh)
        writer.writerow(SUBMISSION_HEADER)
        task = bar.add_task("writing masks", total=len(inputs))
        for rid in inputs.record_ids:
            mask = remove_small_components(binarize(np.load(out / PROBS_DIR / f"{rid}.npy"), th), min_component)
            atomic_save_npy(out / MASKS_DIR / f"{rid}.npy", mask)
            writer.writerow([rid, rle_encode(mask)])
            n = int(mask.sum())
            pos_pixels += n
            pos_records += n > 0
            bar.advance(task)
    if overlays > 0:
        _write_overlays(inputs, out, th, overlays)
    problems = _size_problems(inputs)
    result = Prediction(out, len(inputs), th, source, pos_records, pos_pixels, dice, problems)
    atomic_write_json(out / SUMMARY_FILE, {
        **(summary or {}),
        "data": str(inputs.data), "split": inputs.split, "records": len(inputs),
        "input": inputs.specs[0].as_dict(), "threshold": th, "threshold_source": source,
        "min_component": min_component, "positive_records": pos_records, "positive_pixels": pos_pixels,
        "dice_before_component_removal": dice, "submission_problems": problems,
        "files": {"probabilities": f"{PROBS_DIR}/<record_id>.npy (float16, H x W)",
                  "masks": f"{MASKS_DIR}/<record_id>.npy (uint8 0/1, H x W)", "submission": SUBMISSION_FILE},
    })
    return result


def _size_problems(inputs: Inputs) -> list[str]:
    """Records whose own size differs from the masks' (the models' image size): their RLE would not fit them."""
    size = inputs.specs[0].image_size
    return [f"record {rid} is {h}x{w} but its mask is {size}x{size}"
            for rid, (h, w) in split_shapes(inputs.data, inputs.split).items() if (h, w) != (size, size)]


def _write_overlays(inputs: Inputs, out: Path, threshold: float, n: int) -> None:
    from segladder.viz import overlay_grid

    n = min(n, len(inputs))
    for start in range(0, n, OVERLAY_ROWS):
        items = [inputs.item(i) for i in range(start, min(start + OVERLAY_ROWS, n))]
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([it["mask"] for it in items]) if "mask" in items[0] else None
        probs = torch.stack([torch.from_numpy(np.load(out / PROBS_DIR / f"{it['record_id']}.npy").astype(np.float32))[None]
                             for it in items])
        picture = overlay_grid(images, masks, probs, threshold)
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        with atomic_path(out / OVERLAYS_DIR / f"overlay_{start:05d}.png") as tmp:
            tmp.write_bytes(png.tobytes())


# ------------------------------------------------------------------------------------------ predict


def predict(checkpoints: Sequence[str | Path], data: str | Path, out: str | Path, *, split: str = "test",
            onnx: str | Path | None = None, weights: Sequence[float] | None = None, threshold: float | None = None,
            percentile: float | None = None, tta: bool = False, tta_shift: int = 0, min_component: int = 0,
            overlays: int = 0, batch_size: int = 8, device: str | None = None, workers: int = 0,
            progress: bool = True) -> Prediction:
    """Predict a split with one checkpoint, an ensemble of checkpoints, or an exported ONNX model.

    Every check (options, device, output folder, checkpoints, data against what the models read)
    happens before the first batch. Outputs: see `write_predictions` and docs/inference.md.
    """
    check_threshold_options(threshold, percentile)
    if min_component < 0 or overlays < 0:
        raise InferenceError("--min-component and --overlays cannot be negative.")
    if bool(checkpoints) == (onnx is not None):
        raise InferenceError("give checkpoint(s) or --onnx MODEL, not both and not neither.")
    dev = resolve_device(device)
    out = prepare_output(out)
    if onnx is not None:
        from segladder.inference.export import OnnxSegmenter

        members: list[Segmenter] = [OnnxSegmenter(onnx, dev, tta, tta_shift)]
    else:
        members = list(load_segmenters(checkpoints, dev, tta, tta_shift))
    ens = Ensemble(members, weights)
    inputs = Inputs(ens.specs, data, split, batch_size=batch_size, workers=workers)
    summary = {"command": "predict", "tta": tta, "tta_shift": tta_shift,
               "models": [{"model": m.name, "weight": w, "threshold": m.threshold}
                          for m, w in zip(ens.members, ens.weights, strict=True)]}
    return write_predictions(lambda b: ens.probs(b.images), inputs, out, stored_threshold=ens.threshold,
                             threshold=threshold, percentile=percentile, min_component=min_component,
                             overlays=overlays, progress=progress, summary=summary)


# ------------------------------------------------------------------------------------------ benchmark


def bench_inference(model: str = "ResNet18_U", *, image_size: int = 256, frames: int = 5, batch_size: int = 8,
                    seconds: float = 10.0, threads: int | None = None, **model_kwargs) -> dict:
    """Inference samples/s of a registered model (random weights) on the CPU: PyTorch vs onnxruntime.

    Both run the same fp32 model on the same random (B, 3, T, H, W) batch; the ONNX copy is exported
    and parity-checked like `segladder export onnx`. Times exclude one warm-up batch.
    """
    import onnxruntime as ort

    from segladder.inference.export import export_model
    from segladder.models import create

    if threads:
        torch.set_num_threads(threads)
    net = create(model, pretrained=False, **model_kwargs).eval()
    spec = InputSpec(tuple(range(frames)), resolve_channels(["ash"]), image_size)
    x = torch.rand(batch_size, len(spec.channels), frames, image_size, image_size,
                   generator=torch.Generator().manual_seed(0))

    def rate(run: Callable[[], object]) -> float:
        run()
        n, start = 0, time.perf_counter()
        while True:
            run()
            n += batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n / elapsed

    with torch.inference_mode():
        torch_rate = rate(lambda: net(x))
    with tempfile.TemporaryDirectory(prefix="segladder-bench-") as tmp:
        exported = export_model(net, spec, Path(tmp) / "model.onnx", model_name=model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(exported.path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        onnx_rate = rate(lambda: session.run(None, feed))
    return {"model": model, "input": list(x.shape),
            "threads": torch.get_num_threads(), "torch_samples_per_s": torch_rate, "onnx_samples_per_s": onnx_rate,
            "parity_max_abs_diff": exported.max_abs_diff_random}
