"""The classify-then-segment pipeline: stage-1 filter, stage-2 segmenter ensemble, evaluation per stage."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torchmetrics import Metric

from segladder.config import explain, read_yaml
from segladder.errors import DataError
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.errors import InferenceError
from segladder.inference.inputs import Batch, Inputs, InputSpec
from segladder.inference.postprocess import binarize, check_threshold_options, remove_small_components
from segladder.inference.predict import Prediction, prepare_output, write_predictions
from segladder.inference.segmenters import (
    Ensemble,
    Segmenter,
    TorchClassifier,
    TorchSegmenter,
    resolve_device,
)
from segladder.io import atomic_path, atomic_write_json
from segladder.metrics import ClassificationMetrics, ThresholdSweepDice
from segladder.progress import progress_bar

FILTER_FILE = "filter.csv"
METRICS_FILE = "pipeline_metrics.json"


# ------------------------------------------------------------------------------------------ config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterConfig(_Strict):
    """Which records stage 1 lets through to stage 2; the others get an empty mask."""

    rule: Literal["or", "and", "mean"] = Field(
        "or",
        description="with both models: keep when either score passes (or), both pass (and), or their mean passes (mean)",
    )
    top_k: int = Field(
        100, ge=1, description="the segmenter's score is the mean of its k highest pixel probabilities"
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="threshold of the 'mean' rule and default of the two below"
    )
    classifier_threshold: float | None = Field(None, ge=0, le=1)
    segmenter_threshold: float | None = Field(None, ge=0, le=1)

    @property
    def thresholds(self) -> tuple[float, float]:
        """(classifier, segmenter) thresholds."""
        return (
            self.threshold if self.classifier_threshold is None else self.classifier_threshold,
            self.threshold if self.segmenter_threshold is None else self.segmenter_threshold,
        )


class Stage2Member(_Strict):
    """A stage-2 segmenter: its checkpoint and its weight in the ensemble."""

    checkpoint: Path
    weight: float = Field(1.0, gt=0)
    name: str | None = Field(None, description="label in reports (default: the checkpoint's file name)")

    @property
    def label(self) -> str:
        """The member's name in reports: `name`, or the checkpoint's file name."""
        return self.name or self.checkpoint.name


class PipelineConfig(_Strict):
    """A two-stage prediction pipeline, as a pipeline YAML file gives it.

    Stage 1: a classifier and/or a segmenter decide which records hold contrails. Stage 2: an ensemble of
    segmenters (as in the classify-then-segment experiments, docs/background.md: one trained on all data, one
    on positives only) draws the masks.
    """

    classifier: Path | None = Field(None, description="stage-1 classification checkpoint")
    segmenter: Path | None = Field(
        None, description="stage-1 segmentation checkpoint (may also be in stage2)"
    )
    filter: FilterConfig = Field(default_factory=FilterConfig)
    stage2: list[Stage2Member] = Field(min_length=1)
    threshold: float | None = Field(
        None, ge=0, le=1, description="mask threshold; None: the stage-2 weighted mean"
    )
    min_component: int = Field(
        0, ge=0, description="remove connected components smaller than this many pixels"
    )
    tta: bool = False
    tta_shift: int = 0

    @field_validator("stage2", mode="before")
    @classmethod
    def _plain_paths(cls, v):
        # `stage2: [all.ckpt, pos.ckpt]` is shorthand for members of weight 1.
        return (
            [{"checkpoint": m} if isinstance(m, str | Path) else m for m in v] if isinstance(v, list) else v
        )

    @model_validator(mode="after")
    def _stage1(self) -> PipelineConfig:
        if self.classifier is None and self.segmenter is None:
            raise ValueError(
                "stage 1 needs a classifier, a segmenter or both; without either, use `segladder predict`"
            )
        return self

    def resolved(self, base: Path) -> PipelineConfig:
        """A copy with relative checkpoint paths taken relative to `base` (the YAML file's folder)."""

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        return self.model_copy(
            update={
                "classifier": fix(self.classifier),
                "segmenter": fix(self.segmenter),
                "stage2": [m.model_copy(update={"checkpoint": fix(m.checkpoint)}) for m in self.stage2],
            }
        )


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML; unknown keys are named with the closest valid ones."""
    path = Path(path)
    raw = read_yaml(path, "pipeline", "classifier/segmenter/filter/stage2")
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise explain(exc, f"pipeline {path}", PipelineConfig) from None
    return cfg.resolved(path.resolve().parent)


# ------------------------------------------------------------------------------------------ stages


def filter_margin(
    classifier: torch.Tensor | None, segmenter: torch.Tensor | None, f: FilterConfig
) -> torch.Tensor:
    """Per-record score whose sign is the decision: > 0 keeps the record. Also a ranking for the filter's AUC."""
    tc, ts = f.thresholds
    parts = [s - t for s, t in ((classifier, tc), (segmenter, ts)) if s is not None]
    if len(parts) == 1:
        return parts[0]
    if f.rule == "or":
        return torch.maximum(*parts)
    if f.rule == "and":
        return torch.minimum(*parts)
    return (classifier + segmenter) / 2 - f.threshold


@dataclass
class Stage1:
    """Stage 1's scores of a batch: the classifier's and the segmenter's, and their margin over the filter."""

    classifier: torch.Tensor | None  # (B,) probabilities
    segmenter: torch.Tensor | None  # (B,) mean of the top-k pixel probabilities
    segmenter_probs: torch.Tensor | None  # (B, 1, H, W), reused when the segmenter is also in stage 2
    margin: torch.Tensor  # (B,)

    @property
    def keep(self) -> torch.Tensor:
        """(B,) whether each record passes the filter and goes to stage 2."""
        return self.margin > 0


class Pipeline:
    """The loaded models of a pipeline config; each checkpoint is loaded and run once even when listed twice.

    Args:
        cfg: the pipeline config.
        device: where the models run.
    """

    def __init__(self, cfg: PipelineConfig, device: torch.device):
        self.cfg = cfg
        loaded: dict[Path, Segmenter] = {}

        def segmenter(path: Path) -> Segmenter:
            key = path.resolve()
            if key not in loaded:
                loaded[key] = TorchSegmenter(load_checkpoint(path), device, cfg.tta, cfg.tta_shift)
            return loaded[key]

        self.classifier = TorchClassifier(load_checkpoint(cfg.classifier), device) if cfg.classifier else None
        self.segmenter = segmenter(cfg.segmenter) if cfg.segmenter else None
        self.stage2 = Ensemble([segmenter(m.checkpoint) for m in cfg.stage2], [m.weight for m in cfg.stage2])
        self.size = self.stage2.members[0].spec.image_size
        if self.segmenter is not None and self.segmenter.spec.image_size != self.size:
            raise InferenceError(
                f"the stage-1 segmenter predicts at {self.segmenter.spec.image_size}², stage 2 at "
                f"{self.size}²; train them at one image size."
            )
        self.threshold = self.stage2.threshold if cfg.threshold is None else cfg.threshold
        self.threshold_source = (
            "stage-2 checkpoints' stored thresholds" if cfg.threshold is None else "pipeline config"
        )
        stage1 = [m.spec for m in (self.classifier, self.segmenter) if m is not None]
        self.specs: list[InputSpec] = list(dict.fromkeys(self.stage2.specs + stage1))

    def stage1(self, images: dict[InputSpec, torch.Tensor]) -> Stage1:
        """Score `images` with stage 1's classifier and segmenter and apply the filter."""
        f = self.cfg.filter
        cls = self.classifier.probs(images[self.classifier.spec]) if self.classifier is not None else None
        seg = seg_probs = None
        if self.segmenter is not None:
            seg_probs = self.segmenter.probs(images[self.segmenter.spec])
            flat = seg_probs.flatten(1)
            seg = flat.topk(min(f.top_k, flat.shape[1]), dim=1).values.mean(1)
        return Stage1(cls, seg, seg_probs, filter_margin(cls, seg, f))

    def known(self, s1: Stage1, rows: torch.Tensor | None = None) -> dict[Segmenter, torch.Tensor]:
        """The stage-1 segmenter's probabilities (of `rows` only, when given), so stage 2 need not run it again."""
        if self.segmenter is None:
            return {}
        return {self.segmenter: s1.segmenter_probs if rows is None else s1.segmenter_probs[rows]}

    def filtered_probs(self, images: dict[InputSpec, torch.Tensor], s1: Stage1) -> torch.Tensor:
        """Stage-2 probabilities of the kept records (stage 2 runs on those only), zeros for the others."""
        keep = s1.keep
        b = keep.shape[0]
        out = torch.zeros(b, 1, self.size, self.size)
        if keep.any():
            sub = {spec: t[keep] for spec, t in images.items()}
            out[keep] = self.stage2.probs(sub, self.known(s1, keep))
        return out


def _labels(members: list[Stage2Member]) -> list[str]:
    """Report labels of the stage-2 members, numbered where two would read alike."""
    labels = [m.label for m in members]
    return [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def _values(t: torch.Tensor | None, n: int) -> list[float | None]:
    return [None] * n if t is None else [float(v) for v in t]


# ------------------------------------------------------------------------------------------ run


def run_pipeline(
    pipeline: str | Path | PipelineConfig,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    threshold: float | None = None,
    percentile: float | None = None,
    overlays: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> Prediction:
    """`predict`'s outputs for the pipeline (filtered records get empty masks), plus filter.csv per record."""
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else load_pipeline(pipeline)
    check_threshold_options(threshold, percentile)
    if overlays < 0:
        raise InferenceError("--overlays cannot be negative.")
    dev = resolve_device(device)
    out = prepare_output(out)
    pipe = Pipeline(cfg, dev)
    inputs = Inputs(pipe.specs, data, split, batch_size=batch_size, workers=workers)
    rows: list[tuple] = []

    def probs(batch: Batch) -> torch.Tensor:
        s1 = pipe.stage1(batch.images)
        n = len(batch.record_ids)
        rows.extend(
            zip(
                batch.record_ids,
                _values(s1.classifier, n),
                _values(s1.segmenter, n),
                s1.keep.int().tolist(),
                strict=True,
            )
        )
        return pipe.filtered_probs(batch.images, s1)

    summary = {"command": "pipeline run", "pipeline": cfg.model_dump(mode="json")}
    result = write_predictions(
        probs,
        inputs,
        out,
        stored_threshold=pipe.threshold,
        stored_source=pipe.threshold_source,
        threshold=threshold,
        percentile=percentile,
        min_component=cfg.min_component,
        overlays=overlays,
        progress=progress,
        summary=summary,
    )
    with atomic_path(out / FILTER_FILE) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", "classifier_prob", "segmenter_topk", "kept"])
        w.writerows(rows)
    return result


# ------------------------------------------------------------------------------------------ evaluate


def _dice_at(sweep: ThresholdSweepDice, threshold: float) -> dict[str, float]:
    res = sweep.compute()
    th, curve = res["thresholds"].numpy(), res["curve"].numpy()
    return {
        "dice": float(curve[np.argmin(np.abs(th - threshold))]),
        "dice_best": float(res["dice_best"]),
        "best_threshold": float(res["threshold"]),
    }


def _scores(metric: ClassificationMetrics) -> dict[str, float | None]:
    return {
        k: (None if math.isnan(v) else v) for k, v in ((k, float(t)) for k, t in metric.compute().items())
    }


class FilterCounts(Metric):
    """Stage 1's counts: records, positives, records kept, positives filtered out, negatives let through."""

    full_state_update = False
    NAMES = ("records", "positives", "kept", "positives_filtered_out", "negatives_kept")

    def __init__(self):
        super().__init__()
        for name in self.NAMES:
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, positive: torch.Tensor, keep: torch.Tensor) -> None:
        """Count a batch's records by their label `positive` and the filter's `keep`, both (B,) bool."""
        self.records += len(keep)
        self.positives += positive.sum()
        self.kept += keep.sum()
        self.positives_filtered_out += (positive & ~keep).sum()
        self.negatives_kept += (~positive & keep).sum()

    def compute(self) -> dict[str, int]:
        """The counts by name."""
        return {name: int(getattr(self, name)) for name in self.NAMES}


class PipelineEvaluation:
    """What `evaluate_pipeline` accumulates over a labelled split: `update` once a batch, `report` at the end.

    Dice sweeps of the ensemble without filtering, filtered, with an oracle filter and on positive records;
    of each member on all and on positive records; of the final masks; the three stage-1 scores as
    classifiers of "has contrails"; stage 1's counts; one row per record for per_record.csv.

    Args:
        cfg: the pipeline config.
        pipe: its loaded models.
    """

    CSV_HEADER = ("record_id", "positive", "classifier_prob", "segmenter_topk", "kept", "final_dice")

    def __init__(self, cfg: PipelineConfig, pipe: Pipeline):
        self.cfg, self.pipe = cfg, pipe
        self.threshold = th = pipe.threshold
        grid = sorted({k / 100 for k in range(1, 100)} | {th})

        def sweep(extra: float | None = None) -> ThresholdSweepDice:
            return ThresholdSweepDice(
                thresholds=sorted(set(grid) | ({extra} if extra is not None else set()))
            )

        self.dice = {k: sweep() for k in ("no_filter", "filtered", "oracle", "positives")}
        self.members = [(sweep(m.threshold), sweep(m.threshold)) for m in pipe.stage2.members]
        self.final = ThresholdSweepDice(thresholds=[0.5])  # fed binary masks
        tc, ts = cfg.filter.thresholds
        self.classifier = ClassificationMetrics(threshold=tc) if pipe.classifier is not None else None
        self.segmenter = ClassificationMetrics(threshold=ts) if pipe.segmenter is not None else None
        self.filter = ClassificationMetrics(threshold=0.0)
        self.counts = FilterCounts()
        self.rows: list[tuple] = []

    def update(self, batch: Batch, s1: Stage1, mprobs: list[torch.Tensor]) -> None:
        """One batch: its stage-1 result `s1` and the stage-2 members' probabilities `mprobs`."""
        p = self.pipe.stage2.combine(mprobs).half().float()
        mask = batch.mask
        positive = mask.flatten(1).amax(1) > 0.5
        keep = s1.keep
        self._update_dice(p, mprobs, mask, positive, keep)
        for metric, score in ((self.classifier, s1.classifier), (self.segmenter, s1.segmenter)):
            if metric is not None:
                metric.update(score, positive)
        self.filter.update(s1.margin, positive)
        self._update_final(batch, s1, p * keep[:, None, None, None], positive)
        self.counts.update(positive, keep)

    def _update_dice(self, p, mprobs, mask, positive, keep) -> None:
        self.dice["no_filter"].update(p, mask)
        self.dice["filtered"].update(p * keep[:, None, None, None], mask)
        self.dice["oracle"].update(p * positive[:, None, None, None], mask)
        if positive.any():
            self.dice["positives"].update(p[positive], mask[positive])
        for (on_all, on_pos), mp in zip(self.members, mprobs, strict=True):
            on_all.update(mp, mask)
            if positive.any():
                on_pos.update(mp[positive], mask[positive])

    def _update_final(self, batch: Batch, s1: Stage1, filtered: torch.Tensor, positive: torch.Tensor) -> None:
        """The pipeline's masks as `pipeline run` writes them, scored together and one record at a time."""
        mask, keep = batch.mask, s1.keep
        filtered_np = filtered.numpy()
        truth = mask[:, 0].numpy() > 0.5
        scores = zip(_values(s1.classifier, len(keep)), _values(s1.segmenter, len(keep)), strict=True)
        for i, (rid, (c, sg)) in enumerate(zip(batch.record_ids, scores, strict=True)):
            pred = remove_small_components(
                binarize(filtered_np[i, 0], self.threshold), self.cfg.min_component
            )
            self.final.update(torch.from_numpy(pred)[None].float(), mask[i])
            tp, total = int((pred.astype(bool) & truth[i]).sum()), int(pred.sum() + truth[i].sum())
            self.rows.append(
                (rid, int(positive[i]), c, sg, int(keep[i]), 1.0 if total == 0 else 2 * tp / total)
            )

    def report(self, data: str | Path, split: str) -> dict:
        """The figures `evaluate_pipeline` returns (see there), in the order pipeline_metrics.json keeps."""
        counts = self.counts.compute()
        at = {k: _dice_at(s, self.threshold) for k, s in self.dice.items()}
        if counts["positives"] == 0:
            at["positives"] = None
        return {
            "data": str(data),
            "split": split,
            "records": counts["records"],
            "positives": counts["positives"],
            "threshold": self.threshold,
            "threshold_source": self.pipe.threshold_source,
            "stage1": self._stage1(counts),
            "filtering": {
                "dice_no_filter": at["no_filter"]["dice"],
                "dice_filtered": at["filtered"]["dice"],
                "dice_oracle": at["oracle"]["dice"],
                "loss_from_wrong_filtering": at["oracle"]["dice"] - at["filtered"]["dice"],
                "gain_from_filtering": at["filtered"]["dice"] - at["no_filter"]["dice"],
                "no_filter": at["no_filter"],
                "filtered": at["filtered"],
                "oracle": at["oracle"],
            },
            "stage2": {
                "ensemble": {"all": at["no_filter"], "positives": at["positives"]},
                "members": self._members(bool(counts["positives"])),
            },
            "final": {
                "dice": float(self.final.compute()["dice_at_0.5"]),
                "min_component": self.cfg.min_component,
            },
        }

    def _stage1(self, counts: dict[str, int]) -> dict:
        tc, ts = self.cfg.filter.thresholds
        return {
            "rule": self.cfg.filter.rule,
            "top_k": self.cfg.filter.top_k,
            "classifier_threshold": tc,
            "segmenter_threshold": ts,
            "kept": counts["kept"],
            "positives_filtered_out": counts["positives_filtered_out"],
            "negatives_kept": counts["negatives_kept"],
            "classifier": _scores(self.classifier) if self.classifier else None,
            "segmenter_topk": _scores(self.segmenter) if self.segmenter else None,
            "filter": _scores(self.filter),
        }

    def _members(self, any_positive: bool) -> dict:
        stage2 = self.pipe.stage2
        return {
            label: {
                "threshold": seg.threshold,
                "weight": w,
                "all": _dice_at(a, seg.threshold),
                "positives": _dice_at(p_, seg.threshold) if any_positive else None,
            }
            for label, seg, w, (a, p_) in zip(
                _labels(self.cfg.stage2), stage2.members, stage2.weights, self.members, strict=True
            )
        }

    def write(self, out: Path, report: dict) -> None:
        """Write `report` as the metrics file and the per-record rows as per_record.csv into `out`."""
        atomic_write_json(out / METRICS_FILE, report)
        with atomic_path(out / "per_record.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.CSV_HEADER)
            w.writerows(self.rows)


def evaluate_pipeline(
    pipeline: str | Path | PipelineConfig,
    data: str | Path,
    *,
    split: str = "validation",
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Per-stage figures on a labelled split (all global Dice at the pipeline's threshold unless named *_best).

    stage1: accuracy/AUC of the classifier, the segmenter's top-k score and the combined filter; kept
    records, positives filtered out, negatives let through. filtering: stage-2 Dice without filtering,
    with the filter, with an oracle filter (exactly the records with contrails), and the loss from wrong
    filtering (oracle − filtered). stage2: Dice of each member and of the ensemble on all records and on
    positive records. final: the pipeline's output (filtered, small components removed).
    The ensemble's probabilities are rounded to float16 first, as `pipeline run` writes them, so the
    final Dice is that of `pipeline run`'s masks (up to last-bit differences between batch sizes).
    """
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else load_pipeline(pipeline)
    dev = resolve_device(device)
    if out is not None:
        out = prepare_output(out, ())
    pipe = Pipeline(cfg, dev)
    inputs = Inputs(pipe.specs, data, split, batch_size=batch_size, workers=workers)
    if not inputs.has_mask:
        raise DataError(f"split '{split}' of {data} has no masks to evaluate the pipeline against.")
    evaluation = PipelineEvaluation(cfg, pipe)
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"evaluating pipeline on {split}", total=len(inputs))
        for batch in inputs.batches():
            s1 = pipe.stage1(batch.images)
            evaluation.update(batch, s1, pipe.stage2.member_probs(batch.images, pipe.known(s1)))
            bar.advance(task, len(batch.record_ids))
    report = evaluation.report(data, split)
    if out is not None:
        evaluation.write(out, report)
    return report
