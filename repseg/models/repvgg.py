"""The RepVGG network: a stem block, four stages of blocks, and a classifier."""
from __future__ import annotations

from numbers import Integral
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from .arch import ArchSpec, canonical_arch_name, get_arch
from .block import NormLayer, RepVGGBlock


def build_stem_and_stages(spec: ArchSpec, in_channels: int = 3, deploy: bool = False,
                          strides: Sequence[int] = (2, 2, 2, 2),
                          dilations: Optional[Sequence[Sequence[int]]] = None,
                          norm_layer: NormLayer = nn.BatchNorm2d,
                          with_cp: bool = False) -> tuple[RepVGGBlock, nn.ModuleList]:
    """The body shared by the classifier and the segmentation backbone.

    ``strides[i]`` is the stride of the first block of stage ``i + 1`` (the others use
    1); ``dilations[i][j]`` the dilation of block ``j`` of stage ``i + 1``.
    """
    if dilations is None:
        dilations = [[1] * n for n in spec.num_blocks]

    def block(cin, cout, stride, dilation, layer):
        return RepVGGBlock(cin, cout, stride, dilation, spec.groups_of_layer(layer),
                           spec.use_se, deploy, norm_layer, with_cp)

    stem = block(in_channels, spec.stem_channels, 2, 1, layer=0)
    stages, channels, layer = nn.ModuleList(), spec.stem_channels, 1
    for num, width, stride, stage_dilations in zip(spec.num_blocks, spec.stage_channels,
                                                   strides, dilations):
        blocks = []
        for j in range(num):
            blocks.append(block(channels, width, stride if j == 0 else 1,
                                stage_dilations[j], layer))
            channels, layer = width, layer + 1
        stages.append(nn.Sequential(*blocks))
    return stem, stages


class ClassifierHead(nn.Module):
    """Global average pooling and one linear layer."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class RepVGG(nn.Module):
    """RepVGG for ImageNet classification.

    Args:
        arch: a name from :data:`repseg.ARCH_SETTINGS` (``'B2'`` or ``'RepVGG-B2'``).
        num_classes: classifier outputs; 0 builds no classifier (``forward`` then
            returns the last feature map).
        in_channels: input channels.
        deploy: build fused blocks (plain 3x3 convs), e.g. to load fused weights.
    """

    def __init__(self, arch: str, num_classes: int = 1000, in_channels: int = 3,
                 deploy: bool = False):
        super().__init__()
        self.arch = canonical_arch_name(arch)
        for name, value, least in (('num_classes', num_classes, 0),
                                   ('in_channels', in_channels, 1)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
                raise InvalidArgumentError(
                    f'{name} must be an integer >= {least}, got {value!r}'
                    + (' (0 builds no classifier)' if name == 'num_classes' else ''))
        spec = get_arch(self.arch)
        self.stem, self.stages = build_stem_and_stages(spec, in_channels, deploy)
        self.num_features = spec.stage_channels[-1]
        self.head = ClassifierHead(self.num_features, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return x if self.head is None else self.head(x)


def create_model(arch: str, num_classes: int = 1000, deploy: bool = False, **kwargs) -> RepVGG:
    """Build a RepVGG classifier: ``create_model('B2')`` or ``create_model('RepVGG-B2')``.

    Unknown names raise ``ValueError`` listing the valid ones; so does a negative
    ``num_classes``.
    """
    return RepVGG(arch, num_classes=num_classes, deploy=deploy, **kwargs)
