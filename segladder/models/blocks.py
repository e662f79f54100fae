"""Building blocks shared by the models: pixel-shuffle UNet block, FPN, temporal LSTM, Conv3d fuser, heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from segladder.models.registry import ModelError


@torch.no_grad()
def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init for a conv feeding PixelShuffle(scale).

    PixelShuffle takes each group of scale² consecutive channels to one output channel; starting the
    group's kernels equal makes the layer begin as nearest-neighbour upsampling, without the
    checkerboard artefacts of a random init (Aitken et al. 2017).
    """
    sub = weight.new_zeros(weight.shape[0] // scale**2, *weight.shape[1:])
    nn.init.kaiming_normal_(sub)
    weight.copy_(sub.repeat_interleave(scale**2, dim=0))


class Blur(nn.Module):
    """2×2 average of each pixel with its upper-left neighbours, edges replicated (fastai's shuffle blur).

    It smooths what is left of the pixel shuffle's grid pattern. The edge is replicated with torch.cat
    rather than ReplicationPad2d, whose backward fails a stride check under torch.compile (torch 2.14).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur `x` (B, C, H, W), keeping its size."""
        x = torch.cat([x[:, :, :1], x], dim=2)
        x = torch.cat([x[:, :, :, :1], x], dim=3)
        return F.avg_pool2d(x, 2, stride=1)


class PixelShuffleUp(nn.Sequential):
    """×2 upsampling: 1×1 conv, LayerNorm2d, GELU, pixel shuffle, optional blur (fastai's PixelShuffle_ICNR).

    Args:
        in_channels: channels in.
        out_channels: channels out, at twice the resolution.
        blur: add the `Blur` after the shuffle.
    """

    def __init__(self, in_channels: int, out_channels: int, blur: bool = False):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels * 4, 1),
            LayerNorm2d(out_channels * 4),
            nn.GELU(),
            nn.PixelShuffle(2),
        ]
        icnr_(layers[0].weight)
        if blur:
            layers.append(Blur())
        super().__init__(*layers)


class UnetBlock(nn.Module):
    """Upsample the coarse map ×2 by pixel shuffle, join the normalised skip, two 3×3 convs with GELU.

    Args:
        up_channels: channels of the coarse map (halved by the upsampling).
        skip_channels: channels of the skip.
        out_channels: channels out.
    """

    def __init__(self, up_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = PixelShuffleUp(up_channels, up_channels // 2)
        self.skip_norm = LayerNorm2d(skip_channels)
        self.act = nn.GELU()
        self.conv1 = nn.Sequential(
            nn.Conv2d(up_channels // 2 + skip_channels, out_channels, 3, padding=1), nn.GELU()
        )
        self.conv2 = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GELU())

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The block's output at the skip's resolution, from the coarse map `up` and the skip `skip`."""
        x = self.act(torch.cat([self.up(up), self.skip_norm(skip)], dim=1))
        return self.conv2(self.conv1(x))


class FPN(nn.Module):
    """Bring coarse decoder levels to the finest one's size and concatenate them with it.

    Args:
        in_channels: channels of each coarse level.
        out_channels: channels each coarse level is reduced to before the concatenation.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, out_channels * 2, 3, padding=1),
                nn.GELU(),
                LayerNorm2d(out_channels * 2),
                nn.Conv2d(out_channels * 2, out_channels, 3, padding=1),
            )
            for c in in_channels
        )

    def forward(self, coarse: Sequence[torch.Tensor], finest: torch.Tensor) -> torch.Tensor:
        """The `coarse` maps, resized to `finest`'s size, concatenated with it along the channels."""
        size = finest.shape[-2:]
        maps = [
            F.interpolate(conv(x), size=size, mode="bilinear")
            for conv, x in zip(self.convs, coarse, strict=True)
        ]
        return torch.cat([*maps, finest], dim=1)


