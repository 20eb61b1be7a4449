"""Whole-model re-parameterization: one tree walk for any model holding RepVGG blocks."""
from __future__ import annotations

import copy

import torch.nn as nn

from ..errors import InvalidArgumentTypeError
from .block import RepVGGBlock


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every :class:`RepVGGBlock` in ``model`` into a single 3x3 conv.

    Works on a classifier, a backbone or a whole mmseg segmentor. Fused blocks are left
    alone (idempotent) and the train/eval mode of every module is kept.

    Args:
        model: any module tree.
        inplace: fuse ``model`` itself; otherwise a deep copy is fused and returned.

    Raises:
        TypeError: ``model`` is not a :class:`torch.nn.Module`.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentTypeError(
            f'reparameterize takes a torch.nn.Module (a RepVGG, a backbone or a segmentor '
            f'holding RepVGG blocks), got {type(model).__name__} {model!r:.60}; build the '
            "model first, e.g. repseg.reparameterize(repseg.create_model('B2'))")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, RepVGGBlock):
            module.reparameterize()
    return model


def fused_block_count(module: nn.Module) -> tuple[int, int]:
    """``(fused, all)``: how many of ``module``'s RepVGG blocks are fused, of how many
    (what a tool reports, since a config's ``deploy`` flag need not match its weights)."""
    blocks = [m for m in module.modules() if isinstance(m, RepVGGBlock)]
    return sum(block.is_fused for block in blocks), len(blocks)
