"""Mixed precision as a Lightning precision plugin: Lightning's own, with torch's autocast cast cache kept on."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision


class CachedAutocastPrecision(MixedPrecision):
    """Lightning's mixed precision with torch's autocast cache on, as a bare `torch.autocast` loop has it.

    Lightning 2.6 turns the cache off (its issue #20644: a trainable weight first cast under a nested
    `torch.no_grad()` is cached without its graph, and later uses of it then train nothing). Off, a weight
    used several times in one forward is cast each time: ResNet18_ULSTM's recurrent gates, once per frame, 16
    more casts and their gradients a step. No segladder model runs its trainable weights under no_grad inside
    forward (the distillation teacher is frozen, so its weights are never cached), so the cache is kept; it is
    emptied when each autocast region ends, every step.
    """

    def autocast_context_manager(self) -> torch.autocast:
        """`torch.autocast` at the plugin's precision, with its cache left on."""
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.half
        return torch.autocast(self.device, dtype=dtype)

    @classmethod
    def replacing(cls, plugin: MixedPrecision) -> CachedAutocastPrecision:
        """The same precision, device and GradScaler as `plugin`, the one Lightning resolved."""
        return cls(plugin.precision, plugin.device, plugin.scaler)
