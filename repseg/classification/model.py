"""repseg's RepVGG inside mmpretrain's ``ImageClassifier``, and its weights.

The backbone is repseg's own (:class:`repseg.mmseg.backbone.RepVGGBackbone`, registered
in mmpretrain's registry as ``RepsegRepVGG``: mmpretrain's own ``RepVGG`` keeps its
name), so fusion and every checkpoint layout work; mmpretrain supplies the rest of the
classifier (``GlobalAveragePooling`` + ``LinearClsHead``).

A classifier checkpoint is any file :func:`repseg.load_checkpoint` reads (the authors'
``RepVGG-B2-train.pth``, timm, mmpretrain, repseg; train-time or fused) or one written by
``tools/train.py`` for a classification config (an ``ImageClassifier`` state dict:
``backbone.stem...``, ``head.fc...``). All load through :func:`load_classifier_weights`,
which presents the classifier to the loader under repseg's own key names.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch.nn as nn
from mmpretrain.registry import HOOKS, MODEL_WRAPPERS, MODELS, TRANSFORMS

from ..checkpoint import CheckpointError, LoadReport, load_checkpoint, read_state_dict
from ..checkpoint.layouts import CLASSIFIER, LAYOUTS
from ..checkpoint.loader import detect_layout, guess_arch, to_repseg_keys
from ..mmseg.backbone import RepVGGBackbone
from ..mmseg.builder import plain_bn
from ..mmseg.ddp import DeviceAwareDDP
from ..mmseg.frame_guard import CheckedLoadImageFromFile
from ..mmseg.hooks import AtomicCheckpointHook
from ..mmseg.nonfinite import NonFiniteLossHook
from ..models.arch import canonical_arch_name, get_arch

#: The backbone's type name in mmpretrain configs.
BACKBONE_TYPE = 'RepsegRepVGG'
MODELS.register_module(name=BACKBONE_TYPE, module=RepVGGBackbone)
# The guards repseg's tools put into every config (repseg.mmseg.config.prepare_config),
# found by name in a config of default_scope 'mmpretrain'.
for _registry, _guard in ((HOOKS, AtomicCheckpointHook), (HOOKS, NonFiniteLossHook),
                          (MODEL_WRAPPERS, DeviceAwareDDP),
                          (TRANSFORMS, CheckedLoadImageFromFile)):
    _registry.register_module(module=_guard)

#: mmengine's ``ImageClassifier`` state dicts put the backbone under this prefix.
BACKBONE_PREFIX = 'backbone.'

Source = Union[str, os.PathLike, Mapping]


def head_channels(arch: str) -> int:
    """Channels of the last stage of ``arch``: the head's ``in_channels``."""
    return get_arch(canonical_arch_name(arch)).stage_channels[-1]


def classifier_config(arch: str, num_classes: int = 1000, deploy: bool = False) -> dict:
    """The model config of a RepVGG ``ImageClassifier`` (GAP + linear head)."""
    return dict(
        type='ImageClassifier',
        backbone=dict(type=BACKBONE_TYPE, arch=canonical_arch_name(arch), out_indices=(3,),
                      dilation=None, deploy=deploy),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes,
                  in_channels=head_channels(arch), topk=(1, 5) if num_classes >= 5 else (1,)))


class _RepVGGView(nn.Module):
    """A classifier's backbone and linear layer under repseg's key names (``stem.*``,
    ``stages.*``, ``head.fc.*``), sharing their tensors, for :func:`load_checkpoint`."""

    def __init__(self, backbone: nn.Module, fc: nn.Linear):
        super().__init__()
        self.stem, self.stages = backbone.stem, backbone.stages
        self.head = nn.Module()
        self.head.fc = fc


def _without_backbone_prefix(state: Mapping) -> dict:
    """An ``ImageClassifier`` state dict (``backbone.stem...``) under the keys the loader
    reads; other state dicts come back as they are. mmpretrain's own layout keeps
    working: its ``backbone.`` prefix is optional to the loader."""
    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        return dict(state)
    return {k[len(BACKBONE_PREFIX):] if k.startswith(BACKBONE_PREFIX) else k: v
            for k, v in state.items()}


def read_classifier_state(source: Source) -> tuple[dict, str]:
    """The flat state dict of a classifier checkpoint source and a name for messages."""
    state, name = read_state_dict(source)
    return _without_backbone_prefix(state), name


def checkpoint_arch(state: Mapping, name: str = 'checkpoint') -> Optional[str]:
    """The RepVGG arch whose depths and widths the weights have (None if none fits)."""
    renamed, _ = to_repseg_keys(state, detect_layout(state, name))
    return guess_arch(renamed)


def checkpoint_classes(state: Mapping, name: str = 'checkpoint') -> Optional[int]:
    """How many classes the checkpoint's linear layer has (None: no classifier)."""
    layout = detect_layout(state, name)
    weight = state.get(f'{LAYOUTS[layout.name].classifier}.weight')
    return None if weight is None else int(weight.shape[0])


def is_fused_state(state: Mapping) -> bool:
    """Whether every RepVGG block of ``state`` is fused (deploy weights)."""
    renamed, _ = to_repseg_keys(state, detect_layout(state))
    return not any('.conv3x3.' in k for k in renamed)


def load_classifier_weights(model: nn.Module, source: Source,
                            strict: bool = True) -> LoadReport:
    """Load RepVGG classifier weights of any layout into an ``ImageClassifier`` built on
    :data:`BACKBONE_TYPE` with a ``LinearClsHead``; strict by default, so a checkpoint of
    another arch or class count is refused with the keys that do not fit (and the arch
    it looks like). Train-time weights fuse on load into a ``deploy=True`` backbone."""
    backbone, head = getattr(model, 'backbone', None), getattr(model, 'head', None)
    if not isinstance(backbone, RepVGGBackbone) or not isinstance(getattr(head, 'fc', None),
                                                                  nn.Linear):
        raise CheckpointError(
            f'{type(model).__name__} is not a RepVGG classifier (backbone {BACKBONE_TYPE} '
            'and a linear head such as LinearClsHead); use a configs/classification config')
    state, name = read_classifier_state(source)
    if f'{CLASSIFIER}.weight' not in to_repseg_keys(state, detect_layout(state, name))[0]:
        raise CheckpointError(
            f'{name} holds no classifier (no linear layer: a segmentation backbone?); a '
            'classifier checkpoint has one, e.g. RepVGG-B2-train.pth, timm or mmpretrain '
            'ImageNet weights. To fine-tune from a backbone, put it in '
            'model.backbone.init_cfg (configs/classification/repvgg_finetune.py)')
    try:
        return load_checkpoint(_RepVGGView(backbone, head.fc), state, strict=strict)
    except CheckpointError as error:
        raise type(error)(f'{name}: {error}') from None


def build_classifier(cfg, checkpoint: Optional[Source] = None) -> nn.Module:
    """``cfg``'s classifier with its data preprocessor, in eval mode on the CPU: plain BN
    (one process), no backbone ``init_cfg`` (the weights are ``checkpoint``'s, loaded
    strictly by :func:`load_classifier_weights`, or the random init)."""
    model_cfg = plain_bn(cfg.model)
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    model_cfg['backbone'].pop('init_cfg', None)
    model = MODELS.build(model_cfg)
    if checkpoint is not None:
        load_classifier_weights(model, checkpoint)
    return model.eval()
