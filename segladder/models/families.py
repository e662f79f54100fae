"""Model families on any timm encoder: smp 2D segmenters, the 2.5D UNet, classifiers, seg + cls.

2D: a segmentation-models-pytorch architecture on the labelled frame, or on all frames stacked as
channels (frame-major: R0 G0 B0 R1 G1 B1 ..., so that timm's channel adaptation of pretrained weights
gives every frame the RGB filters). 2.5D (the 3rd place's design, knshnb/kaggle-contrails-3rd-place): a
shared 2D encoder on every frame,
Conv3d blocks mixing time at every skip level, the labelled frame's fused map into a UNet decoder.

Segmenters with an auxiliary classification head return the mask logits from `model(x)` like every
other segmenter; `model(x, aux=True)` (or `model.forward_with_aux(x)`) returns
`{"mask": (B, 1, H, W), "cls": (B, 1)}` logits, so that a loss can apply the mask term to positive
images only (the classify-then-segment pipeline's segmenter, docs/background.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import timm
import torch
import torch.nn.functional as F
from torch import nn

from segladder.models.base import SequenceModel
from segladder.models.blocks import ClassificationHead, Conv3dCollapse, Conv3dFuser
from segladder.models.encoders import Encoder, check_timm_name, load_pretrained
from segladder.models.registry import ModelError, register
from segladder.registry import suggest

Pretrained = bool | str | os.PathLike


def _frames_as_channels_check(frames_as_channels: bool, num_frames: int | None) -> None:
    if frames_as_channels and num_frames is None:
        raise ModelError("frames_as_channels=True needs num_frames (the T the model is built for)")


class _AuxMixin:
    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"mask": mask logits, "cls": image-level logits}; goes through __call__ so compile applies."""
        return self(x, aux=True)


