"""Snapper (Williams et al., IUI 2024): per-edge position logits for a crop around a rough box, decoded.

A timm encoder gives the last `levels` feature maps (the paper: ResNet-50, multi-scale; its reproduction
Kobamiyannnn/reproduct_snapper `src/models.py`: layer3 + layer4). Each map is pooled along rows (a
sequence over x, for the left and right edges) and along columns (over y, for top and bottom); four 1-D
decoders (Conv1d stacks) turn the sequences into one logit per position at crop resolution. With
`fusion="average"` every level has its own decoders and their logits are averaged (the reproduction's
simple multi-scale); with `fusion="fpn"` the levels are merged top-down first (FPN) and decoded once.
A learned per-edge position prior (bias over positions, resized to the crop) is added to the logits: the
crop is built around the rough box, so where an edge usually lies is known before any pixel is seen.
Output: (B, 4, S) logits for (left, top, right, bottom) over the S positions of an S×S crop.

Position p of S stands for the crop coordinate p·S/(S − 1), so the positions span the whole crop [0, S].
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segladder.models.encoders import Encoder
from segladder.models.registry import ModelInputError, register

PRIOR_POSITIONS = 32  # resolution of the learned position prior (resized linearly to any crop size)


class EdgeDecoder(nn.Module):
    """(B, C, L) pooled features → (B, 1, size) logits: a 1×1 reduction, linear upsampling, then k=3 convolutions.

    Args:
        in_ch: C of the pooled features.
        hidden: channels of the convolutions.
        layers: convolutions, the 1×1 reduction included.
    """

    def __init__(self, in_ch: int, hidden: int, layers: int):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv1d(in_ch, hidden, 1, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)
        )
        body: list[nn.Module] = []
        for _ in range(max(0, layers - 1)):
            body += [
                nn.Conv1d(hidden, hidden, 3, padding=1, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*body)
        self.head = nn.Conv1d(hidden, 1, 1)

    def forward(self, seq: Tensor, size: int) -> Tensor:
        """Logits (B, 1, size) along one axis from the pooled features `seq` (B, C, L)."""
        x = F.interpolate(self.reduce(seq), size=size, mode="linear", align_corners=False)
        return self.head(self.body(x))


class DirectionalHead(nn.Module):
    """One set of four edge decoders over one feature map: row pooling for left/right, column pooling for top/bottom.

    Args:
        in_ch: C of the feature map.
        hidden: channels of the edge decoders.
        layers: convolutions per edge decoder.
    """

    def __init__(self, in_ch: int, hidden: int, layers: int):
        super().__init__()
        # Mean and max pooling side by side: the mean sees extent, the max a thin edge.
        self.decoders = nn.ModuleList(EdgeDecoder(2 * in_ch, hidden, layers) for _ in range(4))

    def forward(self, feat: Tensor, size: int) -> Tensor:
        """Logits (B, 4, size) of the left, top, right and bottom edges' positions from one feature map."""
        along_x = torch.cat([feat.mean(2), feat.amax(2)], 1)  # (B, 2C, W): pooled over rows
        along_y = torch.cat([feat.mean(3), feat.amax(3)], 1)  # (B, 2C, H): pooled over columns
        seqs = (along_x, along_y, along_x, along_y)  # left, top, right, bottom
        return torch.cat([d(s, size) for d, s in zip(self.decoders, seqs, strict=True)], 1)


