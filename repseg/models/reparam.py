"""Whole-model re-parameterization: one tree walk for any model holding RepVGG blocks."""
from __future__ import annotations

import copy

import torch.nn as nn

from .block import RepVGGBlock


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every :class:`RepVGGBlock` in ``model`` into a single 3x3 conv.

    Works on a classifier, a backbone or a whole mmseg segmentor. Fused blocks are left
    alone (idempotent) and the train/eval mode of every module is kept.

    Args:
        model: any module tree.
        inplace: fuse ``model`` itself; otherwise a deep copy is fused and returned.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, RepVGGBlock):
            module.reparameterize()
    return model
