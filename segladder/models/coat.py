"""CoaT_ULSTM, the 2nd-place single model (private LB 0.7179): CoaT-Lite encoder, LSTM over time, UNet + FPN.

As DrHB/2nd-place-contrails (`src_inference1/`) runs it: frames 0..labelled (0–4 of the raw 8), each
upsampled ×2 bicubic and clipped to [0, 1]; `coat_lite_medium` features (128, 256, 320, 512 channels at
strides 4–32) on every frame; a per-pixel LSTM at the two coarsest levels, the labelled frame's features
at the two fine ones; pixel-shuffle UNet blocks with LayerNorm2d and GELU, an FPN, a final up-block to
the input size.
"""

from __future__ import annotations

from segladder.models.ladder import ULSTM, Pretrained
from segladder.models.registry import ModelError, register


@register(
    "CoaT_ULSTM",
    description="CoaT-Lite-Medium, LSTM over time at the 2 coarsest levels, UNet + FPN (2nd place)",
    uses_time=True,
    input_desc="frames 0..labelled",
)
class CoaT_ULSTM(ULSTM):
    """The 2nd-place model. `encoder` may be any coat_lite_* (the original offered mini/small/medium).

    The 2nd-place authors fed the [0, 1] ash frames without ImageNet normalisation, hence
    `normalize=False` by default. Their weights file was the original CoaT release
    (`coat_lite_medium_a750cd63.pth`); `pretrained=` takes it or timm's `coat_lite_medium.in1k`.

    Args:
        encoder: a timm coat_lite_* name.
        in_chans: channels per frame.
        num_classes: logit channels out.
        pretrained: False, True or "auto" (the encoder's ImageNet weights) or a file; see `load_pretrained`.
        frame_index: the labelled frame.
        upsample: the frames' upsampling factor before the encoder.
        normalize: normalise with the encoder's ImageNet mean and std.
        ps: dropout before the decoder's up-block.
    """

    def __init__(
        self,
        *,
        encoder: str = "coat_lite_medium",
        in_chans: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        frame_index: int = -1,
        upsample: int = 2,
        normalize: bool = False,
        ps: float = 0.0,
    ):
        if not encoder.startswith("coat_lite_"):
            raise ModelError(
                f"CoaT_ULSTM needs a CoaT-Lite encoder (coat_lite_mini/small/medium), got {encoder!r}"
            )
        super().__init__(
            encoder,
            (0, 1, 2, 3),
            in_chans=in_chans,
            num_classes=num_classes,
            pretrained=pretrained,
            frame_index=frame_index,
            upsample=upsample,
            normalize=normalize,
            ps=ps,
        )
