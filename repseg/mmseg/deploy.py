"""Re-parameterize a trained segmentor for inference: a fused checkpoint and its config.

Training keeps RepVGG's three branches per block; inference wants one 3x3 conv per
block (paper section 3.3). :func:`deploy_segmentor` fuses a train-time checkpoint and
writes two files that ``tools/test.py`` and ``tools/infer.py`` load as they are:
``<config stem>_deploy.pth`` and ``<config stem>_deploy.py`` (the full config with
``model.backbone.deploy=True``). Before trusting them it rebuilds the model from the
written files and compares its output with the train-time model's.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log

from ..fileio import save_atomically, write_text_atomically
from ..models.block import RepVGGBlock
from ..models.reparam import reparameterize
from .builder import build_segmentor, load_config

#: Input of the output check: ``(H, W)`` of one random image (output stride 8 -> 8x8).
VERIFY_SHAPE = (64, 64)
#: Largest accepted ``max |fused - train| / max |train|``; fp32 fusion is ~1e-6.
VERIFY_RTOL = 1e-3


class DeployVerificationError(RuntimeError):
    """The fused model's output differs from the train-time model's."""


def deploy_config(cfg: Config) -> Config:
    """A copy of ``cfg`` that builds the fused model and loads no pretrained weights.

    Sets ``model.backbone.deploy=True`` and ``model.backbone.init_cfg=None`` and drops
    ``model.pretrained``; everything else (norm settings included) stays as it is.
    """
    fused = copy.deepcopy(cfg)
    fused.model.backbone.deploy = True
    fused.model.backbone.init_cfg = None
    fused.model.pop('pretrained', None)
    return fused


def compare_outputs(reference: nn.Module, candidate: nn.Module,
                    shape: Sequence[int] = VERIFY_SHAPE, seed: int = 0) -> tuple[float, float]:
    """Max absolute and relative difference of two segmentors' logits on a random image.

    Both run their tensor-mode forward (``_forward``) in their current mode on the same
    ``1x3xHxW`` normal-random input; relative means divided by ``max |reference|``.
    """
    param = next(reference.parameters())
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(1, 3, *shape, generator=generator, dtype=param.dtype).to(param.device)
    with torch.no_grad():
        expected = reference._forward(inputs)
        actual = candidate._forward(inputs.to(next(candidate.parameters()).device))
    max_abs = (actual.to(expected.device) - expected).abs().max().item()
    scale = expected.abs().max().item()
    return max_abs, max_abs / scale if scale > 0 else max_abs


def _is_repvgg_backbone(cfg: Config) -> bool:
    backbone = cfg.model.get('backbone') or {}
    return str(backbone.get('type', '')).split('.')[-1] == 'RepVGG'


def deploy_segmentor(config: Union[str, os.PathLike, Config],
                     checkpoint: Union[str, os.PathLike],
                     out_dir: Union[str, os.PathLike],
                     verify_shape: Optional[Sequence[int]] = VERIFY_SHAPE) -> tuple[str, str]:
    """Fuse a train-time RepVGG segmentor checkpoint; write checkpoint and config.

    Args:
        config: the training config (path or loaded Config) of ``checkpoint``.
        checkpoint: whole-segmentor checkpoint with train-time RepVGG branches (as the
            Runner saves it, e.g. ``work_dirs/.../iter_7440.pth``).
        out_dir: folder for the outputs (created if needed).
        verify_shape: ``(H, W)`` of the random image used to check the written files;
            None skips the check.

    Returns:
        ``(fused checkpoint path, fused config path)``. The checkpoint is
        ``{'state_dict': ..., 'meta': {'repseg_fused': True, 'source_config': ...,
        'source_checkpoint': ..., 'dataset_meta': ...}}``.

    Raises:
        FileNotFoundError: ``config`` or ``checkpoint`` does not exist.
        ValueError: the config has no RepVGG backbone or is already a deploy config
            (:class:`~repseg.checkpoint.CheckpointError`, a ValueError: the checkpoint
            does not fit the config).
        DeployVerificationError: the fused files do not reproduce the train-time output
            (relative difference above :data:`VERIFY_RTOL`); nothing is left written.
    """
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    cfg = config if isinstance(config, Config) else load_config(config)
    source_name = str(config) if not isinstance(config, Config) else str(cfg.filename)
    if not _is_repvgg_backbone(cfg):
        backbone_type = (cfg.model.get('backbone') or {}).get('type')
        raise ValueError(f'{source_name}: deploy fuses RepVGG backbones, but this config '
                         f'builds backbone type {backbone_type!r}')
    if cfg.model.backbone.get('deploy', False):
        raise ValueError(f'{source_name} already builds a fused (deploy=True) backbone; its '
                         'checkpoints need no re-parameterization')
    out = Path(out_dir)
    stem = Path(cfg.filename or source_name).stem + '_deploy'
    ckpt_path, cfg_path = out / f'{stem}.pth', out / f'{stem}.py'
    if ckpt_path.resolve() == Path(checkpoint).resolve():
        raise ValueError(f'the fused checkpoint would overwrite its source {checkpoint}; '
                         'choose another OUT_DIR')

    model = build_segmentor(cfg, checkpoint)
    fused = reparameterize(model)
    num_blocks = sum(isinstance(m, RepVGGBlock) for m in fused.modules())
    meta = dict(repseg_fused=True, source_config=source_name,
                source_checkpoint=str(checkpoint), dataset_meta=model.dataset_meta)
    state = {'state_dict': fused.state_dict(), 'meta': meta}
    del fused
    out.mkdir(parents=True, exist_ok=True)
    save_atomically(state, ckpt_path)
    header = (f'# Fused (re-parameterized) RepVGG config written by tools/deploy.py from\n'
              f'# {source_name}; weights: {ckpt_path.name}\n')
    write_text_atomically(cfg_path, header + deploy_config(cfg).pretty_text)
    print_log(f'fused {num_blocks} RepVGG blocks; wrote {ckpt_path} and {cfg_path}',
              logger='current')

    if verify_shape is not None:
        rebuilt = build_segmentor(cfg_path, ckpt_path)
        max_abs, max_rel = compare_outputs(model, rebuilt, verify_shape)
        shape = 'x'.join(map(str, verify_shape))
        if not max_rel <= VERIFY_RTOL:
            ckpt_path.unlink()
            cfg_path.unlink()
            raise DeployVerificationError(
                f'the fused model does not reproduce the train-time model on a random '
                f'1x3x{shape} input: max abs diff {max_abs:.3g}, relative {max_rel:.3g} '
                f'(limit {VERIFY_RTOL:g}); removed {ckpt_path.name} and {cfg_path.name}')
        print_log(f'verified on a random 1x3x{shape} input: fused vs train-time logits max '
                  f'abs diff {max_abs:.3g} (relative {max_rel:.3g})', logger='current')
    return str(ckpt_path), str(cfg_path)
