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
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log

from ..errors import UserError, VerificationError
from ..fileio import check_output_location, claim_outputs, refuse_input_as_output
from ..models.block import RepVGGBlock
from ..models.reparam import reparameterize
from .builder import build_segmentor, load_config, read_segmentor_checkpoint

#: Input of the output check: ``(H, W)`` of one random image (output stride 8 -> 8x8).
VERIFY_SHAPE = (64, 64)
#: Largest accepted ``max |fused - train| / max |train|``; fp32 fusion is ~1e-6.
VERIFY_RTOL = 1e-3


class DeployError(UserError, ValueError):
    """A config or checkpoint that deploy cannot (or need not) fuse."""


class DeployVerificationError(VerificationError):
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


def _check_source(cfg: Config, source_name: str, checkpoint) -> None:
    """Refuse what cannot or need not be fused, with what to do instead (reading the
    checkpoint refuses NaN/Inf weights: :func:`repseg.checkpoint.read_state_dict`)."""
    if not _is_repvgg_backbone(cfg):
        backbone_type = (cfg.model.get('backbone') or {}).get('type')
        raise DeployError(f'{source_name}: deploy fuses RepVGG backbones, but this config '
                          f'builds backbone type {backbone_type!r}')
    if cfg.model.backbone.get('deploy', False):
        raise DeployError(f'{source_name} already builds a fused (deploy=True) backbone; its '
                          'checkpoints need no re-parameterization: test or infer with it '
                          'as it is')
    state, meta = read_segmentor_checkpoint(checkpoint)
    if meta.get('repseg_fused') or any('.fused.' in key for key in state):
        beside = Path(checkpoint).with_suffix('.py')
        config_hint = f' with its config {beside}' if beside.is_file() else (
            ' with the *_deploy.py config written next to it')
        raise DeployError(
            f"checkpoint '{checkpoint}' is already fused (re-parameterized"
            + (f" by tools/deploy.py from {meta['source_checkpoint']}"
               if meta.get('source_checkpoint') else '')
            + f'); there is nothing left to fuse. Use it as it is{config_hint}, e.g. '
            f'python tools/test.py {beside} {checkpoint}')


def deploy_segmentor(config: Union[str, os.PathLike, Config],
                     checkpoint: Union[str, os.PathLike],
                     out_dir: Union[str, os.PathLike],
                     verify_shape: Optional[Sequence[int]] = VERIFY_SHAPE,
                     force: bool = False) -> tuple[str, str]:
    """Fuse a train-time RepVGG segmentor checkpoint; write checkpoint and config.

    Both files are first written to a staging folder inside ``out_dir``, rebuilt from
    there and checked; only then are they moved into place, so a failed check never
    replaces earlier outputs.

    Args:
        config: the training config (path or loaded Config) of ``checkpoint``.
        checkpoint: whole-segmentor checkpoint with train-time RepVGG branches (as the
            Runner saves it, e.g. ``work_dirs/.../iter_7440.pth``).
        out_dir: folder for the outputs (created if needed).
        verify_shape: ``(H, W)`` of the random image used to check the written files;
            None skips the check.
        force: replace existing outputs (:func:`repseg.fileio.claim_outputs`).

    Returns:
        ``(fused checkpoint path, fused config path)``. The checkpoint is
        ``{'state_dict': ..., 'meta': {'repseg_fused': True, 'source_config': ...,
        'source_checkpoint': ..., 'dataset_meta': ...}}``.

    Raises:
        FileNotFoundError: ``config`` or ``checkpoint`` does not exist.
        ValueError: the config has no RepVGG backbone or is already a deploy config, the
            checkpoint is already fused or holds NaN/Inf
            (:class:`~repseg.checkpoint.CheckpointError`, a ValueError: the checkpoint
            does not fit the config).
        FileExistsError: the outputs exist and not ``force``, or one is an input.
        DeployVerificationError: the fused files do not reproduce the train-time output
            (relative difference above :data:`VERIFY_RTOL`); nothing is written.
    """
    out = check_output_location(out_dir, is_folder=True, what='OUT_DIR')
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    cfg = config if isinstance(config, Config) else load_config(config)
    source_name = str(config) if not isinstance(config, Config) else str(cfg.filename)
    stem = Path(cfg.filename or source_name).stem + '_deploy'
    ckpt_path, cfg_path = out / f'{stem}.pth', out / f'{stem}.py'
    inputs = {'checkpoint': checkpoint,
              'config': None if isinstance(config, Config) else config}
    for output in (ckpt_path, cfg_path):
        refuse_input_as_output(inputs, output)
    claim_outputs([ckpt_path, cfg_path], force, 'another OUT_DIR')
    _check_source(cfg, source_name, checkpoint)

    model = build_segmentor(cfg, checkpoint)
    fused = reparameterize(model)
    num_blocks = sum(isinstance(m, RepVGGBlock) for m in fused.modules())
    meta = dict(repseg_fused=True, source_config=source_name,
                source_checkpoint=str(checkpoint), dataset_meta=model.dataset_meta)
    state = {'state_dict': fused.state_dict(), 'meta': meta}
    del fused
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix='.deploy-staging-', dir=out))
    try:
        staged_ckpt, staged_cfg = staging / ckpt_path.name, staging / cfg_path.name
        torch.save(state, staged_ckpt)
        header = (f'# Fused (re-parameterized) RepVGG config written by tools/deploy.py from\n'
                  f'# {source_name}; weights: {ckpt_path.name}\n')
        staged_cfg.write_text(header + deploy_config(cfg).pretty_text)
        if verify_shape is not None:
            _verify(model, staged_cfg, staged_ckpt, verify_shape)
        os.replace(staged_ckpt, ckpt_path)
        os.replace(staged_cfg, cfg_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_log(f'fused {num_blocks} RepVGG blocks; wrote {ckpt_path} and {cfg_path}',
              logger='current')
    return str(ckpt_path), str(cfg_path)


def _verify(model: nn.Module, cfg_path: Path, ckpt_path: Path,
            verify_shape: Sequence[int]) -> None:
    """Rebuild the fused model from its files and compare its output with ``model``'s."""
    rebuilt = build_segmentor(cfg_path, ckpt_path)
    max_abs, max_rel = compare_outputs(model, rebuilt, verify_shape)
    shape = 'x'.join(map(str, verify_shape))
    if not max_rel <= VERIFY_RTOL:
        raise DeployVerificationError(
            f'the fused model does not reproduce the train-time model on a random '
            f'1x3x{shape} input: max abs diff {max_abs:.3g}, relative {max_rel:.3g} '
            f'(limit {VERIFY_RTOL:g}); nothing was written. This is a bug in repseg '
            '(or a layer it does not know how to fuse): please report it with the config')
    print_log(f'verified on a random 1x3x{shape} input: fused vs train-time logits max '
              f'abs diff {max_abs:.3g} (relative {max_rel:.3g})', logger='current')
