"""Convolution, bias and ReLU as one cuDNN call, for inference on CUDA.

PyTorch's cuDNN convolution adds the bias in a kernel of its own after every conv, and a
ReLU is one more pass over the output: in a fused PSPNet-B2 at 1024x2048 in fp16 these two
passes took 2.2 of 14 ms per image on an H200 (29 bias adds, 33 ReLUs; docs/benchmarks.md).
``torch.cudnn_convolution_relu`` (aten's conv-bias-ReLU fusion, a cuDNN runtime-fused
graph) computes ``relu(conv(x) + bias)`` in one kernel, adding in float32 whatever the
input dtype.

:func:`use_conv_relu` gives it to two kinds of module, in place:

- a re-parameterized RepVGG block (one 3x3 conv with bias, then ReLU): its ``fused`` conv
  becomes a :class:`Conv2dReLU` holding the very same parameters (state-dict keys
  unchanged) and its ReLU an identity;
- an mmcv ``ConvModule`` conv -> BN -> ReLU in eval mode (PSP head, FCN head): the BN is
  folded into the conv weights in place and left as the identity plus a bias
  (weight 1, mean 0, var ``1 - eps``), so the state dict keeps its keys and still loads
  into an unmodified model with the same outputs; the module becomes a
  :class:`ConvBNReLU` that reads the bias from the BN.

Each converted module computes ``relu(conv2d(x, weight, bias))`` with ``F.conv2d`` where
cuDNN cannot serve: CPU tensors, a torch without the op, or an op that fails its first
call (the module then records the error in ``cudnn_error`` and stays on the plain path).
The plain path is exactly what the original modules compute (up to the BN fold's
rounding), so outputs agree in meaning everywhere.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.logging import print_log
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.block import RepVGGBlock, batch_norm_stats
from ..models.fusion import BatchNormStats, fold_batch_norm
from .fallback import error_summary


def cudnn_conv_relu_unavailable() -> Optional[str]:
    """Why ``torch.cudnn_convolution_relu`` cannot run here, or None if it can."""
    if not hasattr(torch, 'cudnn_convolution_relu'):
        return f'torch {torch.__version__} has no torch.cudnn_convolution_relu'
    if not torch.cuda.is_available():
        return 'CUDA is not available'
    if not torch.backends.cudnn.is_available():
        return 'cuDNN is not available in this torch build'
    if not torch.backends.cudnn.enabled:
        return 'cuDNN is disabled (torch.backends.cudnn.enabled is False)'
    return None


def _takes_cudnn(module: '_ConvReLUCall', x: torch.Tensor) -> bool:
    """Whether ``module`` should try the fused cuDNN op on ``x``."""
    return module.use_cudnn and x.is_cuda


class _ConvReLUCall:
    """``relu(conv2d(x, weight, bias))`` with one conv's geometry, fused by cuDNN on CUDA.

    The first CUDA call tries the fused op; if it raises, the error is kept in
    ``cudnn_error`` (and logged) and this module uses ``F.conv2d`` + ReLU from then on.
    """

    def _init_call(self, conv: nn.Conv2d, use_cudnn: bool) -> None:
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.use_cudnn = use_cudnn
        self.cudnn_verified = False
        self.cudnn_error: Optional[str] = None

    def conv_relu(self, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
        """``relu(conv2d(x, weight) + bias)``."""
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return self._fused_or_plain(
            x, weight,
            lambda: torch.cudnn_convolution_relu(x, weight, bias, *geometry),
            lambda: torch.relu_(F.conv2d(x, weight, bias, *geometry)))

    def conv_add_relu(self, x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor,
                       bias: torch.Tensor) -> torch.Tensor:
        """``relu(conv2d(x, weight) + z + bias)`` (``z`` shaped like the output)."""
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return self._fused_or_plain(
            x, weight,
            lambda: torch.cudnn_convolution_add_relu(x, weight, z, 1.0, bias, *geometry),
            lambda: torch.relu_(F.conv2d(x, weight, bias, *geometry).add_(z)))

    def _fused_or_plain(self, x: torch.Tensor, weight: torch.Tensor,
                        fused: Callable[[], torch.Tensor],
                        plain: Callable[[], torch.Tensor]) -> torch.Tensor:
        if _takes_cudnn(self, x):
            if self.cudnn_verified:
                return fused()
            try:
                out = fused()
            except RuntimeError as error:
                self.use_cudnn = False
                self.cudnn_error = error_summary(error)
                print_log(f'fused cuDNN conv failed for {tuple(weight.shape)} {x.dtype}, '
                          f'using conv + ReLU: {self.cudnn_error}', logger='current', level=30)
            else:
                self.cudnn_verified = True
                return out
        return plain()


class Conv2dReLU(nn.Conv2d, _ConvReLUCall):
    """An ``nn.Conv2d`` followed by ReLU, sharing the parameters of the conv it replaces."""

    def __init__(self, conv: nn.Conv2d, use_cudnn: bool = True):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, bias=conv.bias is not None,
                         device='meta')
        self.weight, self.bias = conv.weight, conv.bias
        self._init_call(conv, use_cudnn)
        self.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_relu(x, self.weight, self.bias)


class ConvBNReLU(nn.Module, _ConvReLUCall):
    """An mmcv ``ConvModule`` (conv, BN, ReLU) whose BN was folded into the conv.

    Keeps the conv and the BN as children under their names (``conv``, ``bn``), so the
    state-dict keys are the ConvModule's; the BN only supplies the bias.
    """

    def __init__(self, module: ConvModule, use_cudnn: bool = True):
        super().__init__()
        self.conv = module.conv
        self.norm_name = module.norm_name
        self.add_module(self.norm_name, module.norm)
        self._init_call(module.conv, use_cudnn)
        self.train(module.training)

    @property
    def norm(self) -> nn.Module:
        return getattr(self, self.norm_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_relu(x, self.conv.weight, self.norm.bias)


@torch.no_grad()
def fold_batch_norm_into_conv_(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """Fold an eval-mode BN into the bias-free conv before it, in place.

    The conv gets the folded kernel; the BN keeps the folded bias and becomes the identity
    plus that bias (weight 1, running mean 0, running var ``1 - eps``), so ``bn(conv(x))``
    is unchanged. Computed in float64, stored in the parameters' dtypes.
    """
    stats = BatchNormStats(*(t.double() for t in batch_norm_stats(bn)[:4]), bn.eps)
    kernel, bias = fold_batch_norm(conv.weight.double(), stats)
    conv.weight.copy_(kernel)
    bn.bias.copy_(bias)
    bn.weight.fill_(1)
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)


def _relu_follows(module: RepVGGBlock) -> bool:
    return isinstance(module.se, nn.Identity) and isinstance(module.act, nn.ReLU)


def why_not_foldable(module: ConvModule) -> Optional[str]:
    """Why a ConvModule is not a foldable conv -> BN -> ReLU, or None if it is."""
    conv, norm = module.conv, getattr(module, 'norm', None)
    if tuple(module.order) != ('conv', 'norm', 'act'):
        return f'order {module.order}'
    if type(conv) is not nn.Conv2d or conv.padding_mode != 'zeros' or \
            isinstance(conv.padding, str) or module.with_explicit_padding:
        return f'{type(conv).__name__} with padding {conv.padding!r} ({conv.padding_mode})'
    if conv.bias is not None:
        return 'conv with bias before BN'
    if not isinstance(norm, _BatchNorm) or not norm.affine or not norm.track_running_stats:
        return f'norm {type(norm).__name__} is not an affine BN with running stats'
    if norm.training:
        return 'BN in training mode'
    if not isinstance(getattr(module, 'activate', None), nn.ReLU):
        return f'activation {type(getattr(module, "activate", None)).__name__}'
    return None


@dataclass
class ConvReLUChange:
    """What :func:`use_conv_relu` converted and what it left alone (name: why)."""

    blocks: int = 0
    conv_modules: int = 0
    skipped: dict = field(default_factory=dict)

    def describe(self) -> str:
        """E.g. ``'28 RepVGG blocks, 5 conv-BN-ReLU modules (left alone: 1 x BN in
        training mode)'``."""
        text = f'{self.blocks} RepVGG blocks, {self.conv_modules} conv-BN-ReLU modules'
        reasons = Counter(self.skipped.values())
        if reasons:
            text += ' (left alone: ' + '; '.join(f'{n} x {why}' for why, n in
                                                 reasons.most_common()) + ')'
        return text


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition('.')
    model.get_submodule(parent_name)._modules[attr] = new