class Snapper(nn.Module):
    """Box adjustment: (B, C, S, S) crops (or (B, C, T, S, S), the frame `frame_index` is used) → (B, 4, S) edge logits.

    Args:
        encoder: timm model name (features_only); the paper uses resnet50.
        pretrained: False, True (timm's weights from the local cache) or a weights file/folder (see encoders.py).
        in_chans: input channels (3 for RGB crops).
        levels: how many of the deepest feature levels are used (2: layer3 + layer4 of a ResNet).
        fusion: "average" (one decoder set per level, logits averaged) or "fpn" (top-down merge, one decoder set).
        hidden: channels of the 1-D decoders (and of the FPN).
        decoder_layers: convolutions per 1-D decoder.
        frame_index: the frame read from a (B, C, T, H, W) input.
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        pretrained: bool | str | os.PathLike = False,
        in_chans: int = 3,
        levels: int = 2,
        fusion: str = "average",
        hidden: int = 128,
        decoder_layers: int = 3,
        frame_index: int = -1,
    ):
        super().__init__()
        if fusion not in ("average", "fpn"):
            raise ModelInputError(f"Snapper fusion must be 'average' or 'fpn', not {fusion!r}.")
        self.encoder = Encoder(encoder, in_chans=in_chans, pretrained=pretrained)
        if not 1 <= levels <= len(self.encoder.channels):
            raise ModelInputError(
                f"Snapper levels={levels}: encoder {encoder} has {len(self.encoder.channels)} levels."
            )
        self.levels, self.fusion, self.frame_index, self.in_chans = levels, fusion, frame_index, in_chans
        chans = self.encoder.channels[-levels:]
        if fusion == "average":
            self.heads = nn.ModuleList(DirectionalHead(c, hidden, decoder_layers) for c in chans)
        else:
            self.lateral = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in chans)
            self.smooth = nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            )
            self.heads = nn.ModuleList([DirectionalHead(hidden, hidden, decoder_layers)])
        self.prior = nn.Parameter(torch.zeros(1, 4, PRIOR_POSITIONS))

    def forward(self, x: Tensor) -> Tensor:
        """Edge-position logits (B, 4, S) of square crops `x`: (B, C, S, S), or (B, C, T, S, S) read at a frame."""
        if x.dim() == 5:
            x = x[:, :, self.frame_index]
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[-1] != x.shape[-2]:
            raise ModelInputError(
                f"Snapper takes square (B, {self.in_chans}, S, S) crops, got {tuple(x.shape)}."
            )
        size = x.shape[-1]
        feats = self.encoder(x)[-self.levels :]
        prior = F.interpolate(self.prior, size=size, mode="linear", align_corners=True)
        if self.fusion == "average":
            logits = torch.stack([h(f, size) for h, f in zip(self.heads, feats, strict=True)]).mean(0)
            return logits + prior.to(logits.dtype)
        top = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            top = lat(f) + F.interpolate(top, size=f.shape[-2:], mode="nearest")
        logits = self.heads[0](self.smooth(top), size)
        return logits + prior.to(logits.dtype)


@register(
    "Snapper",
    description="Snapper box adjustment (Williams et al., IUI 2024): timm encoder, directional pooling, "
    "1-D edge decoders per scale",
    uses_time=False,
    input_desc="(B, 3, S, S) crop around a rough box",
    output="box",
)
def snapper(**kwargs) -> Snapper:
    """Build a `Snapper`; see it for the arguments."""
    return Snapper(**kwargs)


# ------------------------------------------------------------------------------------ loss and decoding


def positions_of(coords: Tensor, size: int) -> Tensor:
    """Crop coordinates in [0, S] → fractional positions in [0, S − 1] (clamped: an edge outside the crop sits at its border)."""
    return (coords * (size - 1) / size).clamp(0, size - 1)


def coords_of(positions: Tensor, size: int) -> Tensor:
    """The inverse of `positions_of` inside the crop."""
    return positions * size / (size - 1)


def soft_targets(coords: Tensor, size: int, sigma: float = 1.0) -> Tensor:
    """(B, 4) true edges in crop coordinates → (B, 4, S) Gaussian distributions over positions (sum 1)."""
    grid = torch.arange(size, device=coords.device, dtype=torch.float32)
    d = grid - positions_of(coords.float(), size)[..., None]
    q = torch.exp(-0.5 * (d / sigma) ** 2)
    return q / q.sum(-1, keepdim=True)


def edge_loss(logits: Tensor, coords: Tensor, sigma: float = 1.0) -> Tensor:
    """Cross-entropy of each edge's position distribution against its Gaussian soft target, averaged over edges."""
    q = soft_targets(coords, logits.shape[-1], sigma)
    return -(q * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def decode(logits: Tensor, method: str = "expectation", window: int = 2) -> tuple[Tensor, Tensor]:
    """(B, 4, S) logits → ((B, 4) edges in crop coordinates, (B, 4) confidence = the distribution's peak probability).

    "argmax" takes the most likely position; "expectation" the mean position over `window` positions either
    side of it (the distribution-focal-loss idea: sub-pixel precision without being pulled by a far mode).
    """
    size = logits.shape[-1]
    probs = logits.float().softmax(-1)
    peak, idx = probs.max(-1)
    if method == "argmax":
        pos = idx.float()
    elif method == "expectation":
        offs = torch.arange(-window, window + 1, device=logits.device)
        cols = (idx[..., None] + offs).clamp(0, size - 1)
        w = probs.gather(-1, cols) * ((idx[..., None] + offs >= 0) & (idx[..., None] + offs < size))
        pos = (w * cols.float()).sum(-1) / w.sum(-1).clamp_min(1e-12)
    else:
        raise ValueError(f"decode method must be 'argmax' or 'expectation', not {method!r}")
    edges = coords_of(pos, size)
    # A right edge left of its left edge (an untrained or confused model) becomes a valid box between the two.
    lo, hi = torch.minimum(edges[:, :2], edges[:, 2:]), torch.maximum(edges[:, :2], edges[:, 2:])
    return torch.cat([lo, hi], 1), peak