class SMPSegmenter(_AuxMixin, SequenceModel):
    """A segmentation-models-pytorch architecture with a timm encoder (`tu-<encoder>` in smp terms).

    smp is always asked for `encoder_weights=None`; pretrained weights go through our offline loader.
    `decoder` holds extra options of the smp architecture (e.g. {"decoder_channels": [128, 64, 32, 16, 8]}).

    Args:
        arch: the smp architecture (Unet, UnetPlusPlus, FPN, ...).
        encoder: a timm model name.
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (the encoder's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        frames_as_channels: stack all `num_frames` frames as channels instead of reading the labelled one.
        num_frames: T, required with `frames_as_channels`.
        aux_classifier: add smp's classification head (`model(x, aux=True)`).
        cls_dropout: dropout of that head.
        decoder: extra options of the smp architecture.
    """

    def __init__(
        self,
        arch: str = "Unet",
        *,
        encoder: str = "resnet18",
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        frames_as_channels: bool = False,
        num_frames: int | None = None,
        aux_classifier: bool = False,
        cls_dropout: float = 0.0,
        decoder: dict | None = None,
    ):
        import segmentation_models_pytorch as smp

        _frames_as_channels_check(frames_as_channels, num_frames)
        super().__init__(in_chans=in_chans, frame_index=frame_index, num_frames=num_frames)
        archs = {a.__name__.lower(): a.__name__ for a in smp.MODEL_ARCHITECTURES_MAPPING.values()}
        if arch.lower() not in archs:
            raise ModelError(
                f"unknown smp architecture {arch!r}.{suggest(arch, list(archs.values()))} "
                f"Known: {', '.join(archs.values())}."
            )
        self.arch = archs[arch.lower()]
        encoder = encoder.removeprefix("tu-")
        check_timm_name(encoder)
        self.frames_as_channels = frames_as_channels
        net_chans = in_chans * num_frames if frames_as_channels else in_chans
        aux = {"classes": 1, "dropout": cls_dropout} if aux_classifier else None
        try:
            self.net = smp.create_model(
                self.arch,
                encoder_name=f"tu-{encoder}",
                encoder_weights=None,
                in_channels=net_chans,
                classes=num_classes,
                aux_params=aux,
                **(decoder or {}),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(
                f"smp {self.arch} with encoder {encoder!r} and options {decoder or {}}: {exc}"
            ) from exc
        self.aux_classifier = aux_classifier
        self.size_multiple = self.net.encoder.output_stride
        self.encoder_report = load_pretrained(self.net.encoder.model, encoder, pretrained, in_chans=net_chans)

    def forward(self, x: torch.Tensor, aux: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits (B, num_classes, H, W); with `aux`, `{"mask": ..., "cls": ...}`."""
        if self.frames_as_channels:
            seq = self.sequence(x)
            image = seq.transpose(1, 2).flatten(1, 2)
        else:
            image = self.labelled_frame(x)
        out = self.net(image)
        if not self.aux_classifier:
            if aux:
                raise ModelError(
                    f"{self.arch} was built without a classification head (aux_classifier=False)"
                )
            return out
        mask, label = out
        return {"mask": mask, "cls": label} if aux else mask


_SMP_NAMED = {
    "Unet2D": ("Unet", "UNet"),
    "UnetPlusPlus2D": ("UnetPlusPlus", "UNet++ (nested skips)"),
    "FPN2D": ("FPN", "Feature Pyramid Network"),
    "DeepLabV3Plus2D": ("DeepLabV3Plus", "DeepLabV3+ (atrous, output stride 16)"),
    "MAnet2D": ("MAnet", "Multi-scale attention UNet"),
}
for _name, (_arch, _title) in _SMP_NAMED.items():
    register(
        _name,
        description=f"smp {_title} on any timm encoder (resnet18)",
        uses_time=False,
        input_desc="labelled frame or frames as channels",
    )(partial(SMPSegmenter, _arch))

register(
    "SMP2D",
    description="any smp architecture (arch=...) on any timm encoder",
    uses_time=False,
    input_desc="labelled frame or frames as channels",
)(SMPSegmenter)

register(
    "SegCls2D",
    description="smp architecture + auxiliary contrail/no-contrail head (classify-then-segment)",
    uses_time=False,
    input_desc="labelled frame or frames as channels",
)(partial(SMPSegmenter, aux_classifier=True))


class Unet25D(_AuxMixin, SequenceModel):
    """2.5D UNet, the 3rd place's design (knshnb/kaggle-contrails-3rd-place `src/nn.py`, `SegmentorMid25d`).

    A shared 2D encoder on frames t−2..t0, Conv3d fusion at every skip level, an smp UNet decoder, a hard-mask
    head beside the soft-label head.

    At every encoder level two (Conv3d (2, k, k), no temporal padding, replicate spatial padding,
    BatchNorm3d, LeakyReLU) blocks take the three frames ending at `frame_index` to one map; where the
    input holds fewer frames before it, the earliest is repeated.

    The frames are resized to `input_size`² first (the 3rd place trained at 512² on 256² records) and
    the logits back to the input size; `input_size=None` keeps the input size. `model(x)` returns the
    soft-label head's logits (what the 3rd place predicted with); `model(x, aux=True)` returns
    `{"mask": ..., "hard": ...}` (and `"cls"` with `aux_classifier=True`). With resnet18: 27.0 M parameters.

    `decoder_ch_coef` multiplies every decoder width, as the 3rd place's `decoder_ch_coef`: their 2.5D
    configs all set 8 (with resnet18: 115.0 M parameters, configs/unet25d_wide.yaml); 1 is their default.

    Args:
        encoder: a timm model name.
        in_chans: channels per frame.
        num_classes: logit channels per head.
        pretrained: False, True or "auto" (the encoder's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame, the last of the three fused.
        num_frames: the only T accepted (None: any).
        kernel_size: k of the (2, k, k) fusion convs.
        input_size: the side the frames are resized to (None: kept).
        decoder_channels: decoder widths, coarsest first.
        decoder_ch_coef: multiplies every decoder width.
        hard_head: add the hard-mask head.
        aux_classifier: add a classification head on the deepest map.
        cls_dropout: dropout of that head.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        *,
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        num_frames: int | None = None,
        kernel_size: int = 3,
        input_size: int | None = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_ch_coef: int = 1,
        hard_head: bool = True,
        aux_classifier: bool = False,
        cls_dropout: float = 0.0,
    ):
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        super().__init__(in_chans=in_chans, frame_index=frame_index, num_frames=num_frames)
        self.encoder = Encoder(encoder, in_chans=in_chans, pretrained=pretrained)
        stride = max(self.encoder.reductions)
        if input_size is not None and input_size % stride:
            raise ModelError(f"input_size={input_size} must be divisible by the encoder's stride {stride}")
        self.input_size = input_size
        self.size_multiple = 1 if input_size else stride
        channels = self.encoder.channels
        self.fusers = nn.ModuleList(Conv3dCollapse(c, kernel_size) for c in channels)
        if len(decoder_channels) < len(channels):
            raise ModelError(
                f"decoder_channels needs {len(channels)} entries for {encoder}, got {tuple(decoder_channels)}"
            )
        if decoder_ch_coef < 1:
            raise ModelError(f"decoder_ch_coef must be a positive integer, got {decoder_ch_coef}")
        widths = [w * decoder_ch_coef for w in list(decoder_channels)[: len(channels)]]
        # smp's decoder takes the input as its first "feature": only its size is used (the last block's target).
        self.decoder = UnetDecoder([in_chans, *channels], widths, n_blocks=len(channels))
        self.num_classes = num_classes
        self.hard_head = hard_head
        # One 3×3 conv for both heads, the hard mask's channels first, as in the 3rd place's code.
        self.head = SegmentationHead(widths[-1], num_classes * (2 if hard_head else 1), kernel_size=3)
        self.aux_classifier = aux_classifier
        self.cls_head = ClassificationHead(channels[-1], 1, cls_dropout) if aux_classifier else None

    def window(self, seq: torch.Tensor) -> torch.Tensor:
        """The frames the fusion reads: t−2..t0 ending at `frame_index`, the earliest repeated where missing."""
        t0 = self.frame_index % seq.shape[2]
        index = torch.tensor([max(t0 - 2, 0), max(t0 - 1, 0), t0], device=seq.device)
        return seq.index_select(2, index)

    def forward(self, x: torch.Tensor, aux: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """The soft-label head's logits; with `aux`, a dict with the hard mask's (and the classifier's)."""
        seq = self.window(self.sequence(x))
        b, c, t, h, w = seq.shape
        frames = seq.transpose(1, 2).flatten(0, 1)
        if self.input_size and (h, w) != (self.input_size, self.input_size):
            frames = F.interpolate(frames, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        fused = [fuse(f, t) for fuse, f in zip(self.fusers, self.encoder(frames), strict=True)]
        labelled = frames.view(b, t, c, *frames.shape[-2:])[:, -1]
        logits = self.resize_to(self.head(self.decoder([labelled, *fused])), (h, w))
        mask = logits[:, self.num_classes :] if self.hard_head else logits
        if not aux:
            return mask
        out = {"mask": mask}
        if self.hard_head:
            out["hard"] = logits[:, : self.num_classes]
        if self.cls_head is not None:
            out["cls"] = self.cls_head(fused[-1])
        if len(out) == 1:
            raise ModelError(
                "Unet25D was built without a hard-mask or classification head "
                "(hard_head=False, aux_classifier=False)"
            )
        return out


register(
    "Unet25D",
    description="2.5D UNet: shared encoder on frames t−2..t0, Conv3d fusion per level, 2 heads (3rd place)",
    uses_time=True,
    input_desc="frames labelled−2..labelled",
)(Unet25D)

register(
    "Unet25DCls",
    description="2.5D UNet + auxiliary contrail/no-contrail head",
    uses_time=True,
    input_desc="frames labelled−2..labelled",
)(partial(Unet25D, aux_classifier=True))


@register(
    "Classifier",
    description="timm backbone, contrail present or not (classify-then-segment stage 1)",
    uses_time=False,
    input_desc="labelled frame or frames as channels",
    output="label",
)
class Classifier(SequenceModel):
    """Image-level contrail/no-contrail logits (B, 1) from any timm backbone.

    Args:
        encoder: a timm model name.
        in_chans: channels per frame.
        pretrained: False, True or "auto" (the encoder's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        frames_as_channels: stack all `num_frames` frames as channels instead of reading the labelled one.
        num_frames: T, required with `frames_as_channels`.
        dropout: dropout before the linear layer.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        *,
        in_chans: int = 3,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        frames_as_channels: bool = False,
        num_frames: int | None = None,
        dropout: float = 0.0,
    ):
        _frames_as_channels_check(frames_as_channels, num_frames)
        super().__init__(in_chans=in_chans, frame_index=frame_index, num_frames=num_frames, size_multiple=1)
        check_timm_name(encoder)
        self.frames_as_channels = frames_as_channels
        net_chans = in_chans * num_frames if frames_as_channels else in_chans
        self.net = timm.create_model(
            encoder, pretrained=False, num_classes=1, in_chans=net_chans, drop_rate=dropout
        )
        head = timm.models.get_pretrained_cfg(encoder).classifier
        self.weights_report = load_pretrained(
            self.net,
            encoder,
            pretrained,
            in_chans=net_chans,
            new_head=(head,) if isinstance(head, str) else tuple(head),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1) of "has contrail"."""
        image = (
            self.sequence(x).transpose(1, 2).flatten(1, 2)
            if self.frames_as_channels
            else self.labelled_frame(x)
        )
        return self.net(image)


@register(
    "Classifier25D",
    description="2.5D classifier: shared encoder per frame, Conv3d fusion of the last level",
    uses_time=True,
    input_desc="all frames",
    output="label",
)
class Classifier25D(SequenceModel):
    """Contrail/no-contrail logits (B, 1): Conv3d blocks mix the deepest maps over time.

    Six blocks did best in the classify-then-segment experiments.

    Args:
        encoder: a timm model name, run on every frame.
        in_chans: channels per frame.
        pretrained: False, True or "auto" (the encoder's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        num_frames: the only T accepted (None: any).
        num_3d_layers: residual 3D blocks over the deepest map.
        dropout: dropout before the linear layer.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        *,
        in_chans: int = 3,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        num_frames: int | None = None,
        num_3d_layers: int = 6,
        dropout: float = 0.0,
    ):
        super().__init__(in_chans=in_chans, frame_index=frame_index, num_frames=num_frames, size_multiple=1)
        self.encoder = Encoder(encoder, in_chans=in_chans, pretrained=pretrained)
        channels = self.encoder.channels[-1]
        self.fuser = Conv3dFuser(channels, num_3d_layers, frame_index)
        self.head = ClassificationHead(channels, 1, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1) of "has contrail"."""
        seq = self.sequence(x)
        feat = self.encoder(seq.transpose(1, 2).flatten(0, 1))[-1]
        return self.head(self.fuser(feat, seq.shape[2]))
