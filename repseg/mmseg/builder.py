"""Segmentors for repseg's tools: build a model from a config and load its weights.

``tools/train.py``, ``test.py``, ``infer.py`` and ``deploy.py`` share these, so a
checkpoint behaves the same in every tool. Reading a config lives in
:mod:`repseg.mmseg.config_file` (re-exported here: ``load_config`` and its errors are
public API), checking in :mod:`repseg.mmseg.preflight`.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Optional, Union

import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from ..checkpoint import CheckpointError, load_checkpoint, read_state_dict
from ..checkpoint.loader import (describe_mismatch, key_mismatch, load_checkpoint_file,
                                 refuse_integer_weights)
from .backbone import RepVGGBackbone
from .config_file import (ConfigKeyError, ConfigSyntaxError, apply_cfg_options, load_config,
                          read_config)

__all__ = ['ConfigKeyError', 'ConfigSyntaxError', 'apply_cfg_options', 'build_segmentor',
           'checked_weights', 'load_config', 'load_segmentor_weights', 'plain_bn',
           'read_config', 'read_segmentor_checkpoint', 'segmentor_of', 'use_plain_bn']

#: BN types that need a process group; on CPU or in one process they become plain BN.
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')

ConfigLike = Union[str, os.PathLike, Config]


def plain_bn(obj: Any) -> Any:
    """A copy of a nested config (dicts, lists) with every SyncBN ``norm_cfg`` as BN.

    Dicts come back as ``ConfigDict`` so attribute access (``test_cfg.mode``, which
    mmseg's inference uses) keeps working.
    """
    if isinstance(obj, Mapping):
        out = ConfigDict({k: plain_bn(v) for k, v in obj.items()})
        norm = out.get('norm_cfg')
        if isinstance(norm, Mapping) and norm.get('type') in SYNC_BN_TYPES:
            out['norm_cfg'] = {**norm, 'type': 'BN'}
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_bn(v) for v in obj)
    return copy.deepcopy(obj)


def use_plain_bn(cfg: Config) -> Config:
    """Replace every SyncBN ``norm_cfg`` in ``cfg.model`` by BN (in place; returns cfg).

    SyncBN needs a CUDA process group; a CPU or single-process run needs plain BN. The
    state dict keys are the same, so checkpoints move freely between the two.
    """
    cfg.model = plain_bn(cfg.model)
    return cfg


def _default_dataset_meta() -> dict:
    from mmseg.datasets import CityscapesDataset

    return dict(classes=CityscapesDataset.METAINFO['classes'],
                palette=CityscapesDataset.METAINFO['palette'])


def _dataset_meta_of(meta: Mapping) -> Optional[dict]:
    """Classes and palette from a checkpoint's ``meta``, if it records them."""
    if meta.get('dataset_meta'):
        return dict(meta['dataset_meta'])
    if meta.get('CLASSES'):  # mmseg 0.x checkpoints
        return dict(classes=meta['CLASSES'], palette=meta.get('PALETTE'))
    return None


def _fused_mismatch_hint(backbone: nn.Module, state: Mapping) -> str:
    if not backbone.deploy and any('.fused.' in k or 'reparam' in k for k in state):
        return ('\nThe checkpoint holds fused (re-parameterized) RepVGG weights but the config '
                'builds train-time branches: use the *_deploy.py config written next to the '
                'checkpoint by tools/deploy.py (or set model.backbone.deploy=True).')
    return ''


def segmentor_of(model: nn.Module) -> nn.Module:
    """The segmentor inside DDP and test-time-augmentation wrappers."""
    while True:
        if is_model_wrapper(model) or type(model).__name__.endswith('TTAModel'):
            model = model.module
        else:
            return model


def read_segmentor_checkpoint(checkpoint) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a whole-segmentor checkpoint (read by
    :func:`repseg.checkpoint.loader.load_checkpoint_file`; ``state_dict`` containers and
    ``module.`` prefixes handled by :func:`repseg.checkpoint.read_state_dict`)."""
    obj = load_checkpoint_file(checkpoint)
    meta = obj.get('meta') if isinstance(obj, Mapping) else None
    state, _ = read_state_dict(obj, f"checkpoint '{checkpoint}'")
    return state, dict(meta) if isinstance(meta, Mapping) else {}


def load_segmentor_weights(model: nn.Module, checkpoint, loaded: Optional[tuple] = None) -> dict:
    """Load a whole-segmentor checkpoint strictly; return its ``meta``.

    A RepVGG backbone loads through :func:`repseg.load_checkpoint`, so train-time weights
    fuse on load into a deploy-config model, and a checkpoint of another arch is named
    (``the checkpoint looks like RepVGG-B2``). Raises :class:`CheckpointError` on missing,
    unexpected or wrong-shape tensors. ``loaded``: the ``(state, meta)`` of
    ``checkpoint`` if already read.
    """
    state, meta = loaded or read_segmentor_checkpoint(checkpoint)
    segmentor = segmentor_of(model)
    refuse_integer_weights(state, segmentor.state_dict(), f"checkpoint '{checkpoint}'")
    backbone = getattr(segmentor, 'backbone', None)
    rest = state
    if isinstance(backbone, RepVGGBackbone):
        prefix = 'backbone.'
        rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
        backbone_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not backbone_state:
            raise CheckpointError(f"'{checkpoint}' holds no backbone weights: is it a "
                                  'segmentor checkpoint (as tools/train.py writes them)?')
        try:
            load_checkpoint(backbone, backbone_state, strict=True)
        except CheckpointError as error:
            raise CheckpointError(
                f"checkpoint '{checkpoint}' does not fit the RepVGG-{backbone.arch} backbone "
                f'of the config: {error}. Test with the config the checkpoint was trained '
                'with.' + _fused_mismatch_hint(backbone, backbone_state)) from None
    target = {k: v for k, v in segmentor.state_dict().items()
              if not (isinstance(backbone, RepVGGBackbone) and k.startswith('backbone.'))}
    parts = describe_mismatch(*key_mismatch(rest, target), limit=6)
    if parts:
        raise CheckpointError(f"checkpoint '{checkpoint}' does not fit the model of the "
                              f"config: {'; '.join(parts)}. Test with the config the "
                              'checkpoint was trained with.')
    segmentor.load_state_dict({**segmentor.state_dict(), **rest}, strict=True)
    print_log(f'loaded segmentor checkpoint {checkpoint}', logger='current')
    return dict(meta)


def build_segmentor(cfg: ConfigLike, checkpoint: Optional[Union[str, os.PathLike]] = None,
                    device: str = 'cpu') -> nn.Module:
    """Build an mmseg segmentor from a config, optionally load a checkpoint, set eval mode.

    The model is built with plain BN (:func:`use_plain_bn`, on a copy: ``cfg`` itself is
    not changed), since inference runs in one process. No backbone ``Pretrained`` init is
    run: weights come from ``checkpoint`` (a whole-segmentor file as written by mmengine's
    Runner or ``tools/deploy.py``, loaded strictly by :func:`load_segmentor_weights`, so
    train-time RepVGG weights fuse on load into a ``*_deploy.py`` config) or stay at their
    random init.

    Args:
        cfg: a config path or a loaded :class:`mmengine.config.Config`.
        checkpoint: whole-segmentor checkpoint file, or None.
        device: where to put the model (``'cpu'``, ``'cuda:0'``, ...).

    Returns:
        The segmentor in eval mode, with ``model.cfg`` (the config) and
        ``model.dataset_meta`` (the checkpoint's, else Cityscapes classes and palette).
    """
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    register_all_modules(init_default_scope=True)
    model_cfg = plain_bn(cfg.model)
    model_cfg.pop('pretrained', None)
    model = MODELS.build(model_cfg)
    dataset_meta = None
    if checkpoint is not None:
        dataset_meta = _dataset_meta_of(load_segmentor_weights(model, checkpoint))
    model.cfg = cfg
    model.dataset_meta = dataset_meta or _default_dataset_meta()
    return model.to(device).eval()


def checked_weights(cfg: Config, checkpoint, loaded: Optional[tuple] = None) -> dict:
    """The state dict of ``cfg``'s segmentor with ``checkpoint`` loaded strictly
    (:func:`load_segmentor_weights`), built on the CPU before the Runner, so that a
    checkpoint that does not fit fails at once."""
    probe = build_segmentor(cfg)
    load_segmentor_weights(probe, checkpoint, loaded)
    return segmentor_of(probe).state_dict()
