"""The debugging ladder: four ResNet-18 models, each adding one idea to the one before.

The rungs are the 2nd-place team's ResNet-18 baselines (Lunran/2nd-place-contrails `src_inference1/`).

SimplerFCN (encoder + 1×1 convs + bilinear) -> Simple (+ learnable transposed-conv decoder) -> U (+ UNet
skips and FPN, labelled frame only) -> ULSTM (+ per-pixel LSTM over time at the two coarsest levels).
CoaT_ULSTM (coat.py) is ULSTM with the 2nd-place CoaT encoder. Every rung upsamples the input ×2
(bicubic, clipped to [0, 1]) first, as the original rungs and the 2nd-place solution do, and returns logits at
the input resolution.
"""

from __future__ import annotations

import os

import timm
import torch
from torch import nn

from segladder.models.base import SequenceModel
from segladder.models.blocks import Preprocess, TemporalLSTM, UNetFPNDecoder
from segladder.models.encoders import Encoder
from segladder.models.registry import ModelError, register

Pretrained = bool | str | os.PathLike
# The original rungs use torchvision's ImageNet ResNet-18; timm's tag for those weights, so that
# pretrained=True also finds a torchvision download (resnet18-f37072fd.pth) in the torch hub cache.
RESNET18 = "resnet18.tv_in1k"


# Decoder widths of the 2nd-place model, kept by the original ResNet-18 rungs ("same structure, only the
# encoder differs"): ResNet18_U 17.02 M, ResNet18_ULSTM 19.65 M parameters.
DECODER_CHANNELS = (384, 192, 96)
# A third of those, for CPU-sized runs (ResNet18_U 13.16 M, ResNet18_ULSTM 15.78 M, which is where the
# original code's rough docstring estimates, "~13M / ~15M", land); `decoder_channels=SLIM_DECODER_CHANNELS`.
SLIM_DECODER_CHANNELS = (128, 64, 32)


def make_preprocess(encoder: str, in_chans: int, upsample: int, normalize: bool) -> Preprocess:
    """Preprocess with the encoder's pretraining mean/std (averaged over RGB when in_chans != 3)."""
    if not normalize:
        return Preprocess(scale=upsample)
    cfg = timm.models.get_pretrained_cfg(encoder)
    mean, std = cfg.mean, cfg.std
    if in_chans != len(mean):
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    return Preprocess(scale=upsample, mean=mean, std=std)


def _widths(decoder_channels) -> tuple[int, int, int]:
    """Three decoder widths (finest last), each even: the pixel shuffle halves a block's input channels."""
    widths = tuple(int(c) for c in decoder_channels)
    if len(widths) != 3 or any(c < 2 or c % 2 for c in widths):
        raise ModelError(
            f"decoder_channels needs three even widths, e.g. {DECODER_CHANNELS} "
            f"(the original) or {SLIM_DECODER_CHANNELS} (slim); got {tuple(decoder_channels)}"
        )
    return widths


