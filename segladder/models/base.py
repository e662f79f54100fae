"""The input contract all models share: (B, C, T, H, W) or (B, C, H, W) in, checked with clear errors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segladder.models.registry import ModelInputError


class SequenceModel(nn.Module):
    """Base class: validates the input and hands it out as a sequence or as the labelled frame.

    `frame_index` is the frame the label belongs to (default the last one: the data layer selects
    frames so that the labelled frame ends the sequence). `num_frames`, when set, is the only T the
    model accepts. `size_multiple` is what H and W must be divisible by.

    Args:
        in_chans: channels per frame.
        frame_index: the labelled frame's index in T.
        num_frames: the only T accepted (None: any).
        size_multiple: what H and W must be divisible by.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        frame_index: int = -1,
        num_frames: int | None = None,
        size_multiple: int = 32,
    ):
        super().__init__()
        if in_chans < 1:
            raise ModelInputError(f"in_chans must be at least 1, got {in_chans}")
        if num_frames is not None and num_frames < 1:
            raise ModelInputError(f"num_frames must be at least 1, got {num_frames}")
        if num_frames is not None and not -num_frames <= frame_index < num_frames:
            raise ModelInputError(f"frame_index={frame_index} is outside num_frames={num_frames}")
        self.in_chans = in_chans
        self.frame_index = frame_index
        self.num_frames = num_frames
        self.size_multiple = size_multiple

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """The input as (B, C, T, H, W); a 4-D input is one frame."""
        self._check(x)
        return x.unsqueeze(2) if x.ndim == 4 else x

    def labelled_frame(self, x: torch.Tensor) -> torch.Tensor:
        """The frame at `frame_index` as (B, C, H, W); a 4-D input is that frame already."""
        self._check(x)
        return x if x.ndim == 4 else x[:, :, self.frame_index]

    def frames_until_label(self, x: torch.Tensor) -> torch.Tensor:
        """Frames 0..frame_index as (B, C, T', H, W): all a causal (unidirectional) model can use."""
        x = self.sequence(x)
        stop = self.frame_index % x.shape[2] + 1
        return x if stop == x.shape[2] else x[:, :, :stop]

    def resize_to(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`logits` at `size` (bilinear) when a decoder stops short of the input resolution."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _check(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        expect = f"{name} expects (B, {self.in_chans}, T, H, W) or (B, {self.in_chans}, H, W)"
        if x.ndim not in (4, 5):
            raise ModelInputError(f"{expect}; got a {x.ndim}-D tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ModelInputError(
                f"{expect}; got {x.shape[1]} channels in shape {tuple(x.shape)} "
                f"(create the model with in_chans={x.shape[1]} for such input)"
            )
        t = 1 if x.ndim == 4 else x.shape[2]
        if self.num_frames is not None and t != self.num_frames:
            raise ModelInputError(
                f"{name} was built for T={self.num_frames} frames (num_frames); got T={t} in shape {tuple(x.shape)}"
            )
        if x.ndim == 5 and not -t <= self.frame_index < t:
            raise ModelInputError(
                f"{name}: frame_index={self.frame_index} does not exist in an input of T={t} frames "
                f"(shape {tuple(x.shape)})"
            )
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ModelInputError(
                f"{name} needs H and W divisible by {self.size_multiple}; got {h}x{w}. Resize or pad the input."
            )
