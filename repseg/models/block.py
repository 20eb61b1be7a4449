"""The RepVGG block: three branches while training, one 3x3 conv after fusion."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint

from .fusion import BatchNormStats, fold_batch_norm, identity_kernel, sum_branches

NormLayer = Callable[[int], nn.Module]


def batch_norm_stats(bn: nn.Module) -> BatchNormStats:
    """Read what fusion needs from any ``_BatchNorm`` (BN, SyncBN, mmcv's variants)."""
    return BatchNormStats(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


class ConvBN(nn.Module):
    """A bias-free convolution followed by batch norm (one branch of a block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, dilation: int, groups: int, norm_layer: NormLayer):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              dilation, groups, bias=False)
        self.bn = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_batch_norm(self.conv.weight, batch_norm_stats(self.bn))


class SqueezeExcite(nn.Module):
    """Channel gating of RepVGG-D2se: pool, 1x1 down (ReLU), 1x1 up (sigmoid).

    Pools over the whole H x W (the official code pools with a square window of the
    width, which is wrong on non-square inputs such as 1024x2048 street scenes).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.down = nn.Conv2d(channels, channels // reduction, 1)
        self.up = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.up(torch.relu(self.down(gate))))
        return x * gate


class RepVGGBlock(nn.Module):
    """``relu(se(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)))``, fusible into one 3x3 conv.

    The identity branch exists only when the block keeps shape (``in == out`` channels,
    stride 1). The 1x1 branch shares stride and groups with the 3x3 and, having no
    spatial extent, ignores dilation; with padding = dilation on the 3x3 both read the
    same centre pixel, which is what keeps fusion exact for dilated blocks.

    Args:
        in_channels, out_channels: channel counts.
        stride: 1 or 2, for every branch.
        dilation: dilation (and padding) of the 3x3 conv.
        groups: groups of the 3x3 and 1x1 convs.
        use_se: add squeeze-excitation after the branch sum (RepVGG-D2se).
        deploy: build the fused single conv directly (for fused checkpoints).
        norm_layer: callable ``channels -> BN module`` (BN, SyncBN, ...).
        with_cp: recompute the block in backward to save memory while training.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, use_se: bool = False,
                 deploy: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 with_cp: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.with_cp = with_cp
        # Kept by fused blocks too, so that train-time weights fused on load
        # (repseg.load_checkpoint) fold with the eps of the config's norm layer.
        self.bn_eps = float(norm_layer(1).eps)
        if deploy:
            self.fused = self._make_fused_conv()
        else:
            self.conv3x3 = ConvBN(in_channels, out_channels, 3, stride, dilation, dilation,
                                  groups, norm_layer)
            self.conv1x1 = ConvBN(in_channels, out_channels, 1, stride, 0, 1, groups, norm_layer)
            keeps_shape = in_channels == out_channels and stride == 1
            self.identity = norm_layer(in_channels) if keeps_shape else None
        self.se = SqueezeExcite(out_channels) if use_se else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    @property
    def is_fused(self) -> bool:
        return hasattr(self, 'fused')

    def _make_fused_conv(self, **factory) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride,
                         padding=self.dilation, dilation=self.dilation, groups=self.groups,
                         bias=True, **factory)

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_fused:
            out = self.fused(x)
        else:
            out = self.conv3x3(x) + self.conv1x1(x)
            if self.identity is not None:
                out = out + self.identity(x)
        return self.se(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = checkpoint.checkpoint(self._branches, x, use_reentrant=False)
        else:
            out = self._branches(x)
        return self.act(out)

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel and bias equal to the three branches in eval mode."""
        branches = [self.conv3x3.fused_kernel_bias(), self.conv1x1.fused_kernel_bias()]
        if self.identity is not None:
            kernel = identity_kernel(self.in_channels, self.groups,
                                     dtype=self.identity.weight.dtype,
                                     device=self.identity.weight.device)
            branches.append(fold_batch_norm(kernel, batch_norm_stats(self.identity)))
        return sum_branches(branches)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one conv (in place; a fused block is left as is)."""
        if self.is_fused:
            return
        kernel, bias = self.fused_kernel_bias()
        # Weights are overwritten at once: build on the meta device, skipping the init.
        fused = self._make_fused_conv(device='meta', dtype=kernel.dtype)
        fused.weight = nn.Parameter(kernel, requires_grad=self.conv3x3.conv.weight.requires_grad)
        fused.bias = nn.Parameter(bias, requires_grad=self.conv3x3.conv.weight.requires_grad)
        fused.train(self.training)
        del self.conv3x3, self.conv1x1, self.identity
        self.fused = fused