def input_multiple(reduction: int, upsample: int) -> int:
    """What H and W must divide by so that the coarsest encoder map has an integer size."""
    return max(reduction // upsample, 1)


@register(
    "ResNet18_SimplerFCN",
    description="ResNet-18, 1×1 convs, bilinear upsampling (ladder rung 1)",
    uses_time=False,
    input_desc="labelled frame",
)
class ResNet18_SimplerFCN(SequenceModel):
    """The smallest model that can learn anything: checks the data and the training loop.

    Args:
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (torchvision's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        upsample: the frame's upsampling factor before the encoder.
        normalize: normalise with ImageNet's mean and std.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        upsample: int = 2,
        normalize: bool = True,
    ):
        super().__init__(
            in_chans=in_chans, frame_index=frame_index, size_multiple=input_multiple(32, upsample)
        )
        self.prep = make_preprocess(RESNET18, in_chans, upsample, normalize)
        self.encoder = Encoder(RESNET18, in_chans=in_chans, out_indices=(4,), pretrained=pretrained)
        self.reduce = nn.Sequential(
            nn.Conv2d(512, 128, 1),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 32, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        self.final = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) of the labelled frame."""
        frame = self.labelled_frame(x)
        feat = self.encoder(self.prep(frame))[-1]
        # The original upsamples before the last 1×1 conv; both are linear and the bilinear weights sum to
        # one, so convolving first gives the same logits for 1/32² of the work.
        return self.resize_to(self.final(self.reduce(feat)), frame.shape[-2:])


@register(
    "ResNet18_Simple",
    description="ResNet-18, transposed-conv decoder, no skips (ladder rung 2)",
    uses_time=False,
    input_desc="labelled frame",
)
class ResNet18_Simple(SequenceModel):
    """Adds a learnable decoder: four ×2 transposed convs (512 -> 32 channels) and a 1×1 conv.

    Args:
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (torchvision's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        upsample: the frame's upsampling factor before the encoder.
        normalize: normalise with ImageNet's mean and std.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        upsample: int = 2,
        normalize: bool = True,
    ):
        super().__init__(
            in_chans=in_chans, frame_index=frame_index, size_multiple=input_multiple(32, upsample)
        )
        self.prep = make_preprocess(RESNET18, in_chans, upsample, normalize)
        self.encoder = Encoder(RESNET18, in_chans=in_chans, out_indices=(4,), pretrained=pretrained)
        layers: list[nn.Module] = []
        for cin, cout in [(512, 256), (256, 128), (128, 64), (64, 32)]:
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.decoder = nn.Sequential(*layers, nn.Conv2d(32, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) of the labelled frame."""
        frame = self.labelled_frame(x)
        feat = self.encoder(self.prep(frame))[-1]
        return self.resize_to(self.decoder(feat), frame.shape[-2:])


@register(
    "ResNet18_U",
    description="ResNet-18, pixel-shuffle UNet + FPN decoder (ladder rung 3)",
    uses_time=False,
    input_desc="labelled frame",
)
class ResNet18_U(SequenceModel):
    """Adds UNet skips and an FPN (the 2nd-place decoder) on the labelled frame alone.

    Args:
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (torchvision's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        upsample: the frame's upsampling factor before the encoder.
        normalize: normalise with ImageNet's mean and std.
        ps: dropout before the decoder's up-block.
        decoder_channels: the three UNet block widths, coarsest first, each even.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        upsample: int = 2,
        normalize: bool = True,
        ps: float = 0.0,
        decoder_channels: tuple[int, int, int] = DECODER_CHANNELS,
    ):
        super().__init__(
            in_chans=in_chans, frame_index=frame_index, size_multiple=input_multiple(32, upsample)
        )
        self.prep = make_preprocess(RESNET18, in_chans, upsample, normalize)
        self.encoder = Encoder(RESNET18, in_chans=in_chans, out_indices=(1, 2, 3, 4), pretrained=pretrained)
        self.decoder = UNetFPNDecoder(
            self.encoder.channels, _widths(decoder_channels), num_classes=num_classes, ps=ps
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) of the labelled frame."""
        frame = self.labelled_frame(x)
        feats = self.encoder(self.prep(frame))
        return self.resize_to(self.decoder(feats), frame.shape[-2:])


class ULSTM(SequenceModel):
    """Encoder on every frame; a per-pixel LSTM over time at the two coarsest levels; UNet + FPN decoder.

    Only frames 0..frame_index are encoded: the LSTM runs forward in time and its output is taken at
    the labelled frame, so later frames could not change it. The two fine levels take the labelled
    frame's features, as in the 2nd-place model: an LSTM on those large maps would cost the most.

    Args:
        encoder: a timm model name.
        out_indices: the four encoder levels used.
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (the encoder's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        upsample: the frames' upsampling factor before the encoder.
        normalize: normalise with the encoder's ImageNet mean and std.
        ps: dropout before the decoder's up-block.
        decoder_channels: the three UNet block widths, coarsest first, each even.
    """

    def __init__(
        self,
        encoder: str,
        out_indices: tuple[int, ...],
        *,
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        upsample: int = 2,
        normalize: bool = True,
        ps: float = 0.0,
        decoder_channels: tuple[int, int, int] = DECODER_CHANNELS,
    ):
        super().__init__(in_chans=in_chans, frame_index=frame_index)
        self.prep = make_preprocess(encoder, in_chans, upsample, normalize)
        self.encoder = Encoder(encoder, in_chans=in_chans, out_indices=out_indices, pretrained=pretrained)
        self.size_multiple = input_multiple(self.encoder.reductions[-1], upsample)
        c = self.encoder.channels
        self.lstm = nn.ModuleList([TemporalLSTM(c[2]), TemporalLSTM(c[3])])
        self.decoder = UNetFPNDecoder(c, _widths(decoder_channels), num_classes=num_classes, ps=ps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the labelled frame, from frames 0..frame_index."""
        seq = self.frames_until_label(x)
        b, _, t, h, w = seq.shape
        frames = seq.transpose(1, 2).flatten(0, 1)
        feats = [f.view(b, t, *f.shape[1:]) for f in self.encoder(self.prep(frames))]
        fused = [feats[0][:, -1], feats[1][:, -1], self.lstm[0](feats[2]), self.lstm[1](feats[3])]
        return self.resize_to(self.decoder(fused), (h, w))


@register(
    "ResNet18_ULSTM",
    description="ResNet-18, LSTM over time at the 2 coarsest levels, UNet + FPN (ladder rung 4)",
    uses_time=True,
    input_desc="frames 0..labelled",
)
class ResNet18_ULSTM(ULSTM):
    """ResNet18_U plus time: the CoaT_ULSTM design on a ResNet-18.

    Args:
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (torchvision's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        upsample: the frames' upsampling factor before the encoder.
        normalize: normalise with ImageNet's mean and std.
        ps: dropout before the decoder's up-block.
        decoder_channels: the three UNet block widths, coarsest first, each even.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        upsample: int = 2,
        normalize: bool = True,
        ps: float = 0.0,
        decoder_channels: tuple[int, int, int] = DECODER_CHANNELS,
    ):
        super().__init__(
            RESNET18,
            (1, 2, 3, 4),
            in_chans=in_chans,
            num_classes=num_classes,
            pretrained=pretrained,
            frame_index=frame_index,
            upsample=upsample,
            normalize=normalize,
            ps=ps,
            decoder_channels=decoder_channels,
        )