def use_conv_relu(model: nn.Module, use_cudnn: bool = True) -> ConvReLUChange:
    """Make every fused RepVGG block and foldable ConvModule compute conv+bias+ReLU at once.

    In place, in eval mode only (BN statistics are folded). ``use_cudnn=False`` keeps the
    new modules on the plain ``F.conv2d`` + ReLU path (BN folded all the same). RepVGG
    blocks that are not re-parameterized, or end in squeeze-excitation, are left alone.
    """
    change = ConvReLUChange()
    for name, module in list(model.named_modules()):
        if isinstance(module, RepVGGBlock):
            if not module.is_fused:
                change.skipped[name] = 'RepVGG block not re-parameterized'
            elif not _relu_follows(module):
                change.skipped[name] = 'squeeze-excitation between conv and ReLU'
            elif not isinstance(module.fused, Conv2dReLU):
                module.fused = Conv2dReLU(module.fused, use_cudnn)
                module.act = nn.Identity()
                change.blocks += 1
        elif isinstance(module, ConvModule) and name:
            reason = why_not_foldable(module)
            if reason is not None:
                change.skipped[name] = reason
                continue
            fold_batch_norm_into_conv_(module.conv, module.norm)
            _replace(model, name, ConvBNReLU(module, use_cudnn))
            change.conv_modules += 1
    return change


def conv_relu_modules(model: nn.Module) -> list[_ConvReLUCall]:
    """The modules :func:`use_conv_relu` created inside ``model``."""
    return [m for m in model.modules() if isinstance(m, _ConvReLUCall)]