class UpBlock(nn.Module):
    """Final ×2 up-block: pixel shuffle to a quarter of the channels, 3×3 conv, 1×1 conv to the logits.

    Args:
        in_channels: channels in.
        out_channels: logits out.
        blur: add the `Blur` after the shuffle.
    """

    def __init__(self, in_channels: int, out_channels: int, blur: bool = True):
        super().__init__()
        mid = in_channels // 4
        self.up = PixelShuffleUp(in_channels, mid, blur=blur)
        self.conv = nn.Sequential(
            nn.Conv2d(mid, mid, 3, padding=1),
            LayerNorm2d(mid) if mid >= 16 else nn.Identity(),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at twice `x`'s resolution."""
        return self.conv(self.up(x))


class UNetFPNDecoder(nn.Module):
    """The 2nd-place decoder: three pixel-shuffle UNet blocks, an FPN over them, an up-block to logits.

    Takes four maps at strides s, 2s, 4s, 8s (finest first) and returns logits at stride s/2.

    Args:
        encoder_channels: channels of the four encoder maps, finest first.
        decoder_channels: widths of the three UNet blocks, coarsest first.
        fpn_channels: channels each coarse level is reduced to in the FPN.
        num_classes: logit channels out.
        ps: dropout (Dropout2d) before the up-block.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (384, 192, 96),
        fpn_channels: int = 32,
        num_classes: int = 1,
        ps: float = 0.0,
    ):
        super().__init__()
        c1, c2, c3, c4 = encoder_channels
        d3, d2, d1 = decoder_channels
        self.dec3 = UnetBlock(c4, c3, d3)
        self.dec2 = UnetBlock(d3, c2, d2)
        self.dec1 = UnetBlock(d2, c1, d1)
        self.fpn = FPN([c4, d3, d2], fpn_channels)
        self.drop = nn.Dropout2d(ps)
        self.head = UpBlock(d1 + 3 * fpn_channels, num_classes, blur=True)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits at half the finest stride, from the four encoder maps `feats` (finest first)."""
        f1, f2, f3, f4 = feats
        d3 = self.dec3(f4, f3)
        d2 = self.dec2(d3, f2)
        d1 = self.dec1(d2, f1)
        return self.head(self.drop(self.fpn([f4, d3, d2], d1)))


class TemporalLSTM(nn.Module):
    """A per-pixel LSTM over time: (B, T, C, H, W) -> the last step's hidden state (B, C, H, W).

    Written out step by step instead of calling nn.LSTM because torch.compile cannot trace nn.LSTM
    (it falls back to eager with a graph break); T is a handful of frames, so the loop is short.
    Same maths and init as a one-layer nn.LSTM, with its two redundant biases merged into one.

    Args:
        channels: C, both the input's channels and the hidden state's.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.input_gates = nn.Linear(channels, 4 * channels)
        self.hidden_gates = nn.Linear(channels, 4 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last step's hidden state (B, C, H, W) of the LSTM run over `x` (B, T, C, H, W)."""
        b, t, c, h, w = x.shape
        # One matmul for the input part of all steps; only the recurrent part has to be sequential.
        gates_x = self.input_gates(x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c))
        hidden = gates_x.new_zeros(b * h * w, c)
        cell = gates_x.new_zeros(b * h * w, c)
        for step in range(t):
            i, f, g, o = (gates_x[:, step] + self.hidden_gates(hidden)).chunk(4, dim=1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden.view(b, h, w, c).permute(0, 3, 1, 2)


class DepthwiseConv3x3x3(nn.Module):
    """Depthwise 3×3×3 conv over (T, H, W), zero-padded like Conv3d(padding=1), on (B·T, C, H, W) frames.

    Each channel's 3D kernel is three 3×3 kernels, one per time offset: one grouped Conv2d gives every
    frame's response to all three, and summing the responses shifted in time completes the 3D conv.
    Keeping every weight 4-D lets `model.to(memory_format=torch.channels_last)` work (PyTorch refuses
    channels_last for the 5-D weights of nn.Conv3d).

    Args:
        channels: C, in and out.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.taps = nn.Conv2d(channels, 3 * channels, 3, padding=1, groups=channels, bias=False)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The 3D depthwise conv of `x` (B·T, C, H, W), its frames `frames` per sequence."""
        bt, c, h, w = x.shape
        y = self.taps(x).view(bt // frames, frames, c, 3, h, w)
        zero = y.new_zeros(bt // frames, 1, c, h, w)
        before = torch.cat([zero, y[:, :-1, :, 0]], dim=1)  # frame t-1 through the offset -1 kernel
        after = torch.cat([y[:, 1:, :, 2], zero], dim=1)  # frame t+1 through the offset +1 kernel
        return (before + y[:, :, :, 1] + after).reshape(bt, c, h, w)


class ResidualConv3d(nn.Module):
    """Bottleneck 3D residual block that keeps T, H and W (the classify-then-segment classifier's).

    The layers are 1×1×1, then 1×1×1 + depthwise 3×3×3, then 1×1×1.

    Works on frames laid out as (B·T, C, H, W): a 1×1×1 conv is a 1×1 Conv2d there and BatchNorm3d is
    BatchNorm2d (the same per-channel statistics over B, T, H and W).

    Args:
        channels: C, in and out; the bottleneck has C / 4, at least 8.
    """

    def __init__(self, channels: int):
        super().__init__()
        mid = max(channels // 4, 8)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        )
        self.pointwise = nn.Conv2d(mid, mid, 1, bias=False)
        self.depthwise = DepthwiseConv3x3x3(mid)
        self.mix_act = nn.Sequential(nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.expand = nn.Sequential(nn.Conv2d(mid, channels, 1, bias=False), nn.BatchNorm2d(channels))
        # Zero-init the last norm: each block starts as the identity, so a stack of them starts as the
        # plain 2D model on the labelled frame and learns how much time to mix in.
        nn.init.zeros_(self.expand[1].weight)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The block's output for `x` (B·T, C, H, W), its frames `frames` per sequence."""
        y = self.mix_act(self.depthwise(self.pointwise(self.reduce(x)), frames))
        return self.act(x + self.expand(y))


class Conv3dFuser(nn.Module):
    """Mix one skip level over time with `num_layers` 3D residual blocks, then keep the labelled frame.

    Args:
        channels: C of the level.
        num_layers: residual 3D blocks.
        frame_index: the labelled frame, kept at the end.
    """

    def __init__(self, channels: int, num_layers: int, frame_index: int = -1):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualConv3d(channels) for _ in range(num_layers))
        self.frame_index = frame_index

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B·T, C, H, W) with T = `frames` -> (B, C, H, W)."""
        for block in self.blocks:
            x = block(x, frames)
        return x.view(-1, frames, *x.shape[1:])[:, self.frame_index]


def replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad H and W by repeating the edge rows and columns `pad` times.

    torch.cat instead of F.pad(mode="replicate"), whose compiled backward fails a stride check (torch 2.14).
    """
    if pad == 0:
        return x
    x = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1)], dim=2)
    return torch.cat([x[..., :1].expand(-1, -1, -1, pad), x, x[..., -1:].expand(-1, -1, -1, pad)], dim=3)


