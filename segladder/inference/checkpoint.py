"""Loading a training checkpoint as a plain model (no Trainer), safely (`weights_only=True`)."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from segladder.config import ExperimentConfig, MovedKeyWarning
from segladder.inference.box_gate import EdgeGate, gate_from_checkpoint_section
from segladder.inference.errors import CheckpointError

CHECKPOINT_KEY = "segladder"  # the section of a Lightning checkpoint that segladder writes
CHECKPOINT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to predict: its model (eval mode), config, threshold and task."""

    model: nn.Module
    config: ExperimentConfig
    threshold: float
    task: str
    path: Path
    stats: dict | None = (
        None  # training-split channel statistics, so raw-data inference normalises as training did
    )
    # Box checkpoints: the do-no-harm gate chosen on validation (None: trained before the gate existed).
    box_gate: EdgeGate | None = None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the config stored in the checkpoint and load its weights."""
    from segladder.models import create

    path = Path(path)
    ckpt = read_checkpoint_file(path, map_location)
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(_not_ours(path, f"a torch file without a '{CHECKPOINT_KEY}' section"))
    if meta.get("version") not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint version {meta.get('version')}, this segladder reads {SUPPORTED_VERSIONS}."
        )
    try:
        with warnings.catch_warnings():
            # A checkpoint written before a key moved: nothing for its user to rewrite.
            warnings.simplefilter("ignore", MovedKeyWarning)
            cfg = ExperimentConfig.model_validate(meta.get("config"))
    except ValidationError as exc:
        raise CheckpointError(
            f"{path}: its stored config does not validate ({exc.error_count()} problem(s), first: "
            f"{'.'.join(map(str, exc.errors()[0]['loc'])) or 'config'}: {exc.errors()[0]['msg']}); "
            "it was written by another segladder version: retrain, or load it with that version."
        ) from None
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    kwargs = {**cfg.model.kwargs, **_legacy_decoder(cfg, state)}
    if "pretrained" in kwargs:  # the checkpoint holds every weight; do not look for ImageNet ones
        kwargs["pretrained"] = False
    model = create(cfg.model.name, **kwargs)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {cfg.model.name}{kwargs or ''}: "
            f"{str(exc).strip().splitlines()[-1].strip()}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {cfg.model.name}: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    model.eval()
    return LoadedCheckpoint(
        model,
        cfg,
        float(meta.get("threshold", 0.5)),
        meta.get("task", "segmentation"),
        path,
        meta.get("stats"),
        gate_from_checkpoint_section(meta),
    )


def input_mismatches(a: ExperimentConfig, b: ExperimentConfig) -> list[tuple[str, object, object]]:
    """The input keys on which two models' configs differ, as (key, a's value, b's value).

    The keys are the image size, the frames, the channels and the model's input channels. Two models can be
    distilled or compared only when this is empty.
    """
    keys = {
        "data.image_size": (a.data.image_size, b.data.image_size),
        "data.frames": (list(a.data.frames), list(b.data.frames)),
        "data.channels": (list(a.data.channels), list(b.data.channels)),
        "model.in_chans": (a.model.kwargs.get("in_chans"), b.model.kwargs.get("in_chans")),
    }
    # A config that does not name in_chans (it follows from channels and frames) is compared on those alone.
    return [(k, va, vb) for k, (va, vb) in keys.items() if va != vb and None not in (va, vb)]


_FIX = "give a best.ckpt or last.ckpt from a run directory's checkpoints/ folder"
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"  # torch.save's zip format; its legacy format starts with a pickle


def _not_ours(path: Path, what: str) -> str:
    return f"{path} is not a segladder checkpoint ({what}); {_FIX}."


def sniff_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint at all, from its first bytes (None: it may be one).

    Checked before torch reads it: torch's unpickler answers a text file or a CSV with a KeyError or an
    IndexError, and a PNG with advice to load untrusted code (weights_only=False).
    """
    if path.is_dir():
        inner = path / "checkpoints" / "best.ckpt"
        return "a folder" + (f"; its checkpoint is {inner}" if inner.is_file() else "")
    if not path.is_file():
        return "not a regular file"
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        return "an empty file"
    if head.startswith((_ZIP, _PICKLE)):
        return None
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8"):
        return "a JPEG image"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array"
    if path.suffix == ".onnx" or head.startswith(b"\x08"):
        return "perhaps an ONNX model: give it to `predict --onnx`"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"starts with bytes {head[:4]!r}, not a torch file"


def read_checkpoint_file(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """`torch.load(path, weights_only=True)`, each way it can fail as one `CheckpointError` naming the file."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_FIX}.")
    why = sniff_checkpoint(path)
    if why is not None:
        raise CheckpointError(_not_ours(path, why))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, i.e. running whatever the file holds: not repeated.
        raise CheckpointError(
            _not_ours(
                path,
                "refused to load: it holds Python objects other than tensors and plain data, which could run code",
            )
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(
            _not_ours(path, f"{path.stat().st_size} bytes that torch cannot read: {first}")
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(_not_ours(path, f"a torch file holding a {type(ckpt).__name__}"))
    return ckpt


def _legacy_decoder(cfg: ExperimentConfig, state: dict[str, torch.Tensor]) -> dict:
    """decoder_channels of a ResNet18_U/ULSTM checkpoint written while the slim widths were the default.

    Their stored configs do not name the widths; the first decoder conv's output channels tell them.
    """
    from segladder.models.ladder import SLIM_DECODER_CHANNELS

    conv = state.get("decoder.dec3.conv1.0.weight")
    if (
        cfg.model.name in ("ResNet18_U", "ResNet18_ULSTM")
        and "decoder_channels" not in cfg.model.kwargs
        and conv is not None
        and conv.shape[0] == SLIM_DECODER_CHANNELS[0]
    ):
        return {"decoder_channels": SLIM_DECODER_CHANNELS}
    return {}
