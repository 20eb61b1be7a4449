"""The models that are timed: built in one place, then copied per prepared form.

Speed does not depend on the weights' values, so models are built with random weights
(seeded) unless a checkpoint is given, but not arbitrary ones: every BN gets random
affine parameters and the statistics of two image-like inputs
(:func:`repseg.models.summary.randomize_batch_norms` with ``calibrate``). Without that
the activations of a random network shrink to zero, every pixel gets one class (label
agreements mean nothing) and a GPU would time float16 zeros.

Building a large segmentor costs seconds (random init of ~100M parameters on the CPU);
the matrix prepares every form it times (train-time, fused, fp16 channels-last, ...)
from one built model (:class:`PreparedModels`).
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import ConfigDict

from ..inference import prepare_for_inference
from ..models.arch import canonical_arch_name
from ..models.repvgg import create_model
from ..models.summary import randomize_batch_norms

#: ``(H, W)`` of the random batch that sets the BN statistics (output stride 8: 16x32).
CALIBRATION_SHAPE = (128, 256)
TORCHVISION_CLASSIFIERS = ('resnet50', 'resnet101', 'resnet152')


def smooth_inputs(batch: int, shape: Sequence[int], device: str, seed: int = 0) -> torch.Tensor:
    """A normalized batch with image-like regions: random colours at 1/16 scale, upsampled,
    plus a little noise (predictions then form regions, as on real frames)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape
    coarse = torch.randn(batch, 3, max(1, height // 16), max(1, width // 16),
                         generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode='bilinear', align_corners=False)
    return (image + 0.1 * torch.randn(image.shape, generator=generator)).to(device)


def build_segmentor_to_time(config, checkpoint=None, device: str = 'cpu',
                            cfg_options: Optional[Mapping] = None,
                            calibration_shape: Sequence[int] = CALIBRATION_SHAPE,
                            seed: int = 0) -> nn.Module:
    """A segmentor with plain BN (SyncBN built as BN), test mode 'whole', in eval mode on
    ``device``: the checkpoint's weights, or seeded random ones with calibrated BNs
    (module docstring; two inputs: a 1x1 pyramid bin needs > 1 value per BN)."""
    from ..mmseg.builder import build_segmentor, load_config

    cfg = load_config(config, dict(cfg_options) if cfg_options else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_segmentor(cfg, checkpoint, 'cpu').to(device)
    model.test_cfg = ConfigDict(mode='whole')
    if checkpoint is None:
        inputs = smooth_inputs(2, calibration_shape, device, seed + 1)
        randomize_batch_norms(model, seed, calibrate=lambda m: m(inputs, mode='tensor'))
    return model.eval()


def classifier_model(name: str, build: bool = True) -> tuple[Optional[nn.Module], bool]:
    """A classifier with random weights by name: a RepVGG arch or a torchvision ResNet.

    Returns the model (None with ``build=False``, which only checks the name) and
    whether it is a RepVGG. Unknown names raise ``ValueError``.
    """
    if name.lower() in TORCHVISION_CLASSIFIERS:
        if not build:
            return None, False
        import torchvision

        return getattr(torchvision.models, name.lower())(weights=None), False
    canonical_arch_name(name)  # raises ValueError listing the RepVGG archs
    return (create_model(name) if build else None), True


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to prepare (fuse, cast) on its own.

    The segmentor's ``cfg`` (the whole mmengine Config, attached by the builder) is shared,
    not copied: copying it took most of the time of a copy, and nothing prepared changes it.
    """
    cfg = getattr(model, 'cfg', None)
    return copy.deepcopy(model, memo={id(cfg): cfg} if cfg is not None else None)


class PreparedModels:
    """The prepared forms of one base model, each made once and shared by every record
    that times it (fp32 fused serves the fp32 and the paper records, fp16 channels-last
    fused the predict path, the predictors and the backbone). Preparing is idempotent, so
    a shared form may be prepared again; the unfused fp32 NCHW form is the base itself
    (preparing it only sets eval mode)."""

    def __init__(self, base: nn.Module):
        self.base = base
        self.models: dict = {}

    def get(self, fused: bool, fp16: bool, channels_last: bool) -> nn.Module:
        key = (bool(fused), bool(fp16), bool(channels_last))
        if key == (False, False, False):
            return self.base
        if key not in self.models:
            self.models[key] = prepare_for_inference(model_copy(self.base), fuse=key[0],
                                                     fp16=key[1], channels_last=key[2])
        return self.models[key]
