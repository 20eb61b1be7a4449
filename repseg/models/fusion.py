"""Structural re-parameterization math, as pure functions on tensors.

A RepVGG block computes ``BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)``. Every term is
linear in ``x`` at inference time, so the sum is one 3x3 convolution. These functions
build that convolution; they know nothing about modules, so a test can check them in
float64 against direct convolutions.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F


class BatchNormStats(NamedTuple):
    """The four tensors and the eps of a BatchNorm layer in eval mode."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


def fold_batch_norm(kernel: torch.Tensor, bn: BatchNormStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN that follows a bias-free conv into the conv.

    ``BN(W * x) = W' * x + b'`` with ``W' = W * gamma / std`` and
    ``b' = beta - mean * gamma / std``, where ``std = sqrt(var + eps)``.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def identity_kernel(channels: int, groups: int = 1, *, dtype=None, device=None) -> torch.Tensor:
    """A 1x1 grouped-conv kernel that maps ``x`` to itself.

    A grouped conv sees ``channels // groups`` input channels per output channel, so the
    one for output ``i`` sits at input position ``i % (channels // groups)``.
    """
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, 1, 1, dtype=dtype, device=device)
    outputs = torch.arange(channels, device=device)
    kernel[outputs, outputs % in_per_group, 0, 0] = 1
    return kernel


def pad_to_size(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred odd-sized kernel (e.g. 1x1) to ``size x size``."""
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0 or (size - kernel.shape[-1]) % 2:
        raise ValueError(f"cannot centre a {kernel.shape[-1]}x{kernel.shape[-1]} kernel in {size}x{size}")
    return F.pad(kernel, [pad] * 4) if pad else kernel


def sum_branches(branches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Add (kernel, bias) pairs of parallel convs after centring every kernel in ``size``.

    Parallel convs with the same stride, dilation and groups whose kernels share a centre
    sum to one conv. With dilation ``d`` a 3x3 uses padding ``d`` and a 1x1 padding 0, so
    both read the same centre pixel and the sum stays exact.
    """
    kernels, biases = zip(*branches)
    kernel = sum(pad_to_size(k, size) for k in kernels)
    return kernel, sum(biases)