class PairConv3d(nn.Module):
    """Conv3d with kernel (2, k, k), no temporal padding and replicate spatial padding: T frames -> T − 1.

    Works on frames laid out as (B·T, C, H, W): output frame t is one Conv2d over frames t and t + 1
    stacked as channels, which is the same sum as the 3D kernel's two time taps (a Conv3d weight
    (O, I, 2, k, k) is this Conv2d's (O, 2·I, k, k) with the time tap outermost: `from_conv3d`). Keeping
    the weight 4-D lets `model.to(memory_format=torch.channels_last)` work.

    Args:
        in_channels: channels in.
        out_channels: channels out.
        kernel_size: k, the spatial kernel size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = nn.Conv2d(2 * in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The conv of `x` (B·T, C, H, W), `frames` frames per sequence: (B·(T − 1), O, H, W)."""
        bt, c, h, w = x.shape
        seq = x.view(bt // frames, frames, c, h, w)
        pairs = torch.cat([seq[:, :-1], seq[:, 1:]], dim=2).flatten(0, 1)
        return self.conv(replicate_pad(pairs, self.pad))

    @torch.no_grad()
    def from_conv3d(self, conv: nn.Conv3d) -> None:
        """Copy the weights of an equivalent `nn.Conv3d` (e.g. one trained by the 3rd-place code)."""
        o, i, t, kh, kw = conv.weight.shape
        self.conv.weight.copy_(conv.weight.permute(0, 2, 1, 3, 4).reshape(o, t * i, kh, kw))
        self.conv.bias.copy_(conv.bias)


class Conv3dCollapse(nn.Module):
    """The 3rd place's skip fusion: two (Conv3d (2, k, k), BatchNorm3d, LeakyReLU) blocks take 3 frames to 1.

    BatchNorm3d over (B, C, T, H, W) is BatchNorm2d over the (B·T, C, H, W) frames (the same statistics).

    Args:
        channels: C, in and out.
        kernel_size: k, the spatial kernel size.
    """

    frames = 3

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(PairConv3d(channels, channels, kernel_size) for _ in range(2))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(2))
        self.act = nn.LeakyReLU()

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B·3, C, H, W) -> (B, C, H, W)."""
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = self.act(norm(conv(x, frames)))
            frames -= 1
        return x


class ConvBlock(nn.Sequential):
    """Two 3×3 conv, BatchNorm, ReLU layers.

    Args:
        in_channels: channels in.
        out_channels: channels out.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """A plain UNet decoder: from the coarsest map up, nearest ×2 upsampling, concat the skip, ConvBlock.

    The classify-then-segment experiments found nearest upsampling slightly better and faster than bilinear.
    Returns the finest decoder map (at the finest encoder stride) with `out_channels` channels.

    Args:
        encoder_channels: channels of the encoder maps, finest first.
        decoder_channels: widths of the decoder blocks, coarsest first; one per skip.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        skips = list(encoder_channels[:-1])[::-1]
        if len(decoder_channels) < len(skips):
            raise ModelError(
                f"decoder_channels needs {len(skips)} entries for this encoder, got {tuple(decoder_channels)}"
            )
        ins = [encoder_channels[-1], *decoder_channels[: len(skips) - 1]]
        self.blocks = nn.ModuleList(
            ConvBlock(i + s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=False)
        )
        self.out_channels = decoder_channels[len(skips) - 1]

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The finest decoder map, from the encoder maps `feats` (finest first)."""
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x


class Preprocess(nn.Module):
    """Per-frame input preparation inside the model: ×`scale` bicubic upsampling, clip, normalisation.

    The 2nd-place models upsample the 256² ash frames to 512² so that thin contrails span more than a
    pixel at the encoder's stride; bicubic overshoots, hence the clip back to the [0, 1] ash range.

    Args:
        scale: the upsampling factor (1: none).
        clip: clip the upsampled frames to [0, 1].
        mean: per-channel mean to subtract (None: no normalisation).
        std: per-channel std to divide by, given with `mean`.
    """

    def __init__(
        self,
        scale: int = 2,
        clip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.scale = scale
        self.clip = clip
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (B, C, H, W) upsampled, clipped and normalised as set."""
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
            if self.clip:
                x = x.clamp(0.0, 1.0)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x


class ClassificationHead(nn.Sequential):
    """Global average pool, dropout, linear: (B, C, H, W) -> (B, num_classes) logits.

    Args:
        in_channels: C of the feature map.
        num_classes: logits out.
        dropout: dropout before the linear layer.
    """

    def __init__(self, in_channels: int, num_classes: int = 1, dropout: float = 0.0):
        super().__init__(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels, num_classes)
        )
