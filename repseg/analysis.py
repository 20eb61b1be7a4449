"""Model size and cost of a segmentor's inference path, counted the way mmseg reports them.

FLOPs follow mmengine's ``FlopAnalyzer`` (the fvcore convention that mmseg's
``get_flops`` tool uses): one fused multiply-add counts as **one** FLOP, so a
convolution costs ``batch * prod(kernel shape) * prod(output H x W)``; bias adds,
activations and element-wise sums are free; batch norm, upsampling and adaptive pooling
are counted per element. What is counted is the tensor-mode forward
(``EncoderDecoder._forward``: backbone, neck and decode head) on one ``1x3xHxW`` image,
without the auxiliary head, which only trains.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer

from .errors import InvalidArgumentError

#: Submodules that only exist for training and are not part of the inference cost.
TRAIN_ONLY_MODULES = ('auxiliary_head',)


def count_params(model: nn.Module, inference_only: bool = True) -> int:
    """Number of parameters of ``model`` (any module; trainable or not).

    Args:
        model: a segmentor, a backbone or any module.
        inference_only: leave out the segmentor's auxiliary head, as mmseg's
            ``get_flops`` does; has no effect on modules without one.
    """
    skipped = set()
    if inference_only:
        for name in TRAIN_ONLY_MODULES:
            child = getattr(model, name, None)
            if isinstance(child, nn.Module):
                skipped.update(id(p) for p in child.parameters())
    return sum(p.numel() for p in model.parameters() if id(p) not in skipped)


class _TensorForward(nn.Module):
    """Calls a segmentor's tensor-mode forward, so tracing sees only the inference path."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, '_forward'):
            return self.model._forward(inputs)
        return self.model(inputs)


def count_flops(model: nn.Module, shape: Sequence[int] = (1024, 2048)) -> float:
    """GFLOPs (10^9 multiply-adds, see the module docstring) of one ``shape`` image.

    Args:
        model: an mmseg segmentor (its ``_forward`` is traced) or any module taking one
            ``(1, 3, H, W)`` tensor. It is put in eval mode for the count and restored.
        shape: ``(H, W)`` of the input image.

    The count traces one real forward pass on the model's device and dtype, so a large
    model at 1024x2048 on CPU takes tens of seconds.
    """
    if len(shape) != 2:
        raise InvalidArgumentError(f'shape must be (H, W), got {tuple(shape)}')
    param = next(model.parameters())
    inputs = torch.randn(1, 3, *shape, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(_TensorForward(model), (inputs,))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            total = analyzer.total()
    finally:
        model.train(was_training)
    return total / 1e9
