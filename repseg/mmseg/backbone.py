"""RepVGG as an mmsegmentation backbone, with the paper's dilation plans."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import load_checkpoint
from ..checkpoint.sources import CheckpointSourceError, is_foreign_url, resolve_checkpoint
from ..errors import InvalidArgumentError, UserError
from ..models.arch import canonical_arch_name, get_arch
from ..models.dilation import plan_strides_and_dilations
from ..models.reparam import fused_block_count
from ..models.repvgg import build_stem_and_stages

PRETRAINED_HELP = (
    "RepVGG ImageNet weights are published by the paper's authors (files named "
    "RepVGG-<ARCH>-train.pth, e.g. RepVGG-B2-train.pth, linked from "
    "https://github.com/DingXiaoH/RepVGG), by timm (hub names such as "
    "timm/repvgg_b2.rvgg_in1k) and by mmpretrain (URLs); all load (README, 'Pretrained "
    "weights'). Put the file at {path}, or point the config elsewhere with "
    "--cfg-options model.backbone.init_cfg.checkpoint=PATH_URL_OR_HUB_NAME, or train from "
    "scratch with --cfg-options model.backbone.init_cfg=None.")


class PretrainedNotFoundError(UserError, FileNotFoundError):
    """The backbone's ``Pretrained`` checkpoint cannot be found or fetched."""


def pretrained_checkpoint(init_cfg) -> Optional[str]:
    """The checkpoint source of a ``dict(type='Pretrained', checkpoint=...)`` init_cfg."""
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        return init_cfg.get('checkpoint')
    return None


def check_pretrained_exists(init_cfg) -> None:
    """Make sure a ``Pretrained`` checkpoint is at hand before a run starts.

    A local file must exist; a URL or hub name is fetched into its cache now (a cached
    one costs nothing), so that an offline machine fails here with the cache path to fill
    rather than after the Runner is built. Schemes of mmengine's own loader
    (``open-mmlab://``, ...) are left to mmengine. Raises :class:`PretrainedNotFoundError`.
    """
    source = pretrained_checkpoint(init_cfg)
    if not source or is_foreign_url(source):
        return
    try:
        path = resolve_checkpoint(source)
    except CheckpointSourceError as error:
        raise PretrainedNotFoundError(f'pretrained backbone checkpoint: {error}') from None
    if not path.is_file():
        raise PretrainedNotFoundError(f'pretrained backbone checkpoint not found: {path}. '
                                      + PRETRAINED_HELP.format(path=path))


@MODELS.register_module(name='RepVGG')
class RepVGGBackbone(BaseModule):
    """RepVGG backbone for mmsegmentation.

    Args:
        arch: RepVGG variant, e.g. ``'B2'`` or ``'RepVGG-B1g2'``.
        in_channels: input image channels.
        out_indices: which of stages 1-4 (indices 0-3) to return.
        dilation: ``None`` (classification strides, output stride 32), ``'full'`` or
            ``'fast'`` (output stride 8, paper section 4.3; see
            :mod:`repseg.models.dilation`).
        frozen_stages: freeze the stem (0) and stages 1..``frozen_stages``; -1 freezes
            nothing. Frozen parts keep ``requires_grad=False`` and BN in eval mode.
        norm_cfg: BN config (``dict(type='BN')`` or ``dict(type='SyncBN')``).
        norm_eval: keep every BN in eval mode while training (frozen statistics).
        with_cp: gradient checkpointing per block (saves memory, costs time).
        deploy: build fused blocks (for fused checkpoints made by ``tools/deploy.py``).
        init_cfg: ``dict(type='Pretrained', checkpoint=SOURCE)`` loads ImageNet weights of
            any layout :func:`repseg.load_checkpoint` reads (classifier dropped); SOURCE is
            a file (``.pth``, ``.safetensors``), an http(s) URL or a hub name such as
            ``'timm/repvgg_b2.rvgg_in1k'``.
    """

    def __init__(self, arch: str = 'B2', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), dilation: Optional[str] = 'full',
                 frozen_stages: int = -1, norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg)
        self.arch = canonical_arch_name(arch)
        spec = get_arch(self.arch)
        if any(not 0 <= i <= 3 for i in out_indices):
            raise InvalidArgumentError(f'out_indices must index stages 1-4 as 0-3, got '
                                       f'{tuple(out_indices)}')
        if not -1 <= frozen_stages <= 4:
            raise InvalidArgumentError(f'frozen_stages must be in -1..4, got {frozen_stages}')
        self.out_indices = tuple(out_indices)
        self.dilation = dilation
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        strides, dilations = plan_strides_and_dilations(spec.num_blocks, dilation)
        self.stem, self.stages = build_stem_and_stages(
            spec, in_channels, deploy, strides, dilations,
            norm_layer=lambda channels: build_norm_layer(norm_cfg, channels)[1],
            with_cp=with_cp)
        self.out_channels = tuple(spec.stage_channels[i] for i in self.out_indices)
        self._freeze_stages()

    @property
    def deploy(self) -> bool:
        """Whether every block is fused (after ``deploy=True`` or ``reparameterize``)."""
        fused, blocks = fused_block_count(self)
        return fused == blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.out_indices:
                outputs.append(x)
        return tuple(outputs)

    def init_weights(self):
        """Load the ``Pretrained`` checkpoint with repseg's loader (any layout)."""
        path = pretrained_checkpoint(self.init_cfg)
        if path is None:
            super().init_weights()
            return
        check_pretrained_exists(self.init_cfg)
        load_checkpoint(self, path, strict=True)
        self._is_init = True

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.stages[:self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
