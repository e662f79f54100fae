"""Progressive unfreezing of a segmenter's encoder on Lightning's `BaseFinetuning`, beside its task."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from segladder.errors import ConfigError

_STAGE_CONTAINERS = ("blocks", "stages", "layers")


def find_encoder(model: nn.Module) -> nn.Module:
    """The feature extractor of a segmenter: smp's `net.encoder`, or the first submodule named `encoder`.

    A timm encoder wrapped by segladder (`Encoder`) or smp (`TimmUniversalEncoder`) keeps the timm model in
    `.model`; that inner model is returned so its stages can be found by name.
    """
    for name, module in model.named_modules():
        if name.split(".")[-1] == "encoder":
            inner = getattr(module, "model", None)
            return inner if isinstance(inner, nn.Module) else module
    raise ConfigError(
        f"{type(model).__name__} has no submodule named 'encoder', so it cannot be unfrozen block "
        "by block; set distill.unfreeze_start_epoch=0 to train it whole from the start."
    )


def encoder_blocks(model: nn.Module) -> list[list[nn.Module]]:
    """The encoder's blocks, shallowest first, each a list of modules; the stem joins the first block.

    A timm backbone's stages are its `blocks`/`stages`/`layers` container (EfficientNet: 7 stages, as the
    B3→B0 distillation recipe counts them) or its `layer1..layerN` children (ResNet); any other parameterised
    child (the stem convolution and its norm) belongs to the first block, so every encoder parameter is in
    exactly one block.
    """
    encoder = find_encoder(model)
    children = dict(encoder.named_children())
    container = next((children[n] for n in _STAGE_CONTAINERS if n in children and len(children[n]) > 1), None)
    if container is not None:
        stages = list(container.children())
        rest = [m for n, m in children.items() if m is not container]
    else:
        layers = sorted(
            (n for n in children if n.startswith("layer") and n[5:].isdigit()), key=lambda n: int(n[5:])
        )
        stages = [children[n] for n in layers]
        rest = [m for n, m in children.items() if n not in layers]
    if not stages:
        stages, rest = [m for m in children.values() if any(True for _ in m.parameters())], []
    rest = [m for m in rest if any(True for _ in m.parameters())]
    if not stages:
        raise ConfigError(f"the encoder of {type(model).__name__} has no blocks with parameters to unfreeze.")
    return [[*rest, stages[0]], *[[s] for s in stages[1:]]]


def blocks_unfrozen_at(epoch: int, start: int, every: int, total: int) -> int:
    """How many blocks (deepest first) are trainable in `epoch` (0-based): none before `start`, then one more every `every`."""
    if epoch < start:
        return 0
    return min(total, (epoch - start) // every + 1)


class ProgressiveUnfreezing(BaseFinetuning):
    """Freezes a segmenter's encoder, then unfreezes one block every `every` epochs from the deepest.

    Each unfrozen block joins the optimiser as its own group named `encoder.<i>` at `lr_scale` × the decoder's
    initial LR (the LR schedule then scales every group alike, see `optim.SharedFactorLR`). Frozen blocks keep
    their BatchNorm in eval mode (running statistics used and left unchanged). On resume, `BaseFinetuning`
    restores the saved parameter groups and this callback restores the trainable set from `unfrozen`.

    Args:
        start_epoch: epochs (0-based count) with the whole encoder frozen.
        every: epochs between two unfrozen blocks.
        lr_scale: encoder LR as a fraction of the decoder LR.
    """

    def __init__(self, start_epoch: int, every: int, lr_scale: float):
        super().__init__()
        self.start_epoch, self.every, self.lr_scale = start_epoch, every, lr_scale
        self.unfrozen = 0
        self._blocks: list[list[nn.Module]] = []

    def state_dict(self) -> dict[str, Any]:
        """The saved groups and how many blocks are unfrozen."""
        return {**super().state_dict(), "unfrozen": self.unfrozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back the saved groups and the count of unfrozen blocks."""
        super().load_state_dict(state_dict)
        self.unfrozen = int(state_dict.get("unfrozen", 0))

    def _model(self, pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, "model", pl_module)

    # -------------------------------------------------------------------------- BaseFinetuning

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        """Freeze every encoder block, BatchNorm included."""
        self._blocks = encoder_blocks(self._model(pl_module))
        self.freeze([m for block in self._blocks for m in block], train_bn=False)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On resume, make the blocks unfrozen before the checkpoint trainable again."""
        # A resumed run: BaseFinetuning puts the saved groups back (before Lightning loads the optimiser
        # state); the blocks unfrozen before the checkpoint become trainable again. The callback state is
        # loaded after `setup`, so this cannot happen in freeze_before_training.
        super().on_fit_start(trainer, pl_module)
        for block in self._deepest_first()[: self.unfrozen]:
            self.make_trainable(block)
        self.set_bn_modes(pl_module)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze the blocks due by `epoch`, each as its own group at `lr_scale` × the decoder's LR."""
        target = blocks_unfrozen_at(epoch, self.start_epoch, self.every, len(self._blocks))
        decoder = next(
            (g for g in optimizer.param_groups if not str(g.get("name", "")).startswith("encoder")),
            optimizer.param_groups[0],
        )
        base = decoder.get("initial_lr", decoder["lr"]) * self.lr_scale
        factor = decoder["lr"] / decoder.get("initial_lr", decoder["lr"])
        while self.unfrozen < target:
            index = len(self._blocks) - 1 - self.unfrozen
            # Not BaseFinetuning.unfreeze_and_add_param_group: its filter_on_optimizer compares parameters by
            # value (torch.equal), so a freshly initialised BatchNorm weight (all ones) equal to one already in
            # the optimiser would be silently left out. Parameters are compared by identity here.
            self.make_trainable(self._blocks[index])
            present = {id(p) for g in optimizer.param_groups for p in g["params"]}
            params = [
                p for p in self.filter_params(self._blocks[index], requires_grad=True) if id(p) not in present
            ]
            if params:
                optimizer.add_param_group(
                    {"params": params, "lr": base * factor, "initial_lr": base, "name": f"encoder.{index}"}
                )
            self.unfrozen += 1
        self.set_bn_modes(pl_module)

    # --------------------------------------------------------------------------- BatchNorm modes

    def _deepest_first(self) -> list[list[nn.Module]]:
        return self._blocks[::-1]

    def set_bn_modes(self, pl_module: L.LightningModule) -> None:
        """BatchNorm of frozen blocks in eval mode; of trainable blocks in the module's own mode."""
        frozen = len(self._blocks) - self.unfrozen
        for i, block in enumerate(self._blocks):
            for module in block:
                for bn in module.modules():
                    if isinstance(bn, _BatchNorm):
                        bn.train(pl_module.training and i >= frozen)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        """Put frozen BatchNorm back in eval mode (Lightning sets train mode after validation)."""
        # Lightning puts the whole module back in train mode after validation; frozen BN must stay in eval.
        self.set_bn_modes(pl_module)
