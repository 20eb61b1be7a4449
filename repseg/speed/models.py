"""Segmentors for timing: built once per config, calibrated, then copied per variant.

Building a large segmentor costs seconds (random init of ~100M parameters on the CPU);
every variant of the matrix (train-time, fused, fp16 channels-last, ...) is a deep copy of
one built model, prepared in place. Weights stay random (speed does not depend on their
values), but not arbitrary: see :func:`calibrate_batch_norms`.
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..benchmark import build_benchmark_segmentor

#: ``(H, W)`` of the random batch that sets the BN statistics (output stride 8: 16x32).
CALIBRATION_SHAPE = (128, 256)


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, shape: Sequence[int] = CALIBRATION_SHAPE,
                          seed: int = 0) -> nn.Module:
    """Set every BN's running statistics to those of one random batch (in place).

    Freshly built BNs are identities in eval mode; through dozens of randomly initialised
    convolutions the activations then shrink towards zero, underflow in float16, and a GPU
    would time zeros, which run faster than real data. One forward pass in train mode with
    cumulative averaging (``momentum=None``) gives every layer unit-scale outputs, as
    trained BNs do. Other BN settings and the model's mode are restored.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2, 3, *shape, generator=generator).to(param.device, param.dtype)
    model.train()
    try:
        forward = getattr(model, '_forward', model)
        forward(inputs)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return model


def build_calibrated_segmentor(config, device: str, cfg_options: Optional[Mapping] = None,
                               calibration_shape: Sequence[int] = CALIBRATION_SHAPE
                               ) -> nn.Module:
    """A random-weight segmentor (plain BN, 'whole' test mode) on ``device``, BNs
    calibrated, in eval mode: the base every variant is copied from."""
    model = build_benchmark_segmentor(config, device='cpu', cfg_options=dict(cfg_options or {}))
    model.to(device)
    return calibrate_batch_norms(model, calibration_shape).eval()


def variant_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to prepare (fuse, cast) as one variant.

    The segmentor's ``cfg`` (the whole mmengine Config, attached by the builder) is shared,
    not copied: copying it took most of the time of a copy, and no variant changes it.
    """
    cfg = getattr(model, 'cfg', None)
    return copy.deepcopy(model, memo={id(cfg): cfg} if cfg is not None else None)


class Variants:
    """The prepared variants of one base model, each made once and shared by every record
    that times it (fp32 fused serves the fp32 and the paper records, fp16 channels-last
    fused the predict path, the label path and the backbone). Preparing is idempotent, so
    a shared variant may be prepared again; the unfused fp32 NCHW variant is the base
    itself (preparing it only sets eval mode)."""

    def __init__(self, base: nn.Module):
        self.base = base
        self.models: dict = {}

    def get(self, fused: bool, fp16: bool, channels_last: bool) -> nn.Module:
        from ..inference import prepare_for_inference

        key = (bool(fused), bool(fp16), bool(channels_last))
        if key == (False, False, False):
            return self.base
        if key not in self.models:
            self.models[key] = prepare_for_inference(variant_copy(self.base), fuse=key[0],
                                                     fp16=key[1], channels_last=key[2])
        return self.models[key]
