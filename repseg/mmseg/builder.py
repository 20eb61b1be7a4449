"""Configs and segmentors for repseg's tools: load a config, adapt it, build a model.

``tools/train.py``, ``test.py``, ``infer.py`` and ``deploy.py`` share these, so a
config override or a checkpoint behaves the same in every tool.
"""
from __future__ import annotations

import ast
import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from ..checkpoint import CheckpointError, load_checkpoint, read_state_dict
from ..checkpoint.loader import describe_mismatch, key_mismatch, load_checkpoint_file
from ..errors import UserError
from .backbone import RepVGGBackbone

#: BN types that need a process group; on CPU or in one process they become plain BN.
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')

#: Top-level keys mmengine's Runner reads although most configs leave them out, so
#: ``--cfg-options randomness.seed=0`` or ``work_dir=...`` is not mistaken for a typo.
RUNNER_KEYS = frozenset({
    'auto_scale_lr', 'cfg', 'compile', 'custom_hooks', 'default_hooks', 'default_scope',
    'env_cfg', 'experiment_name', 'launcher', 'load_from', 'log_level', 'log_processor',
    'model', 'model_wrapper_cfg', 'optim_wrapper', 'param_scheduler', 'randomness',
    'resume', 'test_cfg', 'test_dataloader', 'test_evaluator', 'train_cfg',
    'train_dataloader', 'val_cfg', 'val_dataloader', 'val_evaluator', 'visualizer',
    'work_dir',
})
#: Top-level keys repseg's tools read (:mod:`repseg.mmseg.config`, ``preflight``).
REPSEG_KEYS = frozenset({'skip_data_check', 'nonfinite_loss_limit'})


ConfigLike = Union[str, os.PathLike, Config]


class ConfigKeyError(UserError, KeyError):
    """A ``--cfg-options`` key that does not fit the config (likely a typo)."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0])


class ConfigSyntaxError(UserError, ValueError):
    """A config file (or one of its ``_base_`` files) that is not valid Python."""


def _close_matches(word: str, choices, parent: str) -> str:
    matches = difflib.get_close_matches(word, [str(c) for c in choices], n=3, cutoff=0.6)
    prefix = parent + '.' if parent else ''
    return (f"; did you mean {' or '.join(repr(prefix + m) for m in matches)}?"
            if matches else '')


def _path_problems(tree: Mapping, key: str) -> Iterator[str]:
    """Why the override ``key`` has no place in the config ``tree`` (nothing if it has).

    A key may add a new leaf to an existing dict (``model.backbone.with_cp``), but every
    part before the leaf must exist, list indices must be in range, and a new top-level
    key must be one mmengine's Runner (or repseg) reads. The message names the closest
    existing names.
    """
    parts = key.split('.')
    node: Any = tree
    for depth, part in enumerate(parts):
        here = '.'.join(parts[:depth + 1])
        is_leaf = depth == len(parts) - 1
        if isinstance(node, (list, tuple)):
            if not (part.isdigit() and int(part) < len(node)):
                yield (f"--cfg-options key {key!r}: {'.'.join(parts[:depth]) or 'the config'} "
                       f'is a list of {len(node)} items, so {part!r} is no valid index')
                return
            node = node[int(part)]
        elif isinstance(node, Mapping):
            if part in node:
                node = node[part]
            elif depth == 0 and part in RUNNER_KEYS | REPSEG_KEYS:
                node = {}  # a Runner key the config leaves out: anything below is new
            elif is_leaf and depth > 0:
                return  # a new leaf in an existing dict
            else:
                what = 'top-level key' if depth == 0 else 'key'
                yield (f'--cfg-options key {key!r}: the config has no {what} {here!r}'
                       + _close_matches(part, node.keys(), '.'.join(parts[:depth])))
                return
        else:
            yield (f"--cfg-options key {key!r}: {'.'.join(parts[:depth])!r} is "
                   f'{type(node).__name__} {node!r}, not a dict, so it has no {part!r}')
            return


def read_config(path: Union[str, os.PathLike]) -> Config:
    """Parse a config file (and its ``_base_`` files); a syntax error names the file,
    the line and the code there (mmengine reports ``File "<unknown>"``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'config file not found: {path}')
    try:
        return Config.fromfile(str(path))
    except SyntaxError as error:
        raise ConfigSyntaxError(_syntax_error_message(Path(path), error)) from None


def _syntax_error_message(path: Path, error: SyntaxError) -> str:
    for file in _config_chain(path):
        try:
            ast.parse(file.read_text(), filename=str(file))
        except SyntaxError as found:
            error, path = found, file
            break
    code = (error.text or '').strip()
    where = f'line {error.lineno}' + (f': {code}' if code else '')
    return (f'config file {path} does not parse: {error.msg} at {where}. Fix the Python '
            'syntax there (a config is a Python file of assignments).')


def _config_chain(path: Path, seen: Optional[set] = None) -> list:
    """``path`` and the local ``_base_`` files it inherits from, recursively (as far as
    each parses); package bases such as ``mmseg::...`` are skipped."""
    seen = set() if seen is None else seen
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    chain = [path]
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        return chain
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '_base_'
                                                  for t in node.targets)):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                continue
            for base in [bases] if isinstance(bases, str) else bases:
                if isinstance(base, str) and '::' not in base:
                    chain += _config_chain((path.parent / base).resolve(), seen)
    return chain


def apply_cfg_options(cfg: Config, cfg_options: Optional[Mapping] = None) -> Config:
    """Apply ``--cfg-options`` overrides to ``cfg`` (in place; returns it), refusing
    every key that does not fit, all in one :class:`ConfigKeyError`: a path the config
    lacks (:func:`_path_problems`), or an argument the component it lands in does not
    take (:func:`repseg.mmseg.preflight.override_problems`)."""
    if not cfg_options:
        return cfg
    from .preflight import override_problems

    tree = cfg.to_dict()
    problems = {key: list(_path_problems(tree, key)) for key in cfg_options}
    cfg.merge_from_dict({k: v for k, v in cfg_options.items() if not problems[k]})
    found = [p for key_problems in problems.values() for p in key_problems]
    found += [f'--cfg-options key {p}'
              for p in override_problems(cfg, [k for k in cfg_options if not problems[k]])]
    if found:
        raise ConfigKeyError('\n\n'.join(found))
    return cfg


def load_config(path: Union[str, os.PathLike], cfg_options: Optional[Mapping] = None) -> Config:
    """Read a config file and apply ``--cfg-options`` overrides (checked for typos).

    Args:
        path: the config file.
        cfg_options: ``{'model.backbone.arch': 'A0', ...}`` as parsed by mmengine's
            ``DictAction``; see :func:`apply_cfg_options` for what keys are accepted.
    """
    return apply_cfg_options(read_config(path), cfg_options)


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
    state, _ = read_state_dict(obj)
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
