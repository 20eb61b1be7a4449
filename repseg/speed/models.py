"""Segmentors for timing: built once per config, calibrated, then copied per variant.

Building a large segmentor costs seconds (random init of ~100M parameters on the CPU);
every variant of the matrix (train-time, fused, fp16 channels-last, ...) is prepared from
one built model. Weights stay random (speed does not depend on their values), but not
arbitrary: see :func:`build_calibrated_segmentor`.
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence

import torch.nn as nn

from ..benchmark import build_benchmark_segmentor
from ..fast_inference.variants import calibrate_batch_norms, smooth_inputs

#: ``(H, W)`` of the random batch that sets the BN statistics (output stride 8: 16x32).
CALIBRATION_SHAPE = (128, 256)


def build_calibrated_segmentor(config, device: str, cfg_options: Optional[Mapping] = None,
                               calibration_shape: Sequence[int] = CALIBRATION_SHAPE
                               ) -> nn.Module:
    """A random-weight segmentor (plain BN, 'whole' test mode) on ``device``, in eval mode,
    its BN statistics set from two image-like inputs
    (:func:`repseg.fast_inference.variants.calibrate_batch_norms`: without that the
    activations of a random network shrink to zero, and a GPU would time fp16 zeros):
    the base every variant is copied from."""
    model = build_benchmark_segmentor(config, device='cpu', cfg_options=dict(cfg_options or {}))
    model.to(device)
    calibrate_batch_norms(model, smooth_inputs(2, calibration_shape, device))
    return model.eval()


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
    fused the predict path, the predictors and the backbone). Preparing is idempotent, so
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
