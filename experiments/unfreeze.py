"""Which layers of a backbone's trunk a fine-tune trains: its blocks, the last N of them unfrozen,
and the batch-norm statistics of the frozen ones kept."""

from __future__ import annotations

import re

from common.errors import CnnfeatError


def trunk_blocks(trunk) -> list:
    """The trunk as an ordered list of blocks with weights: top-level children, with containers of
    several blocks (ResNet layers, EfficientNet's block list, ConvNeXt stages) opened up. Heads the
    forward pass never uses (the ImageNet classifier kept in EfficientNet-Lite) are left out."""
    from torch import nn

    blocks = []
    for name, child in trunk.named_children():
        if name in ("_fc", "fc"):
            continue
        opened = isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1
        parts = list(child.children()) if opened else [child]
        blocks += [part for part in parts if any(True for _ in part.parameters())]
    return blocks


def unfrozen_count(unfreeze: str, blocks: int) -> int:
    """How many of `blocks` blocks --unfreeze ('all', 'none' or 'last-N[-blocks]') trains."""
    if unfreeze == "all":
        return blocks
    if unfreeze == "none":
        return 0
    match = re.fullmatch(r"last-(\d+)(-blocks?)?", unfreeze)
    if not match:
        raise CnnfeatError(f"--unfreeze {unfreeze!r}: use all, none, or last-N-blocks (e.g. last-2-blocks)")
    return min(int(match.group(1)), blocks)


def set_trainable(trunk, unfreeze: str) -> int:
    """Unfreeze 'all', 'none' or 'last-N[-blocks]' of the trunk; returns how many blocks train."""
    blocks = trunk_blocks(trunk)
    count = unfrozen_count(unfreeze, len(blocks))
    trunk.requires_grad_(False)
    for block in blocks[len(blocks) - count :]:
        block.requires_grad_(True)
    return count


BATCHNORM_MOMENTUM = 0.1  # per step: how fast an unfrozen batch-norm layer's running statistics follow the new images


def follow_new_images(trunk) -> None:
    """Unfrozen batch-norm layers update their running statistics at BATCHNORM_MOMENTUM (torch's
    default) at least. EfficientNet-Lite keeps TensorFlow's 0.01: after a few hundred steps its
    statistics lie halfway between ImageNet's and the new images', the batch statistics the network
    trained with, and the network scored in eval mode sees neither (digits, every block unfrozen:
    0.158 held-out accuracy, where the frozen features' logistic regression gives 0.901)."""
    from torch import nn

    for module in trunk.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in module.parameters()):
            module.momentum = max(module.momentum or 0.0, BATCHNORM_MOMENTUM)


def keep_batchnorm_statistics(trunk, every_layer: bool = False) -> None:
    """Frozen layers (or, `every_layer`, all) keep their ImageNet batch-norm statistics: their BN goes
    back to eval mode (call it after network.train()). Their scale and shift still train where
    unfrozen."""
    from torch import nn

    for module in trunk.modules():
        frozen = every_layer or not any(p.requires_grad for p in module.parameters())
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
            module.eval()
